"""Bounds of the MKV reader against hostile input (tag floods, deep nesting) and the
public zero-copy block iterator."""

from __future__ import annotations

import pytest

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import (
    FragmentReader,
    FrameRead,
    MkvReader,
    Tag,
    TagsRead,
    TrackInfo,
    ids,
    iter_blocks,
)
from kvs_toolkit.mkv.ebml import element, encode_id, encode_size, string_element, uint_element
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, cluster, tags_element

from .conftest import splits

VIDEO = TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e\xff\xe1\x00\x00\x01\x00\x00")


def header() -> bytes:
    return MkvWriter([VIDEO], segment_uid=b"\x00" * 16).header()


def nested(depth: int) -> bytes:
    simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, f"level{depth}"))
    for level in range(depth - 1, 0, -1):
        simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, f"level{level}") + simple)
    return element(ids.TAGS, element(ids.TAG, simple))


def feed_all(reader: MkvReader, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    out.extend(reader.close())
    return out


@pytest.mark.parametrize("way", ["whole", "split1", "split2"])
def test_deep_nesting_is_an_mkv_error_not_a_recursion_error(way: str) -> None:
    data = header() + nested(5000)
    chunks = [data] if way == "whole" else splits(data, int(way[-1]))
    with pytest.raises(MkvError, match="nested deeper than 32 levels") as info:
        feed_all(MkvReader(), chunks)
    assert info.value.offset is not None and info.value.offset > len(header())


def test_nested_tags_within_the_bound_keep_document_order() -> None:
    events = feed_all(MkvReader(), [header() + nested(20)])
    (tags,) = [e for e in events if isinstance(e, TagsRead)]
    assert [t.name for t in tags.tags] == [f"level{n}" for n in range(1, 21)]


def test_a_tags_element_over_the_limit_fails_before_it_is_buffered() -> None:
    reader = MkvReader(max_tags_size=4096)
    reader.feed(header())
    # Only the claim is sent: the error comes at once, nothing is allocated for it.
    with pytest.raises(MkvError, match="over the 4096-byte limit"):
        reader.feed(encode_id(ids.TAGS) + encode_size(45_000_000))
    assert reader.buffered < 100


def test_too_many_simple_tags_in_one_element() -> None:
    tags = tags_element([Tag(f"t{i}", "v") for i in range(50)])
    with pytest.raises(MkvError, match="more than 40 SimpleTags between two Clusters"):
        feed_all(MkvReader(max_tags=40), [header() + tags])


def test_many_small_tags_elements_are_bounded_per_fragment() -> None:
    small = tags_element([Tag(f"t{i}", "v") for i in range(10)])
    reader = FragmentReader(max_tags=100)
    reader.feed(header())
    with pytest.raises(
        MkvError, match=r"more than 100 (SimpleTags between two Clusters|tags in one fragment)"
    ):
        for _ in range(20):
            reader.feed(small)


def _frames() -> list[FrameData]:
    return [FrameData(1, 1000 + 33 * i, bytes([i]) * (10 + i), keyframe=i == 0) for i in range(5)]


def test_iter_blocks_matches_the_reader_and_copies_nothing() -> None:
    body = bytearray(cluster(1000, _frames(), sized=True)[5:])  # the sized Cluster's body
    # A BlockGroup with a ReferenceBlock and a BlockDuration too.
    block = encode_size(1) + (200).to_bytes(2, "big") + b"\x00" + b"group"
    group = element(
        ids.BLOCK_GROUP,
        element(ids.BLOCK, block) + uint_element(ids.REFERENCE_BLOCK, 1)
        + uint_element(ids.BLOCK_DURATION, 40),
    )  # fmt: skip
    body += group
    blocks = list(iter_blocks(body, 0))
    assert [(b.timecode, b.keyframe, bytes(b.frames[0])) for b in blocks] == [
        *((f.timecode, f.keyframe, f.data) for f in _frames()),
        (1200, False, b"group"),
    ]
    assert blocks[-1].duration == 40
    # Views into the caller's buffer: a change to it shows through.
    first = blocks[0].frames[0]
    assert first.obj is body
    body[body.index(b"\x00" * 10)] = 0x7F
    assert first[0] == 0x7F
    # The streaming reader yields the same frames.
    stream = header() + cluster(1000, _frames()) + bytes(group)
    frames = [e.frame for e in feed_all(MkvReader(), [stream]) if isinstance(e, FrameRead)]
    assert [(f.timecode, f.keyframe) for f in frames] == [(b.timecode, b.keyframe) for b in blocks]


def test_iter_blocks_refuses_a_block_before_the_timecode() -> None:
    block = element(ids.SIMPLE_BLOCK, encode_size(1) + b"\x00\x00\x80" + b"x")
    with pytest.raises(MkvError, match="before the Cluster's Timecode"):
        list(iter_blocks(block, 0))
