"""The producer: encoded frames to key-frame-aligned fragments to PutMedia."""

from kvs_toolkit.producer.fragmenter import (
    EncodedFrame,
    FragmentBuffer,
    Fragmenter,
    PendingFragment,
)
from kvs_toolkit.producer.metrics import CloudWatchMetrics, MetricsPublisher
from kvs_toolkit.producer.spool import FragmentSpool, SpoolError
from kvs_toolkit.producer.uploader import Uploader, UploadStats

__all__ = [
    "CloudWatchMetrics",
    "EncodedFrame",
    "FragmentBuffer",
    "FragmentSpool",
    "Fragmenter",
    "MetricsPublisher",
    "PendingFragment",
    "SpoolError",
    "UploadStats",
    "Uploader",
]
