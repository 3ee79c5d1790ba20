"""kvs-toolkit: Amazon Kinesis Video Streams from Python.

The MKV/EBML core lives in :mod:`kvs_toolkit.mkv`, H.264/H.265 helpers in
:mod:`kvs_toolkit.bitstream`, the local emulator in :mod:`kvs_toolkit.emulator`.
"""

from kvs_toolkit.errors import (
    BitstreamError,
    DecodeError,
    EmulatorError,
    FragmentMetadataError,
    GetMediaError,
    KvsError,
    MkvError,
    PutMediaError,
)

__version__ = "0.1.0"

__all__ = [
    "BitstreamError",
    "DecodeError",
    "EmulatorError",
    "FragmentMetadataError",
    "GetMediaError",
    "KvsError",
    "MkvError",
    "PutMediaError",
    "__version__",
]
