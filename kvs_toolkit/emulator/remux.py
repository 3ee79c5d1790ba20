"""Stored fragments as HLS/DASH segments, GetClip MP4s and GetImages frames (no re-encoding).

Every function here is blocking CPU work: call it in a worker thread
(``asyncio.to_thread``). fMP4 (init and media segments) is written directly from the
stored payload by :mod:`.fmp4`; MPEG-TS segments and GetClip MP4s go through PyAV: the
payloads (``Info + Tracks + sized Cluster``, see :mod:`kvs_toolkit.emulator.media`)
become one in-memory MKV document (EBML header, unknown-size Segment, the first
payload's Info and Tracks, every Cluster) that FFmpeg's matroska demuxer reads, and the
packets go to FFmpeg's muxers unchanged (the TS muxer converts AVCC to Annex-B).

Timing. The Cluster holds absolute producer timestamps in 1 ms units. Every output is
timed relative to an *origin* (a producer timestamp in ms, the first fragment of a
playback session or of a clip), so consecutive segments of a session continue each
other's timeline exactly:

* fMP4 media segments (``moof + mdat``): ``tfdt`` is the track's first decode time
  since the origin in its ``mdhd`` timescale (90 kHz video, the sample rate for audio);
  players place each segment on the session timeline by it (ISO/IEC 14496-12 8.8.12).
* MPEG-TS segments: packets carry PTS/DTS since the origin in 90 kHz, so segments
  continue each other without a discontinuity.
* GetClip: one non-fragmented MP4 (``moov`` first), timed from the clip's first fragment.

B-frames: Matroska blocks carry presentation times only, in decode order. Decode times
are rebuilt from them (the i-th block decodes at the i-th smallest presentation time):
fMP4 gets composition offsets in ``trun`` (version 1 when negative), MPEG-TS and
GetClip get DTS moved back by the reordering delay (see :func:`_remux`).

G.711 audio is left out of mp4 outputs: FFmpeg's mp4 muxer cannot carry it.
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

from kvs_toolkit.emulator import fmp4
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


# --- remuxing -------------------------------------------------------------------------------


def _packet_ms(packet: av.Packet[Any], value: int) -> int:
    """``value`` (a pts or duration in the packet's time base) in whole ms."""
    tb = packet.time_base or _MS
    if tb == _MS:
        return value
    return round(Fraction(value) * tb * 1000)


def _remux(
    document: bytes,
    container_format: str,
    *,
    origin_ms: int,
    options: dict[str, str] | None = None,
) -> bytes:
    """Copy the audio/video packets of ``document`` into a new ``container_format`` output.

    G.711 tracks are left out of mp4 outputs (FFmpeg's mp4 muxer has no G.711).
    Packets are timed in ms since ``origin_ms``. Decode times: the blocks come in
    decode order with presentation times, so the i-th packet of a track decodes at the
    i-th smallest presentation time, moved back by the track's largest reordering
    (the B-frame delay, 0 without B-frames) so that no packet decodes after it is
    presented, which both muxers require.
    """
    sink_buffer = io.BytesIO()
    try:
        with (
            av.open(io.BytesIO(document), "r", format="matroska", options=_NO_PROBING) as source,
            av.open(sink_buffer, "w", format=container_format, options=options) as sink,
        ):
            outputs: dict[int, av.stream.Stream] = {}
            for stream in source.streams:
                if stream.type not in ("video", "audio"):
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
                outputs[stream.index] = out
            if not outputs:
                raise DecodeError(
                    f"the fragment has no audio or video to put in {container_format}"
                )
            packets: dict[int, list[tuple[av.Packet[Any], int]]] = {i: [] for i in outputs}
            for packet in source.demux(*(s for s in source.streams if s.index in outputs)):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's flush packets
                packets[packet.stream.index].append((packet, _packet_ms(packet, packet.pts)))
            timed: list[tuple[Fraction, int, int, av.Packet[Any]]] = []
            for index, track_packets in packets.items():
                timed += _decode_timed(outputs[index], track_packets, origin_ms, index)
            for _dts, _index, _order, packet in sorted(timed, key=lambda t: t[:3]):
                sink.mux(packet)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"remuxing to {container_format} failed: {exc}") from exc
    return sink_buffer.getvalue()


def _decode_timed(
    output: av.stream.Stream,
    packets: Sequence[tuple[av.Packet[Any], int]],
    origin_ms: int,
    index: int,
) -> list[tuple[Fraction, int, int, av.Packet[Any]]]:
    """The track's packets retimed for ``output``: ``(dts in s, index, order, packet)``."""
    if not packets:
        return []
    presentation = [ms - origin_ms for _packet, ms in packets]
    decode = sorted(presentation)
    delay = max(0, *(d - p for p, d in zip(presentation, decode, strict=True)))
    out_tb = output.time_base or _VIDEO_TIME_BASE
    per_ms = _MS / out_tb  # output ticks per ms
    timed = []
    last_duration = 0
    for order, ((packet, _ms), pts, dts) in enumerate(
        zip(packets, presentation, decode, strict=True)
    ):
        if order + 1 < len(decode):
            duration = decode[order + 1] - dts
        elif packet.duration:
            duration = _packet_ms(packet, packet.duration)
        else:  # the last frame of a SimpleBlock cluster: as long as the one before it
            duration = last_duration
        last_duration = duration
        packet.pts = round(pts * per_ms)
        packet.dts = round((dts - delay) * per_ms)
        packet.duration = max(0, round(duration * per_ms))
        packet.time_base = out_tb
        packet.stream = output
        timed.append((Fraction(dts - delay, 1000), index, order, packet))
    return timed


def fmp4_init_segment(payload: bytes, *, stream_index: int | None = None) -> bytes:
    """The fMP4 initialization segment (``ftyp + moov``) for a fragment's tracks.

    ``stream_index`` limits it to one track (a DASH AdaptationSet, an HLS rendition):
    the one at that position in the fragment's Tracks. Built from the TrackEntries by
    :mod:`.fmp4` (no FFmpeg).
    """
    return fmp4.init_segment(fmp4.read_stored_fragment(payload).tracks, stream_index=stream_index)


def fmp4_media_segment(
    payload: bytes,
    *,
    origin_ms: int,
    sequence_number: int = 1,
    stream_index: int | None = None,
) -> bytes:
    """A fragment as one fMP4 media segment (``moof + mdat``) on the origin's timeline.

    ``sequence_number`` goes into ``mfhd`` (1 or more); ``stream_index`` limits the
    segment to one track, as for :func:`fmp4_init_segment`. Written by :mod:`.fmp4`:
    box headers around the stored samples, decode times and composition offsets from
    the blocks' presentation times (B-frames included).
    """
    return fmp4.media_segment(
        fmp4.read_stored_fragment(payload),
        origin_ms=origin_ms,
        sequence_number=sequence_number,
        stream_index=stream_index,
    )


def mpegts_segment(payload: bytes, *, origin_ms: int) -> bytes:
    """A fragment as an MPEG-TS segment (PAT/PMT first) on the origin's timeline.

    FFmpeg converts AVCC/HVCC to Annex-B and adds ADTS headers to AAC by itself.
    """
    # With B-frames the first DTS of a session is before its origin (negative): left as
    # it is (33-bit wrap, which players unwrap), since FFmpeg's default would shift this
    # segment alone and break the continuity with the next.
    return _remux(
        matroska_document([payload]),
        "mpegts",
        origin_ms=origin_ms,
        options={"avoid_negative_ts": "disabled"},
    )


def mp4_clip(payloads: Sequence[bytes]) -> bytes:
    """Fragments as one playable MP4 file (``moov`` before ``mdat``), timed from the first."""
    document = matroska_document(payloads)
    origin = _first_timestamp_ms(document)
    return _moov_first(_remux(document, "mp4", origin_ms=origin))


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
            # Decode order is not presentation order with B-frames: stop after the last
            # packet (in decode order) whose frame is wanted; everything it needs is in.
            last_needed = max(
                i
                for i, p in enumerate(packets)
                if p.pts is not None and int(Fraction(p.pts) * tb * 1000) in wanted
            )
            chosen: dict[int, DecodedSample] = {}

            def take(frames: Sequence[VideoFrame]) -> None:
                for frame in frames:
                    if frame.pts is not None:
                        ms = int(Fraction(frame.pts) * tb * 1000)
                        for target in wanted.get(ms, ()):
                            chosen[target] = DecodedSample(ms, frame)

            decoder = stream.codec_context
            for packet in packets[: last_needed + 1]:
                take(decoder.decode(packet))
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
