"""Fragmented MP4 written directly from stored fragments (sans-I/O, no FFmpeg).

A stored payload (``Info + Tracks + sized Cluster``, see :mod:`.media`) already holds
everything an fMP4 segment needs: the CodecPrivate of an H.264/H.265 track *is* the
``avcC``/``hvcC`` record, an AAC track's is the AudioSpecificConfig, and the blocks are
length-prefixed (AVCC/HVCC) samples, which is what ``mdat`` carries. So:

* :func:`init_segment` builds ``ftyp + moov`` (ISO/IEC 14496-12 8.2-8.8, ``mvex/trex``)
  from the TrackEntries alone;
* :func:`media_segment` builds ``moof`` (``mfhd``, one ``traf`` per track with
  ``tfhd``, ``tfdt``, ``trun``) and an ``mdat`` that is the blocks' bytes joined: the
  only copy of the media.

Decode times. Matroska blocks carry presentation times only, in decode order. Decode
times are the sorted presentation times given out in decode order (sample *i* decodes
at the *i*-th smallest presentation time of the fragment), and each sample's
composition offset is its presentation time minus that. For a stream without B-frames
the two are equal and every offset is 0; with B-frames some offsets are negative and
``trun`` is version 1 (signed offsets, 14496-12 8.8.8). The first decode time of a
fragment is then its earliest presentation time, so ``tfdt`` continues the previous
segment exactly and presentation times come out as the producer sent them, with no
edit list: what CMAF (ISO/IEC 23000-19) asks of video tracks, and how MSE players
read them. (FFmpeg's mov demuxer moves such a track's presentation times later by its
largest negative offset, a frame or two, so that no pts precedes its dts.)

G.711 has no place in an MP4 sample entry here and is left out, as FFmpeg's mp4 muxer
leaves it out (:mod:`.remux`).
"""

from __future__ import annotations

import functools
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kvs_toolkit.bitstream import parse_avcc, parse_h264_sps, parse_h265_sps, parse_hvcc
from kvs_toolkit.errors import BitstreamError, DecodeError, MkvError
from kvs_toolkit.mkv import TRACK_TYPE_AUDIO, MkvReader, SegmentInfo, TrackInfo, TracksRead, ids
from kvs_toolkit.mkv.blocks import iter_blocks
from kvs_toolkit.mkv.ebml import (
    UNKNOWN_SIZE,
    UNKNOWN_SIZE_BYTES,
    encode_id,
    iter_children,
    read_element_id,
    read_size,
)
from kvs_toolkit.mkv.writer import ebml_header

__all__ = [
    "CODEC_AAC",
    "CODEC_AVC",
    "CODEC_HEVC",
    "VIDEO_TIMESCALE",
    "Block",
    "StoredFragment",
    "decode_order_times",
    "head_length",
    "init_segment",
    "media_segment",
    "mp4_tracks",
    "parse_head",
    "read_stored_fragment",
    "timescale_of",
]

CODEC_AVC: Final = "V_MPEG4/ISO/AVC"
CODEC_HEVC: Final = "V_MPEGH/ISO/HEVC"
CODEC_AAC: Final = "A_AAC"
FMP4_CODECS: Final = frozenset({CODEC_AVC, CODEC_HEVC, CODEC_AAC})
VIDEO_TIMESCALE: Final = 90_000
_NS: Final = 1_000_000_000
_HEAD_PREFIX: Final = ebml_header() + encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES

# Sample flags (14496-12 8.8.3.1): sample_depends_on = 2 (an I picture), or
# sample_depends_on = 1 and sample_is_non_sync_sample.
SYNC_SAMPLE_FLAGS: Final = 0x0200_0000
NON_SYNC_SAMPLE_FLAGS: Final = 0x0101_0000
_TFHD_DEFAULT_BASE_IS_MOOF: Final = 0x02_0000
_TRUN_DATA_OFFSET: Final = 0x001
_TRUN_DURATION: Final = 0x100
_TRUN_SIZE: Final = 0x200
_TRUN_FLAGS: Final = 0x400
_TRUN_COMPOSITION_OFFSET: Final = 0x800
# The last sample of a fragment has no successor to take its duration from; with no
# BlockDuration, no DefaultDuration and no earlier sample to copy, these stand in.
_FALLBACK_VIDEO_NS: Final = _NS // 30
_AAC_FRAME_SAMPLES: Final = 1024
# ISO/IEC 14496-3 1.6.3.4: samplingFrequencyIndex 0..12.
_AAC_SAMPLING_RATES: Final = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
)  # fmt: skip
_UNITY_MATRIX: Final = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x4000_0000)
_LANGUAGE_UND: Final = ((ord("u") - 0x60) << 10) | ((ord("n") - 0x60) << 5) | (ord("d") - 0x60)


# --- reading the stored fragment ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """One frame of a stored Cluster: presentation time (ns), key frame flag, bytes."""

    pts_ns: int
    keyframe: bool
    data: memoryview
    duration_ns: int | None = None  # BlockDuration, when the producer wrote one


@dataclass(frozen=True, slots=True)
class StoredFragment:
    """A stored payload parsed: its tracks and each track's blocks in decode order."""

    tracks: tuple[TrackInfo, ...]
    timecode_scale_ns: int
    blocks: dict[int, list[Block]]  # track number -> blocks in storage (decode) order


@functools.lru_cache(maxsize=256)
def parse_head(head: bytes) -> tuple[tuple[TrackInfo, ...], int]:
    """The TrackEntries and TimecodeScale of a stored payload's ``Info + Tracks``
    (cached: one per stream and codec configuration, hashed in a few microseconds).
    Raises :class:`~kvs_toolkit.errors.MkvError` for a corrupt one."""
    reader = MkvReader()
    tracks: tuple[TrackInfo, ...] = ()
    scale = 1_000_000
    for event in reader.feed(_HEAD_PREFIX + head):
        if isinstance(event, SegmentInfo):
            scale = event.timecode_scale_ns
        elif isinstance(event, TracksRead):
            tracks = event.tracks
    return tracks, scale


def head_length(data: bytes | memoryview) -> int | None:
    """Length of the ``Info + Tracks`` at the start of a stored payload (or of its first
    bytes); None if ``data`` ends before them."""
    pos = 0
    end = len(data)
    for _ in range(2):
        _element, id_len = read_element_id(data, pos, end)
        size, size_len = read_size(data, pos + id_len, end) if id_len else (0, 0)
        if id_len == 0 or size_len == 0 or size == UNKNOWN_SIZE:
            return None
        pos += id_len + size_len + size
    return pos if pos <= end else None


def read_stored_fragment(payload: bytes) -> StoredFragment:
    """Parse a stored payload (the blocks are views into it: no copy). Raises
    :class:`DecodeError` for a corrupt one."""
    try:
        length = head_length(payload)
        if length is None:
            raise MkvError("the stored payload does not start with Info and Tracks", 0)
        tracks, scale = parse_head(payload[:length])
        blocks = _read_cluster(memoryview(payload)[length:], length, scale)
    except MkvError as exc:
        raise DecodeError(f"a stored fragment is corrupt: {exc}") from exc
    if not tracks:
        raise DecodeError("a stored fragment is corrupt: it has no Tracks")
    return StoredFragment(tracks, scale, blocks)


def _read_cluster(cluster: memoryview, offset: int, scale: int) -> dict[int, list[Block]]:
    children = iter_children(cluster, offset)
    if len(children) != 1 or children[0][0] != ids.CLUSTER:
        raise MkvError("the stored fragment does not end with one Cluster", offset)
    _id, body, body_offset = children[0]
    blocks: dict[int, list[Block]] = {}
    # The mkv package's block iterator: frames are views into the payload (no copy).
    for block in iter_blocks(body, body_offset):
        pts_ns = block.timecode * scale
        duration = None if block.duration is None else block.duration * scale
        blocks.setdefault(block.track_number, []).extend(
            Block(pts_ns, block.keyframe, frame, duration) for frame in block.frames
        )
    return blocks


# --- timing ---------------------------------------------------------------------------------


def decode_order_times(pts: Sequence[int]) -> tuple[list[int], list[int]]:
    """Decode times and composition offsets of samples given in decode order.

    The i-th decode time is the i-th smallest presentation time; the offset is the
    presentation time minus the decode time (negative for some samples of a stream with
    B-frames, 0 everywhere for one without).
    """
    decode = sorted(pts)
    return decode, [p - d for p, d in zip(pts, decode, strict=True)]


def _scaled(ns: int, timescale: int) -> int:
    """Nanoseconds in ``timescale`` units, rounded half up (exact for whole ms at 90 kHz)."""
    return (ns * timescale + _NS // 2) // _NS


# --- tracks ---------------------------------------------------------------------------------


def mp4_tracks(
    tracks: Sequence[TrackInfo], stream_index: int | None = None
) -> list[tuple[int, TrackInfo]]:
    """``(track_ID, track)`` of the tracks an fMP4 output carries, track_IDs from 1.

    ``stream_index`` picks one track by its position in Tracks. G.711 is left out.
    Raises :class:`DecodeError` when nothing is left or a codec has no fMP4 mapping here.
    """
    chosen = [
        t
        for i, t in enumerate(tracks)
        if (stream_index is None or i == stream_index) and t.codec_id != "A_MS/ACM"
    ]
    if not chosen:
        what = "audio or video" if stream_index is None else f"track #{stream_index}"
        raise DecodeError(f"the fragment has no {what} to put in mp4")
    for track in chosen:
        if track.codec_id not in FMP4_CODECS:
            raise DecodeError(f"track {track.number}: codec {track.codec_id} cannot go in fMP4")
        if not track.codec_private:
            raise DecodeError(f"track {track.number} has no codec private data")
    return [(n + 1, t) for n, t in enumerate(chosen)]


def timescale_of(track: TrackInfo) -> int:
    """The ``mdhd`` timescale: 90 kHz for video, the sample rate for audio."""
    if track.track_type == TRACK_TYPE_AUDIO:
        return _audio_config(track)[0]
    return VIDEO_TIMESCALE


def _audio_config(track: TrackInfo) -> tuple[int, int]:
    """(sample rate, channels) of an AAC track: TrackEntry values, else the ASC's."""
    asc = track.codec_private
    rate = round(track.sampling_frequency) if track.sampling_frequency else 0
    channels = track.channels or 0
    if (not rate or not channels) and len(asc) >= 2:
        # ISO/IEC 14496-3 1.6.2.1: 5 bits object type, 4 bits frequency index, 4 bits channels.
        rates = _AAC_SAMPLING_RATES
        index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7)
        if not rate and index < len(rates):
            rate = rates[index]
        if not channels:
            channels = (asc[1] >> 3) & 0x0F
    return rate or 48_000, channels or 2


def _picture_size(track: TrackInfo) -> tuple[int, int]:
    if track.width and track.height:
        return track.width, track.height
    try:
        if track.codec_id == CODEC_AVC:
            sps = parse_h264_sps(parse_avcc(track.codec_private).sps[0])
            return sps.width, sps.height
        sps265 = parse_h265_sps(parse_hvcc(track.codec_private).sps[0])
        return sps265.width, sps265.height
    except (BitstreamError, IndexError) as exc:
        raise DecodeError(
            f"track {track.number}: no picture size in its codec private data"
        ) from exc


# --- boxes ----------------------------------------------------------------------------------


def _box(kind: bytes, *parts: bytes) -> bytes:
    return b"".join((struct.pack(">I4s", 8 + sum(map(len, parts)), kind), *parts))


def _full_box(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor (ISO/IEC 14496-1 8.3.3): tag, size in 7-bit groups, payload."""
    size = len(payload)
    groups = [size & 0x7F]
    size >>= 7
    while size:
        groups.append(0x80 | (size & 0x7F))
        size >>= 7
    return bytes([tag, *reversed(groups)]) + payload


def _sample_entry(track: TrackInfo) -> bytes:
    if track.codec_id == CODEC_AAC:
        rate, channels = _audio_config(track)
        decoder_config = _descriptor(
            0x04,  # DecoderConfigDescriptor: MPEG-4 audio (0x40), audio stream (5)
            struct.pack(">BB3sII", 0x40, (0x05 << 2) | 1, b"\0\0\0", 0, 0)
            + _descriptor(0x05, track.codec_private),  # DecoderSpecificInfo: the ASC
        )
        es = _descriptor(
            0x03, struct.pack(">HB", 0, 0) + decoder_config + _descriptor(0x06, b"\x02")
        )
        return _box(
            b"mp4a",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(8),
            struct.pack(">HHHHI", channels, 16, 0, 0, (rate << 16) if rate < 1 << 16 else 0),
            _full_box(b"esds", 0, 0, es),
        )
    width, height = _picture_size(track)
    hevc = track.codec_id == CODEC_HEVC
    return _box(
        b"hvc1" if hevc else b"avc1",  # parameter sets in the record only: what Apple needs
        bytes(6),
        struct.pack(">H", 1),
        bytes(16),  # pre_defined, reserved, pre_defined[3]
        struct.pack(">HHIIIH", width, height, 0x0048_0000, 0x0048_0000, 0, 1),
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x0018, -1),
        _box(b"hvcC" if hevc else b"avcC", track.codec_private),
    )


def _trak(track_id: int, track: TrackInfo) -> bytes:
    audio = track.track_type == TRACK_TYPE_AUDIO
    width, height = (0, 0) if audio else _picture_size(track)
    tkhd = _full_box(
        b"tkhd",
        0,
        0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0x0100 if audio else 0, 0),
        _UNITY_MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale_of(track), 0, _LANGUAGE_UND, 0)
    )
    handler = b"soun" if audio else b"vide"
    name = b"SoundHandler\0" if audio else b"VideoHandler\0"
    hdlr = _full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    media_header = (
        _full_box(b"smhd", 0, 0, bytes(4)) if audio else _full_box(b"vmhd", 0, 1, bytes(8))
    )
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(track)),
        _full_box(b"stts", 0, 0, bytes(4)),
        _full_box(b"stsc", 0, 0, bytes(4)),
        _full_box(b"stsz", 0, 0, bytes(8)),
        _full_box(b"stco", 0, 0, bytes(4)),
    )
    minf = _box(b"minf", media_header, dinf, stbl)
    return _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))


def init_segment(tracks: Sequence[TrackInfo], *, stream_index: int | None = None) -> bytes:
    """``ftyp + moov`` for the tracks (or the one at ``stream_index``), from TrackEntries."""
    chosen = mp4_tracks(tracks, stream_index)
    ftyp = _box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6", b"isom", b"mp41")
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIIIIhH", 0, 0, 1000, 0, 0x0001_0000, 0x0100, 0),
        bytes(8),
        _UNITY_MATRIX,
        bytes(24),
        struct.pack(">I", len(chosen) + 1),  # next_track_ID
    )
    traks = [_trak(track_id, track) for track_id, track in chosen]
    mvex = _box(
        b"mvex",
        *(
            _full_box(b"trex", 0, 0, struct.pack(">IIIII", track_id, 1, 0, 0, 0))
            for track_id, _track in chosen
        ),
    )
    return ftyp + _box(b"moov", mvhd, *traks, mvex)


@dataclass(slots=True)
class _TrackRun:
    track_id: int
    base_decode_time: int
    version: int
    flags: int
    entries: bytes  # the trun's per-sample fields
    count: int
    data: list[memoryview]
    size: int


def _track_run(
    track_id: int, track: TrackInfo, blocks: Sequence[Block], origin_ns: int
) -> _TrackRun:
    timescale = timescale_of(track)
    decode_ns, offsets_ns = decode_order_times([b.pts_ns for b in blocks])
    decode = [_scaled(ns - origin_ns, timescale) for ns in decode_ns]
    presentation = [_scaled(b.pts_ns - origin_ns, timescale) for b in blocks]
    durations = [after - before for before, after in itertools.pairwise(decode)]
    last = blocks[-1].duration_ns or track.default_duration_ns
    if last:
        durations.append(_scaled(last, timescale))
    elif durations:
        durations.append(durations[-1])  # as long as the one before it
    elif track.track_type == TRACK_TYPE_AUDIO:
        durations.append(_AAC_FRAME_SAMPLES)
    else:
        durations.append(_scaled(_FALLBACK_VIDEO_NS, timescale))
    sizes = [len(b.data) for b in blocks]
    audio = track.track_type == TRACK_TYPE_AUDIO
    sample_flags = [
        SYNC_SAMPLE_FLAGS if audio or b.keyframe else NON_SYNC_SAMPLE_FLAGS for b in blocks
    ]
    flags = _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS
    count = len(blocks)
    if any(offsets_ns):
        offsets = [p - d for p, d in zip(presentation, decode, strict=True)]
        flags |= _TRUN_COMPOSITION_OFFSET
        version = 1 if min(offsets) < 0 else 0
        fields = [
            v for row in zip(durations, sizes, sample_flags, offsets, strict=True) for v in row
        ]
        entries = struct.pack(">" + "IIIi" * count, *fields)
    else:
        version = 0
        fields = [v for row in zip(durations, sizes, sample_flags, strict=True) for v in row]
        entries = struct.pack(f">{3 * count}I", *fields)
    return _TrackRun(
        track_id, decode[0], version, flags, entries, count, [b.data for b in blocks], sum(sizes)
    )


def media_segment(
    fragment: StoredFragment,
    *,
    origin_ms: int,
    sequence_number: int = 1,
    stream_index: int | None = None,
) -> bytes:
    """One ``moof + mdat`` for the fragment, decode times since ``origin_ms``.

    Tracks as :func:`init_segment` (same ``stream_index``, same track_IDs); a track
    with no blocks in this fragment gets no ``traf``.
    """
    origin_ns = origin_ms * 1_000_000
    runs = [
        _track_run(track_id, track, blocks, origin_ns)
        for track_id, track in mp4_tracks(fragment.tracks, stream_index)
        if (blocks := fragment.blocks.get(track.number))
    ]
    if not runs:
        raise DecodeError("the fragment has no frames to put in mp4")
    # Sizes first: each trun's data_offset counts from the moof's first byte (tfhd
    # default-base-is-moof, 14496-12 8.8.7) to the run's first byte in the mdat.
    traf_sizes = [8 + 16 + 20 + (8 + 12 + len(run.entries)) for run in runs]
    moof_size = 8 + 16 + sum(traf_sizes)
    data_offset = moof_size + 8
    parts: list[bytes | memoryview] = [
        struct.pack(">I4sI4sII", moof_size, b"moof", 16, b"mfhd", 0, max(1, sequence_number))
    ]
    for run, traf_size in zip(runs, traf_sizes, strict=True):
        if data_offset >= 1 << 31:
            raise DecodeError("the fragment is too large for one fMP4 media segment")
        parts.append(struct.pack(">I4s", traf_size, b"traf"))
        parts.append(struct.pack(">I4sII", 16, b"tfhd", _TFHD_DEFAULT_BASE_IS_MOOF, run.track_id))
        parts.append(struct.pack(">I4sIQ", 20, b"tfdt", 1 << 24, max(0, run.base_decode_time)))
        trun_size = 8 + 12 + len(run.entries)
        parts.append(
            struct.pack(
                ">I4sIIi",
                trun_size,
                b"trun",
                (run.version << 24) | run.flags,
                run.count,
                data_offset,
            )
        )
        parts.append(run.entries)
        data_offset += run.size
    mdat_payload = sum(run.size for run in runs)
    parts.append(struct.pack(">I4s", 8 + mdat_payload, b"mdat"))
    for run in runs:
        parts.extend(run.data)
    return b"".join(parts)
