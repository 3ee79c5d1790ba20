"""kvs-toolkit: Amazon Kinesis Video Streams from Python.

The three entries, as ``boto3.client`` and ``av.open`` are for theirs:

* :class:`Producer` - put video into a stream (a file, camera, URL, numpy frames or an
  encoded H.264/H.265 stream), with acknowledgements, re-sending and a spool;
* :func:`open_stream` - a stream (live, an archived range, HLS, a file) as decoded
  numpy frames with their timestamps;
* :class:`Pipeline` - frames -> analyzer -> JSON lines / sinks -> checkpoints.

:class:`AwsAccess` says how to reach AWS or the local emulator (``endpoint_url``). The
MKV/EBML core lives in :mod:`kvs_toolkit.mkv`, H.264/H.265 helpers in
:mod:`kvs_toolkit.bitstream`, the local emulator in :mod:`kvs_toolkit.emulator`,
detectors and sinks in :mod:`kvs_toolkit.analysis`. Every error is a :class:`KvsError`.
Names are imported on first use, so ``import kvs_toolkit`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvs_toolkit.errors import (
    BitstreamError,
    ConfigurationError,
    CredentialsError,
    DecodeError,
    EmulatorError,
    EndpointUnreachableError,
    FragmentMetadataError,
    GetMediaError,
    KvsError,
    MkvError,
    PutMediaError,
)
from kvs_toolkit.lazy import lazy_exports

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.consumer.pipeline import Pipeline
    from kvs_toolkit.consumer.stream import FrameStream, open_stream
    from kvs_toolkit.producer.producer import Producer

__version__ = "0.1.0"

_LAZY: Final = {
    "AwsAccess": "kvs_toolkit.aws",
    "FrameStream": "kvs_toolkit.consumer.stream",
    "Pipeline": "kvs_toolkit.consumer.pipeline",
    "Producer": "kvs_toolkit.producer.producer",
    "open_stream": "kvs_toolkit.consumer.stream",
}

__all__ = [
    "AwsAccess",
    "BitstreamError",
    "ConfigurationError",
    "CredentialsError",
    "DecodeError",
    "EmulatorError",
    "EndpointUnreachableError",
    "FragmentMetadataError",
    "FrameStream",
    "GetMediaError",
    "KvsError",
    "MkvError",
    "Pipeline",
    "Producer",
    "PutMediaError",
    "__version__",
    "open_stream",
]


__getattr__ = lazy_exports(__name__, _LAZY)
