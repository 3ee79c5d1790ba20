"""A local Kinesis Video Streams emulator that boto3 talks to by endpoint URL.

* :mod:`.server`: :class:`Emulator` (in-process, thread or asyncio) and
  :func:`run_forever` (CLI); how to add routes.
* :mod:`.store`: durable storage of streams and fragments (SQLite index plus
  append-only segment files).
* :mod:`.events`: waiting for newly persisted fragments.
* :mod:`.control`: the control plane; :mod:`.archived`: ListFragments.
* :mod:`.sigv4`: SigV4 verification; :mod:`.errors`: the service's error answers.
* :mod:`.dataplane`: PutMedia and GetMedia; :mod:`.hls`, :mod:`.playback`, :mod:`.remux`,
  :mod:`.clip`: HLS, DASH, GetClip and GetImages.
* :mod:`.web`: the web page at ``/`` (stream list, HLS player, fragment timeline).
"""

from kvs_toolkit.emulator.context import EMULATOR, EmulatorConfig, EmulatorContext
from kvs_toolkit.emulator.errors import ServiceError
from kvs_toolkit.emulator.events import StreamEvents
from kvs_toolkit.emulator.server import (
    DEFAULT_ROUTE_INSTALLERS,
    Emulator,
    RouteInstaller,
    create_app,
    run_forever,
)
from kvs_toolkit.emulator.store import (
    AsyncStore,
    FragmentMeta,
    FragmentPage,
    FragmentRecord,
    Store,
    StreamRecord,
)

__all__ = [
    "DEFAULT_ROUTE_INSTALLERS",
    "EMULATOR",
    "AsyncStore",
    "Emulator",
    "EmulatorConfig",
    "EmulatorContext",
    "FragmentMeta",
    "FragmentPage",
    "FragmentRecord",
    "RouteInstaller",
    "ServiceError",
    "Store",
    "StreamEvents",
    "StreamRecord",
    "create_app",
    "run_forever",
]
