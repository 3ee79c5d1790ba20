"""The fMP4 box writer (:mod:`kvs_toolkit.emulator.fmp4`) checked box by box and against FFmpeg.

Stored payloads are made here from real encoded clips (PyAV, libx264 / AAC), without a
running emulator. The structure is read with the test's own box walker (from
test_hls, independent of the writer); FFmpeg's mp4 demuxer then reads the same bytes
and must give back every packet with its bytes, key frame flag and timestamps.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import pytest

from kvs_toolkit.emulator import fmp4, remux
from kvs_toolkit.emulator.media import stored_payload
from kvs_toolkit.errors import DecodeError
from kvs_toolkit.mkv import Fragment, FragmentReader, TrackInfo
from kvs_toolkit.mkv.writer import FrameData, cluster
from tests.emulator.test_hls import boxes, child
from tests.producer.media import FPS, HEIGHT, WIDTH, Clip, write_clip


def fragments_of(path: Path) -> list[Fragment]:
    reader = FragmentReader()
    return reader.feed(path.read_bytes()) + reader.close()


def payload_of(fragment: Fragment, tracks: tuple[TrackInfo, ...] | None = None) -> bytes:
    frames = [
        FrameData(f.track_number, f.timecode, bytes(f.data), keyframe=f.keyframe)
        for f in fragment.frames
    ]
    body = cluster(fragment.cluster_timecode or 0, frames, sized=True)
    return stored_payload(tracks or fragment.tracks, body)


@pytest.fixture(scope="module")
def clip_fragments(tmp_path_factory: pytest.TempPathFactory) -> list[Fragment]:
    path = tmp_path_factory.mktemp("fmp4") / "clip.mkv"
    write_clip(path, Clip(frames=50, gop=FPS, bframes=2, audio="aac"))
    return fragments_of(path)


def walk(data: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[str]:
    """Box paths, depth-first, through the containers the writer uses."""
    containers = {"moov", "trak", "mdia", "minf", "dinf", "stbl", "mvex", "moof", "traf"}
    out = []
    for kind, payload, box_end in boxes(data, start, end):
        out.append("  " * depth + kind)
        if kind in containers:
            out += walk(data, payload, box_end, depth + 1)
    return out


def test_init_segment_box_tree(clip_fragments: list[Fragment]) -> None:
    tracks = clip_fragments[0].tracks
    init = fmp4.init_segment(tracks)
    tree = walk(init)
    assert tree[:3] == ["ftyp", "moov", "  mvhd"]
    assert tree.count("  trak") == 2 and tree.count("    trex") == 2
    for box in ("tkhd", "mdhd", "hdlr", "vmhd", "smhd", "dref", "stsd", "stts", "stsz", "stco"):
        assert any(line.strip() == box for line in tree), box
    # The avcC is the CodecPrivate, byte for byte; the esds carries the AAC config.
    assert tracks[0].codec_private in init and b"avc1" in init and b"esds" in init
    # FFmpeg reads the codec parameters from it alone.
    with av.open(io.BytesIO(init)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (WIDTH, HEIGHT)
        assert bytes(video.codec_context.extradata or b"") == tracks[0].codec_private
        assert audio.codec_context.sample_rate == 48000 and audio.codec_context.channels == 2
        assert bytes(audio.codec_context.extradata or b"") == tracks[1].codec_private
    # One track: that track alone, as track_ID 1.
    only_audio = fmp4.init_segment(tracks, stream_index=1)
    assert walk(only_audio).count("  trak") == 1 and b"mp4a" in only_audio
    assert b"avc1" not in only_audio


def test_media_segment_boxes_point_at_the_stored_samples(clip_fragments: list[Fragment]) -> None:
    fragment = clip_fragments[1]
    payload = payload_of(fragment)
    origin = clip_fragments[0].cluster_timecode or 0
    segment = fmp4.media_segment(
        fmp4.read_stored_fragment(payload), origin_ms=origin, sequence_number=7
    )
    assert [b[0] for b in boxes(segment)] == ["moof", "mdat"]
    moof = next(b for b in boxes(segment) if b[0] == "moof")
    moof_start = moof[1] - 8
    (sequence,) = struct.unpack_from(">I", segment, child(segment, moof, "mfhd")[1] + 4)
    assert sequence == 7
    trafs = [b for b in boxes(segment, moof[1], moof[2]) if b[0] == "traf"]
    assert len(trafs) == 2
    for track_id, traf in enumerate(trafs, start=1):
        number = fragment.tracks[track_id - 1].number
        frames = [f for f in fragment.frames if f.track_number == number]
        tfhd = child(segment, traf, "tfhd")
        flags, tfhd_track = struct.unpack_from(">II", segment, tfhd[1])
        assert tfhd_track == track_id and flags & 0x020000  # default-base-is-moof
        tfdt = child(segment, traf, "tfdt")
        (base,) = struct.unpack_from(">Q", segment, tfdt[1] + 4)
        scale = 90000 if track_id == 1 else 48000
        first_ms = min(f.timecode for f in frames) - origin
        assert base == round(first_ms * scale / 1000)
        trun = child(segment, traf, "trun")
        version_flags, count, data_offset = struct.unpack_from(">IIi", segment, trun[1])
        assert count == len(frames)
        fields = 4 if version_flags & 0x800 else 3
        entries = struct.unpack_from(
            ">" + ("IIIi" if fields == 4 else "III") * count, segment, trun[1] + 12
        )
        rows = [entries[i : i + fields] for i in range(0, len(entries), fields)]
        # The samples are the blocks' bytes, in order, where data_offset says.
        pos = moof_start + data_offset
        for row, frame in zip(rows, frames, strict=True):
            assert row[1] == len(frame.data)
            assert segment[pos : pos + row[1]] == bytes(frame.data)
            pos += row[1]
            if track_id == 1:
                assert row[2] == (0x02000000 if frame.keyframe else 0x01010000)
        if track_id == 1:  # B-frames: signed composition offsets, presentation exact
            assert version_flags >> 24 == 1 and min(r[3] for r in rows) < 0
            decode = base
            for row, frame in zip(rows, frames, strict=True):
                assert decode + row[3] == (frame.timecode - origin) * 90
                decode += row[0]


def test_ffmpeg_reads_back_every_packet(clip_fragments: list[Fragment]) -> None:
    """init + every media segment, as a player appends them: FFmpeg's mp4 demuxer gives
    each block back, bytes, key flag and presentation time, and decodes every frame."""
    tracks = clip_fragments[0].tracks
    origin = clip_fragments[0].cluster_timecode or 0
    parts = [fmp4.init_segment(tracks)]
    for n, fragment in enumerate(clip_fragments, start=1):
        stored = fmp4.read_stored_fragment(payload_of(fragment))
        parts.append(fmp4.media_segment(stored, origin_ms=origin, sequence_number=n))
    expected = {
        (f.track_number, f.timecode - origin, bytes(f.data), f.keyframe or f.track_number == 2)
        for fragment in clip_fragments
        for f in fragment.frames
    }
    got = set()
    with av.open(io.BytesIO(b"".join(parts))) as container:
        for packet in container.demux():
            if packet.size == 0 or packet.pts is None or packet.time_base is None:
                continue
            ms = round(packet.pts * packet.time_base * 1000)
            got.add((packet.stream.index + 1, ms, bytes(packet), bool(packet.is_keyframe)))
    # AAC blocks are 1024 samples at 48 kHz: their ms timecodes round, so compare audio
    # timestamps within 1 ms.
    # Video: FFmpeg's mov demuxer moves every presentation time of a track with negative
    # composition offsets later by the largest of them (its dts_shift, so that no pts is
    # before its dts); compare from the first frame. MSE players take them as written.
    video = {e for e in expected if e[0] == 1}
    got_video = {g for g in got if g[0] == 1}
    shift = min(g[1] for g in got_video)
    assert shift == 40  # one frame: the B-frame delay of this clip
    assert {(g[0], g[1] - shift, g[2], g[3]) for g in got_video} == video
    audio_got = sorted((g[1], g[2]) for g in got if g[0] == 2)
    audio_expected = sorted((e[1], e[2]) for e in expected if e[0] == 2)
    assert [b for _t, b in audio_got] == [b for _t, b in audio_expected]
    assert all(abs(a[0] - b[0]) <= 1 for a, b in zip(audio_got, audio_expected, strict=True))
    with av.open(io.BytesIO(b"".join(parts))) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50


def test_decode_order_times() -> None:
    # I0 P3 B1 B2 (decode order, presentation times): decode at 0 1 2 3.
    assert fmp4.decode_order_times([0, 3, 1, 2]) == ([0, 1, 2, 3], [0, 2, -1, -1])
    assert fmp4.decode_order_times([0, 1, 2]) == ([0, 1, 2], [0, 0, 0])


def test_errors_name_the_problem(clip_fragments: list[Fragment]) -> None:
    tracks = clip_fragments[0].tracks
    with pytest.raises(DecodeError, match=r"the fragment has no track #5 to put in mp4"):
        fmp4.init_segment(tracks, stream_index=5)
    with pytest.raises(DecodeError, match=r"a stored fragment is corrupt"):
        fmp4.read_stored_fragment(b"\x1a\x45\xdf\xa3\x88")
    mjpeg = TrackInfo(1, "V_MJPEG", b"x", width=16, height=16)
    with pytest.raises(DecodeError, match=r"track 1: codec V_MJPEG cannot go in fMP4"):
        fmp4.init_segment([mjpeg])
    bare = TrackInfo(1, fmp4.CODEC_AVC, b"", width=16, height=16)
    with pytest.raises(DecodeError, match=r"track 1 has no codec private data"):
        fmp4.init_segment([bare])
    # A cluster cut short: the payload is corrupt, with the reason.
    payload = payload_of(clip_fragments[0])
    with pytest.raises(DecodeError, match=r"a stored fragment is corrupt: .*"):
        remux.fmp4_media_segment(payload[:-100], origin_ms=0)
