"""Sans-I/O helpers for H.264 (AVC) and H.265 (HEVC) elementary streams.

A camera or encoder hands a producer an Annex-B byte stream (NAL units behind
``00 00 01`` / ``00 00 00 01`` start codes, ITU-T H.264 Annex B). Matroska, and so
Kinesis Video Streams, wants something else: the parameter sets once, in the track's
CodecPrivate (an ``avcC`` / ``hvcC`` record, ISO/IEC 14496-15), and every frame as
length-prefixed NAL units ("AVCC" form). This module converts between the two and reads
the few facts a producer needs from the parameter sets. It does no I/O: bytes in, values
out.

* :func:`split_annexb`, :func:`annexb_to_avcc`, :func:`avcc_to_annexb`,
  :func:`split_length_prefixed` - framing conversions. The start-code search and the
  zero-byte checks run in C (a compiled ``re`` literal search and ``bytes`` methods on
  the input's buffer, no numpy); Python only steps once per NAL unit, never per byte.
* :class:`AccessUnitSplitter` - incremental Annex-B -> access units for a pipe such as
  stdin, with a bounded buffer.
* :func:`parse_h264_sps`, :func:`parse_h265_sps` - picture size, profile, level.
* :func:`build_avcc`, :func:`build_hvcc`, :func:`parse_avcc`, :func:`parse_hvcc` -
  CodecPrivate records.
* :func:`is_keyframe`, :func:`nal_type` and friends - NAL unit header helpers.

Every malformed input raises :class:`~kvs_toolkit.errors.BitstreamError` with what went
wrong and where; nothing here allocates from a size claimed by the input without first
checking it against the bytes actually present.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from kvs_toolkit.errors import BitstreamError

__all__ = [
    "DEFAULT_MAX_ACCESS_UNIT_SIZE",
    "AccessUnit",
    "AccessUnitSplitter",
    "AvcDecoderConfig",
    "BitReader",
    "BytesLike",
    "Codec",
    "H264NalType",
    "H264Sps",
    "H265NalType",
    "H265Sps",
    "HevcDecoderConfig",
    "HvccArray",
    "ParameterSets",
    "annexb_to_avcc",
    "avcc_to_annexb",
    "build_avcc",
    "build_codec_private",
    "build_hvcc",
    "is_keyframe",
    "is_keyframe_nal",
    "is_vcl_nal",
    "join_annexb",
    "join_length_prefixed",
    "nal_to_rbsp",
    "nal_type",
    "parameter_sets",
    "parse_avcc",
    "parse_h264_sps",
    "parse_h265_sps",
    "parse_hvcc",
    "remove_emulation_prevention",
    "split_annexb",
    "split_length_prefixed",
]

Codec: TypeAlias = Literal["h264", "h265"]
BytesLike: TypeAlias = bytes | bytearray | memoryview

#: Default cap on one access unit in :class:`AccessUnitSplitter`. A 4K intra frame at a
#: high bitrate stays well under it; an unterminated or corrupt stream hits it quickly.
DEFAULT_MAX_ACCESS_UNIT_SIZE = 8 * 1024 * 1024

_START_CODE = b"\x00\x00\x00\x01"
# H.264 B.1 / H.265 B.2 start_code_prefix_one_3bytes. ``re`` searches any buffer (bytes,
# bytearray, memoryview) in place, without the copy ``bytes.find`` would need for a view.
_START_CODE_PREFIX = re.compile(b"\x00\x00\x01")
# ISO/IEC 14496-15: lengthSizeMinusOne may be 0, 1 or 3 (3-byte lengths are not allowed).
_LENGTH_SIZES = (1, 2, 4)
# Trailing zeros are stripped in windows that start at this size and double, so a run of
# n zero bytes costs O(n) C work and O(log n) Python steps, however long the NAL unit.
_ZERO_STRIP_WINDOW = 8


class H264NalType:
    """nal_unit_type values of ITU-T H.264 Table 7-1 (plain ints; any 0-31 may occur)."""

    SLICE = 1
    SLICE_DPA = 2
    SLICE_DPB = 3
    SLICE_DPC = 4
    IDR = 5
    SEI = 6
    SPS = 7
    PPS = 8
    AUD = 9
    END_OF_SEQUENCE = 10
    END_OF_STREAM = 11
    FILLER = 12
    SPS_EXT = 13
    PREFIX = 14
    SUBSET_SPS = 15


class H265NalType:
    """nal_unit_type values of ITU-T H.265 Table 7-1 (plain ints; any 0-63 may occur)."""

    TRAIL_N = 0
    TRAIL_R = 1
    BLA_W_LP = 16
    BLA_W_RADL = 17
    BLA_N_LP = 18
    IDR_W_RADL = 19
    IDR_N_LP = 20
    CRA = 21
    RSV_IRAP_23 = 23
    VPS = 32
    SPS = 33
    PPS = 34
    AUD = 35
    EOS = 36
    EOB = 37
    FILLER = 38
    PREFIX_SEI = 39
    SUFFIX_SEI = 40


# ---------------------------------------------------------------------------------------
# Per-codec NAL header rules, kept in one registry rather than ``if codec == ...`` chains.


@dataclass(frozen=True)
class _CodecRules:
    header_size: int
    type_of: Callable[[int], int]  # first header byte -> nal_unit_type
    vcl_types: frozenset[int]
    keyframe_types: frozenset[int]
    # Non-VCL types that begin a new access unit when they follow a VCL NAL unit.
    au_start_types: frozenset[int]
    aud_type: int
    # Where the first_mb_in_slice / first_slice_segment_in_pic_flag bit lives.
    first_slice_types: frozenset[int]
    first_slice_byte: int
    sps_type: int
    pps_type: int
    vps_type: int | None


_RULES: dict[str, _CodecRules] = {
    # H.264 7.4.1.2.3: SEI, SPS, PPS and AUD start an AU after the last VCL NAL unit;
    # 7.4.1.2.4: a slice with first_mb_in_slice == 0 (ue(v) code '1') starts a new picture.
    # Types 14-18, also listed there, are left out as FFmpeg's parser does: in SVC/MVC
    # streams a prefix NAL unit (14) comes before every base-layer slice, not just the first.
    "h264": _CodecRules(
        header_size=1,
        type_of=lambda b: b & 0x1F,
        vcl_types=frozenset(range(1, 6)),
        keyframe_types=frozenset({H264NalType.IDR}),
        au_start_types=frozenset({6, 7, 8, 9}),
        aud_type=H264NalType.AUD,
        first_slice_types=frozenset({1, 2, 5}),
        first_slice_byte=1,
        sps_type=H264NalType.SPS,
        pps_type=H264NalType.PPS,
        vps_type=None,
    ),
    # H.265 7.4.2.4.4: VPS, SPS, PPS, AUD, prefix SEI, 41-44, 48-55 start an AU after the
    # last VCL NAL unit; first_slice_segment_in_pic_flag is the first bit after the
    # two-byte header. IRAP pictures are types 16-23 (BLA, IDR, CRA, reserved IRAP).
    "h265": _CodecRules(
        header_size=2,
        type_of=lambda b: (b >> 1) & 0x3F,
        vcl_types=frozenset(range(32)),
        keyframe_types=frozenset(range(16, 24)),
        au_start_types=frozenset({32, 33, 34, 35, 39, 41, 42, 43, 44, *range(48, 56)}),
        aud_type=H265NalType.AUD,
        first_slice_types=frozenset(range(32)),
        first_slice_byte=2,
        sps_type=H265NalType.SPS,
        pps_type=H265NalType.PPS,
        vps_type=H265NalType.VPS,
    ),
}


def _rules(codec: str) -> _CodecRules:
    try:
        return _RULES[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; expected 'h264' or 'h265'") from None


def nal_type(nal: BytesLike, codec: Codec = "h264") -> int:
    """Return the nal_unit_type of a NAL unit (header included, no start code)."""
    if len(nal) == 0:
        raise BitstreamError("empty NAL unit has no header")
    return _rules(codec).type_of(nal[0])


def is_vcl_nal(nal: BytesLike, codec: Codec = "h264") -> bool:
    """True for a coded slice NAL unit (H.264 types 1-5, H.265 types 0-31)."""
    return nal_type(nal, codec) in _rules(codec).vcl_types


def is_keyframe_nal(nal: BytesLike, codec: Codec = "h264") -> bool:
    """True for an IDR slice (H.264 type 5) or an IRAP slice (H.265 types 16-23).

    H.264 recovery-point SEI (open-GOP "key frames") is deliberately not counted: a KVS
    fragment must start on a picture that decodes on its own.
    """
    return nal_type(nal, codec) in _rules(codec).keyframe_types


def is_keyframe(nal_units: Iterable[BytesLike], codec: Codec = "h264") -> bool:
    """True when any NAL unit of an access unit is an IDR (H.264) or IRAP (H.265) slice."""
    return any(is_keyframe_nal(nal, codec) for nal in nal_units if len(nal) > 0)


# ---------------------------------------------------------------------------------------
# Annex-B framing


def _byte_view(data: BytesLike) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _find_start_codes(data: BytesLike, start: int = 0) -> list[int]:
    """Offsets of every ``00 00 01`` in ``data`` from ``start`` on (they cannot overlap)."""
    # finditer holds the buffer while it runs; the comprehension exhausts and drops it,
    # so a bytearray searched here can be resized right after.
    return [match.start() for match in _START_CODE_PREFIX.finditer(data, start)]


def _first_nonzero(data: memoryview, start: int, end: int) -> int | None:
    """Offset of the first non-zero byte of ``data[start:end]``, or None if all are zero."""
    rest = data[start:end].tobytes().lstrip(b"\x00")
    return end - len(rest) if rest else None


def _strip_end(data: memoryview, start: int, end: int) -> int:
    """Move ``end`` left past zero bytes, never below ``start``.

    H.264 B.1.2 / H.265 B.2.2: a NAL unit's last byte is never 0x00; the zeros before a
    start code are trailing_zero_8bits (or the 4-byte start code's leading zero_byte).
    """
    if end - start > 1 and data[end - 1] == 0 and data[end - 2] != 0:
        return end - 1  # the usual case: one zero_byte of a 4-byte start code
    window = _ZERO_STRIP_WINDOW
    while end > start and data[end - 1] == 0:
        low = max(start, end - window)
        end = low + len(data[low:end].tobytes().rstrip(b"\x00"))
        window *= 2
    return end


def split_annexb(data: BytesLike) -> list[memoryview]:
    """Split an Annex-B byte stream into NAL units (start codes and trailing zeros removed).

    Returns ``memoryview`` slices that share memory with ``data`` (so a ``bytearray``
    passed in cannot be resized while they live). Only zero bytes may precede the first
    start code (H.264 B.1.1 leading_zero_8bits); empty NAL units (two start codes in a
    row) are skipped. Raises :class:`BitstreamError` if non-zero data comes before the
    first start code or there is no start code at all.
    """
    view = _byte_view(data)
    size = len(view)
    codes = _find_start_codes(view)
    if not codes:
        if _first_nonzero(view, 0, size) is not None:
            raise BitstreamError(f"no Annex-B start code in {size} bytes of non-zero data")
        return []
    first = codes[0]
    offset = _first_nonzero(view, 0, first) if first else None
    if offset is not None:
        raise BitstreamError(
            f"non-zero byte at offset {offset} before the first start code (offset {first})"
        )
    nal_units: list[memoryview] = []
    codes.append(size)
    for index in range(len(codes) - 1):
        start = codes[index] + 3
        end = codes[index + 1]
        if end > start and view[end - 1] == 0:
            end = _strip_end(view, start, end)
        if end > start:
            nal_units.append(view[start:end])
    return nal_units


def join_annexb(nal_units: Iterable[BytesLike]) -> bytes:
    """Join NAL units into an Annex-B stream with 4-byte start codes."""
    return b"".join(part for nal in nal_units for part in (_START_CODE, nal))


def join_length_prefixed(nal_units: Iterable[BytesLike], length_size: int = 4) -> bytes:
    """Join NAL units with big-endian length prefixes (AVCC/HVCC sample format)."""
    _check_length_size(length_size)
    limit = 1 << (8 * length_size)
    parts: list[BytesLike] = []
    for nal in nal_units:
        size = len(nal)
        if size >= limit:
            raise BitstreamError(
                f"NAL unit of {size} bytes does not fit a {length_size}-byte length field"
            )
        parts.append(size.to_bytes(length_size, "big"))
        parts.append(nal)
    return b"".join(parts)


def _check_length_size(length_size: int) -> None:
    if length_size not in _LENGTH_SIZES:
        raise BitstreamError(f"NAL length size must be 1, 2 or 4 bytes, not {length_size}")


def split_length_prefixed(data: BytesLike, length_size: int = 4) -> list[memoryview]:
    """Split AVCC/HVCC data (big-endian length-prefixed NAL units) into NAL units.

    ``length_size`` is ``lengthSizeMinusOne + 1`` from the avcC/hvcC record. Returns
    ``memoryview`` slices of ``data``; zero-length entries are skipped. Raises
    :class:`BitstreamError` when a length runs past the end of the data.
    """
    _check_length_size(length_size)
    view = _byte_view(data)
    total = len(view)
    nal_units: list[memoryview] = []
    pos = 0
    while pos < total:
        if total - pos < length_size:
            raise BitstreamError(
                f"truncated {length_size}-byte NAL length at offset {pos} "
                f"({total - pos} bytes left)"
            )
        size = int.from_bytes(view[pos : pos + length_size], "big")
        pos += length_size
        if size > total - pos:
            raise BitstreamError(
                f"NAL unit length {size} at offset {pos - length_size} exceeds the "
                f"{total - pos} bytes left"
            )
        if size:
            nal_units.append(view[pos : pos + size])
        pos += size
    return nal_units


def annexb_to_avcc(data: BytesLike, length_size: int = 4) -> bytes:
    """Convert Annex-B data to length-prefixed (AVCC/HVCC) form, as Matroska blocks hold."""
    return join_length_prefixed(split_annexb(data), length_size)


def avcc_to_annexb(data: BytesLike, length_size: int = 4) -> bytes:
    """Convert length-prefixed (AVCC/HVCC) data to Annex-B with 4-byte start codes.

    A NAL unit ending in 0x00 (forbidden by H.264 7.4.1) would lose that byte when the
    result is split again; conforming streams never have one.
    """
    return join_annexb(split_length_prefixed(data, length_size))


# ---------------------------------------------------------------------------------------
# Access units from a stream


@dataclass(frozen=True)
class AccessUnit:
    """One coded picture with its non-VCL NAL units, in decoding order."""

    nal_units: tuple[bytes, ...]
    keyframe: bool

    @property
    def size(self) -> int:
        """Total payload bytes of the NAL units (no start codes or length fields)."""
        return sum(len(nal) for nal in self.nal_units)

    def to_avcc(self, length_size: int = 4) -> bytes:
        """The access unit as a length-prefixed sample (a Matroska block's payload)."""
        return join_length_prefixed(self.nal_units, length_size)

    def to_annexb(self) -> bytes:
        """The access unit as Annex-B with 4-byte start codes."""
        return join_annexb(self.nal_units)


class AccessUnitSplitter:
    """Incremental Annex-B -> access units, for a pipe such as an encoder's stdout.

    Call :meth:`feed` with chunks as they arrive and :meth:`flush` at end of stream. An
    access unit is returned once the first NAL unit of the next one has begun (its header
    bytes have arrived), so the delay is one NAL header, not a frame. Already searched
    bytes are not searched again, and the buffer never holds more than one access unit:
    one that grows past ``max_access_unit_size`` raises :class:`BitstreamError`, and
    the splitter then refuses further input.

    Boundaries follow H.264 7.4.1.2.3 / H.265 7.4.2.4.4: an AUD, a parameter set or a
    prefix SEI after a slice, or a slice that is the first of its picture after a slice.
    H.264 arbitrary slice order (a first slice that is not first in decoding order) is
    not detected.
    """

    def __init__(
        self, codec: Codec = "h264", *, max_access_unit_size: int = DEFAULT_MAX_ACCESS_UNIT_SIZE
    ) -> None:
        if max_access_unit_size <= 0:
            raise ValueError("max_access_unit_size must be positive")
        self._rules = _rules(codec)
        self._max = max_access_unit_size
        self._failed: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._base = 0  # absolute stream offset of _buf[0]
        self._scan = 0  # next offset in _buf to search for a start code
        self._nal_start: int | None = None  # payload start of the open NAL unit
        self._decided = False  # whether the open NAL unit's AU membership is known
        self._au_nals: list[bytes] = []
        self._au_bytes = 0
        self._au_offset = 0  # absolute offset where the current AU's first NAL begins
        self._au_has_vcl = False
        self._au_keyframe = False

    def feed(self, data: BytesLike) -> list[AccessUnit]:
        """Add bytes; return the access units they completed (possibly none)."""
        if self._failed is not None:
            raise BitstreamError(f"splitter stopped after an earlier error: {self._failed}")
        if not data:
            return []
        self._buf += data
        try:
            units = self._process(final=False)
        except BitstreamError as exc:
            self._failed = str(exc)
            raise
        return units

    def flush(self) -> list[AccessUnit]:
        """End of stream: return the last access unit(s) and reset for a new stream."""
        if self._failed is not None:
            raise BitstreamError(f"splitter stopped after an earlier error: {self._failed}")
        try:
            units = self._process(final=True)
        except BitstreamError as exc:
            self._failed = str(exc)
            raise
        if self._au_nals:
            units.append(self._take_au())
        self._reset()
        return units

    def _take_au(self) -> AccessUnit:
        unit = AccessUnit(tuple(self._au_nals), self._au_keyframe)
        self._au_nals = []
        self._au_bytes = 0
        self._au_has_vcl = False
        self._au_keyframe = False
        return unit

    def _check_size(self, size: int) -> None:
        if size > self._max:
            raise BitstreamError(
                f"access unit starting at stream offset {self._au_offset} exceeds "
                f"max_access_unit_size ({size} > {self._max} bytes)"
            )

    def _decide(self, view: memoryview, start: int, end: int, out: list[AccessUnit]) -> None:
        """Place the NAL unit starting at ``start`` in the current or a new access unit."""
        rules = self._rules
        if end <= start:
            return  # empty NAL unit: nothing to classify
        kind = rules.type_of(view[start])
        first_slice = False
        if kind in rules.first_slice_types and end - start > rules.first_slice_byte:
            first_slice = bool(view[start + rules.first_slice_byte] & 0x80)
        new_au = (kind == rules.aud_type and bool(self._au_nals)) or (
            self._au_has_vcl and (first_slice or kind in rules.au_start_types)
        )
        if new_au:
            out.append(self._take_au())
        if not self._au_nals:
            self._au_offset = self._base + start - 3
        if kind in rules.vcl_types:
            self._au_has_vcl = True
        if kind in rules.keyframe_types:
            self._au_keyframe = True
        self._decided = True

    def _complete(self, view: memoryview, start: int, end: int) -> None:
        if end > start:
            self._au_nals.append(view[start:end].tobytes())
            self._au_bytes += end - start
            self._check_size(self._au_bytes)

    def _process(self, *, final: bool) -> list[AccessUnit]:
        out: list[AccessUnit] = []
        # One view for the whole pass, released before the buffer is resized (a bytearray
        # cannot shrink while exported). Slices of it are only ever temporaries.
        view = memoryview(self._buf)
        try:
            cut = self._consume(view, final, out)
        finally:
            view.release()
        del self._buf[:cut]
        self._base += cut
        return out

    def _consume(self, view: memoryview, final: bool, out: list[AccessUnit]) -> int:
        """Turn the buffered bytes into NAL units; return how many leading bytes are done."""
        size = len(view)
        for code in _find_start_codes(view, self._scan):
            if self._nal_start is None:
                offset = _first_nonzero(view, 0, code)
                if offset is not None:
                    raise BitstreamError(
                        f"non-zero byte at stream offset {self._base + offset} "
                        "before the first start code"
                    )
            else:
                start = self._nal_start
                end = _strip_end(view, start, code)
                if not self._decided:
                    self._decide(view, start, end, out)
                self._complete(view, start, end)
            self._nal_start = code + 3
            self._decided = False
        if self._nal_start is None:
            # Only leading zeros so far; keep the last two bytes, which may begin a start code.
            keep_from = size if final else max(size - 2, 0)
            offset = _first_nonzero(view, 0, keep_from)
            if offset is not None:
                raise BitstreamError(
                    f"non-zero byte at stream offset {self._base + offset} "
                    "before the first start code"
                )
            self._scan = 0  # the kept bytes have not been tried as a start code yet
            return keep_from
        start = self._nal_start
        if final:
            end = _strip_end(view, start, size)
            if not self._decided:
                self._decide(view, start, end, out)
            self._complete(view, start, end)
            self._nal_start = None
            self._scan = 0
            return size
        if not self._decided and size - start > self._rules.first_slice_byte:
            self._decide(view, start, size, out)
        self._check_size(self._au_bytes + size - start)
        # Keep the open NAL unit; the next search resumes two bytes before the end (a
        # start code may straddle two chunks) but never inside the last code.
        self._scan = max(size - 2, start) - start
        self._nal_start = 0
        return start


# ---------------------------------------------------------------------------------------
# RBSP and Exp-Golomb


def remove_emulation_prevention(payload: BytesLike) -> bytes:
    """Remove emulation_prevention_three_byte from a NAL unit payload (H.264 7.3.1).

    ``payload`` must exclude the NAL unit header (see :func:`nal_to_rbsp`): a header byte
    of 0x00 followed by ``00 03`` would otherwise be misread. The spec's left-to-right
    parse (take two zero bytes, drop the 0x03 after them, carry on after it) is exactly a
    leftmost, non-overlapping replace, which ``bytes.replace`` does in C.
    """
    data = bytes(payload)
    if b"\x00\x00\x03" not in data:
        return data
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


def nal_to_rbsp(nal: BytesLike, codec: Codec = "h264") -> bytes:
    """The RBSP of a NAL unit: header stripped, emulation prevention bytes removed."""
    header = _rules(codec).header_size
    if len(nal) < header:
        raise BitstreamError(f"NAL unit of {len(nal)} bytes is shorter than its header")
    return remove_emulation_prevention(_byte_view(nal)[header:])


class BitReader:
    """Big-endian bit reader over an RBSP with Exp-Golomb codes (H.264 9.1).

    Reads past the end raise :class:`BitstreamError` naming ``what`` and the bit offset.
    """

    def __init__(self, data: BytesLike, what: str = "bitstream") -> None:
        self._data = bytes(data)
        self._pos = 0
        self._total = len(self._data) * 8
        self._what = what

    @property
    def position(self) -> int:
        """Bits consumed so far."""
        return self._pos

    @property
    def bits_left(self) -> int:
        """Bits not yet consumed."""
        return self._total - self._pos

    def _need(self, count: int) -> None:
        if count > self._total - self._pos:
            raise BitstreamError(
                f"{self._what} truncated: need {count} bits at bit offset {self._pos}, "
                f"{self._total - self._pos} left"
            )

    def _peek(self, count: int) -> int:
        first = self._pos >> 3
        last = (self._pos + count + 7) >> 3
        chunk = int.from_bytes(self._data[first:last], "big")
        return (chunk >> (last * 8 - self._pos - count)) & ((1 << count) - 1)

    def read_bits(self, count: int) -> int:
        """Read ``count`` bits as an unsigned integer, u(n)."""
        if count < 0:
            raise ValueError("bit count must not be negative")
        if count == 0:
            return 0
        self._need(count)
        value = self._peek(count)
        self._pos += count
        return value

    def read_flag(self) -> bool:
        """Read one bit, u(1), as a bool."""
        return bool(self.read_bits(1))

    def skip_bits(self, count: int) -> None:
        """Skip ``count`` bits."""
        self._need(count)
        self._pos += count

    def read_ue(self) -> int:
        """Read an unsigned Exp-Golomb code, ue(v); at most 31 leading zeros (32-bit)."""
        window = min(32, self.bits_left)
        if window == 0:
            self._need(1)
        bits = self._peek(window)
        if bits == 0:
            if window < 32:
                self._need(window + 1)
            raise BitstreamError(
                f"{self._what}: Exp-Golomb code at bit offset {self._pos} has more than "
                "31 leading zero bits"
            )
        leading_zeros = window - bits.bit_length()
        start = self._pos
        self._pos += leading_zeros + 1
        try:
            suffix = self.read_bits(leading_zeros)
        except BitstreamError:
            self._pos = start
            raise
        return (1 << leading_zeros) - 1 + suffix

    def read_se(self) -> int:
        """Read a signed Exp-Golomb code, se(v) (H.264 9.1.1: 1, -1, 2, -2, ...)."""
        code = self.read_ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)

    def read_ue_max(self, name: str, maximum: int) -> int:
        """Read ue(v) and check it against the spec's range for syntax element ``name``."""
        value = self.read_ue()
        if value > maximum:
            raise BitstreamError(f"{self._what}: {name} = {value} is out of range (max {maximum})")
        return value


# ---------------------------------------------------------------------------------------
# Sequence parameter sets


@dataclass(frozen=True)
class H264Sps:
    """What a producer needs from an H.264 sequence parameter set.

    ``width``/``height`` are the displayed size (after the cropping rectangle);
    ``coded_width``/``coded_height`` the size in whole macroblocks.
    """

    sps_id: int
    profile_idc: int
    constraint_flags: int  # constraint_set0..5_flag and reserved_zero_2bits as one byte
    level_idc: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool
    coded_width: int
    coded_height: int
    width: int
    height: int
    crop: tuple[int, int, int, int]  # left, right, top, bottom in luma samples

    @property
    def codec_string(self) -> str:
        """The RFC 6381 ``codecs`` value, e.g. ``avc1.64001F``."""
        return f"avc1.{self.profile_idc:02X}{self.constraint_flags:02X}{self.level_idc:02X}"


# H.264 7.3.2.1.1: profiles whose SPS carries chroma_format_idc, bit depths and scaling lists.
_H264_HIGH_SPS_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# ISO/IEC 14496-15 5.3.3.1.2: profiles whose avcC record has the chroma/bit-depth extension.
_AVCC_EXTENSION_PROFILES = frozenset({100, 110, 122, 144})


def _skip_scaling_list(reader: BitReader, size: int) -> None:
    # H.264 7.3.2.1.1.1 scaling_list(): delta_scale is se(v) in -128..127.
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.read_se()
            if not -128 <= delta <= 127:
                raise BitstreamError(f"H.264 SPS: delta_scale {delta} out of range")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def parse_h264_sps(nal: BytesLike) -> H264Sps:
    """Parse an H.264 SPS NAL unit (header included) per ITU-T H.264 7.3.2.1.1."""
    if len(nal) < 1:
        raise BitstreamError("H.264 SPS: empty NAL unit")
    kind = nal[0] & 0x1F
    if kind != H264NalType.SPS:
        raise BitstreamError(f"H.264 SPS: NAL unit type is {kind}, not 7")
    r = BitReader(nal_to_rbsp(nal, "h264"), "H.264 SPS")
    profile_idc = r.read_bits(8)
    constraint_flags = r.read_bits(8)
    level_idc = r.read_bits(8)
    sps_id = r.read_ue_max("seq_parameter_set_id", 31)
    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = bit_depth_chroma = 8
    if profile_idc in _H264_HIGH_SPS_PROFILES:
        chroma_format_idc = r.read_ue_max("chroma_format_idc", 3)
        if chroma_format_idc == 3:
            separate_colour_plane = r.read_flag()
        bit_depth_luma = 8 + r.read_ue_max("bit_depth_luma_minus8", 6)
        bit_depth_chroma = 8 + r.read_ue_max("bit_depth_chroma_minus8", 6)
        r.skip_bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.read_flag():  # seq_scaling_matrix_present_flag
            for i in range(12 if chroma_format_idc == 3 else 8):
                if r.read_flag():  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.read_ue_max("log2_max_frame_num_minus4", 12)
    poc_type = r.read_ue_max("pic_order_cnt_type", 2)
    if poc_type == 0:
        r.read_ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)
    elif poc_type == 1:
        r.skip_bits(1)  # delta_pic_order_always_zero_flag
        r.read_se()  # offset_for_non_ref_pic
        r.read_se()  # offset_for_top_to_bottom_field
        for _ in range(r.read_ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)):
            r.read_se()  # offset_for_ref_frame[i]
    r.read_ue()  # max_num_ref_frames
    r.skip_bits(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.read_ue() + 1
    height_map_units = r.read_ue() + 1
    frame_mbs_only = r.read_flag()
    if not frame_mbs_only:
        r.skip_bits(1)  # mb_adaptive_frame_field_flag
    r.skip_bits(1)  # direct_8x8_inference_flag
    crop_left = crop_right = crop_top = crop_bottom = 0
    if r.read_flag():  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = (r.read_ue() for _ in range(4))
    coded_width = width_mbs * 16
    coded_height = (2 - frame_mbs_only) * height_map_units * 16
    # H.264 7.4.2.1.1 (frame_crop_*_offset): units depend on ChromaArrayType.
    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        crop_unit_x, crop_unit_y = 1, 2 - frame_mbs_only
    else:
        sub_width_c = 1 if chroma_array_type == 3 else 2
        sub_height_c = 2 if chroma_array_type == 1 else 1
        crop_unit_x, crop_unit_y = sub_width_c, sub_height_c * (2 - frame_mbs_only)
    crop = (
        crop_unit_x * crop_left,
        crop_unit_x * crop_right,
        crop_unit_y * crop_top,
        crop_unit_y * crop_bottom,
    )
    width = coded_width - crop[0] - crop[1]
    height = coded_height - crop[2] - crop[3]
    if width <= 0 or height <= 0:
        raise BitstreamError(
            f"H.264 SPS: cropping {crop} leaves no picture of {coded_width}x{coded_height}"
        )
    return H264Sps(
        sps_id=sps_id,
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        chroma_format_idc=chroma_format_idc,
        separate_colour_plane=separate_colour_plane,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        frame_mbs_only=frame_mbs_only,
        coded_width=coded_width,
        coded_height=coded_height,
        width=width,
        height=height,
        crop=crop,
    )


@dataclass(frozen=True)
class H265Sps:
    """What a producer needs from an H.265 sequence parameter set.

    The ``general_*`` fields are the SPS's profile_tier_level (H.265 7.3.3), which the
    hvcC record copies. ``level_idc`` is 30 times the level number (93 = level 3.1).
    """

    vps_id: int
    sps_id: int
    max_sub_layers: int
    temporal_id_nesting: bool
    profile_space: int
    tier_flag: bool
    profile_idc: int
    profile_compatibility_flags: int  # 32 bits, flag[0] in the most significant bit
    constraint_indicator_flags: int  # 48 bits, progressive_source_flag first
    level_idc: int
    chroma_format_idc: int
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    coded_width: int
    coded_height: int
    width: int
    height: int
    conformance_window: tuple[int, int, int, int]  # left, right, top, bottom in luma samples

    @property
    def tier(self) -> str:
        """``"Main"`` or ``"High"``."""
        return "High" if self.tier_flag else "Main"

    @property
    def codec_string(self) -> str:
        """The RFC 6381 ``codecs`` value per ISO/IEC 14496-15 E.3, e.g. ``hvc1.1.6.L93.B0``."""
        space = ("", "A", "B", "C")[self.profile_space]
        compat = int(f"{self.profile_compatibility_flags:032b}"[::-1], 2)
        constraint_bytes = list(self.constraint_indicator_flags.to_bytes(6, "big"))
        while constraint_bytes and constraint_bytes[-1] == 0:
            constraint_bytes.pop()
        parts = [
            "hvc1",
            f"{space}{self.profile_idc}",
            f"{compat:X}",
            f"{'H' if self.tier_flag else 'L'}{self.level_idc}",
            *(f"{b:X}" for b in constraint_bytes),
        ]
        return ".".join(parts)


def parse_h265_sps(nal: BytesLike) -> H265Sps:
    """Parse an H.265 SPS NAL unit (2-byte header included) per ITU-T H.265 7.3.2.2.1."""
    if len(nal) < 2:
        raise BitstreamError(f"H.265 SPS: NAL unit of {len(nal)} bytes has no full header")
    kind = (nal[0] >> 1) & 0x3F
    if kind != H265NalType.SPS:
        raise BitstreamError(f"H.265 SPS: NAL unit type is {kind}, not 33")
    r = BitReader(nal_to_rbsp(nal, "h265"), "H.265 SPS")
    vps_id = r.read_bits(4)
    max_sub_layers_minus1 = r.read_bits(3)
    if max_sub_layers_minus1 > 6:
        raise BitstreamError("H.265 SPS: sps_max_sub_layers_minus1 = 7 is out of range (max 6)")
    temporal_id_nesting = r.read_flag()
    # profile_tier_level(1, sps_max_sub_layers_minus1), H.265 7.3.3.
    profile_space = r.read_bits(2)
    tier_flag = r.read_flag()
    profile_idc = r.read_bits(5)
    compatibility = r.read_bits(32)
    constraints = r.read_bits(48)
    level_idc = r.read_bits(8)
    sub_layer_flags = [(r.read_flag(), r.read_flag()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.skip_bits(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in sub_layer_flags:
        if profile_present:
            r.skip_bits(88)  # sub_layer profile space .. inbld flag
        if level_present:
            r.skip_bits(8)  # sub_layer_level_idc
    sps_id = r.read_ue_max("sps_seq_parameter_set_id", 15)
    chroma_format_idc = r.read_ue_max("chroma_format_idc", 3)
    separate_colour_plane = chroma_format_idc == 3 and r.read_flag()
    coded_width = r.read_ue()
    coded_height = r.read_ue()
    if coded_width == 0 or coded_height == 0:
        raise BitstreamError(f"H.265 SPS: picture size {coded_width}x{coded_height} is empty")
    window = (0, 0, 0, 0)
    if r.read_flag():  # conformance_window_flag
        offsets = tuple(r.read_ue() for _ in range(4))
        # H.265 Table 6-1: SubWidthC/SubHeightC are 1 when ChromaArrayType is 0 or 3.
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        sub_width_c = 2 if chroma_array_type in (1, 2) else 1
        sub_height_c = 2 if chroma_array_type == 1 else 1
        window = (
            sub_width_c * offsets[0],
            sub_width_c * offsets[1],
            sub_height_c * offsets[2],
            sub_height_c * offsets[3],
        )
    bit_depth_luma = 8 + r.read_ue_max("bit_depth_luma_minus8", 8)
    bit_depth_chroma = 8 + r.read_ue_max("bit_depth_chroma_minus8", 8)
    width = coded_width - window[0] - window[1]
    height = coded_height - window[2] - window[3]
    if width <= 0 or height <= 0:
        raise BitstreamError(
            f"H.265 SPS: conformance window {window} leaves no picture of "
            f"{coded_width}x{coded_height}"
        )
    return H265Sps(
        vps_id=vps_id,
        sps_id=sps_id,
        max_sub_layers=max_sub_layers_minus1 + 1,
        temporal_id_nesting=temporal_id_nesting,
        profile_space=profile_space,
        tier_flag=tier_flag,
        profile_idc=profile_idc,
        profile_compatibility_flags=compatibility,
        constraint_indicator_flags=constraints,
        level_idc=level_idc,
        chroma_format_idc=chroma_format_idc,
        separate_colour_plane=separate_colour_plane,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        coded_width=coded_width,
        coded_height=coded_height,
        width=width,
        height=height,
        conformance_window=window,
    )


# ---------------------------------------------------------------------------------------
# Decoder configuration records (Matroska CodecPrivate)


class _RecordReader:
    """Bounds-checked byte reader for avcC/hvcC records."""

    def __init__(self, data: BytesLike, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, name: str) -> bytes:
        if count > self.left:
            raise BitstreamError(
                f"{self.what} truncated: {name} needs {count} bytes at offset {self.pos}, "
                f"{self.left} left"
            )
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return int.from_bytes(self.take(2, name), "big")

    def nal_units(self, count: int, name: str) -> tuple[bytes, ...]:
        return tuple(self.take(self.u16(f"{name} length"), name) for _ in range(count))


def _u16_prefixed(nal_units: Sequence[bytes], what: str) -> list[bytes]:
    parts: list[bytes] = []
    for nal in nal_units:
        if len(nal) > 0xFFFF:
            raise BitstreamError(f"{what} of {len(nal)} bytes does not fit a 16-bit length")
        parts += (len(nal).to_bytes(2, "big"), bytes(nal))
    return parts


@dataclass(frozen=True)
class AvcDecoderConfig:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1), the avcC CodecPrivate.

    ``chroma_format_idc`` and the bit depths are ``None`` when the record has no
    high-profile extension. ``bytes(config)`` writes the record.
    """

    profile_idc: int
    profile_compatibility: int
    level_idc: int
    length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]
    chroma_format_idc: int | None = None
    bit_depth_luma: int | None = None
    bit_depth_chroma: int | None = None
    sps_ext: tuple[bytes, ...] = ()

    @classmethod
    def parse(cls, data: BytesLike) -> AvcDecoderConfig:
        """Parse an avcC record; :class:`BitstreamError` on truncated or garbage data."""
        r = _RecordReader(data, "avcC record")
        version = r.u8("configurationVersion")
        if version != 1:
            raise BitstreamError(
                f"avcC record: configurationVersion is {version}, not 1 "
                "(Annex-B data instead of an avcC record?)"
            )
        profile_idc = r.u8("AVCProfileIndication")
        compatibility = r.u8("profile_compatibility")
        level_idc = r.u8("AVCLevelIndication")
        length_size = (r.u8("lengthSizeMinusOne") & 0x03) + 1
        if length_size == 3:
            raise BitstreamError("avcC record: lengthSizeMinusOne = 2 is not allowed")
        sps = r.nal_units(r.u8("numOfSequenceParameterSets") & 0x1F, "SPS")
        pps = r.nal_units(r.u8("numOfPictureParameterSets"), "PPS")
        chroma = depth_luma = depth_chroma = None
        sps_ext: tuple[bytes, ...] = ()
        # The extension is defined for profiles 100/110/122/144; some writers add it for
        # every non-baseline/main/extended profile, so read it whenever it is present.
        if r.left >= 4:
            chroma = r.u8("chroma_format") & 0x03
            depth_luma = (r.u8("bit_depth_luma_minus8") & 0x07) + 8
            depth_chroma = (r.u8("bit_depth_chroma_minus8") & 0x07) + 8
            sps_ext = r.nal_units(r.u8("numOfSequenceParameterSetExt"), "SPS extension")
        if r.left:
            raise BitstreamError(f"avcC record: {r.left} unexpected bytes at offset {r.pos}")
        return cls(
            profile_idc=profile_idc,
            profile_compatibility=compatibility,
            level_idc=level_idc,
            length_size=length_size,
            sps=sps,
            pps=pps,
            chroma_format_idc=chroma,
            bit_depth_luma=depth_luma,
            bit_depth_chroma=depth_chroma,
            sps_ext=sps_ext,
        )

    def __bytes__(self) -> bytes:
        _check_length_size(self.length_size)
        if len(self.sps) > 31 or len(self.pps) > 255 or len(self.sps_ext) > 255:
            raise BitstreamError("avcC record: too many parameter sets (max 31 SPS, 255 PPS)")
        parts = [
            bytes(
                (
                    1,
                    self.profile_idc,
                    self.profile_compatibility,
                    self.level_idc,
                    0xFC | (self.length_size - 1),  # reserved '111111'
                    0xE0 | len(self.sps),  # reserved '111'
                )
            ),
            *_u16_prefixed(self.sps, "SPS"),
            bytes((len(self.pps),)),
            *_u16_prefixed(self.pps, "PPS"),
        ]
        if self.chroma_format_idc is not None:
            parts.append(
                bytes(
                    (
                        0xFC | self.chroma_format_idc,
                        0xF8 | ((self.bit_depth_luma or 8) - 8),
                        0xF8 | ((self.bit_depth_chroma or 8) - 8),
                        len(self.sps_ext),
                    )
                )
            )
            parts += _u16_prefixed(self.sps_ext, "SPS extension")
        return b"".join(parts)


def _check_types(nal_units: Sequence[BytesLike], expected: int, codec: Codec, name: str) -> None:
    for nal in nal_units:
        kind = nal_type(nal, codec)
        if kind != expected:
            raise BitstreamError(f"expected {name} NAL units (type {expected}), got type {kind}")


def build_avcc(
    sps_list: Sequence[BytesLike], pps_list: Sequence[BytesLike], length_size: int = 4
) -> bytes:
    """Build an avcC record (the CodecPrivate of ``V_MPEG4/ISO/AVC``) from SPS/PPS NAL units.

    Profile, compatibility and level bytes are copied from the first SPS; profiles 100,
    110, 122 and 144 get the chroma format / bit depth extension (ISO/IEC 14496-15
    5.3.3.1.2), read from that SPS.
    """
    if not sps_list or not pps_list:
        raise BitstreamError("avcC record needs at least one SPS and one PPS")
    _check_types(sps_list, H264NalType.SPS, "h264", "SPS")
    _check_types(pps_list, H264NalType.PPS, "h264", "PPS")
    sps = parse_h264_sps(sps_list[0])
    extension = sps.profile_idc in _AVCC_EXTENSION_PROFILES
    return bytes(
        AvcDecoderConfig(
            profile_idc=sps.profile_idc,
            profile_compatibility=sps.constraint_flags,
            level_idc=sps.level_idc,
            length_size=length_size,
            sps=tuple(bytes(n) for n in sps_list),
            pps=tuple(bytes(n) for n in pps_list),
            chroma_format_idc=sps.chroma_format_idc if extension else None,
            bit_depth_luma=sps.bit_depth_luma if extension else None,
            bit_depth_chroma=sps.bit_depth_chroma if extension else None,
        )
    )


def parse_avcc(data: BytesLike) -> AvcDecoderConfig:
    """Parse an avcC record (see :meth:`AvcDecoderConfig.parse`)."""
    return AvcDecoderConfig.parse(data)


@dataclass(frozen=True)
class HvccArray:
    """One NAL unit array of an hvcC record: all NAL units of one type."""

    nal_unit_type: int
    nal_units: tuple[bytes, ...]
    complete: bool = True  # array_completeness: no other NAL units of this type in-band


@dataclass(frozen=True)
class HevcDecoderConfig:
    """HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1), the hvcC CodecPrivate.

    ``bytes(config)`` writes the record.
    """

    general_profile_space: int
    general_tier_flag: bool
    general_profile_idc: int
    general_profile_compatibility_flags: int
    general_constraint_indicator_flags: int
    general_level_idc: int
    min_spatial_segmentation_idc: int
    parallelism_type: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    avg_frame_rate: int
    constant_frame_rate: int
    num_temporal_layers: int
    temporal_id_nested: bool
    length_size: int
    arrays: tuple[HvccArray, ...] = field(default=())

    def nal_units_of(self, kind: int) -> tuple[bytes, ...]:
        """All NAL units of one type across the record's arrays."""
        return tuple(n for a in self.arrays if a.nal_unit_type == kind for n in a.nal_units)

    @property
    def vps(self) -> tuple[bytes, ...]:
        """Video parameter sets."""
        return self.nal_units_of(H265NalType.VPS)

    @property
    def sps(self) -> tuple[bytes, ...]:
        """Sequence parameter sets."""
        return self.nal_units_of(H265NalType.SPS)

    @property
    def pps(self) -> tuple[bytes, ...]:
        """Picture parameter sets."""
        return self.nal_units_of(H265NalType.PPS)

    @classmethod
    def parse(cls, data: BytesLike) -> HevcDecoderConfig:
        """Parse an hvcC record; :class:`BitstreamError` on truncated or garbage data."""
        r = _RecordReader(data, "hvcC record")
        version = r.u8("configurationVersion")
        if version != 1:
            raise BitstreamError(
                f"hvcC record: configurationVersion is {version}, not 1 "
                "(Annex-B data instead of an hvcC record?)"
            )
        ptl = r.u8("general_profile_space/tier/profile")
        compatibility = int.from_bytes(r.take(4, "general_profile_compatibility_flags"), "big")
        constraints = int.from_bytes(r.take(6, "general_constraint_indicator_flags"), "big")
        level_idc = r.u8("general_level_idc")
        segmentation = r.u16("min_spatial_segmentation_idc") & 0x0FFF
        parallelism = r.u8("parallelismType") & 0x03
        chroma = r.u8("chromaFormat") & 0x03
        depth_luma = (r.u8("bitDepthLumaMinus8") & 0x07) + 8
        depth_chroma = (r.u8("bitDepthChromaMinus8") & 0x07) + 8
        frame_rate = r.u16("avgFrameRate")
        packed = r.u8("constantFrameRate/numTemporalLayers/lengthSizeMinusOne")
        length_size = (packed & 0x03) + 1
        if length_size == 3:
            raise BitstreamError("hvcC record: lengthSizeMinusOne = 2 is not allowed")
        arrays = []
        for _ in range(r.u8("numOfArrays")):
            head = r.u8("NAL_unit_type")
            nal_units = r.nal_units(r.u16("numNalus"), f"type {head & 0x3F} NAL unit")
            arrays.append(HvccArray(head & 0x3F, nal_units, bool(head & 0x80)))
        if r.left:
            raise BitstreamError(f"hvcC record: {r.left} unexpected bytes at offset {r.pos}")
        return cls(
            general_profile_space=ptl >> 6,
            general_tier_flag=bool(ptl & 0x20),
            general_profile_idc=ptl & 0x1F,
            general_profile_compatibility_flags=compatibility,
            general_constraint_indicator_flags=constraints,
            general_level_idc=level_idc,
            min_spatial_segmentation_idc=segmentation,
            parallelism_type=parallelism,
            chroma_format_idc=chroma,
            bit_depth_luma=depth_luma,
            bit_depth_chroma=depth_chroma,
            avg_frame_rate=frame_rate,
            constant_frame_rate=packed >> 6,
            num_temporal_layers=(packed >> 3) & 0x07,
            temporal_id_nested=bool(packed & 0x04),
            length_size=length_size,
            arrays=tuple(arrays),
        )

    def __bytes__(self) -> bytes:
        _check_length_size(self.length_size)
        if len(self.arrays) > 255:
            raise BitstreamError("hvcC record: more than 255 NAL unit arrays")
        parts = [
            bytes(
                (
                    1,
                    (self.general_profile_space << 6)
                    | (self.general_tier_flag << 5)
                    | self.general_profile_idc,
                )
            ),
            self.general_profile_compatibility_flags.to_bytes(4, "big"),
            self.general_constraint_indicator_flags.to_bytes(6, "big"),
            bytes((self.general_level_idc,)),
            (0xF000 | self.min_spatial_segmentation_idc).to_bytes(2, "big"),  # '1111'
            bytes(
                (
                    0xFC | self.parallelism_type,  # reserved '111111'
                    0xFC | self.chroma_format_idc,
                    0xF8 | (self.bit_depth_luma - 8),  # reserved '11111'
                    0xF8 | (self.bit_depth_chroma - 8),
                )
            ),
            self.avg_frame_rate.to_bytes(2, "big"),
            bytes(
                (
                    (self.constant_frame_rate << 6)
                    | (self.num_temporal_layers << 3)
                    | (self.temporal_id_nested << 2)
                    | (self.length_size - 1),
                    len(self.arrays),
                )
            ),
        ]
        for array in self.arrays:
            if len(array.nal_units) > 0xFFFF:
                raise BitstreamError("hvcC record: more than 65535 NAL units in one array")
            parts.append(bytes(((array.complete << 7) | array.nal_unit_type,)))
            parts.append(len(array.nal_units).to_bytes(2, "big"))
            parts += _u16_prefixed(array.nal_units, f"type {array.nal_unit_type} NAL unit")
        return b"".join(parts)


def build_hvcc(
    vps_list: Sequence[BytesLike],
    sps_list: Sequence[BytesLike],
    pps_list: Sequence[BytesLike],
    length_size: int = 4,
) -> bytes:
    """Build an hvcC record (the CodecPrivate of ``V_MPEGH/ISO/HEVC``).

    General profile, tier, level, chroma format, bit depths and temporal layers come from
    the first SPS (its profile_tier_level). All three arrays are marked complete, as for
    the ``hvc1`` sample entry. min_spatial_segmentation_idc, parallelismType and the frame
    rate fields are written as 0 ("unknown"), which ISO/IEC 14496-15 8.3.3.1.3 allows.
    """
    if not vps_list or not sps_list or not pps_list:
        raise BitstreamError("hvcC record needs at least one VPS, one SPS and one PPS")
    _check_types(vps_list, H265NalType.VPS, "h265", "VPS")
    _check_types(sps_list, H265NalType.SPS, "h265", "SPS")
    _check_types(pps_list, H265NalType.PPS, "h265", "PPS")
    sps = parse_h265_sps(sps_list[0])
    arrays = tuple(
        HvccArray(kind, tuple(bytes(n) for n in nals))
        for kind, nals in (
            (H265NalType.VPS, vps_list),
            (H265NalType.SPS, sps_list),
            (H265NalType.PPS, pps_list),
        )
    )
    return bytes(
        HevcDecoderConfig(
            general_profile_space=sps.profile_space,
            general_tier_flag=sps.tier_flag,
            general_profile_idc=sps.profile_idc,
            general_profile_compatibility_flags=sps.profile_compatibility_flags,
            general_constraint_indicator_flags=sps.constraint_indicator_flags,
            general_level_idc=sps.level_idc,
            min_spatial_segmentation_idc=0,
            parallelism_type=0,
            chroma_format_idc=sps.chroma_format_idc,
            bit_depth_luma=sps.bit_depth_luma,
            bit_depth_chroma=sps.bit_depth_chroma,
            avg_frame_rate=0,
            constant_frame_rate=0,
            num_temporal_layers=sps.max_sub_layers,
            temporal_id_nested=sps.temporal_id_nesting,
            length_size=length_size,
            arrays=arrays,
        )
    )


def parse_hvcc(data: BytesLike) -> HevcDecoderConfig:
    """Parse an hvcC record (see :meth:`HevcDecoderConfig.parse`)."""
    return HevcDecoderConfig.parse(data)


# ---------------------------------------------------------------------------------------
# Parameter sets from a stream


@dataclass(frozen=True)
class ParameterSets:
    """The distinct parameter sets found in some NAL units, in first-seen order."""

    vps: tuple[bytes, ...] = ()
    sps: tuple[bytes, ...] = ()
    pps: tuple[bytes, ...] = ()


def parameter_sets(nal_units: Iterable[BytesLike], codec: Codec = "h264") -> ParameterSets:
    """Collect the distinct VPS/SPS/PPS NAL units (e.g. from a stream's first access unit)."""
    rules = _rules(codec)
    found: dict[int, dict[bytes, None]] = {rules.sps_type: {}, rules.pps_type: {}}
    if rules.vps_type is not None:
        found[rules.vps_type] = {}
    for nal in nal_units:
        if len(nal) == 0:
            continue
        bucket = found.get(rules.type_of(nal[0]))
        if bucket is not None:
            bucket.setdefault(bytes(nal))
    vps = tuple(found[rules.vps_type]) if rules.vps_type is not None else ()
    return ParameterSets(vps, tuple(found[rules.sps_type]), tuple(found[rules.pps_type]))


def build_codec_private(nal_units: Iterable[BytesLike], codec: Codec = "h264") -> bytes:
    """avcC/hvcC CodecPrivate from the parameter sets found among ``nal_units``."""
    sets = parameter_sets(nal_units, codec)
    if codec == "h265":
        return build_hvcc(sets.vps, sets.sps, sets.pps)
    return build_avcc(sets.sps, sets.pps)
