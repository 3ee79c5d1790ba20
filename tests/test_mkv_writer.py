"""The writer: what it produces is accepted by mkvinfo, ffprobe and PyAV, and reads back."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kvs_toolkit.errors import FragmentMetadataError, MkvError
from kvs_toolkit.mkv import Fragment, FragmentReader, Tag, TrackInfo
from kvs_toolkit.mkv.writer import (
    FragmentMetadata,
    FrameData,
    MkvWriter,
    validate_fragment_tags,
)

from .conftest import require_tool
from .media import decode_frame_count, encode_matroska

FPS = 30


@pytest.fixture(scope="module")
def source() -> list[Fragment]:
    """Frames from ffmpeg's matroska muxer: H.264 in AVCC form with an avcC CodecPrivate."""
    reader = FragmentReader()
    data = encode_matroska(90, fps=FPS, gop=30)
    return reader.feed(data) + reader.close()


def rewrite(
    source: list[Fragment], base_ms: int = 1_700_000_000_000
) -> tuple[bytes, list[list[Tag]]]:
    """Re-package the source frames as a KVS producer stream, 1 s fragments, ABSOLUTE times."""
    track = source[0].tracks[0]
    writer = MkvWriter(
        [TrackInfo(1, track.codec_id, track.codec_private, width=track.width, height=track.height)]
    )
    frames = [f for fragment in source for f in fragment.frames]
    metadata = FragmentMetadata()
    metadata.put("camera", "porch")
    parts = [writer.header()]
    sent_tags: list[list[Tag]] = []
    current: list[FrameData] = []
    for index, frame in enumerate(frames):
        if frame.keyframe and current:
            tags = list(metadata.take())
            sent_tags.append(tags)
            parts.append(writer.fragment(current[0].timecode, current, tags))
            current = []
            metadata.put("fragment", str(len(sent_tags)), persistent=False)
        timecode = base_ms + index * 1000 // FPS
        current.append(FrameData(1, timecode, bytes(frame.data), keyframe=frame.keyframe))
    tags = list(metadata.take())
    sent_tags.append(tags)
    parts.append(writer.fragment(current[0].timecode, current, tags))
    return b"".join(parts), sent_tags


def test_round_trip_keeps_frames_and_tags(source: list[Fragment]) -> None:
    data, sent_tags = rewrite(source)
    reader = FragmentReader()
    fragments = reader.feed(data) + reader.close()
    assert len(fragments) == 3
    assert [list(f.tags) for f in fragments] == sent_tags
    assert sent_tags[1] == [Tag("camera", "porch"), Tag("fragment", "1")]
    originals = [bytes(f.data) for fragment in source for f in fragment.frames]
    assert [bytes(f.data) for fragment in fragments for f in fragment.frames] == originals
    assert all(f.frames[0].keyframe for f in fragments)
    assert fragments[0].cluster_timecode == 1_700_000_000_000
    assert fragments[0].tracks[0].codec_private == source[0].tracks[0].codec_private


def test_mkvinfo_accepts_writer_output(source: list[Fragment], tmp_path: Path) -> None:
    mkvinfo = require_tool("mkvinfo")
    data, _ = rewrite(source)
    path = tmp_path / "out.mkv"
    path.write_bytes(data)
    text = subprocess.run(
        [mkvinfo, "-a", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "Codec ID: V_MPEG4/ISO/AVC" in text
    assert "Pixel width: 320" in text
    assert text.count("|+ Cluster\n") == 3
    assert "Name: camera" in text
    assert text.count("Simple block") + text.count("SimpleBlock") == 90
    assert "rror" not in text


def test_ffprobe_counts_every_frame(source: list[Fragment], tmp_path: Path) -> None:
    ffprobe = require_tool("ffprobe")
    data, _ = rewrite(source)
    path = tmp_path / "out.mkv"
    path.write_bytes(data)
    result = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,codec_name,width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    stream = json.loads(result.stdout)["streams"][0]
    assert stream == {"codec_name": "h264", "width": 320, "height": 240, "nb_read_frames": "90"}


def test_pyav_decodes_every_frame(source: list[Fragment]) -> None:
    data, _ = rewrite(source)
    assert decode_frame_count(data) == 90


def test_writer_refuses_what_the_service_would() -> None:
    track = TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01")
    with pytest.raises(MkvError, match="4 tracks"):
        MkvWriter([TrackInfo(n, "A_AAC") for n in range(1, 5)])
    with pytest.raises(MkvError, match="duplicate track numbers"):
        MkvWriter([track, track])
    with pytest.raises(MkvError, match="CodecPrivate of track 1 is 1048577 bytes"):
        MkvWriter([TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x00" * (1024 * 1024 + 1))])
    writer = MkvWriter([track])
    with pytest.raises(MkvError, match="must start on a key frame"):
        writer.fragment(0, [FrameData(1, 0, b"p")])
    with pytest.raises(MkvError, match="track 2"):
        writer.fragment(0, [FrameData(2, 0, b"p", keyframe=True)])
    with pytest.raises(MkvError, match="at most 32767 away"):
        writer.fragment(0, [FrameData(1, 0, b"i", keyframe=True), FrameData(1, 40_000, b"p")])


def test_fragment_metadata_limits() -> None:
    metadata = FragmentMetadata()
    with pytest.raises(FragmentMetadataError, match="starts with 'AWS'"):
        metadata.put("AWS_x", "1")
    with pytest.raises(FragmentMetadataError, match="129 bytes"):
        metadata.put("n" * 129, "1")
    with pytest.raises(FragmentMetadataError, match="value is 257 bytes"):
        metadata.put("n", "v" * 257)
    with pytest.raises(FragmentMetadataError, match="must not be empty"):
        metadata.put("", "v")
    for i in range(9):
        metadata.put(f"p{i}", "v")
    metadata.put("once", "1", persistent=False)
    with pytest.raises(FragmentMetadataError, match="more than 10 items"):
        metadata.put("eleventh", "v")
    metadata.put("p0", "changed")  # changing an item does not add one
    assert len(metadata.take()) == 10
    assert len(metadata.take()) == 9  # the one-shot item went out once
    metadata.put("p0", "")  # an empty value clears a persistent item
    assert [t.name for t in metadata.peek()] == [f"p{i}" for i in range(1, 9)]
    with pytest.raises(FragmentMetadataError, match="11 fragment metadata items"):
        validate_fragment_tags([Tag(f"t{i}", "v") for i in range(11)])
    validate_fragment_tags([Tag("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])
