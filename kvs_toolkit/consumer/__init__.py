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

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from kvs_toolkit.lazy import lazy_exports

if TYPE_CHECKING:
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
    from kvs_toolkit.consumer.fleet import FleetWorker, StreamSelection
    from kvs_toolkit.consumer.frame_queue import (
        FrameQueue,
        QueuePolicy,
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
    from kvs_toolkit.consumer.hls import (
        HlsReader,
        PlaybackMode,
    )
    from kvs_toolkit.consumer.idle import (
        IdleWatch,
    )
    from kvs_toolkit.consumer.pipeline import (
        ConsumeResult,
        Pipeline,
        frame_record,
    )
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
    from kvs_toolkit.consumer.stream import (
        FrameStream,
        open_stream,
    )
    from kvs_toolkit.consumer.tensor import (
        Batch,
        FrameBatcher,
        LetterboxParams,
        letterbox,
        letterbox_boxes,
        unletterbox_boxes,
    )

# Names resolve on first use (PEP 562): importing one submodule (e.g. the frame queue
# for `kvs consume --help`) must not load PyAV, boto3 and every reader.
_EXPORTS: Final = {
    "FleetWorker": "kvs_toolkit.consumer.fleet",
    "StreamSelection": "kvs_toolkit.consumer.fleet",
    "ArchiveReader": "kvs_toolkit.consumer.readers",
    "AudioDecoder": "kvs_toolkit.consumer.decode",
    "Backoff": "kvs_toolkit.consumer.readers",
    "Batch": "kvs_toolkit.consumer.tensor",
    "Checkpoint": "kvs_toolkit.consumer.checkpoint",
    "CheckpointError": "kvs_toolkit.consumer.checkpoint",
    "CheckpointStore": "kvs_toolkit.consumer.checkpoint",
    "CodecSetup": "kvs_toolkit.consumer.decode",
    "ConsumeResult": "kvs_toolkit.consumer.pipeline",
    "DecodeError": "kvs_toolkit.consumer.decode",
    "DecodeStats": "kvs_toolkit.consumer.decode",
    "DecodedAudio": "kvs_toolkit.consumer.frames",
    "DecodedFrame": "kvs_toolkit.consumer.frames",
    "DuplicateFilter": "kvs_toolkit.consumer.decode",
    "DynamoDBCheckpointStore": "kvs_toolkit.consumer.checkpoint",
    "FileReader": "kvs_toolkit.consumer.readers",
    "FragmentDecoder": "kvs_toolkit.consumer.decode",
    "FragmentInfo": "kvs_toolkit.consumer.readers",
    "FragmentSource": "kvs_toolkit.consumer.readers",
    "FrameBatcher": "kvs_toolkit.consumer.tensor",
    "FrameQueue": "kvs_toolkit.consumer.frame_queue",
    "FrameSampler": "kvs_toolkit.consumer.decode",
    "FrameStream": "kvs_toolkit.consumer.stream",
    "HlsReader": "kvs_toolkit.consumer.hls",
    "IdleWatch": "kvs_toolkit.consumer.idle",
    "JsonFileCheckpointStore": "kvs_toolkit.consumer.checkpoint",
    "LeaseCoordinator": "kvs_toolkit.consumer.checkpoint",
    "LeaseInfo": "kvs_toolkit.consumer.checkpoint",
    "LeaseLostError": "kvs_toolkit.consumer.checkpoint",
    "LetterboxParams": "kvs_toolkit.consumer.tensor",
    "LiveReader": "kvs_toolkit.consumer.readers",
    "PIXEL_FORMATS": "kvs_toolkit.consumer.frames",
    "Pipeline": "kvs_toolkit.consumer.pipeline",
    "PixelFormat": "kvs_toolkit.consumer.frames",
    "PlaybackMode": "kvs_toolkit.consumer.hls",
    "QueuePolicy": "kvs_toolkit.consumer.frame_queue",
    "ReaderStats": "kvs_toolkit.consumer.readers",
    "SqliteCheckpointStore": "kvs_toolkit.consumer.checkpoint",
    "StartSelector": "kvs_toolkit.consumer.readers",
    "audio_frame_to_float": "kvs_toolkit.consumer.decode",
    "codec_setup": "kvs_toolkit.consumer.decode",
    "default_checkpoint_path": "kvs_toolkit.consumer.checkpoint",
    "frame_record": "kvs_toolkit.consumer.pipeline",
    "frame_to_ndarray": "kvs_toolkit.consumer.frames",
    "letterbox": "kvs_toolkit.consumer.tensor",
    "letterbox_boxes": "kvs_toolkit.consumer.tensor",
    "luma_view": "kvs_toolkit.consumer.frames",
    "open_checkpoint_store": "kvs_toolkit.consumer.checkpoint",
    "open_stream": "kvs_toolkit.consumer.stream",
    "parse_timestamp": "kvs_toolkit.consumer.readers",
    "register_codec": "kvs_toolkit.consumer.decode",
    "registered_codecs": "kvs_toolkit.consumer.decode",
    "unletterbox_boxes": "kvs_toolkit.consumer.tensor",
    "write_wav": "kvs_toolkit.consumer.frames",
}

__all__ = [
    "PIXEL_FORMATS",
    "ArchiveReader",
    "AudioDecoder",
    "Backoff",
    "Batch",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "CodecSetup",
    "ConsumeResult",
    "DecodeError",
    "DecodeStats",
    "DecodedAudio",
    "DecodedFrame",
    "DuplicateFilter",
    "DynamoDBCheckpointStore",
    "FileReader",
    "FleetWorker",
    "FragmentDecoder",
    "FragmentInfo",
    "FragmentSource",
    "FrameBatcher",
    "FrameQueue",
    "FrameSampler",
    "FrameStream",
    "HlsReader",
    "IdleWatch",
    "JsonFileCheckpointStore",
    "LeaseCoordinator",
    "LeaseInfo",
    "LeaseLostError",
    "LetterboxParams",
    "LiveReader",
    "Pipeline",
    "PixelFormat",
    "PlaybackMode",
    "QueuePolicy",
    "ReaderStats",
    "SqliteCheckpointStore",
    "StartSelector",
    "StreamSelection",
    "audio_frame_to_float",
    "codec_setup",
    "default_checkpoint_path",
    "frame_record",
    "frame_to_ndarray",
    "letterbox",
    "letterbox_boxes",
    "luma_view",
    "open_checkpoint_store",
    "open_stream",
    "parse_timestamp",
    "register_codec",
    "registered_codecs",
    "unletterbox_boxes",
    "write_wav",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
