"""Every real GetMedia capture parsed, checked against its documentation and mkvinfo."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

import pytest

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import Fragment, FragmentReader

from .conftest import feed_three_ways, require_tool, splits

# file: (complete fragments, frames per fragment, truncated last fragment?)
EXPECTED = {
    "output_get_media.mkv": ([60] * 5, False),
    "output_get_media_sparse_fragments.mkv": ([60] * 3, False),
    "output-get-media-non-increasing-timecode.mkv": ([30] * 11 + [28], True),
    "output-get-media-equal-timecode.mkv": ([120, 119], True),
    "test_mixed_tags.mkv": ([10] * 10, False),
    "empty-mkv-with-tags.mkv": ([0], False),
    "test_tags_empty_cluster.mkv": ([0], False),
}


def read_all(data: bytes) -> list[Fragment]:
    reader = FragmentReader()
    fragments = reader.feed(data)
    fragments += reader.close(keep_truncated=True)
    return fragments


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fragment_and_frame_counts(captures: Path, name: str) -> None:
    frames, truncated = EXPECTED[name]
    fragments = read_all((captures / name).read_bytes())
    assert [len(f.frames) for f in fragments] == frames
    assert [f.truncated for f in fragments] == [False] * (len(frames) - 1) + [truncated]


@pytest.mark.parametrize("name", ["output-get-media-non-increasing-timecode.mkv"])
def test_truncated_capture_raises_with_offset_but_keeps_complete_fragments(
    captures: Path, name: str
) -> None:
    data = (captures / name).read_bytes()
    reader = FragmentReader()
    fragments = reader.feed(data)
    assert len(fragments) == 11  # everything complete came out before the end of input
    with pytest.raises(MkvError, match="input ends in the middle of an element") as info:
        reader.close()
    assert info.value.offset == 1912925


def test_output_get_media_tags(captures: Path) -> None:
    fragments = read_all((captures / "output_get_media.mkv").read_bytes())
    first = fragments[0]
    assert first.fragment_number == "91343852333181432392682062607743920146159169392"
    assert first.server_timestamp == dt.datetime(
        2017, 11, 28, 6, 55, 9, 126000, tzinfo=dt.timezone.utc
    )
    assert first.producer_timestamp == dt.datetime(
        2017, 11, 28, 6, 55, 8, 513000, tzinfo=dt.timezone.utc
    )
    assert first.millis_behind_now == 15858
    assert first.continuation_token == first.fragment_number
    assert [f.cluster_timecode for f in fragments] == [0, 2000, 4000, 6000, 8000]
    track = first.video_track
    assert track is not None
    assert (track.codec_id, track.width, track.height) == ("V_MPEG4/ISO/AVC", 640, 360)
    assert track.codec_private[0] == 1  # an avcC record
    # 30 fps: frames are 33/34 ms apart, and the first frame of a fragment is a key frame
    stamps = [f.timestamp_ns // 1_000_000 for f in first.frames]
    assert stamps[0] == 0
    assert 1966 <= stamps[-1] <= 1967
    assert first.frames[0].keyframe
    assert first.keyframe_count == 1
    numbers = [int(f.fragment_number or 0) for f in fragments]
    assert numbers == sorted(numbers)


def test_mixed_tags_producer_tags(captures: Path) -> None:
    fragments = read_all((captures / "test_mixed_tags.mkv").read_bytes())
    expected = [(f"testTag_{i}", f"testTag_{i}_Value") for i in range(5)]
    for fragment in fragments:
        producer = [(t.name, t.value) for t in fragment.producer_tags]
        # every fragment carries the five tags after its cluster; the first also before Info
        assert producer[-5:] == expected
        assert fragment.fragment_number is not None
        assert fragment.video_track is not None
        assert fragment.video_track.codec_id == "V_MS/VFW/FOURCC"
    assert len(fragments[0].producer_tags) == 10
    # the last fragment of a capture may lack the trailing tags; this one has them
    assert fragments[-1].continuation_token is not None
    assert [f.producer_timestamp and f.producer_timestamp.timestamp() for f in fragments] == [
        float(5 * i) for i in range(10)
    ]


def test_tags_without_frames(captures: Path) -> None:
    (empty,) = read_all((captures / "empty-mkv-with-tags.mkv").read_bytes())
    assert empty.frames == ()
    assert empty.cluster_timecode is None
    assert empty.fragment_number == "91343852338378294813695855977007281634605393997"
    (tags_only,) = read_all((captures / "test_tags_empty_cluster.mkv").read_bytes())
    assert [t.name for t in tags_only.tags] == [f"testTag_{i}" for i in range(5)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_any_chunking_gives_the_same_fragments(captures: Path, name: str) -> None:
    data = (captures / name).read_bytes()
    # one byte at a time over the first 30 kB (several fragments), then the rest whole
    bytewise = [data[i : i + 1] for i in range(min(len(data), 30_000))] + [data[30_000:]]
    results = []
    for chunks in ([data], bytewise, splits(data, 7)):
        reader = FragmentReader()
        out: list[Fragment] = []
        for chunk in chunks:
            out += reader.feed(chunk)
        out += reader.close(keep_truncated=True)
        results.append(out)
    assert results[0] == results[1] == results[2]


def _documents(data: bytes) -> list[bytes]:
    starts = [m.start() for m in re.finditer(re.escape(b"\x1a\x45\xdf\xa3"), data)]
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


@pytest.mark.parametrize(
    "name", ["output_get_media.mkv", "test_mixed_tags.mkv", "output_get_media_sparse_fragments.mkv"]
)
def test_against_mkvinfo(captures: Path, name: str, tmp_path: Path) -> None:
    """mkvinfo reads one EBML document at a time: compare each document with our fragment."""
    mkvinfo = require_tool("mkvinfo")
    data = (captures / name).read_bytes()
    fragments = read_all(data)
    documents = _documents(data)
    assert len(documents) == len(fragments)
    for document, fragment in zip(documents, fragments, strict=True):
        path = tmp_path / "doc.mkv"
        path.write_bytes(document)
        text = subprocess.run(
            [mkvinfo, "-a", str(path)], capture_output=True, text=True, check=True
        ).stdout
        blocks = len(re.findall(r"\+ (?:Simple )?[Bb]lock", text))
        names = re.findall(r"\+ Simple\n\|\s*\+ Name: (.*)", text)
        assert blocks == len(fragment.frames)
        assert names == [t.name for t in fragment.tags]


def test_chunked_results_identical_for_small_capture(captures: Path) -> None:
    data = (captures / "test_mixed_tags.mkv").read_bytes()
    whole, bytewise, split1, split2 = feed_three_ways(FragmentReader, data)
    assert whole == bytewise == split1 == split2
