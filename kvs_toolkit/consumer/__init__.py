"""The consumer's decoding half: fragments in, numpy frames and PCM out.

* :class:`FragmentDecoder` - video frames of KVS fragments (H.264, H.265, MJPEG) as
  :class:`DecodedFrame` objects with BGR/RGB/gray numpy images, with key-frame-only and
  time-based sampling that skips work, duplicate fragment detection, and recovery from
  corrupt frames and CodecPrivate changes.
* :class:`AudioDecoder` - AAC and G.711 tracks as float32 PCM (:class:`DecodedAudio`);
  :func:`write_wav` saves it.
* :class:`FrameBatcher` - N frames into one model-ready tensor (resize or letterbox,
  normalisation, NCHW/NHWC) in preallocated buffers; :func:`unletterbox_boxes` maps
  detections back to frame pixels.
"""

from kvs_toolkit.consumer.decode import (
    AudioDecoder,
    CodecSetup,
    DecodeError,
    DecodeStats,
    DuplicateFilter,
    FragmentDecoder,
    FrameSampler,
    audio_frame_to_float,
    codec_setup,
    register_codec,
    registered_codecs,
)
from kvs_toolkit.consumer.frames import (
    PIXEL_FORMATS,
    DecodedAudio,
    DecodedFrame,
    PixelFormat,
    frame_to_ndarray,
    luma_view,
    write_wav,
)
from kvs_toolkit.consumer.tensor import (
    Batch,
    FrameBatcher,
    LetterboxParams,
    letterbox,
    letterbox_boxes,
    unletterbox_boxes,
)

__all__ = [
    "PIXEL_FORMATS",
    "AudioDecoder",
    "Batch",
    "CodecSetup",
    "DecodeError",
    "DecodeStats",
    "DecodedAudio",
    "DecodedFrame",
    "DuplicateFilter",
    "FragmentDecoder",
    "FrameBatcher",
    "FrameSampler",
    "LetterboxParams",
    "PixelFormat",
    "audio_frame_to_float",
    "codec_setup",
    "frame_to_ndarray",
    "letterbox",
    "letterbox_boxes",
    "luma_view",
    "register_codec",
    "registered_codecs",
    "unletterbox_boxes",
    "write_wav",
]

# The reading half: fragment sources (live GetMedia, archive, HLS, files), checkpoints
# (SQLite by default, a JSON file, DynamoDB with leases) and the bounded frame queue.
from kvs_toolkit.consumer.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    DynamoDBCheckpointStore,
    JsonFileCheckpointStore,
    LeaseCoordinator,
    LeaseInfo,
    LeaseLostError,
    SqliteCheckpointStore,
    default_checkpoint_path,
    open_checkpoint_store,
)
from kvs_toolkit.consumer.frame_queue import FrameQueue, QueuePolicy
from kvs_toolkit.consumer.hls import HlsReader, PlaybackMode
from kvs_toolkit.consumer.readers import (
    ArchiveReader,
    Backoff,
    FileReader,
    FragmentInfo,
    FragmentSource,
    LiveReader,
    ReaderStats,
    StartSelector,
    parse_timestamp,
)

__all__ += [
    "ArchiveReader",
    "Backoff",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "DynamoDBCheckpointStore",
    "FileReader",
    "FragmentInfo",
    "FragmentSource",
    "FrameQueue",
    "HlsReader",
    "JsonFileCheckpointStore",
    "LeaseCoordinator",
    "LeaseInfo",
    "LeaseLostError",
    "LiveReader",
    "PlaybackMode",
    "QueuePolicy",
    "ReaderStats",
    "SqliteCheckpointStore",
    "StartSelector",
    "default_checkpoint_path",
    "open_checkpoint_store",
    "parse_timestamp",
]
