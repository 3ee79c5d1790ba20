"""The producer: encoded frames to key-frame-aligned fragments to PutMedia."""

from kvs_toolkit.producer.fragmenter import (
    EncodedFrame,
    FragmentBuffer,
    Fragmenter,
    PendingFragment,
)
from kvs_toolkit.producer.uploader import Uploader, UploadStats

__all__ = [
    "EncodedFrame",
    "FragmentBuffer",
    "Fragmenter",
    "PendingFragment",
    "UploadStats",
    "Uploader",
]
