"""The streaming reader on constructed inputs: every element shape docs/kvs-wire.md lists."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_toolkit.errors import MkvError
from kvs_toolkit.mkv import Fragment, FragmentReader, MkvReader, Tag, TrackInfo, ids
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, element, encode_id, encode_size, uint_element
from kvs_toolkit.mkv.writer import (
    FrameData,
    MkvWriter,
    ebml_header,
    getmedia_document,
    tags_element,
)

from .conftest import feed_three_ways

TRACK = TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01\x64\x00\x1f", width=64, height=48)


def block_payload(track: int, relative: int, flags: int, data: bytes) -> bytes:
    return (
        bytes((0x80 | track,)) + relative.to_bytes(2, "big", signed=True) + bytes((flags,)) + data
    )


def simple_block(track: int, relative: int, flags: int, data: bytes) -> bytes:
    return element(ids.SIMPLE_BLOCK, block_payload(track, relative, flags, data))


def sized_document(*children: bytes) -> bytes:
    return ebml_header() + element(ids.SEGMENT, b"".join(children))


def parse(data: bytes) -> list[Fragment]:
    (whole, bytewise, split1, split2) = feed_three_ways(FragmentReader, data)
    assert whole == bytewise == split1 == split2
    return list(whole)


def test_sized_segment_and_cluster_with_void_crc_seekhead_cues_and_unknown_ids() -> None:
    writer = MkvWriter([TRACK])
    cluster = element(
        ids.CLUSTER,
        element(ids.CRC32, b"\x00\x00\x00\x00")
        + uint_element(ids.TIMECODE, 1000)
        + element(ids.VOID, b"\x00" * 10)
        + simple_block(1, 0, 0x80, b"key")
        + element(0x4DBB, b"unknown element inside a cluster")
        + simple_block(1, 33, 0x00, b"delta"),
    )
    data = sized_document(
        element(ids.SEEK_HEAD, b"\x4d\xbb\x80"),
        element(ids.VOID, b"\x00" * 100),
        writer.info(),
        writer.tracks_element(),
        element(0x5A5A, b"unknown level 1 element"),
        tags_element([Tag("a", "1")]),
        cluster,
        element(ids.CUES, b"\x00" * 50),
    )
    (fragment,) = parse(data)
    assert fragment.cluster_timecode == 1000
    assert [bytes(f.data) for f in fragment.frames] == [b"key", b"delta"]
    assert [f.timestamp_ns for f in fragment.frames] == [1_000_000_000, 1_033_000_000]
    assert [f.keyframe for f in fragment.frames] == [True, False]
    assert fragment.tags == (Tag("a", "1"),)
    assert fragment.tracks[0].width == 64


def test_block_groups_reference_block_marks_delta_frames() -> None:
    group_key = element(ids.BLOCK_GROUP, element(ids.BLOCK, block_payload(1, 0, 0, b"I")))
    group_delta = element(
        ids.BLOCK_GROUP,
        element(ids.BLOCK, block_payload(1, 40, 0, b"P")) + element(ids.REFERENCE_BLOCK, b"\xd8"),
    )
    data = sized_document(
        element(ids.CLUSTER, uint_element(ids.TIMECODE, 0) + group_key + group_delta)
    )
    (fragment,) = parse(data)
    assert [(bytes(f.data), f.keyframe) for f in fragment.frames] == [(b"I", True), (b"P", False)]


@pytest.mark.parametrize(
    ("lacing", "lace_header"),
    [
        (0x02, b"\x02" + b"\x03\x01"),  # Xiph: 3 frames, sizes 3 and 1, last = rest
        (0x06, b"\x02" + b"\x83" + b"\xbd"),  # EBML: 3, then 3-2=1 (signed vint -2 = 0x3d)
    ],
)
def test_xiph_and_ebml_lacing(lacing: int, lace_header: bytes) -> None:
    block = block_payload(2, 5, 0x80 | lacing, lace_header + b"AAABCC")
    data = sized_document(
        element(ids.CLUSTER, uint_element(ids.TIMECODE, 10) + element(ids.SIMPLE_BLOCK, block))
    )
    (fragment,) = parse(data)
    assert [bytes(f.data) for f in fragment.frames] == [b"AAA", b"B", b"CC"]
    assert {f.track_number for f in fragment.frames} == {2}
    assert {f.timecode for f in fragment.frames} == {15}


def test_fixed_lacing_and_its_errors() -> None:
    block = block_payload(1, 0, 0x80 | 0x04, b"\x01" + b"aabb")
    data = sized_document(
        element(ids.CLUSTER, uint_element(ids.TIMECODE, 0) + element(ids.SIMPLE_BLOCK, block))
    )
    (fragment,) = parse(data)
    assert [bytes(f.data) for f in fragment.frames] == [b"aa", b"bb"]
    bad = block_payload(1, 0, 0x80 | 0x04, b"\x01" + b"aab")
    data = sized_document(
        element(ids.CLUSTER, uint_element(ids.TIMECODE, 0) + element(ids.SIMPLE_BLOCK, bad))
    )
    with pytest.raises(MkvError, match="fixed lacing: 3 bytes do not split into 2 frames"):
        parse(data)


def test_unknown_size_clusters_end_at_the_next_level1_element() -> None:
    writer = MkvWriter([TRACK])
    frames = [FrameData(1, 5000, b"k1", keyframe=True), FrameData(1, 5033, b"d1")]
    later = [FrameData(1, 7000, b"k2", keyframe=True)]
    data = (
        writer.header()
        + writer.fragment(5000, frames, [Tag("camera", "front")])
        + writer.fragment(7000, later, [Tag("camera", "back"), Tag("event", "door")])
    )
    first, second = parse(data)
    assert first.tags == (Tag("camera", "front"),)
    assert second.tags == (Tag("camera", "back"), Tag("event", "door"))
    assert [bytes(f.data) for f in first.frames] == [b"k1", b"d1"]
    assert second.cluster_timecode == 7000
    assert first.document_index == second.document_index == 0


def test_getmedia_documents_one_fragment_each_with_tags_around_the_cluster() -> None:
    writer = MkvWriter([TRACK])
    docs = b"".join(
        getmedia_document(
            writer,
            1000 * i,
            [FrameData(1, 1000 * i, b"x" * i, keyframe=True)],
            tags_before=[Tag("AWS_KINESISVIDEO_FRAGMENT_NUMBER", str(900 + i))],
            tags_after=[
                Tag("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "12"),
                Tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN", str(900 + i)),
            ],
        )
        for i in range(1, 4)
    )
    fragments = parse(docs)
    assert [f.fragment_number for f in fragments] == ["901", "902", "903"]
    assert [f.document_index for f in fragments] == [0, 1, 2]
    assert all(f.millis_behind_now == 12 for f in fragments)


def test_fragment_is_handed_out_when_its_continuation_token_arrives() -> None:
    """No one-fragment delay: a live GetMedia consumer gets fragment N before N+1 starts."""
    writer = MkvWriter([TRACK])
    doc = getmedia_document(
        writer,
        0,
        [FrameData(1, 0, b"frame", keyframe=True)],
        tags_after=[Tag("AWS_KINESISVIDEO_CONTINUATION_TOKEN", "77")],
    )
    reader = FragmentReader()
    (fragment,) = reader.feed(doc)
    assert fragment.continuation_token == "77"
    assert fragment.size == len(doc)
    assert reader.close() == []


def test_empty_cluster_and_tags_only_document() -> None:
    data = sized_document(
        tags_element([Tag("before", "1")]),
        element(ids.CLUSTER, uint_element(ids.TIMECODE, 42)),
    ) + sized_document(tags_element([Tag("only", "tags")]))
    first, second = parse(data)
    assert (first.cluster_timecode, first.frames, first.tags) == (42, (), (Tag("before", "1"),))
    assert (second.cluster_timecode, second.frames, second.tags) == (
        None,
        (),
        (Tag("only", "tags"),),
    )


def test_nested_simple_tags_and_binary_values_are_kept_in_order() -> None:
    nested = element(
        ids.SIMPLE_TAG,
        element(ids.TAG_NAME, b"outer")
        + element(ids.TAG_STRING, b"o")
        + element(
            ids.SIMPLE_TAG, element(ids.TAG_NAME, b"inner") + element(ids.TAG_BINARY, b"\x00\x01")
        ),
    )
    tags = element(ids.TAGS, element(ids.TAG, element(ids.TARGETS, b"") + nested))
    (fragment,) = parse(sized_document(tags))
    assert [(t.name, t.value, t.binary) for t in fragment.tags] == [
        ("outer", "o", None),
        ("inner", "", b"\x00\x01"),
    ]


# --- errors ---------------------------------------------------------------------------------
def expect_error(data: bytes, message: str, offset: int | None = None, **kwargs: int) -> None:
    reader = FragmentReader(**kwargs)
    with pytest.raises(MkvError, match=message) as info:
        reader.feed(data)
        reader.close()
    if offset is not None:
        assert info.value.offset == offset


def test_not_mkv() -> None:
    expect_error(b"GET / HTTP/1.1\r\n\r\n", "not an MKV stream: .* found element 0x4745", 0)
    expect_error(b"\x00\x00\x00\x00", "invalid element ID first byte 0x00", 0)
    expect_error(element(ids.TAGS, b""), "not an MKV stream: expected an EBML header", 0)


def test_claimed_size_over_the_limit_fails_before_allocation() -> None:
    header = ebml_header() + encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES
    cluster = encode_id(ids.CLUSTER) + UNKNOWN_SIZE_BYTES + uint_element(ids.TIMECODE, 0)
    huge = encode_id(ids.SIMPLE_BLOCK) + b"\x01\x00\x00\x10\x00\x00\x00\x00"  # 2^36 bytes
    offset = len(header) + len(cluster)
    expect_error(
        header + cluster + huge,
        "claims 68719476736 bytes, over the 1048576-byte limit",
        offset,
        max_element_size=1 << 20,
    )
    reader = MkvReader(max_element_size=1 << 20)
    events = reader.feed(header + cluster + huge)  # the events before the error come out
    assert [type(e).__name__ for e in events][-1] == "ClusterTimecode"
    assert reader.error is not None
    assert reader.buffered < 100  # nothing was allocated for the claimed size
    with pytest.raises(MkvError, match="claims 68719476736 bytes"):
        reader.feed(b"")


def test_skipped_elements_are_not_buffered_however_large() -> None:
    reader = MkvReader(max_element_size=1024)
    reader.feed(ebml_header() + encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES)
    reader.feed(encode_id(ids.VOID) + encode_size(1 << 20))  # 1 MiB of Void
    for _ in range(256):
        reader.feed(b"\x00" * 4096)
        assert reader.buffered == 0
    reader.feed(element(ids.CLUSTER, uint_element(ids.TIMECODE, 1)))
    reader.close()


def test_truncated_inputs() -> None:
    writer = MkvWriter([TRACK])
    data = writer.header() + writer.fragment(0, [FrameData(1, 0, b"abcdef", keyframe=True)])
    expect_error(data[:-3], "input ends in the middle of an element")
    sized = sized_document(element(ids.CLUSTER, uint_element(ids.TIMECODE, 0)))
    expect_error(sized[:-3], "input ends")


def test_structural_errors() -> None:
    header = ebml_header()
    expect_error(
        header + element(ids.SEGMENT, element(ids.TAGS, b"\x73\x73\x85ab")), "overruns its parent"
    )
    expect_error(header + encode_id(ids.TAGS) + UNKNOWN_SIZE_BYTES, "has unknown size")
    expect_error(
        header + element(ids.SEGMENT, element(ids.CLUSTER, simple_block(1, 0, 0x80, b"x"))),
        "block before the Cluster's Timecode",
    )
    expect_error(header + element(ids.CLUSTER, b""), "Cluster outside a Segment")
    expect_error(
        element(ids.EBML, element(ids.DOC_TYPE, b"foo")), "unsupported EBML DocType 'foo'", 0
    )


def test_reader_stays_failed_after_an_error() -> None:
    reader = MkvReader()
    with pytest.raises(MkvError):
        reader.feed(b"\x00")
    with pytest.raises(MkvError):
        reader.feed(ebml_header())


# --- property tests -------------------------------------------------------------------------
def _valid_stream() -> bytes:
    writer = MkvWriter([TRACK])
    return writer.header() + b"".join(
        writer.fragment(
            i * 100,
            [FrameData(1, i * 100 + j, bytes([j]) * (j + 1), keyframe=j == 0) for j in range(5)],
            [Tag("n", str(i))],
        )
        for i in range(4)
    )


VALID = _valid_stream()


def _parse_or_mkv_error(data: bytes, chunk: int) -> None:
    reader = FragmentReader(max_element_size=4096)
    try:
        for pos in range(0, len(data), chunk):
            reader.feed(data[pos : pos + chunk])
            assert reader.buffered <= 4096 + chunk + 16
        reader.close()
    except MkvError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_any_bytes_parse_or_raise_mkv_error(data: bytes, chunk: int) -> None:
    _parse_or_mkv_error(data, chunk)
    _parse_or_mkv_error(ebml_header() + data, chunk)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(VALID)),
    st.integers(1, 512),
)
def test_mutated_valid_streams_parse_or_raise_mkv_error(
    flips: list[tuple[int, int]], cut: int, chunk: int
) -> None:
    data = bytearray(VALID)
    for position, value in flips:
        data[position] = value
    _parse_or_mkv_error(bytes(data[:cut]), chunk)
