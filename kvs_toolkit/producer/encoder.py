"""Low-latency H.264/H.265 encoding of raw frames into :class:`EncodedFrame` s.

:class:`Encoder` wraps a PyAV (FFmpeg) encoder set up the way a live KVS producer needs:
no B-frames and no look-ahead (a frame leaves the encoder as soon as it went in), and a
key frame exactly every ``fragment duration x fps`` frames with scene-cut detection off,
so fragments are cut at the configured duration. Colour conversion and scaling are
swscale's (``VideoFrame.reformat``); no pixel is touched in Python.

The encoder keeps the parameter sets in-band (no global header), so every key frame
carries SPS/PPS(/VPS) and a decoder can join at any fragment; the track's CodecPrivate
(avcC / hvcC) is built from the first key frame's parameter sets with
:mod:`kvs_toolkit.bitstream`. Payloads are returned in AVCC form (4-byte lengths).

Encoders, chosen with ``encoder=``:

* ``"libx264"`` / ``"libx265"`` - software (``preset`` veryfast / ultrafast, ``tune``
  zerolatency);
* ``"h264_v4l2m2m"`` / ``"hevc_v4l2m2m"`` - the V4L2 memory-to-memory hardware encoder of
  a Raspberry Pi and other SoCs;
* ``"auto"`` - the hardware encoder when one can actually be opened on this machine,
  else the software one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias

if TYPE_CHECKING:  # numpy, like PyAV, stays out of `kvs produce -` (its RSS goal)
    import av
    import numpy as np
    import numpy.typing as npt
    from av.video.codeccontext import VideoCodecContext

from kvs_toolkit import bitstream
from kvs_toolkit.bitstream import Codec
from kvs_toolkit.errors import BitstreamError, EncodeError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.producer.fragmenter import DEFAULT_FRAGMENT_DURATION_MS, EncodedFrame

__all__ = [
    "CODEC_IDS",
    "ENCODERS",
    "EncodeError",
    "Encoder",
    "EncoderName",
    "available_encoder",
    "video_track",
]

log = logging.getLogger(__name__)

EncoderName: TypeAlias = Literal["auto", "libx264", "h264_v4l2m2m", "libx265", "hevc_v4l2m2m"]

#: Matroska CodecID of each video codec (docs/kvs-wire.md "Tracks").
CODEC_IDS: Final[dict[Codec, str]] = {"h264": "V_MPEG4/ISO/AVC", "h265": "V_MPEGH/ISO/HEVC"}

# Per codec: the encoders "auto" tries, hardware first.
_AUTO_ORDER: Final[dict[Codec, tuple[str, ...]]] = {
    "h264": ("h264_v4l2m2m", "libx264"),
    "h265": ("hevc_v4l2m2m", "libx265"),
}
_PIXEL_FORMAT: Final = "yuv420p"


def _libx264(ctx: VideoCodecContext, gop: int, bitrate: int | None) -> None:
    ctx.options = {
        "preset": "veryfast",
        "tune": "zerolatency",  # no look-ahead, no frame threads: one frame in, one out
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        **_vbv(bitrate),
    }


def _libx265(ctx: VideoCodecContext, gop: int, bitrate: int | None) -> None:
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x265-params": (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:log-level=error"
        ),
        **_vbv(bitrate),
    }


def _v4l2m2m(ctx: VideoCodecContext, gop: int, bitrate: int | None) -> None:
    # The hardware encoder takes its GOP and rate from the codec context itself; it has
    # no B-frames on the SoCs it runs on.
    ctx.max_b_frames = 0


def _vbv(bitrate: int | None) -> dict[str, str]:
    # A one-second VBV buffer keeps the rate steady enough for an uplink of that size.
    if bitrate is None:
        return {}
    return {"maxrate": str(bitrate), "bufsize": str(bitrate)}


#: encoder name -> (codec, function applying its low-latency options)
ENCODERS: Final[dict[str, tuple[Codec, Callable[[VideoCodecContext, int, int | None], None]]]] = {
    "libx264": ("h264", _libx264),
    "h264_v4l2m2m": ("h264", _v4l2m2m),
    "libx265": ("h265", _libx265),
    "hevc_v4l2m2m": ("h265", _v4l2m2m),
}


@functools.cache
def _can_open(name: str) -> bool:
    """Whether encoder ``name`` opens here (a V4L2 encoder needs its /dev/video device)."""
    import av
    from av.video.codeccontext import VideoCodecContext

    try:
        ctx = av.CodecContext.create(name, "w")
        assert isinstance(ctx, VideoCodecContext)
        ctx.width, ctx.height = 640, 480
        ctx.pix_fmt = _PIXEL_FORMAT
        ctx.time_base = Fraction(1, 30)
        ctx.open()
    except (av.FFmpegError, ValueError, AssertionError) as exc:
        log.debug("encoder %s is not usable here: %s", name, exc)
        return False
    return True


def available_encoder(codec: Codec = "h264", requested: str = "auto") -> str:
    """The FFmpeg encoder to use for ``codec``: ``requested``, or the best one for "auto".

    "auto" picks the hardware encoder only when it actually opens (FFmpeg builds often
    include ``h264_v4l2m2m`` on machines with no such device).
    """
    if requested != "auto":
        entry = ENCODERS.get(requested)
        if entry is None:
            raise EncodeError(f"unknown encoder {requested!r} (choose from {sorted(ENCODERS)})")
        if entry[0] != codec:
            raise EncodeError(f"encoder {requested!r} does not produce {codec}")
        return requested
    candidates = _AUTO_ORDER.get(codec)
    if candidates is None:
        raise EncodeError(f"no encoder for codec {codec!r}")
    for name in candidates:
        if _can_open(name):
            return name
    raise EncodeError(f"none of the encoders {candidates} opens in this FFmpeg build")


def video_track(codec: Codec, codec_private: bytes, number: int = 1) -> TrackInfo:
    """The video TrackInfo for an avcC/hvcC CodecPrivate; size read from its first SPS."""
    if codec == "h265":
        hvcc = bitstream.parse_hvcc(codec_private)
        if not hvcc.sps:
            raise BitstreamError("hvcC record has no SPS")
        sps265 = bitstream.parse_h265_sps(hvcc.sps[0])
        width, height = sps265.width, sps265.height
    else:
        avcc = bitstream.parse_avcc(codec_private)
        if not avcc.sps:
            raise BitstreamError("avcC record has no SPS")
        sps264 = bitstream.parse_h264_sps(avcc.sps[0])
        width, height = sps264.width, sps264.height
    return TrackInfo(
        number,
        CODEC_IDS[codec],
        codec_private,
        name="video",
        width=width,
        height=height,
    )


class Encoder:
    """Raw frames in, AVCC/HVCC :class:`EncodedFrame` s out, with low-latency settings.

    ``encode(image, timestamp_ms)`` takes a numpy ``(height, width, 3)`` uint8 image
    (BGR by default, as OpenCV hands them out; ``pixel_format="rgb24"`` for RGB) and
    returns the frames the encoder finished (with these settings, the one just given).
    ``timestamp_ms`` is the frame's absolute time; the returned frames carry it.
    :attr:`codec_private` and :meth:`track` are available once the first key frame is out.

    ``Encoder.created`` counts the instances made in this process (tests use it to prove
    that a pass-through source encoded nothing).
    """

    created: ClassVar[int] = 0

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        codec: Codec = "h264",
        encoder: str = "auto",
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        bitrate: int | None = None,
        track_number: int = 1,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise EncodeError(f"frame size {width}x{height}: both sides must be even and > 0")
        if fps <= 0:
            raise EncodeError(f"fps must be positive, not {fps}")
        self.codec: Codec = codec
        self.name = available_encoder(codec, encoder)
        self.width = width
        self.height = height
        self.fps = fps
        self.track_number = track_number
        # A key frame every fragment: the Fragmenter cuts on the first key frame at or
        # after the fragment duration, so fragments come out that long.
        self.gop = max(1, round(fps * fragment_duration_ms / 1000))
        import av
        from av.video.codeccontext import VideoCodecContext

        ctx = av.CodecContext.create(self.name, "w")
        assert isinstance(ctx, VideoCodecContext)
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = _PIXEL_FORMAT
        ctx.time_base = Fraction(1, 1000)  # pts in milliseconds
        ctx.framerate = Fraction(fps).limit_denominator(1001)
        ctx.gop_size = self.gop
        ctx.max_b_frames = 0
        if bitrate is not None:
            ctx.bit_rate = bitrate
        ENCODERS[self.name][1](ctx, self.gop, bitrate)
        try:
            ctx.open()
        except av.FFmpegError as exc:
            raise EncodeError(f"cannot open encoder {self.name}: {exc}") from exc
        self._ctx = ctx
        self._base_ms: int | None = None
        self._last_pts = -1
        self.codec_private: bytes | None = None
        self.frames_out = 0
        Encoder.created += 1
        log.info(
            "encoder %s %dx%d @ %g fps, key frame every %d frames",
            self.name,
            width,
            height,
            fps,
            self.gop,
        )

    def track(self) -> TrackInfo:
        """The video track (needs the first key frame to have been encoded)."""
        if self.codec_private is None:
            raise EncodeError("no key frame encoded yet: the CodecPrivate is not known")
        return video_track(self.codec, self.codec_private, self.track_number)

    def encode(
        self,
        image: npt.NDArray[np.uint8],
        timestamp_ms: int,
        *,
        pixel_format: Literal["bgr24", "rgb24"] = "bgr24",
    ) -> list[EncodedFrame]:
        """Encode one numpy image taken at ``timestamp_ms`` (absolute ms)."""
        import av

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != "uint8":
            raise EncodeError(
                f"expected a (height, width, 3) uint8 image, got {image.dtype} {image.shape}"
            )
        frame = av.VideoFrame.from_ndarray(image, format=pixel_format)
        return self.encode_frame(frame, timestamp_ms)

    def encode_frame(self, frame: av.VideoFrame, timestamp_ms: int) -> list[EncodedFrame]:
        """Encode one decoded ``av.VideoFrame`` (any size and pixel format)."""
        import av

        if frame.format.name != _PIXEL_FORMAT or (frame.width, frame.height) != (
            self.width,
            self.height,
        ):
            frame = frame.reformat(width=self.width, height=self.height, format=_PIXEL_FORMAT)
        if self._base_ms is None:
            self._base_ms = timestamp_ms
        pts = timestamp_ms - self._base_ms
        if pts <= self._last_pts:
            # The encoder needs strictly increasing timestamps; a clock that stood still
            # (two frames in one millisecond) must not stop the stream.
            pts = self._last_pts + 1
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = self._ctx.time_base
        frame.pict_type = av.video.frame.PictureType.NONE
        try:
            packets = self._ctx.encode(frame)
        except av.FFmpegError as exc:
            raise EncodeError(
                f"{self.name} failed on the frame at {timestamp_ms} ms: {exc}"
            ) from exc
        return [self._to_frame(p) for p in packets]

    def flush(self) -> list[EncodedFrame]:
        """Drain the frames still inside the encoder (at the end of the source)."""
        import av

        if not self._ctx.is_open:
            return []
        try:
            packets = self._ctx.encode(None)
        except av.FFmpegError as exc:
            raise EncodeError(f"{self.name} failed while flushing: {exc}") from exc
        return [self._to_frame(p) for p in packets]

    def _to_frame(self, packet: Any) -> EncodedFrame:
        nal_units = bitstream.split_annexb(bytes(packet))
        keyframe = bool(packet.is_keyframe)
        if self.codec_private is None:
            self.codec_private = self._codec_private(nal_units, keyframe)
        assert self._base_ms is not None
        pts = packet.pts if packet.pts is not None else self._last_pts
        self.frames_out += 1
        return EncodedFrame(
            bitstream.join_length_prefixed(nal_units),
            self._base_ms + int(pts),
            keyframe,
            self.track_number,
        )

    def _codec_private(self, nal_units: list[memoryview], keyframe: bool) -> bytes:
        if not keyframe:
            raise EncodeError(f"{self.name}: the first encoded frame is not a key frame")
        sets = bitstream.parameter_sets(nal_units, self.codec)
        if not sets.sps and self._ctx.extradata:
            # An encoder that put the parameter sets out of band after all.
            nal_units = bitstream.split_annexb(self._ctx.extradata)
        return bitstream.build_codec_private(nal_units, self.codec)
