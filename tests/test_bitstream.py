"""Tests for kvs_toolkit.bitstream on real H.264/H.265 streams made with PyAV at test time.

The facts checked come from outside the module under test: the encoder's own packets
(one per access unit) and key-frame flags, FFmpeg's H.264/HEVC parsers, the avcC/hvcC
records FFmpeg's mp4 muxer writes, and FFmpeg's decoders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
import pytest
from av.video.codeccontext import VideoCodecContext
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_toolkit import bitstream as bs
from kvs_toolkit.errors import BitstreamError

# ---------------------------------------------------------------------------------------
# Real streams


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


HAS_X265 = _has_encoder("libx265")
needs_x265 = pytest.mark.skipif(not HAS_X265, reason="this FFmpeg build has no libx265 encoder")

ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    # codec -> (encoder, FFmpeg decoder/parser name, encoder options)
    "h264": ("libx264", "h264", {"preset": "veryfast"}),
    "h265": ("libx265", "hevc", {"preset": "ultrafast", "x265-params": "log-level=none"}),
}


@dataclass(frozen=True)
class Encoded:
    codec: bs.Codec
    width: int
    height: int
    packets: tuple[bytes, ...]  # Annex-B, one access unit each, in decoding order
    keyframes: tuple[bool, ...]  # packet.is_keyframe as the encoder set it

    @property
    def stream(self) -> bytes:
        return b"".join(self.packets)

    @property
    def decoder(self) -> str:
        return ENCODERS[self.codec][1]


def _frames(
    width: int, height: int, count: int, pix_fmt: str = "yuv420p"
) -> Iterator[av.VideoFrame]:
    """A moving gradient with a bouncing block and a little fixed noise."""
    rng = np.random.default_rng(20240601)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1
    ).astype(np.uint8)
    noise = rng.integers(0, 6, size=base.shape, dtype=np.uint8)
    for i in range(count):
        image = np.roll(base, 5 * i, axis=1) + noise
        top, left = (7 * i) % (height // 2), (11 * i) % (width // 2)
        image[top : top + height // 4, left : left + width // 4] = (255 - 8 * i) % 256
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
        frame.pts = i
        yield frame


def _video_context(name: str, mode: Literal["r", "w"]) -> VideoCodecContext:
    ctx = av.CodecContext.create(name, mode)
    assert isinstance(ctx, VideoCodecContext)
    return ctx


def _configure(ctx: VideoCodecContext, width: int, height: int, gop: int) -> None:
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.framerate = Fraction(30)
    ctx.gop_size = gop


def _encode(
    codec: bs.Codec,
    width: int,
    height: int,
    *,
    count: int = 30,
    gop: int = 10,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
) -> Encoded:
    encoder, _, defaults = ENCODERS[codec]
    ctx = _video_context(encoder, "w")
    _configure(ctx, width, height, gop)
    ctx.pix_fmt = pix_fmt
    ctx.options = {**defaults, **(options or {})}
    packets = []
    for frame in _frames(width, height, count, pix_fmt):
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    return Encoded(
        codec=codec,
        width=width,
        height=height,
        packets=tuple(bytes(p) for p in packets),
        keyframes=tuple(p.is_keyframe for p in packets),
    )


def _mp4_codec_private(codec: bs.Codec, width: int, height: int, gop: int = 10) -> bytes:
    """Encode into mp4 with FFmpeg's muxer and read back the avcC/hvcC it wrote."""
    encoder, _, options = ENCODERS[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(encoder, rate=30)
        _configure(stream.codec_context, width, height, gop)
        stream.codec_context.options = dict(options)
        for frame in _frames(width, height, 3):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf) as container:
        extradata = container.streams.video[0].codec_context.extradata
    assert extradata is not None
    return bytes(extradata)


STREAM_PARAMS = [
    pytest.param(("h264", 642, 362), id="h264-642x362"),
    pytest.param(("h264", 1280, 720), id="h264-1280x720"),
    pytest.param(("h265", 642, 362), id="h265-642x362", marks=needs_x265),
    pytest.param(("h265", 1280, 720), id="h265-1280x720", marks=needs_x265),
]
CODEC_PARAMS = [
    pytest.param("h264", id="h264"),
    pytest.param("h265", id="h265", marks=needs_x265),
]


@pytest.fixture(scope="module", params=STREAM_PARAMS)
def encoded(request: pytest.FixtureRequest) -> Encoded:
    codec, width, height = request.param
    return _encode(codec, width, height)


@pytest.fixture(scope="module", params=CODEC_PARAMS)
def short_encoded(request: pytest.FixtureRequest) -> Encoded:
    """A few small frames: short enough to feed one byte at a time."""
    return _encode(request.param, 128, 96, count=8, gop=3)


def _nals(data: bytes) -> list[bytes]:
    return [bytes(n) for n in bs.split_annexb(data)]


def _parse_sps(codec: bs.Codec, nal: bytes) -> bs.H264Sps | bs.H265Sps:
    return bs.parse_h264_sps(nal) if codec == "h264" else bs.parse_h265_sps(nal)


def _feed_in_pieces(
    splitter: bs.AccessUnitSplitter, data: bytes, cuts: Sequence[int]
) -> list[bs.AccessUnit]:
    units: list[bs.AccessUnit] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        units += splitter.feed(data[previous:cut])
        previous = cut
    return units + splitter.flush()


# ---------------------------------------------------------------------------------------
# NAL units and framing


def test_split_annexb_matches_encoder_packets(encoded: Encoded) -> None:
    whole = _nals(encoded.stream)
    per_packet = [nal for packet in encoded.packets for nal in _nals(packet)]
    assert whole == per_packet
    assert all(nal[0] & 0x80 == 0 for nal in whole)  # forbidden_zero_bit
    assert all(nal[-1] != 0 for nal in whole)  # start codes and zero padding all removed
    types = {bs.nal_type(nal, encoded.codec) for nal in whole}
    if encoded.codec == "h264":
        assert {bs.H264NalType.SPS, bs.H264NalType.PPS, bs.H264NalType.IDR} <= types
    else:
        assert {bs.H265NalType.VPS, bs.H265NalType.SPS, bs.H265NalType.PPS} <= types
    assert _nals(bs.join_annexb(whole)) == whole


def test_split_annexb_returns_views_of_the_input(short_encoded: Encoded) -> None:
    data = bytearray(short_encoded.stream)
    views = bs.split_annexb(data)
    assert all(isinstance(v, memoryview) and v.obj is data for v in views)


def test_split_annexb_mixed_start_codes_and_zero_padding(short_encoded: Encoded) -> None:
    nals = _nals(short_encoded.stream)
    rng = random.Random(7)
    parts = [b"\x00" * 3]  # leading_zero_8bits
    for nal in nals:
        parts.append(rng.choice([b"\x00\x00\x01", b"\x00\x00\x00\x01"]))
        parts.append(nal)
        # trailing_zero_8bits, including one run long enough for the slow path
        parts.append(b"\x00" * rng.choice([0, 0, 1, 2, 5, 300]))
    assert _nals(b"".join(parts)) == nals


def test_split_annexb_errors() -> None:
    assert bs.split_annexb(b"") == []
    assert bs.split_annexb(b"\x00\x00") == []
    with pytest.raises(BitstreamError, match="no Annex-B start code in 3 bytes"):
        bs.split_annexb(b"\x12\x34\x56")
    with pytest.raises(BitstreamError, match=r"non-zero byte at offset 1 before the first start"):
        bs.split_annexb(b"\x00\x07\x00\x00\x01\x09\xf0")
    # Two start codes in a row: the empty NAL unit between them is dropped.
    assert _nals(b"\x00\x00\x01\x00\x00\x01\x09\xf0") == [b"\x09\xf0"]


def test_split_annexb_zero_only_nal_units_are_dropped() -> None:
    # A "NAL unit" of only zeros between two start codes is all trailing_zero_8bits
    # (H.264 B.1.2): every run length, including those the windowed strip doubles past.
    for run in (1, 2, 3, 4, 5, 8, 9, 17, 1000, 70_000):
        data = b"\x00\x00\x01" + bytes(run) + b"\x00\x00\x01\x09\xf0"
        assert _nals(data) == [b"\x09\xf0"], run
        units = _feed_in_pieces(bs.AccessUnitSplitter("h264"), data, [3, 4, 5 + run // 2])
        assert [u.nal_units for u in units] == [(b"\x09\xf0",)], run


def test_split_annexb_long_zero_runs_keep_the_last_non_zero_byte() -> None:
    # The windowed strip must stop exactly at the last non-zero byte, wherever the window
    # boundaries fall, and never strip into the NAL header.
    for payload_size in (1, 2, 7, 8, 9, 100):
        payload = bytes(range(1, payload_size + 1))
        for run in (0, 1, 2, 7, 8, 9, 15, 16, 17, 4095, 300_000):
            data = b"\x00\x00\x01\x65" + payload + bytes(run) + b"\x00\x00\x00\x01\x41\x9a"
            assert _nals(data) == [b"\x65" + payload, b"\x41\x9a"], (payload_size, run)


def test_split_annexb_dense_start_codes() -> None:
    # Pathological input: a NAL unit every 5 bytes, with empty ones mixed in.
    rng = random.Random(3)
    nals = [
        bytes((rng.choice([0x06, 0x09, 0x41, 0x65]), rng.randrange(1, 256))) for _ in range(20_000)
    ]
    parts = []
    for nal in nals:
        parts.append(
            rng.choice([b"\x00\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x01\x00\x00\x01"])
        )
        parts.append(nal)
    data = b"".join(parts)
    assert _nals(data) == nals
    units = _feed_in_pieces(bs.AccessUnitSplitter("h264"), data, range(997, len(data), 997))
    assert [nal for u in units for nal in u.nal_units] == nals


def test_avcc_annexb_round_trip_is_byte_identical(encoded: Encoded) -> None:
    for packet in encoded.packets:
        avcc = bs.annexb_to_avcc(packet)
        annexb = bs.avcc_to_annexb(avcc)
        assert bs.annexb_to_avcc(annexb) == avcc
        assert [bytes(n) for n in bs.split_length_prefixed(avcc)] == _nals(packet)
        assert _nals(annexb) == _nals(packet)


def test_length_prefixed_sizes(short_encoded: Encoded) -> None:
    nals = _nals(short_encoded.stream)
    for size in (2, 4):
        data = bs.join_length_prefixed(nals, size)
        assert [bytes(n) for n in bs.split_length_prefixed(data, size)] == nals
        assert bs.avcc_to_annexb(data, size) == bs.join_annexb(nals)
    big = max(nals, key=len)
    assert len(big) > 255
    with pytest.raises(BitstreamError, match=r"does not fit a 1-byte length field"):
        bs.join_length_prefixed([big], 1)
    with pytest.raises(BitstreamError, match="must be 1, 2 or 4 bytes, not 3"):
        bs.split_length_prefixed(b"", 3)


def test_split_length_prefixed_errors() -> None:
    with pytest.raises(BitstreamError, match=r"length 16 at offset 5 exceeds the 3 bytes left"):
        bs.split_length_prefixed(b"\x00\x00\x00\x01\x65\x00\x00\x00\x10\x01\x02\x03")
    with pytest.raises(BitstreamError, match=r"truncated 4-byte NAL length at offset 0"):
        bs.split_length_prefixed(b"\x00\x00")
    assert [bytes(n) for n in bs.split_length_prefixed(b"\x00\x00\x00\x01\x09", 2)] == [b"\x09"]


# ---------------------------------------------------------------------------------------
# Access units


def test_splitter_matches_encoder_and_ffmpeg_parser(encoded: Encoded) -> None:
    splitter = bs.AccessUnitSplitter(encoded.codec)
    units = splitter.feed(encoded.stream) + splitter.flush()
    assert len(units) == len(encoded.packets)
    assert [u.nal_units for u in units] == [tuple(_nals(p)) for p in encoded.packets]
    # FFmpeg's own parser finds the same access units in the same stream.
    parser = av.CodecContext.create(encoded.decoder, "r")
    parsed = parser.parse(encoded.stream) + parser.parse(None)
    assert [u.to_annexb() for u in units] == [bs.join_annexb(_nals(bytes(p))) for p in parsed]


def test_splitter_random_splits_give_the_same_units(encoded: Encoded) -> None:
    whole = bs.AccessUnitSplitter(encoded.codec)
    expected = whole.feed(encoded.stream) + whole.flush()
    data = encoded.stream + b"\x00\x00"  # trailing_zero_8bits at end of stream
    rng = random.Random(len(data))
    for _ in range(3):
        cuts = [rng.randrange(len(data)) for _ in range(rng.randrange(1, 200))]
        assert _feed_in_pieces(bs.AccessUnitSplitter(encoded.codec), data, cuts) == expected


def test_splitter_one_byte_at_a_time(short_encoded: Encoded) -> None:
    data = short_encoded.stream
    expected = [tuple(_nals(p)) for p in short_encoded.packets]
    splitter = bs.AccessUnitSplitter(short_encoded.codec)
    units = _feed_in_pieces(splitter, data, range(1, len(data)))
    assert [u.nal_units for u in units] == expected
    assert [u.keyframe for u in units] == list(short_encoded.keyframes)
    # Reusable after flush, and an access unit leaves as soon as the next one begins.
    units = []
    for i, packet in enumerate(short_encoded.packets):
        units += splitter.feed(packet)
        assert len(units) == i  # packet i is out once packet i + 1 starts
    assert len(units + splitter.flush()) == len(expected)


def test_splitter_start_code_straddling_every_split_offset() -> None:
    # Two chunks, cut at every offset: start codes (3- and 4-byte), leading zeros,
    # trailing zeros and NAL headers all get split across the chunk boundary.
    data = (
        b"\x00\x00\x00\x00\x01\x09\xf0\x00\x00\x00\x01\x67\x42\x00\x1e\x00\x00\x01\x68\xce"
        b"\x00\x00\x01\x65\x88\x84\x00\x00\x00\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x41\x9a\x00"
    )
    expected = [
        (b"\x09\xf0", b"\x67\x42\x00\x1e", b"\x68\xce", b"\x65\x88\x84"),
        (b"\x09\xf0", b"\x41\x9a"),
    ]
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1, 5):
            splitter = bs.AccessUnitSplitter("h264")
            units = _feed_in_pieces(splitter, data, [first, second])
            assert [u.nal_units for u in units] == expected, (first, second)
            assert [u.keyframe for u in units] == [True, False]


def test_splitter_is_bounded(encoded: Encoded) -> None:
    largest = max(len(p) for p in encoded.packets)
    limit = largest // 2
    splitter = bs.AccessUnitSplitter(encoded.codec, max_access_unit_size=limit)
    with pytest.raises(BitstreamError, match=rf"exceeds max_access_unit_size \(\d+ > {limit} "):
        splitter.feed(encoded.stream)
    with pytest.raises(BitstreamError, match="stopped after an earlier error"):
        splitter.feed(b"\x00\x00\x01")
    # Enough for every access unit: no error.
    roomy = bs.AccessUnitSplitter(encoded.codec, max_access_unit_size=largest)
    assert len(roomy.feed(encoded.stream) + roomy.flush()) == len(encoded.packets)


def test_splitter_stops_an_endless_nal_unit_early() -> None:
    splitter = bs.AccessUnitSplitter("h264", max_access_unit_size=64 * 1024)
    splitter.feed(b"\x00\x00\x01\x65\x88")
    chunk = b"\xff" * 4096
    fed = 0
    with pytest.raises(BitstreamError, match="access unit starting at stream offset 0 exceeds"):
        while fed < 1024 * 1024:
            splitter.feed(chunk)
            fed += len(chunk)
    assert fed < 64 * 1024  # raised on the chunk that crossed the limit, not at the end


def test_splitter_leading_garbage() -> None:
    splitter = bs.AccessUnitSplitter("h264")
    assert splitter.feed(b"\x00\x00") == []
    with pytest.raises(BitstreamError, match="non-zero byte at stream offset 3 before the first"):
        splitter.feed(b"\x00\x42\x00\x00\x00\x01")
    empty = bs.AccessUnitSplitter("h265")
    assert empty.feed(b"\x00" * 10) == []
    assert empty.flush() == []
    with pytest.raises(ValueError, match="unknown codec"):
        bs.AccessUnitSplitter("vp8")  # type: ignore[arg-type]


def test_keyframes_match_the_encoder(encoded: Encoded) -> None:
    assert sum(encoded.keyframes) >= 2  # gop_size=10 over 30 frames
    flags = [bs.is_keyframe(bs.split_annexb(p), encoded.codec) for p in encoded.packets]
    assert flags == list(encoded.keyframes)
    splitter = bs.AccessUnitSplitter(encoded.codec)
    units = splitter.feed(encoded.stream) + splitter.flush()
    assert [u.keyframe for u in units] == list(encoded.keyframes)


def test_nal_type_helpers() -> None:
    assert bs.nal_type(b"\x65", "h264") == bs.H264NalType.IDR
    assert bs.is_keyframe_nal(b"\x65\x88", "h264")
    assert not bs.is_keyframe_nal(b"\x41\x9a", "h264")
    assert bs.is_vcl_nal(b"\x41\x9a", "h264")
    assert not bs.is_vcl_nal(b"\x67", "h264")
    assert bs.nal_type(b"\x40\x01", "h265") == bs.H265NalType.VPS
    assert bs.is_keyframe_nal(b"\x2a\x01", "h265")  # CRA_NUT (21) is IRAP
    assert bs.is_keyframe_nal(b"\x26\x01", "h265")  # IDR_W_RADL (19)
    assert not bs.is_keyframe_nal(b"\x02\x01", "h265")  # TRAIL_R
    assert bs.is_vcl_nal(b"\x02\x01", "h265")
    assert not bs.is_vcl_nal(b"\x4e\x01", "h265")  # prefix SEI
    with pytest.raises(BitstreamError, match="empty NAL unit"):
        bs.nal_type(b"")


# ---------------------------------------------------------------------------------------
# SPS and CodecPrivate


def test_sps_gives_the_encoded_size(encoded: Encoded) -> None:
    sets = bs.parameter_sets(bs.split_annexb(encoded.stream), encoded.codec)
    assert len(sets.sps) == 1
    assert len(sets.pps) == 1
    sps = _parse_sps(encoded.codec, sets.sps[0])
    assert (sps.width, sps.height) == (encoded.width, encoded.height)
    assert sps.chroma_format_idc == 1
    assert (sps.bit_depth_luma, sps.bit_depth_chroma) == (8, 8)
    if isinstance(sps, bs.H264Sps):
        assert sps.profile_idc == 100  # x264 picks High for 8-bit 4:2:0
        assert sps.coded_width % 16 == 0
        assert sps.coded_height % 16 == 0
        assert sps.frame_mbs_only
    else:
        assert len(sets.vps) == 1
        assert sps.profile_idc == 1  # Main
        assert sps.tier == "Main"
        assert sps.coded_width % 8 == 0
        assert sps.coded_height % 8 == 0
    cropped = (encoded.width, encoded.height) != (1280, 720)
    assert ((sps.coded_width, sps.coded_height) != (sps.width, sps.height)) == cropped
    # FFmpeg's decoder agrees on the displayed size.
    decoder = _video_context(encoded.decoder, "r")
    frames = decoder.decode(av.Packet(encoded.packets[0])) + decoder.decode(None)
    assert (frames[0].width, frames[0].height) == (sps.width, sps.height)


@dataclass(frozen=True)
class SpsVariant:
    """Encoder settings and the SPS facts they must produce."""

    codec: bs.Codec
    size: tuple[int, int]
    pix_fmt: str
    options: dict[str, str]
    profile_idc: int
    chroma_format_idc: int
    bit_depth: int
    decoded_fmt: str  # the pixel format FFmpeg's decoder reports
    frame_mbs_only: bool = True
    sub_layers: bool = False


def _variant(name: str, variant: SpsVariant) -> object:
    marks = [needs_x265] if variant.codec == "h265" else []
    return pytest.param(variant, id=name, marks=marks)


# Settings that reach the other branches of the SPS parsers: 4:0:0, 4:2:2 and 4:4:4
# chroma (other cropping units), high bit depth, field coding, baseline profile, and
# H.265 temporal sub-layers.
SPS_VARIANTS = [
    _variant("h264-gray-odd", SpsVariant("h264", (641, 361), "gray", {}, 100, 0, 8, "yuv420p")),
    _variant("h264-444", SpsVariant("h264", (642, 362), "yuv444p", {}, 244, 3, 8, "yuv444p")),
    _variant(
        "h264-422-10",
        SpsVariant("h264", (642, 362), "yuv422p10le", {}, 122, 2, 10, "yuv422p10le"),
    ),
    _variant(
        "h264-interlaced",
        SpsVariant(
            "h264",
            (642, 364),
            "yuv420p",
            {"x264-params": "interlaced=1"},
            100,
            1,
            8,
            "yuv420p",
            frame_mbs_only=False,
        ),
    ),
    _variant(
        "h264-baseline",
        SpsVariant("h264", (642, 362), "yuv420p", {"profile": "baseline"}, 66, 1, 8, "yuv420p"),
    ),
    _variant("h265-gray-odd", SpsVariant("h265", (641, 361), "gray", {}, 4, 0, 8, "gray")),
    _variant("h265-444", SpsVariant("h265", (642, 362), "yuv444p", {}, 4, 3, 8, "yuv444p")),
    _variant(
        "h265-422-10",
        SpsVariant("h265", (642, 362), "yuv422p10le", {}, 4, 2, 10, "yuv422p10le"),
    ),
    _variant(
        "h265-main10",
        SpsVariant("h265", (642, 362), "yuv420p10le", {}, 2, 1, 10, "yuv420p10le"),
    ),
    _variant(
        "h265-sub-layers",
        SpsVariant(
            "h265",
            (642, 362),
            "yuv420p",
            {"x265-params": "log-level=none:temporal-layers=3"},
            1,
            1,
            8,
            "yuv420p",
            sub_layers=True,
        ),
    ),
]


@pytest.mark.parametrize("variant", SPS_VARIANTS)
def test_sps_variants(variant: SpsVariant) -> None:
    codec = variant.codec
    width, height = variant.size
    encoded = _encode(
        codec, width, height, count=4, pix_fmt=variant.pix_fmt, options=variant.options
    )
    nals = bs.split_annexb(encoded.stream)
    sps = _parse_sps(codec, bs.parameter_sets(nals, codec).sps[0])
    assert (sps.width, sps.height) == variant.size
    assert (sps.profile_idc, sps.chroma_format_idc) == (
        variant.profile_idc,
        variant.chroma_format_idc,
    )
    assert (sps.bit_depth_luma, sps.bit_depth_chroma) == (variant.bit_depth, variant.bit_depth)
    if isinstance(sps, bs.H264Sps):
        assert sps.frame_mbs_only == variant.frame_mbs_only
    else:
        assert (sps.max_sub_layers > 1) == variant.sub_layers
    # FFmpeg decodes the AVCC frames with the built CodecPrivate to the same facts.
    decoder = _video_context(encoded.decoder, "r")
    decoder.extradata = bs.build_codec_private(nals, codec)
    frames = []
    for packet in encoded.packets:
        frames += decoder.decode(av.Packet(bs.annexb_to_avcc(packet)))
    frames += decoder.decode(None)
    assert len(frames) == len(encoded.packets)
    expected = {(width, height, variant.decoded_fmt)}
    assert {(f.width, f.height, f.format.name) for f in frames} == expected


def _ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def _se(value: int) -> str:
    return _ue(2 * value - 1 if value > 0 else -2 * value)


# H.264 Tables 7-3 and 7-4: the default scaling lists in zig-zag scan order (the 8x8 ones
# are constant along anti-diagonals, so written as value x count).
_DEFAULT_4X4 = {
    "intra": [6, 13, 13, 20, 20, 20, 28, 28, 28, 28, 32, 32, 32, 37, 37, 42],
    "inter": [10, 14, 14, 20, 20, 20, 24, 24, 24, 24, 27, 27, 27, 30, 30, 34],
}
_DEFAULT_8X8 = {
    name: [v for value, count in runs for v in [value] * count]
    for name, runs in {
        "intra": [
            (6, 1),
            (10, 2),
            (13, 1),
            (11, 1),
            (13, 1),
            (16, 4),
            (18, 5),
            (23, 6),
            (25, 7),
            (27, 8),
            (29, 7),
            (31, 6),
            (33, 5),
            (36, 4),
            (38, 3),
            (40, 2),
            (42, 1),
        ],
        "inter": [
            (9, 1),
            (13, 2),
            (15, 1),
            (13, 1),
            (15, 1),
            (17, 4),
            (19, 5),
            (21, 6),
            (22, 7),
            (24, 8),
            (25, 7),
            (27, 6),
            (28, 5),
            (30, 4),
            (32, 3),
            (33, 2),
            (35, 1),
        ],
    }.items()
}


def _scaling_list(index: int) -> str:
    """seq_scaling_list_present_flag[index] and scaling_list() (H.264 7.3.2.1.1.1).

    Every list comes out equal to the default one, coded in one of four ways: absent,
    useDefaultScalingMatrixFlag, every entry coded, or entries up to a nextScale of 0
    (the rest repeat the last value).
    """
    if index < 6:
        values = _DEFAULT_4X4["intra" if index < 3 else "inter"]
    else:
        values = _DEFAULT_8X8["intra" if index % 2 == 0 else "inter"]
    kind = index % 4
    if kind == 0:
        return "0"
    if kind == 1:
        return "1" + _se(-8)  # nextScale 0 at j = 0: use the default list
    coded = values if kind == 2 else values[: values.index(values[-1]) + 1]
    bits, last = ["1"], 8
    for value in coded:
        bits.append(_se((value - last + 128) % 256 - 128))
        last = value
    if len(coded) < len(values):
        bits.append(_se(-last))  # nextScale 0: the remaining entries repeat the last value
    return "".join(bits)


def _with_sps_scaling_lists_and_poc_type_1(sps_nal: bytes) -> bytes:
    """Rewrite a real x264 SPS to carry scaling lists and pic_order_cnt_type 1.

    x264 signals its quantisation matrices in the PPS and uses POC type 2 without
    B-frames, so this is how a real stream reaches those SPS branches. With ``cqm=jvt``
    the PPS falls back to the SPS lists (Table 7-2 rule B), which hold the same default
    matrices here; POC type 1 with delta_pic_order_always_zero_flag needs nothing in the
    slice headers. So the pictures decode exactly as before.
    """
    rbsp = bs.nal_to_rbsp(sps_nal)
    bits = "".join(f"{b:08b}" for b in rbsp)
    bits = bits[: bits.rindex("1")]  # drop rbsp_stop_one_bit and alignment zeros
    reader = bs.BitReader(rbsp)
    reader.skip_bits(24)
    reader.read_ue()  # seq_parameter_set_id
    chroma_format_idc = reader.read_ue()
    if chroma_format_idc == 3:
        reader.skip_bits(1)
    reader.read_ue()
    reader.read_ue()
    reader.skip_bits(1)
    scaling_flag_at = reader.position
    assert not reader.read_flag()
    reader.read_ue()  # log2_max_frame_num_minus4
    poc_type_at = reader.position
    assert reader.read_ue() == 2
    lists = "".join(_scaling_list(i) for i in range(12 if chroma_format_idc == 3 else 8))
    poc_type_1 = _ue(1) + "1" + _se(0) + _se(0) + _ue(2) + _se(2) + _se(2)
    bits = (
        bits[:scaling_flag_at]
        + "1"
        + lists
        + bits[scaling_flag_at + 1 : poc_type_at]
        + poc_type_1
        + bits[reader.position :]
        + "1"
    )
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return sps_nal[:1] + _reference_escape(payload)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_sps_with_scaling_lists_and_poc_type_1(pix_fmt: str) -> None:
    options = {"x264-params": "cqm=jvt:bframes=0"}
    encoded = _encode("h264", 642, 362, count=4, pix_fmt=pix_fmt, options=options)
    original_sps = bs.parameter_sets(bs.split_annexb(encoded.stream), "h264").sps[0]
    rewritten_sps = _with_sps_scaling_lists_and_poc_type_1(original_sps)
    assert len(rewritten_sps) > len(original_sps) + 40
    original = bs.parse_h264_sps(original_sps)
    assert bs.parse_h264_sps(rewritten_sps) == original
    assert (original.width, original.height) == (642, 362)

    def decode(packets: Sequence[bytes]) -> list[npt.NDArray[np.generic]]:
        decoder = _video_context("h264", "r")
        frames = []
        for packet in packets:
            frames += decoder.decode(av.Packet(packet))
        frames += decoder.decode(None)
        return [f.to_ndarray() for f in frames]

    # FFmpeg reads the rewritten SPS the same way: identical pictures come out.
    rewritten = [p.replace(original_sps, rewritten_sps) for p in encoded.packets]
    assert rewritten[0] != encoded.packets[0]
    expected = decode(encoded.packets)
    got = decode(rewritten)
    assert len(got) == len(expected) == 4
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_avcc_equals_ffmpeg_mp4_avcc() -> None:
    encoded = _encode("h264", 642, 362, count=3)
    sets = bs.parameter_sets(bs.split_annexb(encoded.stream), "h264")
    built = bs.build_avcc(sets.sps, sets.pps)
    reference = _mp4_codec_private("h264", 642, 362)
    assert built == reference
    config = bs.parse_avcc(reference)
    assert config.sps == sets.sps
    assert config.pps == sets.pps
    assert config.length_size == 4
    assert (config.chroma_format_idc, config.bit_depth_luma, config.bit_depth_chroma) == (1, 8, 8)
    assert bytes(config) == reference
    sps = bs.parse_h264_sps(sets.sps[0])
    assert sps.codec_string == "avc1." + reference[1:4].hex().upper()
    assert bs.build_codec_private(bs.split_annexb(encoded.stream), "h264") == built


@needs_x265
def test_hvcc_matches_ffmpeg_mp4_hvcc() -> None:
    encoded = _encode("h265", 642, 362, count=3)
    sets = bs.parameter_sets(bs.split_annexb(encoded.stream), "h265")
    built = bs.parse_hvcc(bs.build_hvcc(sets.vps, sets.sps, sets.pps))
    reference_bytes = _mp4_codec_private("h265", 642, 362)
    reference = bs.parse_hvcc(reference_bytes)
    assert bytes(reference) == reference_bytes
    assert (built.vps, built.sps, built.pps) == (sets.vps, sets.sps, sets.pps)
    assert (reference.vps, reference.sps, reference.pps) == (sets.vps, sets.sps, sets.pps)
    # FFmpeg's record also carries x265's info SEI and leaves array_completeness at 0;
    # every other field must be the same.
    parameter_arrays = tuple(
        dataclasses.replace(a, complete=True)
        for a in reference.arrays
        if a.nal_unit_type in (bs.H265NalType.VPS, bs.H265NalType.SPS, bs.H265NalType.PPS)
    )
    assert built == dataclasses.replace(reference, arrays=parameter_arrays)
    sps = bs.parse_h265_sps(sets.sps[0])
    assert sps.codec_string.startswith("hvc1.1.6.L")
    assert built.general_level_idc == sps.level_idc


def test_decode_avcc_frames_with_built_codec_private(encoded: Encoded) -> None:
    splitter = bs.AccessUnitSplitter(encoded.codec)
    units = splitter.feed(encoded.stream) + splitter.flush()
    codec_private = bs.build_codec_private(units[0].nal_units, encoded.codec)
    decoder = _video_context(encoded.decoder, "r")
    decoder.extradata = codec_private
    frames = []
    for unit in units:
        frames += decoder.decode(av.Packet(unit.to_avcc()))
    frames += decoder.decode(None)
    assert len(frames) == len(encoded.packets)
    assert {(f.width, f.height) for f in frames} == {(encoded.width, encoded.height)}


def test_record_parsers_reject_truncation_and_bit_flips(short_encoded: Encoded) -> None:
    codec = short_encoded.codec
    record = bs.build_codec_private(bs.split_annexb(short_encoded.stream), codec)
    parse = bs.parse_avcc if codec == "h264" else bs.parse_hvcc
    full = parse(record)
    assert bytes(full) == record
    for cut in range(len(record)):
        try:
            parse(record[:cut])
        except BitstreamError:
            continue
        # Only an avcC cut just before its optional extension is still a valid record.
        assert codec == "h264"
        assert cut == len(record) - 4
    for bit in range(len(record) * 8):
        flipped = bytearray(record)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        with contextlib.suppress(BitstreamError):
            parse(flipped)


def test_record_parser_messages() -> None:
    with pytest.raises(BitstreamError, match="configurationVersion is 0, not 1"):
        bs.parse_avcc(b"\x00\x00\x00\x01\x67\x64\x00\x1e")
    with pytest.raises(BitstreamError, match=r"avcC record truncated: SPS needs 26 bytes at"):
        bs.parse_avcc(b"\x01\x64\x00\x1e\xff\xe1\x00\x1a\x67\x64")
    with pytest.raises(BitstreamError, match="lengthSizeMinusOne = 2 is not allowed"):
        bs.parse_avcc(b"\x01\x64\x00\x1e\xfe\xe0\x00")
    with pytest.raises(BitstreamError, match=r"hvcC record truncated: general_level_idc"):
        bs.parse_hvcc(b"\x01" + bytes(11))
    with pytest.raises(BitstreamError, match="at least one SPS and one PPS"):
        bs.build_avcc([], [b"\x68\xee"])
    with pytest.raises(BitstreamError, match=r"expected PPS NAL units \(type 8\), got type 7"):
        bs.build_avcc([b"\x67"], [b"\x67"])
    with pytest.raises(BitstreamError, match="at least one VPS, one SPS and one PPS"):
        bs.build_hvcc([], [], [])


def test_sps_parsers_reject_truncation_and_bit_flips(short_encoded: Encoded) -> None:
    codec = short_encoded.codec
    sps_nal = bs.parameter_sets(bs.split_annexb(short_encoded.stream), codec).sps[0]
    full = _parse_sps(codec, sps_nal)
    for cut in range(len(sps_nal)):
        try:
            # A prefix that parses read the same bits as the whole SPS.
            assert _parse_sps(codec, sps_nal[:cut]) == full
        except BitstreamError as exc:
            assert "SPS" in str(exc)
    for bit in range(len(sps_nal) * 8):
        flipped = bytearray(sps_nal)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        with contextlib.suppress(BitstreamError):
            _parse_sps(codec, bytes(flipped))


def test_sps_parser_messages() -> None:
    with pytest.raises(BitstreamError, match="NAL unit type is 8, not 7"):
        bs.parse_h264_sps(b"\x68\xee\x3c\x80")
    with pytest.raises(BitstreamError, match=r"H.264 SPS truncated: need 8 bits at bit offset 16"):
        bs.parse_h264_sps(b"\x67\x64\x00")
    with pytest.raises(BitstreamError, match="NAL unit type is 32, not 33"):
        bs.parse_h265_sps(b"\x40\x01\x0c")
    with pytest.raises(BitstreamError, match="has no full header"):
        bs.parse_h265_sps(b"\x42")
    # seq_parameter_set_id = 32 (ue code 00000100001) is outside 0..31.
    with pytest.raises(BitstreamError, match=r"seq_parameter_set_id = 32 is out of range"):
        bs.parse_h264_sps(b"\x67\x42\x00\x1e\x04\x20")


# ---------------------------------------------------------------------------------------
# RBSP and Exp-Golomb


def _reference_escape(rbsp: bytes) -> bytes:
    """H.264 7.4.1: insert 0x03 after two zeros when the next byte is 0x00-0x03."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    if zeros >= 2:
        out.append(3)  # cabac_zero_word style ending: the last byte may not be 0x00
    return bytes(out)


def test_remove_emulation_prevention_vectors() -> None:
    assert bs.remove_emulation_prevention(b"\x00\x00\x03\x01") == b"\x00\x00\x01"
    assert bs.remove_emulation_prevention(b"\x00\x00\x03\x00\x00\x03\x00") == b"\x00" * 5
    assert bs.remove_emulation_prevention(b"\x00\x00\x03\x03") == b"\x00\x00\x03"
    assert bs.remove_emulation_prevention(b"\x00\x00\x03\x00\x03") == b"\x00\x00\x00\x03"
    assert bs.remove_emulation_prevention(b"\x12\x00\x00\x03") == b"\x12\x00\x00"
    # The header byte is not payload: 00 | 00 03 01 contains no emulation prevention byte.
    assert bs.nal_to_rbsp(b"\x00\x00\x03\x01", "h264") == b"\x00\x03\x01"
    assert bs.nal_to_rbsp(b"\x42\x01\x00\x00\x03\x02", "h265") == b"\x00\x00\x02"
    with pytest.raises(BitstreamError, match="shorter than its header"):
        bs.nal_to_rbsp(b"\x42", "h265")


@given(st.binary(max_size=64).map(lambda b: bytes(x if x > 3 else x & 1 for x in b)))
def test_emulation_prevention_round_trip(rbsp: bytes) -> None:
    assert bs.remove_emulation_prevention(_reference_escape(rbsp)) == rbsp


def _bits(text: str) -> bytes:
    text = text.replace(" ", "")
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def test_bit_reader_exp_golomb() -> None:
    # H.264 Table 9-2 code words, then se(v) mapping of 9.1.1.
    codes = ["1", "010", "011", "00100", "00101", "00110", "00111", "0001000", "0001001"]
    reader = bs.BitReader(_bits("".join(codes)))
    assert [reader.read_ue() for _ in codes] == list(range(len(codes)))
    reader = bs.BitReader(_bits("".join(codes)))
    assert [reader.read_se() for _ in codes] == [0, 1, -1, 2, -2, 3, -3, 4, -4]
    largest = bs.BitReader(_bits("0" * 31 + "1" + "1" * 31))
    assert largest.read_ue() == 2**32 - 2
    reader = bs.BitReader(b"\xa5\x0f")
    assert (reader.read_bits(3), reader.read_flag(), reader.read_bits(12)) == (5, False, 0x50F)
    assert reader.bits_left == 0


def test_bit_reader_errors() -> None:
    with pytest.raises(BitstreamError, match="more than 31 leading zero bits"):
        bs.BitReader(bytes(8)).read_ue()
    with pytest.raises(
        BitstreamError, match=r"test truncated: need 9 bits at bit offset 0, 8 left"
    ):
        bs.BitReader(b"\x00", "test").read_ue()  # eight zeros: the code never ends
    reader = bs.BitReader(_bits("0001"), "test")
    with pytest.raises(BitstreamError, match="truncated"):
        reader.read_bits(9)
    assert reader.position == 0


# ---------------------------------------------------------------------------------------
# Property tests: any input either parses or raises BitstreamError

# Bytes drawn mostly from 00/01/03 so start codes and emulation bytes are common.
_stream_bytes = st.lists(
    st.sampled_from([0, 0, 0, 1, 3, 0x09, 0x41, 0x65, 0x67, 0x80, 0xFF]), max_size=300
).map(bytes)
_any_bytes = st.binary(max_size=300)
_settings = settings(max_examples=150, deadline=None)


def _reference_split(data: bytes) -> list[bytes]:
    """Byte-at-a-time Annex-B split straight from H.264 B.2, for comparison only."""
    codes = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\x00\x00\x01"]
    nals = []
    for index, code in enumerate(codes):
        end = codes[index + 1] if index + 1 < len(codes) else len(data)
        nal = data[code + 3 : end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


@_settings
@given(st.one_of(_stream_bytes, _any_bytes))
def test_split_annexb_property(data: bytes) -> None:
    try:
        nals = _nals(data)
    except BitstreamError:
        first = data.find(b"\x00\x00\x01")
        assert any(data[: first if first >= 0 else len(data)])
        return
    assert nals == _reference_split(data)


@_settings
@given(
    st.one_of(_stream_bytes, _any_bytes),
    st.lists(st.integers(min_value=0, max_value=300), max_size=20),
    st.sampled_from(["h264", "h265"]),
)
def test_splitter_property(data: bytes, cuts: list[int], codec: bs.Codec) -> None:
    try:
        whole = _nals(data)
    except BitstreamError:
        with pytest.raises(BitstreamError):
            _feed_in_pieces(bs.AccessUnitSplitter(codec), data, [c % (len(data) + 1) for c in cuts])
        return
    units = _feed_in_pieces(bs.AccessUnitSplitter(codec), data, [c % (len(data) + 1) for c in cuts])
    assert [nal for unit in units for nal in unit.nal_units] == whole
    assert all(unit.nal_units for unit in units)


@_settings
@given(_any_bytes, st.sampled_from([1, 2, 4]))
def test_split_length_prefixed_property(data: bytes, length_size: int) -> None:
    try:
        nals = bs.split_length_prefixed(data, length_size)
    except BitstreamError:
        return
    assert bs.join_length_prefixed(nals, length_size) == bs.join_length_prefixed(
        [n for n in nals if n], length_size
    )


@_settings
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.sampled_from([1, 2, 4]))
def test_length_prefixed_round_trip_property(nals: list[bytes], length_size: int) -> None:
    data = bs.join_length_prefixed(nals, length_size)
    assert [bytes(n) for n in bs.split_length_prefixed(data, length_size)] == nals


@_settings
@given(_any_bytes)
def test_record_parsers_property(data: bytes) -> None:
    for parse in (bs.parse_avcc, bs.parse_hvcc):
        try:
            config = parse(data)
        except BitstreamError:
            continue
        assert parse(bytes(config)) == config
    for prefix in (b"\x01", b"\x01\x64\x00\x1e\xff"):  # get past the version / header
        with contextlib.suppress(BitstreamError):
            bs.parse_avcc(prefix + data)


@_settings
@given(st.one_of(_any_bytes, _stream_bytes))
def test_sps_parsers_property(data: bytes) -> None:
    for parse, header in ((bs.parse_h264_sps, b"\x67"), (bs.parse_h265_sps, b"\x42\x01")):
        for nal in (data, header + data):
            try:
                sps = parse(nal)
            except BitstreamError:
                continue
            assert sps.width > 0
            assert sps.height > 0


@_settings
@given(st.binary(max_size=200))
def test_bit_reader_property(data: bytes) -> None:
    reader = bs.BitReader(data)
    with pytest.raises(BitstreamError):
        while True:
            before = reader.position
            reader.read_se()
            assert reader.position > before
    assert 0 <= reader.bits_left <= len(data) * 8
