"""The producer: encoded frames to key-frame-aligned fragments to PutMedia.

:class:`Producer` is the entry; the pieces under it (sources, fragmenter, uploader,
spool, metrics) are public for those who compose their own. Names are imported on
first use, so ``kvs produce -`` loads only what reading stdin needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvs_toolkit.lazy import lazy_exports

if TYPE_CHECKING:
    from kvs_toolkit.producer.fragmenter import (
        EncodedFrame,
        FragmentBuffer,
        Fragmenter,
        PendingFragment,
    )
    from kvs_toolkit.producer.metrics import CloudWatchMetrics, MetricsPublisher
    from kvs_toolkit.producer.producer import Producer
    from kvs_toolkit.producer.spool import FragmentSpool, SpoolError
    from kvs_toolkit.producer.uploader import Uploader, UploadStats

_EXPORTS: Final = {
    "CloudWatchMetrics": "kvs_toolkit.producer.metrics",
    "EncodedFrame": "kvs_toolkit.producer.fragmenter",
    "FragmentBuffer": "kvs_toolkit.producer.fragmenter",
    "FragmentSpool": "kvs_toolkit.producer.spool",
    "Fragmenter": "kvs_toolkit.producer.fragmenter",
    "MetricsPublisher": "kvs_toolkit.producer.metrics",
    "PendingFragment": "kvs_toolkit.producer.fragmenter",
    "Producer": "kvs_toolkit.producer.producer",
    "SpoolError": "kvs_toolkit.producer.spool",
    "UploadStats": "kvs_toolkit.producer.uploader",
    "Uploader": "kvs_toolkit.producer.uploader",
}

__all__ = [
    "CloudWatchMetrics",
    "EncodedFrame",
    "FragmentBuffer",
    "FragmentSpool",
    "Fragmenter",
    "MetricsPublisher",
    "PendingFragment",
    "Producer",
    "SpoolError",
    "UploadStats",
    "Uploader",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
