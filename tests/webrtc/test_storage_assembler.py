"""The emulator's WebRTC ingestion fragmenter, fed Annex-B access units directly."""

from __future__ import annotations

from fractions import Fraction

import av

from kvs_toolkit import bitstream
from kvs_toolkit.emulator.webrtc_storage import FragmentAssembler
from tests.webrtc.media import indexed_picture

AUD = b"\x00\x00\x00\x01\x09\xf0"


def _access_units(count: int, gop: int) -> list[bytes]:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 160, 120, "yuv420p"
    encoder.time_base = Fraction(1, 30)
    encoder.gop_size = gop
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "bf": "0",
        "repeat-headers": "1",
    }
    units = []
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(indexed_picture(index, 160, 120), "rgb24")
        frame.pts = index
        units += [bytes(p) for p in encoder.encode(frame)]
    units += [bytes(p) for p in encoder.encode(None)]
    return units


def test_key_frame_aligned_fragments_with_rtp_time() -> None:
    units = _access_units(75, gop=30)
    assembler = FragmentAssembler(start_ms=1_700_000_000_000)
    # join mid-GOP: what comes before the first key frame is dropped
    origin = (1 << 32) - 3000 * 5  # the RTP clock wraps during the stream
    fragments = []
    for index, unit in enumerate(units[10:], start=10):
        done = assembler.push(AUD + unit, (origin + index * 3000) % (1 << 32))
        if done is not None:
            fragments.append(done)
    last = assembler.flush()
    assert last is not None
    fragments.append(last)
    assert assembler.dropped == 20  # frames 10..29
    assert [len(f.frames) for f in fragments] == [30, 15]
    assert all(f.frames[0].keyframe for f in fragments)
    assert sum(f.keyframe for f in fragments[0].frames) == 1
    # timestamps: ms from the first key frame, through the RTP wrap
    assert fragments[0].producer_timestamp_ms == 1_700_000_000_000
    assert fragments[1].producer_timestamp_ms == 1_700_000_000_000 + 1000
    assert abs(fragments[0].duration_ms - 1000) <= 2  # 30 frames of 33.3 ms, in whole ms
    track = fragments[0].track
    assert (track.width, track.height, track.codec_id) == (160, 120, "V_MPEG4/ISO/AVC")
    # stored as AVCC without the delimiters; the avcC record decodes it
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = track.codec_private
    pictures = []
    for fragment in fragments:
        for frame in fragment.frames:
            nal_types = [bitstream.nal_type(n) for n in bitstream.split_length_prefixed(frame.data)]
            assert bitstream.H264NalType.AUD not in nal_types
            pictures += decoder.decode(av.Packet(bytes(frame.data)))
    pictures += decoder.decode(None)
    assert len(pictures) == 45


def test_nothing_before_a_key_frame() -> None:
    units = _access_units(12, gop=30)
    assembler = FragmentAssembler(start_ms=0)
    for index, unit in enumerate(units[1:], start=1):
        assert assembler.push(unit, index * 3000) is None
    assert assembler.flush() is None
    assert assembler.track is None
    assert assembler.push(AUD, 0) is None  # a delimiter alone is no frame
