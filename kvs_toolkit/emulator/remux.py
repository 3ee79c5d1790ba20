"""Stored fragments remuxed with PyAV for HLS, DASH, GetClip and GetImages (no re-encoding).

Every function here is blocking CPU work: call it in a worker thread
(``asyncio.to_thread``). Input is one or more stored payloads (``Info + Tracks +
sized Cluster``, see :mod:`kvs_toolkit.emulator.media`); they become one in-memory MKV
document (EBML header, unknown-size Segment, the first payload's Info and Tracks, every
Cluster) that FFmpeg's matroska demuxer reads, and the packets go to FFmpeg's muxers
unchanged.

Timing. The Cluster holds absolute producer timestamps in 1 ms units. Every output is
timed relative to an *origin* (a producer timestamp in ms, the first fragment of a
playback session or of a clip), so consecutive segments of a session continue each
other's timeline exactly:

* fMP4 media segments (``moof + mdat``): FFmpeg's fragmenting mp4 muxer always starts
  ``tfdt`` (baseMediaDecodeTime) at 0 for a new output, so after muxing the ``tfdt`` of
  each ``traf`` is rewritten in place with the track's first decode time since the
  origin, in the track's ``mdhd`` timescale (90 kHz video, the sample rate for audio).
  Players place each segment on the session timeline by that value (ISO/IEC 14496-12
  8.8.12).
* MPEG-TS segments: packets carry PTS/DTS since the origin in 90 kHz, so segments
  continue each other without a discontinuity.
* GetClip: one non-fragmented MP4 (``moov`` first), timed from the clip's first fragment.

G.711 audio is left out of mp4 outputs: FFmpeg's mp4 muxer cannot carry it.

B-frames: Matroska SimpleBlocks carry presentation times only; decode times are taken
equal to them, which is right for the streams KVS producers send (the service's
guidance is no B-frames). A stream with B-frames makes FFmpeg's muxers refuse the
packets (decode times out of order): the caller gets a
:class:`~kvs_toolkit.errors.DecodeError`. GetImages still decodes such streams.
"""

from __future__ import annotations

import bisect
import io
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import av
import av.error
from av.video.frame import VideoFrame

from kvs_toolkit.emulator.media import split_payload
from kvs_toolkit.errors import DecodeError, MkvError
from kvs_toolkit.mkv import ids
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, encode_id
from kvs_toolkit.mkv.writer import ebml_header

__all__ = [
    "ByteLRU",
    "DecodedSample",
    "decode_nearest_frames",
    "fmp4_init_segment",
    "fmp4_media_segment",
    "iter_boxes",
    "matroska_document",
    "mp4_clip",
    "mpegts_segment",
]

log = logging.getLogger(__name__)

_SEGMENT_START: Final = encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES
_EBML_HEADER: Final = ebml_header()
_VIDEO_TIME_BASE: Final = Fraction(1, 90_000)
_MS: Final = Fraction(1, 1000)
# frag_custom: one moof per output (FFmpeg cuts only when flushed, and closing flushes),
# so a fragment with several key frames still becomes one media segment.
_FMP4_FLAGS: Final = "frag_custom+empty_moov+default_base_moof+skip_trailer"
_SEGMENT_BOXES: Final = frozenset({b"moof", b"mdat"})
_INIT_BOXES: Final = frozenset({b"ftyp", b"moov"})
_NOT_IN_MP4: Final = frozenset({"pcm_alaw", "pcm_mulaw"})


# The stored Tracks already give every codec parameter: without these, FFmpeg decodes
# the key frame while probing, which costs more than the remux itself (about 7 ms of a
# 2 s 1080p fragment).
_NO_PROBING: Final = {"probesize": "32", "analyzeduration": "0"}


def matroska_document(payloads: Sequence[bytes]) -> bytes:
    """One MKV document of stored payloads: the first one's Info and Tracks, every Cluster.

    The payloads must share their Tracks (the caller checks).
    """
    if not payloads:
        raise ValueError("no payloads")
    try:
        head, first_cluster = split_payload(payloads[0])
        clusters = [first_cluster] + [split_payload(p)[1] for p in payloads[1:]]
    except MkvError as exc:
        raise DecodeError(f"a stored fragment is corrupt: {exc}") from exc
    return b"".join((_EBML_HEADER, _SEGMENT_START, head, *clusters))


# --- ISO BMFF boxes -------------------------------------------------------------------------


def iter_boxes(
    data: bytes | bytearray, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes, int, int, int]]:
    """``(type, box start, payload start, box end)`` of the boxes in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        if end - pos < 8:
            raise DecodeError(f"truncated ISO BMFF box header at byte {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                raise DecodeError(f"truncated ISO BMFF largesize at byte {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise DecodeError(f"ISO BMFF box {kind!r} at byte {pos} has a bad size {size}")
        yield kind, pos, pos + header, pos + size
        pos += size


def _children(
    data: bytes | bytearray, parent: tuple[bytes, int, int, int], kind: bytes
) -> list[tuple[bytes, int, int, int]]:
    return [box for box in iter_boxes(data, parent[2], parent[3]) if box[0] == kind]


def _track_timescales(data: bytes | bytearray) -> dict[int, int]:
    """track_ID -> mdhd timescale, from the moov of an FFmpeg mp4 output."""
    timescales: dict[int, int] = {}
    for moov in (b for b in iter_boxes(data) if b[0] == b"moov"):
        for trak in _children(data, moov, b"trak"):
            tkhd = _children(data, trak, b"tkhd")[0]
            version = data[tkhd[2]]
            # tkhd: version/flags, creation and modification times (4 or 8 bytes each)
            (track_id,) = struct.unpack_from(">I", data, tkhd[2] + (20 if version == 1 else 12))
            mdia = _children(data, trak, b"mdia")[0]
            mdhd = _children(data, mdia, b"mdhd")[0]
            version = data[mdhd[2]]
            (scale,) = struct.unpack_from(">I", data, mdhd[2] + (20 if version == 1 else 12))
            timescales[track_id] = scale
    return timescales


def _set_base_decode_times(data: bytearray, first_decode_ms: dict[int, Fraction]) -> None:
    """Rewrite each traf's tfdt with its track's first decode time since the origin."""
    timescales = _track_timescales(data)
    for moof in (b for b in iter_boxes(data) if b[0] == b"moof"):
        for traf in _children(data, moof, b"traf"):
            tfhd = _children(data, traf, b"tfhd")[0]
            (track_id,) = struct.unpack_from(">I", data, tfhd[2] + 4)
            start = first_decode_ms.get(track_id)
            if start is None:
                continue
            value = max(0, round(start * timescales[track_id] / 1000))
            for tfdt in _children(data, traf, b"tfdt"):
                if data[tfdt[2]] == 1:
                    struct.pack_into(">Q", data, tfdt[2] + 4, value)
                elif value < 1 << 32:
                    struct.pack_into(">I", data, tfdt[2] + 4, value)
                else:  # pragma: no cover - FFmpeg writes version 1
                    raise DecodeError("tfdt version 0 cannot hold the base media decode time")


def _moov_first(data: bytes) -> bytes:
    """Move ``moov`` in front of ``mdat`` (what FFmpeg's ``faststart`` does with a second
    pass over a file, which an in-memory output cannot have), shifting chunk offsets."""
    boxes = list(iter_boxes(data))
    moov = next((b for b in boxes if b[0] == b"moov"), None)
    mdat = next((b for b in boxes if b[0] == b"mdat"), None)
    if moov is None or mdat is None or moov[1] < mdat[1]:
        return data
    shift = moov[3] - moov[1]
    moved = bytearray(data[moov[1] : moov[3]])
    for trak in _children(moved, (b"moov", 0, 8, len(moved)), b"trak"):
        for mdia in _children(moved, trak, b"mdia"):
            for minf in _children(moved, mdia, b"minf"):
                for stbl in _children(moved, minf, b"stbl"):
                    for kind, _s, payload, _e in iter_boxes(moved, stbl[2], stbl[3]):
                        if kind not in (b"stco", b"co64"):
                            continue
                        (count,) = struct.unpack_from(">I", moved, payload + 4)
                        width = 4 if kind == b"stco" else 8
                        fmt = ">I" if width == 4 else ">Q"
                        for i in range(count):
                            at = payload + 8 + i * width
                            (offset,) = struct.unpack_from(fmt, moved, at)
                            if width == 4 and offset + shift >= 1 << 32:
                                raise DecodeError("the clip is too large for 32-bit chunk offsets")
                            struct.pack_into(fmt, moved, at, offset + shift)
    before = [data[b[1] : b[3]] for b in boxes if b[1] < mdat[1]]
    after = [data[b[1] : b[3]] for b in boxes if b[1] >= mdat[1] and b is not moov]
    return b"".join((*before, bytes(moved), *after))


def _keep_boxes(data: bytes | bytearray, kinds: frozenset[bytes]) -> bytes:
    return b"".join(bytes(data[s:e]) for kind, s, _p, e in iter_boxes(data) if kind in kinds)


# --- remuxing -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Output:
    stream: av.stream.Stream  # in the sink
    track_id: int
    pending: av.Packet[Any] | None = None  # the previous packet, held back to learn its duration
    pending_ms: Fraction | None = None  # its timestamp in ms
    first_decode_ms: Fraction | None = None
    last_duration_ms: Fraction = Fraction(0)


def _remux(
    document: bytes,
    container_format: str,
    *,
    origin_ms: int,
    options: dict[str, str] | None = None,
    stream_index: int | None = None,
) -> tuple[bytes, dict[int, Fraction]]:
    """Copy the audio/video packets of ``document`` into a new ``container_format`` output.

    ``stream_index``: only the track at that position in Tracks (FFmpeg's stream
    index; the matroska demuxer numbers streams in TrackEntry order); None for all.
    G.711 tracks are left out of mp4 outputs (FFmpeg's mp4 muxer has no G.711).
    Packets are timed in ms since ``origin_ms``. Returns the output and, per output
    track_ID (output stream index + 1, FFmpeg's mp4 numbering), the first decode time
    in ms.
    """
    sink_buffer = io.BytesIO()
    try:
        with (
            av.open(io.BytesIO(document), "r", format="matroska", options=_NO_PROBING) as source,
            av.open(sink_buffer, "w", format=container_format, options=options) as sink,
        ):
            outputs: dict[int, _Output] = {}
            for stream in source.streams:
                if stream.type not in ("video", "audio"):
                    continue
                if stream_index is not None and stream.index != stream_index:
                    continue
                if container_format == "mp4" and stream.codec_context.name in _NOT_IN_MP4:
                    log.info(
                        "track #%d (%s) left out of the mp4",
                        stream.index,
                        stream.codec_context.name,
                    )
                    continue
                out = sink.add_stream_from_template(stream)
                if stream.type == "video":
                    out.time_base = _VIDEO_TIME_BASE
                    if stream.codec_context.name == "hevc" and container_format == "mp4":
                        out.codec_tag = "hvc1"  # parameter sets in hvcC: what Apple needs
                else:
                    rate = stream.codec_context.sample_rate or 48_000
                    out.time_base = Fraction(1, rate)
                outputs[stream.index] = _Output(out, track_id=len(outputs) + 1)
            if not outputs:
                what = "audio or video" if stream_index is None else f"track #{stream_index}"
                raise DecodeError(f"the fragment has no {what} to put in {container_format}")
            for packet in source.demux(*(s for s in source.streams if s.index in outputs)):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's flush packets
                _push(sink, outputs[packet.stream.index], packet, origin_ms)
            for output in outputs.values():
                _push(sink, output, None, origin_ms)
            first = {
                o.track_id: o.first_decode_ms
                for o in outputs.values()
                if o.first_decode_ms is not None
            }
    except av.error.FFmpegError as exc:
        raise DecodeError(f"remuxing to {container_format} failed: {exc}") from exc
    return sink_buffer.getvalue(), first


def _push(
    sink: av.container.OutputContainer,
    output: _Output,
    packet: av.Packet[Any] | None,
    origin_ms: int,
) -> None:
    """Send the held-back packet (its duration known now) and hold ``packet``.

    ``packet`` must have a pts (None: flush the held one).
    """
    held, held_ms = output.pending, output.pending_ms
    if packet is None or packet.pts is None:
        output.pending, output.pending_ms = None, None
    else:
        output.pending = packet
        output.pending_ms = Fraction(packet.pts) * (packet.time_base or _MS) * 1000
    if held is None or held_ms is None:
        return
    if output.pending_ms is not None:
        duration = output.pending_ms - held_ms
    elif held.duration:
        duration = Fraction(held.duration) * (held.time_base or _MS) * 1000
    else:  # the last frame of a SimpleBlock cluster: as long as the one before it
        duration = output.last_duration_ms
    output.last_duration_ms = duration
    start = held_ms - origin_ms  # ms since the origin
    if output.first_decode_ms is None:
        output.first_decode_ms = start
    out_tb = output.stream.time_base or _VIDEO_TIME_BASE
    scale = _MS / out_tb
    held.pts = held.dts = round(start * scale)
    held.duration = max(0, round(duration * scale))
    held.time_base = out_tb
    held.stream = output.stream
    sink.mux(held)


def fmp4_init_segment(payload: bytes, *, stream_index: int | None = None) -> bytes:
    """The fMP4 initialization segment (``ftyp + moov``) for a fragment's tracks.

    ``stream_index`` limits it to one track (a DASH AdaptationSet, an HLS rendition):
    the one at that position in the fragment's Tracks.
    """
    data, _first = _remux(
        matroska_document([payload]),
        "mp4",
        origin_ms=0,
        options={"movflags": _FMP4_FLAGS},
        stream_index=stream_index,
    )
    return _keep_boxes(data, _INIT_BOXES)


def fmp4_media_segment(
    payload: bytes,
    *,
    origin_ms: int,
    sequence_number: int = 1,
    stream_index: int | None = None,
) -> bytes:
    """A fragment as one fMP4 media segment (``moof + mdat``) on the origin's timeline.

    ``sequence_number`` goes into ``mfhd`` (1 or more); ``stream_index`` limits the
    segment to one track, as for :func:`fmp4_init_segment`.
    """
    data, first = _remux(
        matroska_document([payload]),
        "mp4",
        origin_ms=origin_ms,
        options={"movflags": _FMP4_FLAGS, "fragment_index": str(max(1, sequence_number))},
        stream_index=stream_index,
    )
    patched = bytearray(data)
    _set_base_decode_times(patched, first)
    return _keep_boxes(patched, _SEGMENT_BOXES)


def mpegts_segment(payload: bytes, *, origin_ms: int) -> bytes:
    """A fragment as an MPEG-TS segment (PAT/PMT first) on the origin's timeline.

    FFmpeg converts AVCC/HVCC to Annex-B and adds ADTS headers to AAC by itself.
    """
    data, _first = _remux(matroska_document([payload]), "mpegts", origin_ms=origin_ms)
    return data


def mp4_clip(payloads: Sequence[bytes]) -> bytes:
    """Fragments as one playable MP4 file (``moov`` before ``mdat``), timed from the first."""
    document = matroska_document(payloads)
    origin = _first_timestamp_ms(document)
    data, _first = _remux(document, "mp4", origin_ms=origin)
    return _moov_first(data)


def _first_timestamp_ms(document: bytes) -> int:
    try:
        with av.open(io.BytesIO(document), "r", format="matroska", options=_NO_PROBING) as source:
            for packet in source.demux():
                if packet.pts is not None and packet.size:
                    return int(Fraction(packet.pts) * (packet.time_base or _MS) * 1000)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"cannot read the fragments: {exc}") from exc
    raise DecodeError("the fragments have no frames")


# --- decoding for GetImages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedSample:
    """The frame chosen for a sampling time: its timestamp (producer ms) and the frame."""

    timestamp_ms: int
    frame: VideoFrame


def decode_nearest_frames(payload: bytes, targets_ms: Sequence[int]) -> dict[int, DecodedSample]:
    """For each target time (producer ms), the decoded frame nearest to it in the fragment.

    Decoding starts at the fragment's key frame and stops after the last frame needed;
    frames nobody asked for are decoded (later frames depend on them) but not converted.
    Ties go to the earlier frame. Returns ``{target: DecodedSample}``; an empty dict when
    the fragment has no video.
    """
    if not targets_ms:
        return {}
    try:
        with av.open(io.BytesIO(matroska_document([payload])), "r", format="matroska") as source:
            if not source.streams.video:
                return {}
            stream = source.streams.video[0]
            packets = [p for p in source.demux(stream) if p.size and p.pts is not None]
            if not packets:
                return {}
            tb = stream.time_base or _MS
            times = sorted(int(Fraction(p.pts) * tb * 1000) for p in packets)
            wanted: dict[int, list[int]] = {}
            for target in targets_ms:
                wanted.setdefault(_nearest(times, target), []).append(target)
            last_needed = max(wanted)
            chosen: dict[int, DecodedSample] = {}

            def take(frames: Sequence[VideoFrame]) -> None:
                for frame in frames:
                    if frame.pts is not None:
                        ms = int(Fraction(frame.pts) * tb * 1000)
                        for target in wanted.get(ms, ()):
                            chosen[target] = DecodedSample(ms, frame)

            decoder = stream.codec_context
            for packet in packets:
                take(decoder.decode(packet))
                if int(Fraction(packet.pts) * tb * 1000) >= last_needed:
                    break  # every frame up to the last one needed has gone in
            take(decoder.decode(None))
            return chosen
    except av.error.FFmpegError as exc:
        raise DecodeError(f"decoding the fragment failed: {exc}") from exc


def _nearest(sorted_times: Sequence[int], target: int) -> int:
    i = bisect.bisect_left(sorted_times, target)
    if i == 0:
        return sorted_times[0]
    if i == len(sorted_times):
        return sorted_times[-1]
    before, after = sorted_times[i - 1], sorted_times[i]
    return before if target - before <= after - target else after


# --- cache ----------------------------------------------------------------------------------


class ByteLRU:
    """A thread-safe LRU of byte strings bounded by their total size.

    An item larger than a quarter of the bound is not kept (it would evict everything).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _key, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)
