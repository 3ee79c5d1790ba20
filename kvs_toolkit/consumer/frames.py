"""Decoded media as numpy arrays: video frames, audio chunks, and a WAV writer.

A :class:`DecodedFrame` carries the image and everything a consumer needs to place it in
time and in the stream: the fragment it came from (number, producer and server
timestamps), its own absolute timestamp, the key-frame flag, the track and its index in
the fragment.

Conversion from the decoder's frame (usually ``yuv420p``) runs in C: swscale through
PyAV's :class:`~av.video.reformatter.VideoReformatter` for colour conversion and resizing,
or a zero-copy numpy view of the luma plane for ``gray``. No pixel is touched in Python.

``gray`` is the coded luma (Y') plane, never range-converted, at any size: for
limited-range video (typical H.264/H.265, ``yuv420p``) its values span 16-235, for
full-range video (``yuvj420p``, MJPEG) 0-255. At the decoded size it is a view of the
decoder's plane (no copy); resized, swscale scales that plane with no range expansion,
so a resized gray frame is the same picture as the full-size one, only smaller. (A
``gray`` conversion left to swscale's defaults would stretch 16-235 to 0-255, so the
same stream would give different grey levels with and without a resize.) A frame whose
pixel format has no 8-bit luma plane (RGB, 10-bit) is converted by swscale with the
same rule: its luma scaled to 8 bits, not stretched.
"""

from __future__ import annotations

import datetime as dt
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from kvs_toolkit.timestamps import EPOCH

if TYPE_CHECKING:
    from av.video.frame import VideoFrame
    from av.video.reformatter import VideoReformatter

__all__ = [
    "PIXEL_FORMATS",
    "DecodedAudio",
    "DecodedFrame",
    "Image",
    "PictureSink",
    "PixelFormat",
    "Samples",
    "fit_size",
    "frame_to_ndarray",
    "luma_view",
    "write_wav",
]

Image: TypeAlias = npt.NDArray[np.uint8]
Samples: TypeAlias = npt.NDArray[np.float32]
PixelFormat: TypeAlias = Literal["bgr24", "rgb24", "gray"]
PIXEL_FORMATS: Final[frozenset[str]] = frozenset({"bgr24", "rgb24", "gray"})


# Decoder pixel formats whose first plane is 8-bit luma at full picture size: for these
# ``gray`` is a view of plane 0, with no conversion and no copy.
_LUMA_FIRST_FORMATS: Final = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv440p",
        "yuvj440p",
        "yuv411p",
        "yuvj411p",
        "nv12",
        "nv21",
        "nv16",
        "gray",
    }
)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One decoded video frame.

    ``image`` has shape ``(height, width, 3)`` for ``bgr24``/``rgb24`` and
    ``(height, width)`` for ``gray``; dtype ``uint8``. ``gray`` is the coded luma plane
    at every size (16-235 for limited-range video; see the module docstring). Its rows
    may be padded (the decoder's line size is aligned): ``image.strides[0]`` can exceed
    ``width * channels``.
    Use ``np.ascontiguousarray(frame.image)`` when packed rows are needed.

    Memory: for ``bgr24``/``rgb24`` (and any resize) the array is a view of the buffer
    swscale wrote the converted picture into; it owns that buffer (through the numpy
    ``base`` chain) and shares nothing with the decoder. For ``gray`` without resize
    the array is a view of the decoder's own luma plane (``shares_decoder_memory`` is
    True): no copy was made, the decoder's reference-counted buffer stays alive as
    long as the array does, and the decoder never writes to a buffer that is still
    referenced, so the view stays valid. Do not write into it.

    ``timestamp_ns`` is absolute, in the producer's clock: the fragment's producer
    timestamp plus the frame's offset from its Cluster. When the fragment has no producer
    timestamp tag (a plain MKV file) it is the MKV timestamp. ``mkv_timestamp_ns`` is
    the timestamp as written in the MKV (cluster timecode plus block offset), which
    with RELATIVE timecodes starts near zero. ``index`` is the frame's position among
    the fragment's frames of the same track, in stream (decode) order.
    """

    image: Image
    format: PixelFormat
    track_number: int
    fragment_number: str | None
    producer_timestamp: dt.datetime | None
    server_timestamp: dt.datetime | None
    timestamp_ns: int
    mkv_timestamp_ns: int
    keyframe: bool
    index: int
    shares_decoder_memory: bool = False
    decoded_size: tuple[int, int] | None = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def source_size(self) -> tuple[int, int]:
        """``(width, height)`` of the picture as decoded, before any resize the decoder
        did while converting (``decoded_size``; the image's own size when None). Boxes
        found in ``image`` map back to these pixels."""
        if self.decoded_size is not None:
            return self.decoded_size
        return self.width, self.height

    @property
    def timestamp(self) -> float:
        """Absolute timestamp in epoch seconds."""
        return self.timestamp_ns / 1e9

    @property
    def datetime(self) -> dt.datetime:
        """Absolute timestamp as an aware UTC datetime (microsecond resolution)."""
        return EPOCH + dt.timedelta(microseconds=self.timestamp_ns // 1000)


def fit_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """The largest ``(width, height)`` with the same aspect ratio that fits in ``target``
    (W, H), rounded to whole pixels: the inner picture of a letterbox. One rounding
    rule for both the decoder's ``fit`` and :class:`~kvs_toolkit.consumer.LetterboxParams`,
    so a frame the decoder scaled is exactly the size the letterbox expects."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot place an empty {width}x{height} image")
    target_w, target_h = target
    scale = min(target_w / width, target_h / height)
    return min(target_w, max(1, round(width * scale))), min(target_h, max(1, round(height * scale)))


@runtime_checkable
class PictureSink(Protocol):
    """Takes each decoded picture straight from the decoder: ``FragmentDecoder(fit=sink)``.

    :class:`~kvs_toolkit.consumer.FrameBatcher` is one: it converts the picture (swscale,
    to its network input's inner size and channel layout) into the next slot of its
    tensor at once, instead of the decoder making an image for it to convert again.
    ``size`` is the ``(width, height)`` the pictures are fitted into. ``write_picture``
    returns the image the decoder's :class:`DecodedFrame` carries and whether that
    image shares memory with the decoder; its format is ``gray``.
    """

    @property
    def size(self) -> tuple[int, int]: ...

    def write_picture(
        self, picture: VideoFrame, *, interpolation: str | None, threads: int | None
    ) -> tuple[Image, bool]: ...


def luma_view(frame: VideoFrame) -> Image | None:
    """A zero-copy ``(height, width)`` view of an 8-bit frame's luma plane, or None.

    The view shares memory with ``frame`` (and keeps it alive). None when the frame's
    pixel format has no full-size 8-bit luma plane first (RGB, 10-bit, ...).
    Values are the coded luma: for limited-range video (``yuv420p``) they span 16-235,
    as :func:`frame_to_ndarray`'s resized ``gray`` does too.
    """
    if frame.format.name not in _LUMA_FIRST_FORMATS:
        return None
    plane = frame.planes[0]
    line_size = plane.line_size
    if line_size < frame.width:  # a negative (bottom-up) or short line: not viewable
        return None
    view: Image = np.ndarray(
        (frame.height, frame.width),
        dtype=np.uint8,
        buffer=memoryview(plane),
        strides=(line_size, 1),
    )
    return view


def frame_to_ndarray(
    frame: VideoFrame,
    format: PixelFormat,
    reformatter: VideoReformatter,
    *,
    width: int | None = None,
    height: int | None = None,
    interpolation: str | None = None,
    threads: int | None = None,
) -> tuple[Image, bool]:
    """Convert a decoded frame; return the array and whether it shares decoder memory.

    ``gray`` at the frame's own size is a view of the luma plane (no copy, see
    :func:`luma_view`); resized, the same coded luma values scaled (no range
    conversion; see the module docstring). Everything else goes through swscale with
    ``reformatter`` (one per decoder, so swscale's context is reused) into a new
    buffer, viewed without a further copy. ``threads``: swscale's (None or 0: automatic).
    """
    resize = (width is not None and width != frame.width) or (
        height is not None and height != frame.height
    )
    # swscale maps a limited-range source to full-range gray unless both ends are given
    # the same range; "full range in, full range out" makes it copy the luma values as
    # they are (scaled, and shifted to 8 bits for 10-bit video).
    same_range = "JPEG" if format == "gray" else None
    if format == "gray" and not resize:
        view = luma_view(frame)
        if view is not None:
            return view, True
    converted = reformatter.reformat(
        frame,
        width=width,
        height=height,
        format=format,
        interpolation=interpolation,
        threads=threads,
        src_color_range=same_range,
        dst_color_range=same_range,
    )
    array = np.asarray(converted.to_ndarray(), dtype=np.uint8)
    # reformat() hands back the very same frame when nothing needs converting.
    return array, converted is frame


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """PCM samples of one audio track: float32, shape ``(channels, samples)``, in [-1, 1].

    One instance per track per fragment from :class:`~kvs_toolkit.consumer.AudioDecoder`;
    :meth:`concatenate` joins consecutive chunks. ``timestamp_ns`` is the absolute
    timestamp of the first sample (same rules as :class:`DecodedFrame`).
    """

    samples: Samples
    sample_rate: int
    track_number: int
    fragment_number: str | None = None
    producer_timestamp: dt.datetime | None = None
    server_timestamp: dt.datetime | None = None
    timestamp_ns: int = 0

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def sample_count(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        """Duration in seconds."""
        return self.sample_count / self.sample_rate

    @property
    def timestamp(self) -> float:
        return self.timestamp_ns / 1e9

    @staticmethod
    def concatenate(chunks: Sequence[DecodedAudio]) -> DecodedAudio:
        """Join chunks of one track (same rate and channel count) in order."""
        if not chunks:
            raise ValueError("no audio chunks to concatenate")
        first = chunks[0]
        for chunk in chunks[1:]:
            if (chunk.sample_rate, chunk.channels) != (first.sample_rate, first.channels):
                raise ValueError(
                    f"cannot join {chunk.channels} ch at {chunk.sample_rate} Hz to "
                    f"{first.channels} ch at {first.sample_rate} Hz"
                )
        samples = np.concatenate([c.samples for c in chunks], axis=1)
        return DecodedAudio(
            samples,
            first.sample_rate,
            first.track_number,
            first.fragment_number,
            first.producer_timestamp,
            first.server_timestamp,
            first.timestamp_ns,
        )


def write_wav(
    path: str | Path,
    audio: DecodedAudio | Samples,
    sample_rate: int | None = None,
) -> Path:
    """Write float PCM (``(channels, samples)``, range [-1, 1]) as a 16-bit PCM WAV file.

    ``audio`` is a :class:`DecodedAudio` (its rate is used) or a float array with
    ``sample_rate`` given. Samples outside [-1, 1] are clipped. Uses the stdlib
    :mod:`wave` module.
    """
    if isinstance(audio, DecodedAudio):
        samples = audio.samples
        rate = audio.sample_rate if sample_rate is None else sample_rate
    else:
        samples = np.asarray(audio, dtype=np.float32)
        if sample_rate is None:
            raise ValueError("sample_rate is required for a bare sample array")
        rate = sample_rate
    if samples.ndim == 1:
        samples = samples[np.newaxis, :]
    if samples.ndim != 2:
        raise ValueError(f"samples must be (channels, samples), got shape {samples.shape}")
    # WAV frames are interleaved little-endian int16: transpose to (samples, channels).
    pcm = np.clip(samples.T * 32767.0, -32768.0, 32767.0)
    data = np.rint(pcm).astype("<i2").tobytes()
    out = Path(path)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(int(samples.shape[0]))
        wav.setsampwidth(2)
        wav.setframerate(int(rate))
        wav.writeframes(data)
    return out
