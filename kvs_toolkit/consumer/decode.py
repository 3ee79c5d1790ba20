"""Decode the frames of KVS fragments with PyAV, from each fragment's own CodecPrivate.

:class:`FragmentDecoder` turns :class:`~kvs_toolkit.mkv.Fragment` objects (from
:class:`~kvs_toolkit.mkv.FragmentReader`) into :class:`~kvs_toolkit.consumer.DecodedFrame`
objects with numpy images::

    reader, decoder = FragmentReader(), FragmentDecoder(format="bgr24", fps=2)
    for chunk in payload:
        for fragment in reader.feed(chunk):
            for frame in decoder.iter_decode(fragment):
                detect(frame.image, frame.timestamp)

Frames stream out: :meth:`FragmentDecoder.iter_decode` yields each frame as soon as
FFmpeg returns it, so a consumer holds a few frames at a time instead of a fragment's
worth (a 2 s 1080p30 fragment is 60 x 6.2 MB in BGR). :meth:`FragmentDecoder.decode`
returns the same frames as a list.

Codecs (a registry keyed by Matroska CodecID, see :func:`register_codec`):

* ``V_MPEG4/ISO/AVC`` - H.264, the avcC record as extradata, AVCC packets as stored.
* ``V_MPEGH/ISO/HEVC`` - H.265, the hvcC record as extradata.
* ``V_MS/VFW/FOURCC`` - a BITMAPINFOHEADER whose biCompression FOURCC names the codec;
  ``MJPG`` decodes every frame as a JPEG with FFmpeg's ``mjpeg`` decoder.
* ``A_AAC`` (AudioSpecificConfig) and ``A_MS/ACM`` (WAVEFORMATEX: G.711 A-law/mu-law,
  PCM) for :class:`AudioDecoder`.

Robustness: a packet the decoder rejects, or a frame it flags as corrupt, is logged and
skipped and the stream goes on; a CodecPrivate change mid-stream drains and re-opens the
decoder; a fragment that repeats a recent one (same producer timestamp, frame count and
payload hash - what a producer re-sending after a reconnect produces) is dropped and
counted.

Sampling that saves work:

* ``keyframes_only``: non-key packets are never sent to the decoder (zero decode cost),
  and ``skip_frame = "NONKEY"`` guards against a mis-flagged one.
* ``fps=N`` / ``every=S``: a time grid keeps one frame per 1/N (or S) seconds. Packets
  of frames not kept are not sent at all when nothing depends on them: every packet of
  an intra-only codec (MJPEG), and H.264/H.265 non-reference pictures (nal_ref_idc 0;
  HEVC sub-layer non-reference types in a single-layer stream). Other frames are
  decoded (later frames reference them) but not converted, and conversion is the
  expensive half. Camera streams without B-frames usually have no non-reference
  pictures, so for them the saving is the conversion.

Threading: FFmpeg's own (``thread_type="AUTO"``: frame and slice threads), so decoding
of the next frames overlaps with the conversion of the current one. A decoder object is
not thread-safe; give each thread its own.

One iteration at a time: an iteration that ends early (the caller breaks out, an
exception is raised by the decoder or by the code handling a frame, or another call on
the decoder starts) skips the rest of its fragment and discards the frames the decoder
still holds; the next fragment, which starts on a key frame, decodes normally. See
:meth:`FragmentDecoder.iter_decode`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import struct
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import av
import av.error
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from kvs_toolkit.bitstream import parse_avcc, parse_hvcc, split_length_prefixed
from kvs_toolkit.consumer.frames import (
    PIXEL_FORMATS,
    DecodedAudio,
    DecodedFrame,
    PixelFormat,
    Samples,
    fit_size,
    frame_to_ndarray,
)
from kvs_toolkit.errors import BitstreamError, DecodeError
from kvs_toolkit.mkv.model import TRACK_TYPE_AUDIO, TRACK_TYPE_VIDEO, Fragment, Frame, TrackInfo

__all__ = [
    "AudioDecoder",
    "CodecSetup",
    "DecodeError",
    "DecodeStats",
    "DuplicateFilter",
    "FragmentDecoder",
    "FrameSampler",
    "audio_frame_to_float",
    "codec_setup",
    "register_codec",
    "registered_codecs",
]

log = logging.getLogger(__name__)

# Without a flush per fragment, metadata of packets that never produced a frame (the
# decoder dropped them) would pile up; keep at most this many.
_MAX_PENDING: Final = 512
# MKV timestamps are rounded to the TimecodeScale (1 ms in KVS): a frame due at 33.33 ms
# is written at 33 ms. The sampler's grid tolerates that much early arrival.
_TIMESTAMP_TOLERANCE_NS: Final = 1_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# A broken producer can send nothing but corrupt frames: warn about the first ones, then
# only every so often (the rest go to DEBUG; the stats count them all).
_WARN_FIRST: Final = 20
_WARN_EVERY: Final = 1000


# --- codecs ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CodecSetup:
    """How to open FFmpeg's decoder for one track.

    ``nal_length_size`` is set for codecs whose packets are length-prefixed NAL units
    (H.264/H.265); ``nonref_check`` says whether a packet holds only non-reference
    pictures, so that a frame the sampler does not want can go unsent.
    """

    decoder: str
    media: Literal["video", "audio"]
    extradata: bytes | None = None
    intra_only: bool = False
    nal_length_size: int | None = None
    nonref_check: Callable[[memoryview, int], bool] | None = None
    sample_rate: int | None = None
    channels: int | None = None
    description: str = ""


SetupFactory = Callable[[TrackInfo], CodecSetup]
_REGISTRY: dict[str, SetupFactory] = {}


def register_codec(codec_id: str) -> Callable[[SetupFactory], SetupFactory]:
    """Decorator: register a :class:`CodecSetup` factory for a Matroska CodecID."""

    def decorate(factory: SetupFactory) -> SetupFactory:
        _REGISTRY[codec_id] = factory
        return factory

    return decorate


def registered_codecs() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def codec_setup(track: TrackInfo) -> CodecSetup:
    """The decoder setup for ``track``; :class:`DecodeError` when it is not decodable."""
    factory = _REGISTRY.get(track.codec_id)
    if factory is None:
        raise DecodeError(
            f"track {track.number}: codec {track.codec_id!r} is not supported "
            f"(supported: {', '.join(registered_codecs())})"
        )
    return factory(track)


def _h264_nonref(data: memoryview, length_size: int) -> bool:
    # H.264 7.4.1: nal_ref_idc 0 on a slice (types 1-5) means no later picture uses it.
    vcl = False
    for nal in split_length_prefixed(data, length_size):
        header = nal[0]
        if 1 <= header & 0x1F <= 5:
            if header & 0x60:
                return False
            vcl = True
    return vcl


def _h265_nonref(data: memoryview, length_size: int) -> bool:
    # H.265 7.4.2.2: VCL types 0-14 with an even value are sub-layer non-reference
    # pictures (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14).
    vcl = False
    for nal in split_length_prefixed(data, length_size):
        kind = (nal[0] >> 1) & 0x3F
        if kind < 32:
            if kind >= 16 or kind % 2:
                return False
            vcl = True
    return vcl


@register_codec("V_MPEG4/ISO/AVC")
def _avc(track: TrackInfo) -> CodecSetup:
    try:
        config = parse_avcc(track.codec_private)
    except BitstreamError as exc:
        raise DecodeError(f"track {track.number}: bad avcC CodecPrivate: {exc}") from exc
    return CodecSetup(
        "h264",
        "video",
        extradata=track.codec_private,
        nal_length_size=config.length_size,
        nonref_check=_h264_nonref,
        description=f"H.264 profile {config.profile_idc} level {config.level_idc}",
    )


@register_codec("V_MPEGH/ISO/HEVC")
def _hevc(track: TrackInfo) -> CodecSetup:
    try:
        config = parse_hvcc(track.codec_private)
    except BitstreamError as exc:
        raise DecodeError(f"track {track.number}: bad hvcC CodecPrivate: {exc}") from exc
    # A sub-layer non-reference picture may still be referenced from a higher temporal
    # sub-layer, so dropping one is only safe in a single-layer stream.
    single_layer = config.num_temporal_layers == 1
    return CodecSetup(
        "hevc",
        "video",
        extradata=track.codec_private,
        nal_length_size=config.length_size,
        nonref_check=_h265_nonref if single_layer else None,
        description=f"H.265 profile {config.general_profile_idc}",
    )


@register_codec("V_MJPEG")
def _mjpeg(track: TrackInfo) -> CodecSetup:
    return CodecSetup("mjpeg", "video", intra_only=True, description="MJPEG")


# BITMAPINFOHEADER biCompression FOURCC -> (FFmpeg decoder, intra-only). Only codecs whose
# VFW framing is one picture per frame with no CodecPrivate needs beyond the header.
_VFW_FOURCCS: Final[dict[bytes, tuple[str, bool]]] = {
    b"MJPG": ("mjpeg", True),
    b"mjpg": ("mjpeg", True),
    b"AVRn": ("mjpeg", True),
    b"JPEG": ("mjpeg", True),
    b"jpeg": ("mjpeg", True),
}
_BITMAPINFOHEADER_SIZE: Final = 40


@register_codec("V_MS/VFW/FOURCC")
def _vfw(track: TrackInfo) -> CodecSetup:
    private = track.codec_private
    if len(private) < _BITMAPINFOHEADER_SIZE:
        raise DecodeError(
            f"track {track.number}: V_MS/VFW/FOURCC CodecPrivate has {len(private)} bytes, "
            f"a BITMAPINFOHEADER needs {_BITMAPINFOHEADER_SIZE}"
        )
    # BITMAPINFOHEADER: biSize, biWidth, biHeight, biPlanes, biBitCount, biCompression...
    size, width, height = struct.unpack_from("<Iii", private, 0)
    fourcc = bytes(private[16:20])
    known = _VFW_FOURCCS.get(fourcc)
    if known is None:
        raise DecodeError(
            f"track {track.number}: V_MS/VFW/FOURCC with FOURCC {fourcc!r} is not supported "
            f"(supported: {', '.join(sorted(f.decode() for f in _VFW_FOURCCS))})"
        )
    decoder, intra = known
    extra = bytes(private[max(size, _BITMAPINFOHEADER_SIZE) :])
    return CodecSetup(
        decoder,
        "video",
        extradata=extra or None,
        intra_only=intra,
        description=f"VFW {fourcc.decode()} {width}x{abs(height)}",
    )


@register_codec("A_AAC")
def _aac(track: TrackInfo) -> CodecSetup:
    # CodecPrivate is the AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1), FFmpeg's extradata.
    return CodecSetup(
        "aac",
        "audio",
        extradata=track.codec_private or None,
        sample_rate=int(track.sampling_frequency) if track.sampling_frequency else None,
        channels=track.channels,
        description="AAC",
    )


# WAVEFORMATEX (wFormatTag, wBitsPerSample) -> FFmpeg decoder; None: any sample size.
_ACM_FORMATS: Final[dict[tuple[int, int | None], str]] = {
    (0x0001, 8): "pcm_u8",
    (0x0001, 16): "pcm_s16le",
    (0x0001, 24): "pcm_s24le",
    (0x0001, 32): "pcm_s32le",
    (0x0003, 32): "pcm_f32le",
    (0x0003, 64): "pcm_f64le",
    (0x0006, None): "pcm_alaw",  # G.711 A-law
    (0x0007, None): "pcm_mulaw",  # G.711 mu-law
}
_WAVEFORMATEX_SIZE: Final = 16  # without cbSize, as WAVEFORMAT/PCMWAVEFORMAT


@register_codec("A_MS/ACM")
def _acm(track: TrackInfo) -> CodecSetup:
    private = track.codec_private
    if len(private) < _WAVEFORMATEX_SIZE:
        raise DecodeError(
            f"track {track.number}: A_MS/ACM CodecPrivate has {len(private)} bytes, "
            f"a WAVEFORMATEX needs at least {_WAVEFORMATEX_SIZE}"
        )
    tag, channels, rate, _avg_bytes, _align, bits = struct.unpack_from("<HHIIHH", private, 0)
    decoder = _ACM_FORMATS.get((tag, bits)) or _ACM_FORMATS.get((tag, None))
    if decoder is None:
        raise DecodeError(
            f"track {track.number}: A_MS/ACM wFormatTag {tag:#06x} with {bits} bits per "
            "sample is not supported (PCM, IEEE float, G.711 A-law 0x0006, mu-law 0x0007)"
        )
    if channels == 0 or rate == 0:
        raise DecodeError(f"track {track.number}: WAVEFORMATEX says {channels} ch, {rate} Hz")
    return CodecSetup(
        decoder,
        "audio",
        sample_rate=rate,
        channels=channels,
        description=f"{decoder} {channels} ch {rate} Hz",
    )


def _open_context(setup: CodecSetup, track: TrackInfo, threads: int) -> av.CodecContext:
    try:
        ctx = av.CodecContext.create(setup.decoder, "r")
        if setup.extradata:
            ctx.extradata = setup.extradata
        if isinstance(ctx, VideoCodecContext):
            ctx.thread_type = "AUTO"
            ctx.thread_count = threads
        elif isinstance(ctx, AudioCodecContext):
            if setup.sample_rate:
                ctx.sample_rate = setup.sample_rate
            if setup.channels:
                ctx.layout = f"{setup.channels}c"
        ctx.open()
    except (av.error.FFmpegError, ValueError) as exc:
        raise DecodeError(
            f"track {track.number}: cannot open the {setup.decoder} decoder "
            f"({track.codec_id}): {exc}"
        ) from exc
    return ctx


def _packet(data: memoryview, pts: int) -> av.Packet[Any]:
    # av_new_packet() allocates the AV_INPUT_BUFFER_PADDING_SIZE zero bytes FFmpeg may
    # read past the end; one copy of the payload into it.
    packet: av.Packet[Any] = av.Packet(len(data))
    memoryview(packet)[:] = data
    packet.pts = pts
    return packet


# --- fragment bookkeeping -----------------------------------------------------------------
class DuplicateFilter:
    """Recognises a fragment that repeats one of the last ``window`` fragments.

    A repeat has the same producer timestamp (or cluster timecode when there is none),
    the same frame count and the same hash over every frame's track, timestamp, flags
    and payload. A producer that re-sends after a reconnect, or a consumer that resumes
    from an older continuation token, produces such repeats.
    """

    def __init__(self, window: int = 4) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._recent: deque[tuple[object, ...]] = deque(maxlen=window)

    @staticmethod
    def key(fragment: Fragment) -> tuple[object, ...]:
        digest = hashlib.blake2b(digest_size=16)
        for frame in fragment.frames:
            digest.update(
                struct.pack("<Hq?I", frame.track_number, frame.timestamp_ns, frame.keyframe,
                            len(frame.data))
            )  # fmt: skip
            digest.update(frame.data)
        return (
            fragment.producer_timestamp,
            fragment.cluster_timecode,
            len(fragment.frames),
            digest.digest(),
        )

    def seen(self, fragment: Fragment) -> bool:
        """True when ``fragment`` repeats a recent one; otherwise remember it."""
        if not fragment.frames:  # tag-only documents (errors, end markers) are never dups
            return False
        key = self.key(fragment)
        if key in self._recent:
            return True
        self._recent.append(key)
        return False


class FrameSampler:
    """Keeps one frame per ``interval_ns`` on a time grid that starts at the first frame.

    A frame is kept when it is the first to arrive in a grid slot not yet taken, so a
    10 s stream sampled at 1 fps gives 10 frames whatever its frame rate, and frames
    that arrive out of presentation order (B-frames come after the later picture they
    depend on) still fill their own slots. Timestamps may arrive up to ``tolerance_ns``
    early (MKV rounds them to the TimecodeScale). A jump back in time of more than a
    slot and a second (a producer restart, non-increasing timecodes) starts a new grid.
    """

    _MAX_SLOTS: Final = 256  # slots remembered; B-frame reordering reaches back a few

    def __init__(self, interval_ns: int, *, tolerance_ns: int = _TIMESTAMP_TOLERANCE_NS) -> None:
        if interval_ns <= 0:
            raise ValueError("the sampling interval must be positive")
        self.interval_ns = interval_ns
        self.tolerance_ns = min(tolerance_ns, interval_ns // 2)
        self._origin: int | None = None
        self._latest = 0
        self._taken: set[int] = set()

    @classmethod
    def every(cls, seconds: float) -> FrameSampler:
        """One frame every ``seconds`` seconds."""
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"interval must be a positive number of seconds, not {seconds}")
        return cls(max(1, round(seconds * 1e9)))

    @classmethod
    def per_second(cls, fps: float) -> FrameSampler:
        """At most ``fps`` frames per second of video."""
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, not {fps}")
        return cls(max(1, round(1e9 / fps)))

    def reset(self) -> None:
        self._origin = None
        self._taken.clear()

    def keep(self, timestamp_ns: int) -> bool:
        """Whether to keep the frame at ``timestamp_ns`` (and take its slot if so)."""
        if self._origin is None or timestamp_ns < self._latest - max(
            self.interval_ns, 1_000_000_000
        ):
            self._origin = timestamp_ns
            self._latest = timestamp_ns
            self._taken.clear()
        self._latest = max(self._latest, timestamp_ns)
        slot = (timestamp_ns - self._origin + self.tolerance_ns) // self.interval_ns
        if slot in self._taken:
            return False
        self._taken.add(slot)
        if len(self._taken) > self._MAX_SLOTS:
            self._taken = {s for s in self._taken if s > slot - self._MAX_SLOTS // 2}
        return True


@dataclass(slots=True)
class DecodeStats:
    """Counters of a decoder's work, for logs and tests."""

    fragments: int = 0
    duplicate_fragments: int = 0
    packets_sent: int = 0
    packets_skipped: int = 0  # never sent: keyframes_only, or not sampled and droppable
    packets_before_keyframe: int = 0  # never sent: no key frame since the decoder (re)started
    decode_errors: int = 0  # packets the decoder rejected
    frames_decoded: int = 0  # pictures out of the decoder
    frames_converted: int = 0  # returned as DecodedFrame
    frames_not_sampled: int = 0  # decoded (others depend on them) but not converted
    corrupt_frames: int = 0  # flagged corrupt by the decoder, skipped
    packets_without_frame: int = 0  # sent, no picture came back (rejected or dropped)
    frames_unmatched: int = 0  # pictures whose pts matches no packet sent (never expected)
    decoder_opens: int = 0
    codec_changes: int = 0
    iterations_abandoned: int = 0  # ended early: the rest of that fragment skipped
    audio_samples: int = 0
    by_codec: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _FragmentContext:
    fragment_number: str | None
    producer_timestamp: dt.datetime | None
    server_timestamp: dt.datetime | None
    offset_ns: int  # MKV timestamp + offset = absolute timestamp

    @classmethod
    def of(cls, fragment: Fragment) -> _FragmentContext:
        producer = fragment.producer_timestamp
        offset = 0
        if producer is not None and fragment.cluster_timecode is not None:
            producer_ns = (producer - _EPOCH) // dt.timedelta(microseconds=1) * 1000
            offset = producer_ns - fragment.cluster_timecode * fragment.timecode_scale_ns
        return cls(fragment.fragment_number, producer, fragment.server_timestamp, offset)


@dataclass(frozen=True, slots=True)
class _Pending:
    context: _FragmentContext
    track_number: int
    mkv_timestamp_ns: int
    keyframe: bool
    index: int
    keep: bool


def _select_track(fragment: Fragment, number: int | None, track_type: int) -> TrackInfo | None:
    if number is not None:
        return fragment.track(number)
    return next((t for t in fragment.tracks if t.track_type == track_type), None)


# --- video -----------------------------------------------------------------------------------
class FragmentDecoder:
    """Decodes the video frames of fragments into :class:`DecodedFrame` objects.

    ``format``: ``bgr24`` (OpenCV order, the default), ``rgb24`` or ``gray`` (a zero-copy
    view of the luma plane when no resize is asked; see :class:`DecodedFrame`).
    ``width``/``height``: resize in swscale while converting (either alone keeps the
    other at the frame's size). ``fit=(W, H)`` (or an int for a square) instead: scale
    each frame, keeping its aspect ratio, to the largest size inside W x H
    (:func:`~kvs_toolkit.consumer.frames.fit_size`: the inner picture of a letterbox;
    it follows resolution changes), so ``FrameBatcher(size=(W, H))`` only pads:
    ``FragmentDecoder(fit=batcher.size)``. Either way each frame's
    :attr:`DecodedFrame.source_size` is the decoded picture's size. ``track``: the
    track number to decode (default: the first video track of each fragment).

    Sampling (see the module docstring): ``keyframes_only``, ``fps`` or ``every``
    (seconds), and ``skip_nonref`` (allow leaving out non-reference pictures that the
    sampler does not want; on by default).

    ``flush_each_fragment`` (default True) drains the decoder at the end of every
    fragment, so all of a fragment's frames come out before :meth:`iter_decode` ends
    (and in the list :meth:`decode` returns), which is what a live consumer wants (the
    next fragment can be seconds away). KVS fragments start on a key frame, so nothing
    is lost. With False, frames still inside a threaded decoder come out with the next
    fragment, and :meth:`flush` returns the rest at the end.

    ``drop_duplicates`` (default True): a fragment that repeats one of the last
    fragments is dropped and counted in ``stats.duplicate_fragments``.

    ``threads``: FFmpeg decoder threads (0: one per core, frame and slice threading).
    ``convert_threads``: swscale threads per conversion, 1 by default: the decoder's
    frame threads already keep the other cores busy decoding ahead while a frame is
    converted, and at 720p one swscale thread measured faster than automatic threading
    even alone on a 2-core machine. 0 lets swscale choose (large frames, many cores).
    """

    def __init__(
        self,
        *,
        format: PixelFormat = "bgr24",
        width: int | None = None,
        height: int | None = None,
        fit: int | tuple[int, int] | None = None,
        interpolation: str | None = None,
        keyframes_only: bool = False,
        fps: float | None = None,
        every: float | None = None,
        skip_nonref: bool = True,
        track: int | None = None,
        drop_duplicates: bool = True,
        flush_each_fragment: bool = True,
        threads: int = 0,
        convert_threads: int = 1,
    ) -> None:
        if format not in PIXEL_FORMATS:
            raise ValueError(f"format must be one of {sorted(PIXEL_FORMATS)}, not {format!r}")
        if fps is not None and every is not None:
            raise ValueError("give fps or every, not both")
        for name, value in (("width", width), ("height", height)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if fit is not None:
            if width is not None or height is not None:
                raise ValueError("give fit or width/height, not both")
            fit_box = (fit, fit) if isinstance(fit, int) else tuple(fit)
            if len(fit_box) != 2 or min(fit_box) <= 0:
                raise ValueError(f"fit must be a positive (width, height), not {fit}")
        self.fit: tuple[int, int] | None = None if fit is None else (fit_box[0], fit_box[1])
        self.format: PixelFormat = format
        self.width = width
        self.height = height
        self.interpolation = interpolation
        self.keyframes_only = keyframes_only
        self.skip_nonref = skip_nonref
        self.track = track
        self.flush_each_fragment = flush_each_fragment
        self.threads = threads
        self.convert_threads = convert_threads
        self._sampler: FrameSampler | None = None
        if fps is not None:
            self._sampler = FrameSampler.per_second(fps)
        elif every is not None:
            self._sampler = FrameSampler.every(every)
        self._duplicates = DuplicateFilter() if drop_duplicates else None
        self._reformatter = VideoReformatter()
        self._ctx: VideoCodecContext | None = None
        self._setup: CodecSetup | None = None
        self._codec_key: tuple[str, bytes] | None = None
        self._pending: dict[int, _Pending] = {}
        self._next_pts = 0
        self._need_keyframe = True
        self._problems = 0
        # The iteration (a generator of _guarded) allowed to use the decoder; None: none.
        self._active: object | None = None
        self.stats = DecodeStats()

    # --- public -------------------------------------------------------------------------
    @property
    def codec(self) -> CodecSetup | None:
        """The setup of the decoder currently open (None before the first frame)."""
        return self._setup

    def decode(self, fragment: Fragment) -> list[DecodedFrame]:
        """Decode one fragment; return its frames (plus any a previous call left inside).

        The frames of :meth:`iter_decode`, all at once: prefer iterating that when the
        frames are handled one by one (a 2 s 1080p30 fragment in BGR is 373 MB).
        """
        return list(self.iter_decode(fragment))

    def iter_decode(self, fragment: Fragment) -> Iterator[DecodedFrame]:
        """Decode one fragment, yielding each frame as soon as FFmpeg returns it (plus any
        a previous call left inside): the same frames, in the same order, with the same
        stats and warnings as :meth:`decode`, but only a few held at a time.

        Lazy: nothing happens (not even the duplicate check or ``stats.fragments``)
        until the first frame is asked for, so a :class:`DecodeError` for an
        unsupported codec is raised by that first ``next()``.

        One iteration at a time. If it ends early - the caller breaks out or drops the
        iterator, an exception is raised inside it or by the caller's code while it is
        suspended, or another :meth:`iter_decode`, :meth:`decode`, :meth:`flush` or
        :meth:`close` on this decoder starts - the rest of the fragment is skipped (its
        packets are never sent), the frames the decoder still holds are discarded
        (counted in ``stats.packets_without_frame``) and ``stats.iterations_abandoned``
        counts it. The decoder then waits for a key frame, which the next KVS fragment
        starts with, so it decodes normally. A superseded iterator yields nothing more.
        The skipped fragment still counts as seen for duplicate dropping.
        """
        return self._guarded(self._fragment_frames(fragment))

    def decode_all(self, fragments: Iterable[Fragment]) -> Iterator[DecodedFrame]:
        """Decode a stream of fragments, then flush: every frame, in order, each as soon
        as it is decoded. One iteration, ending early as :meth:`iter_decode` does."""
        return self._guarded(self._stream_frames(fragments))

    def flush(self) -> list[DecodedFrame]:
        """Drain the decoder: the frames it still holds (end of stream)."""
        return list(self._guarded(self._drain()))

    def close(self) -> None:
        """Release the decoder (frames still inside are discarded; an unfinished
        :meth:`iter_decode` yields nothing more)."""
        self._active = None
        self._ctx = None
        self._setup = None
        self._codec_key = None
        self._pending.clear()

    def __enter__(self) -> FragmentDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------
    def _guarded(self, frames: Generator[DecodedFrame, None, None]) -> Iterator[DecodedFrame]:
        """Run ``frames`` as the decoder's one active iteration (see :meth:`iter_decode`)."""
        self._abandon_active()
        token = object()
        self._active = token
        finished = False
        try:
            for frame in frames:
                yield frame
                if self._active is not token:
                    return  # superseded while suspended: the state is another's now
            finished = True
        finally:
            frames.close()
            if self._active is token:
                self._active = None
                if not finished:
                    self._discard_held()

    def _abandon_active(self) -> None:
        if self._active is not None:
            self._active = None
            self._discard_held()

    def _discard_held(self) -> None:
        # An iteration ended mid-fragment: the packets after it are never sent, so what
        # the decoder holds would come out with the next fragment's frames, and a frame
        # it needs as a reference may be missing. Start clean from the next key frame.
        self.stats.iterations_abandoned += 1
        self.stats.packets_without_frame += len(self._pending)
        self._pending.clear()
        self._need_keyframe = True
        if self._ctx is not None:
            self._ctx.flush_buffers()
        log.debug("iteration ended early: the rest of the fragment and held frames dropped")

    def _fragment_frames(self, fragment: Fragment) -> Generator[DecodedFrame, None, None]:
        self.stats.fragments += 1
        if self._duplicates is not None and self._duplicates.seen(fragment):
            self.stats.duplicate_fragments += 1
            log.info(
                "dropped duplicate fragment %s (producer timestamp %s, %d frames)",
                fragment.fragment_number,
                fragment.producer_timestamp,
                len(fragment.frames),
            )
            return
        track = _select_track(fragment, self.track, TRACK_TYPE_VIDEO)
        if track is None or not fragment.frames:
            return
        ctx, setup = yield from self._decoder_for(track)
        context = _FragmentContext.of(fragment)
        index = 0
        for frame in fragment.frames:
            if frame.track_number != track.number:
                continue
            keep = self._admit(frame, setup, context)
            if keep is not None:
                pending = _Pending(
                    context, track.number, frame.timestamp_ns, frame.keyframe, index, keep
                )
                yield from self._send(ctx, frame, pending)
            index += 1
        if self.flush_each_fragment:
            yield from self._drain()

    def _stream_frames(self, fragments: Iterable[Fragment]) -> Generator[DecodedFrame, None, None]:
        for fragment in fragments:
            yield from self._fragment_frames(fragment)
        yield from self._drain()

    def _decoder_for(
        self, track: TrackInfo
    ) -> Generator[DecodedFrame, None, tuple[VideoCodecContext, CodecSetup]]:
        key = (track.codec_id, track.codec_private)
        if self._ctx is not None and self._setup is not None and key == self._codec_key:
            return self._ctx, self._setup
        setup = codec_setup(track)
        if setup.media != "video":
            raise DecodeError(f"track {track.number} ({track.codec_id}) is not a video track")
        if self._ctx is not None:
            # CodecPrivate changed mid-stream (new resolution, new encoder settings): the
            # frames still inside the old decoder belong to the old configuration.
            yield from self._drain()
            self.stats.codec_changes += 1
            log.info("track %d: CodecPrivate changed, re-opening the decoder", track.number)
        ctx = _open_context(setup, track, self.threads)
        if not isinstance(ctx, VideoCodecContext):  # pragma: no cover - registry guarantees
            raise DecodeError(f"{setup.decoder} is not a video decoder")
        if self.keyframes_only:
            ctx.skip_frame = "NONKEY"
        self._ctx, self._setup, self._codec_key = ctx, setup, key
        self._need_keyframe = True
        self._reformatter = VideoReformatter()
        self.stats.decoder_opens += 1
        self.stats.by_codec[setup.decoder] = self.stats.by_codec.get(setup.decoder, 0) + 1
        log.debug("track %d: opened %s (%s)", track.number, setup.decoder, setup.description)
        return ctx, setup

    def _admit(self, frame: Frame, setup: CodecSetup, context: _FragmentContext) -> bool | None:
        """None: do not send the packet. Otherwise send it, and convert it if True."""
        if self.keyframes_only and not frame.keyframe:
            self.stats.packets_skipped += 1
            return None
        if self._need_keyframe and not setup.intra_only:
            if not frame.keyframe:
                self.stats.packets_before_keyframe += 1
                return None
            self._need_keyframe = False
        if self._sampler is None or self._sampler.keep(frame.timestamp_ns + context.offset_ns):
            return True
        if setup.intra_only or (self.skip_nonref and self._is_nonref(frame, setup)):
            self.stats.packets_skipped += 1
            return None
        return False

    @staticmethod
    def _is_nonref(frame: Frame, setup: CodecSetup) -> bool:
        if setup.nonref_check is None or setup.nal_length_size is None:
            return False
        try:
            return setup.nonref_check(frame.data, setup.nal_length_size)
        except BitstreamError:
            return False  # let the decoder judge a damaged packet

    def _send(
        self, ctx: VideoCodecContext, frame: Frame, pending: _Pending
    ) -> Iterator[DecodedFrame]:
        pts = self._next_pts
        self._next_pts += 1
        packet = _packet(frame.data, pts)
        self._pending[pts] = pending
        if len(self._pending) > _MAX_PENDING:
            del self._pending[next(iter(self._pending))]
            self.stats.packets_without_frame += 1
        self.stats.packets_sent += 1
        try:
            decoded = ctx.decode(packet)
        except av.error.FFmpegError as exc:
            # With frame threading the error may belong to an earlier packet of the
            # pipeline; either way that picture is lost and the stream goes on.
            self.stats.decode_errors += 1
            self._warn(
                "fragment %s frame %d: decoder rejected the data, skipped: %s",
                pending.context.fragment_number,
                pending.index,
                exc,
            )
            return
        yield from self._emit(decoded)

    def _warn(self, message: str, *args: object) -> None:
        self._problems += 1
        count = self._problems
        if count <= _WARN_FIRST or count % _WARN_EVERY == 0:
            log.warning(message + " [problem %d of this decoder]", *args, count)
        else:
            log.debug(message, *args)

    def _drain(self) -> Generator[DecodedFrame, None, None]:
        ctx = self._ctx
        if ctx is None:
            return
        try:
            decoded = ctx.decode(None)
        except av.error.FFmpegError as exc:
            self.stats.decode_errors += 1
            log.warning("decoder failed while draining: %s", exc)
            decoded = []
        yield from self._emit(decoded)
        ctx.flush_buffers()
        self.stats.packets_without_frame += len(self._pending)
        self._pending.clear()
        self._need_keyframe = True

    def _emit(self, decoded: list[VideoFrame]) -> Iterator[DecodedFrame]:
        for picture in decoded:
            self.stats.frames_decoded += 1
            pending = self._pending.pop(picture.pts, None) if picture.pts is not None else None
            if pending is None:
                self.stats.frames_unmatched += 1  # a frame we cannot place: skip it
                log.debug("decoder returned a frame with unknown pts %s", picture.pts)
                continue
            if picture.is_corrupt:
                self.stats.corrupt_frames += 1
                self._warn(
                    "fragment %s frame %d: decoded with errors (corrupt data), skipped",
                    pending.context.fragment_number,
                    pending.index,
                )
                continue
            if not pending.keep:
                self.stats.frames_not_sampled += 1
                continue
            width, height = self.width, self.height
            if self.fit is not None:
                width, height = fit_size(picture.width, picture.height, self.fit)
            image, shared = frame_to_ndarray(
                picture,
                self.format,
                self._reformatter,
                width=width,
                height=height,
                interpolation=self.interpolation,
                threads=self.convert_threads,
            )
            context = pending.context
            self.stats.frames_converted += 1
            yield DecodedFrame(
                image=image,
                format=self.format,
                track_number=pending.track_number,
                fragment_number=context.fragment_number,
                producer_timestamp=context.producer_timestamp,
                server_timestamp=context.server_timestamp,
                timestamp_ns=pending.mkv_timestamp_ns + context.offset_ns,
                mkv_timestamp_ns=pending.mkv_timestamp_ns,
                keyframe=pending.keyframe,
                index=pending.index,
                shares_decoder_memory=shared,
                decoded_size=(
                    None
                    if image.shape[:2] == (picture.height, picture.width)
                    else (picture.width, picture.height)
                ),
            )


# --- audio -----------------------------------------------------------------------------------
_INT_SCALE: Final = {"i2": 1 / 32768.0, "i4": 1 / 2147483648.0}


def audio_frame_to_float(frame: AudioFrame) -> Samples:
    """A decoded audio frame as float32 ``(channels, samples)``, integer formats scaled
    to [-1, 1). Vectorised; one copy (the conversion to float)."""
    raw = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        # Packed: one plane of interleaved samples, (1, samples * channels).
        raw = raw.reshape(-1, channels).T
    kind = raw.dtype.str[1:]
    samples: Samples
    if kind in _INT_SCALE:
        samples = np.multiply(raw, np.float32(_INT_SCALE[kind]), dtype=np.float32)
    elif kind == "u1":
        samples = np.subtract(raw, np.float32(128), dtype=np.float32) * np.float32(1 / 128)
    else:
        samples = raw.astype(np.float32, copy=False)
    return samples


@dataclass(slots=True)
class _AudioTrack:
    ctx: AudioCodecContext
    setup: CodecSetup
    key: tuple[str, bytes]


class AudioDecoder:
    """Decodes the audio tracks of fragments to float32 PCM, one chunk per track per
    fragment (see :class:`~kvs_toolkit.consumer.DecodedAudio`).

    AAC (``A_AAC``, AudioSpecificConfig CodecPrivate) and ``A_MS/ACM`` (WAVEFORMATEX:
    G.711 A-law / mu-law with FFmpeg's ``pcm_alaw`` / ``pcm_mulaw``, integer and float
    PCM). ``track`` picks one track number; by default every audio track is decoded.
    The decoder is not flushed between fragments: AAC frames overlap, and a reset would
    click at every fragment boundary.
    """

    def __init__(self, *, track: int | None = None, drop_duplicates: bool = True) -> None:
        self.track = track
        self._duplicates = DuplicateFilter() if drop_duplicates else None
        self._tracks: dict[int, _AudioTrack] = {}
        self.stats = DecodeStats()

    def decode(self, fragment: Fragment) -> list[DecodedAudio]:
        """Decode one fragment: one :class:`DecodedAudio` per audio track with samples."""
        self.stats.fragments += 1
        if self._duplicates is not None and self._duplicates.seen(fragment):
            self.stats.duplicate_fragments += 1
            log.info("dropped duplicate fragment %s", fragment.fragment_number)
            return []
        if self.track is not None:
            wanted = [t for t in fragment.tracks if t.number == self.track]
        else:
            wanted = [t for t in fragment.tracks if t.track_type == TRACK_TYPE_AUDIO]
        context = _FragmentContext.of(fragment)
        out: list[DecodedAudio] = []
        for track in wanted:
            frames = [f for f in fragment.frames if f.track_number == track.number]
            if not frames:
                continue
            state = self._state_for(track)
            chunks = [c for frame in frames for c in self._decode_packet(state, frame, fragment)]
            if chunks:
                samples = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
                self.stats.audio_samples += int(samples.shape[1])
                out.append(
                    DecodedAudio(
                        samples,
                        state.ctx.sample_rate,
                        track.number,
                        context.fragment_number,
                        context.producer_timestamp,
                        context.server_timestamp,
                        frames[0].timestamp_ns + context.offset_ns,
                    )
                )
        return out

    def flush(self) -> list[DecodedAudio]:
        """Drain every track's decoder (end of stream)."""
        out: list[DecodedAudio] = []
        for number, state in self._tracks.items():
            try:
                chunks = [audio_frame_to_float(f) for f in state.ctx.decode(None)]
            except av.error.FFmpegError as exc:
                log.warning("track %d: audio decoder failed while draining: %s", number, exc)
                continue
            state.ctx.flush_buffers()
            if chunks:
                samples = np.concatenate(chunks, axis=1)
                self.stats.audio_samples += int(samples.shape[1])
                out.append(DecodedAudio(samples, state.ctx.sample_rate, number))
        return out

    def _state_for(self, track: TrackInfo) -> _AudioTrack:
        key = (track.codec_id, track.codec_private)
        state = self._tracks.get(track.number)
        if state is not None and state.key == key:
            return state
        setup = codec_setup(track)
        if setup.media != "audio":
            raise DecodeError(f"track {track.number} ({track.codec_id}) is not an audio track")
        if state is not None:
            self.stats.codec_changes += 1
            log.info("track %d: CodecPrivate changed, re-opening the decoder", track.number)
        ctx = _open_context(setup, track, threads=1)
        if not isinstance(ctx, AudioCodecContext):  # pragma: no cover - registry guarantees
            raise DecodeError(f"{setup.decoder} is not an audio decoder")
        state = _AudioTrack(ctx, setup, key)
        self._tracks[track.number] = state
        self.stats.decoder_opens += 1
        self.stats.by_codec[setup.decoder] = self.stats.by_codec.get(setup.decoder, 0) + 1
        return state

    def _decode_packet(self, state: _AudioTrack, frame: Frame, fragment: Fragment) -> list[Samples]:
        packet = _packet(frame.data, frame.timestamp_ns)
        self.stats.packets_sent += 1
        try:
            decoded = state.ctx.decode(packet)
        except av.error.FFmpegError as exc:
            self.stats.decode_errors += 1
            log.warning(
                "fragment %s track %d: audio decoder rejected a frame, skipped: %s",
                fragment.fragment_number,
                frame.track_number,
                exc,
            )
            return []
        self.stats.frames_decoded += len(decoded)
        return [audio_frame_to_float(f) for f in decoded]
