"""The sans-I/O PutMedia ingest checks, fed byte streams a producer would send."""

from __future__ import annotations

from kvs_toolkit.emulator.ingest import (
    FragmentComplete,
    FragmentRejected,
    FragmentStarted,
    IngestEvent,
    IngestLimits,
    IngestSession,
)
from kvs_toolkit.mkv import FragmentReader, Tag, TrackInfo, ids
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, element, encode_id
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, ebml_header, tags_element, track_entry

from .conftest import splits
from .media import encode_matroska

VIDEO = TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e", width=64, height=48)
AUDIO = TrackInfo(2, "A_AAC", b"\x12\x10", track_type=2, sampling_frequency=16000.0, channels=1)
END = [Tag("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]


def frames(start: int, count: int = 3, track: int = 1) -> list[FrameData]:
    return [FrameData(track, start + 33 * i, b"f%d" % i, keyframe=i == 0) for i in range(count)]


def run(data: bytes, **kwargs: object) -> list[IngestEvent]:
    """Feed whole and in random splits; both must give the same events."""
    outputs = []
    for chunks in ([data], splits(data, 3)):
        session = IngestSession(**kwargs)  # type: ignore[arg-type]
        out: list[IngestEvent] = []
        for chunk in chunks:
            out += session.feed(chunk)
        out += session.close()
        outputs.append(out)
    assert outputs[0] == outputs[1]
    return outputs[0]


def kinds(events: list[IngestEvent]) -> list[str]:
    return [
        f"ERROR {e.error_id}" if isinstance(e, FragmentRejected) else type(e).__name__
        for e in events
    ]


def test_fragments_with_metadata_are_accepted_and_rewritten_absolute() -> None:
    writer = MkvWriter([VIDEO])
    data = (
        writer.header()
        + writer.fragment(1000, frames(1000), [Tag("door", "open")])
        + writer.fragment(2000, frames(2000))
    )
    events = run(data)
    assert kinds(events) == ["FragmentStarted", "FragmentComplete"] * 2
    first = events[1]
    assert isinstance(first, FragmentComplete)
    assert first.tags == (Tag("door", "open"),)
    assert (first.producer_timestamp_ms, first.timecode, first.frame_count) == (1000, 1000, 3)
    assert first.duration_ms == 99
    # the stored cluster reads back with the same frames
    reader = FragmentReader()
    (fragment,) = reader.feed(writer.header() + first.cluster_bytes) + reader.close()
    assert [bytes(f.data) for f in fragment.frames] == [b"f0", b"f1", b"f2"]
    assert fragment.cluster_timecode == 1000


def test_end_of_fragment_tag_completes_a_fragment_without_waiting_for_the_next() -> None:
    writer = MkvWriter([VIDEO])
    session = IngestSession()
    events = session.feed(writer.header() + writer.fragment(5, frames(5)))
    assert kinds(events) == ["FragmentStarted"]  # the unknown-size cluster may go on
    events = session.feed(tags_element(END))
    assert kinds(events) == ["FragmentComplete"]


def test_relative_timecodes_add_the_producer_start() -> None:
    writer = MkvWriter([VIDEO])
    data = writer.header() + writer.fragment(0, frames(0)) + writer.fragment(2000, frames(2000))
    events = run(data, relative=True, producer_start_ms=1_700_000_000_000)
    complete = [e for e in events if isinstance(e, FragmentComplete)]
    assert [c.producer_timestamp_ms for c in complete] == [1_700_000_000_000, 1_700_000_002_000]
    assert [c.timecode for c in complete] == [0, 2000]


def test_ffmpeg_matroska_output_is_accepted() -> None:
    data = encode_matroska(90, fps=30, gop=30)
    events = run(data, relative=True, producer_start_ms=1_000_000)
    complete = [e for e in events if isinstance(e, FragmentComplete)]
    assert sum(c.frame_count for c in complete) == 90
    assert all(not isinstance(e, FragmentRejected) for e in events)


def test_timecode_lower_than_previous_is_4004_and_the_upload_goes_on() -> None:
    writer = MkvWriter([VIDEO])
    data = (
        writer.header()
        + writer.fragment(5000, frames(5000))
        + writer.fragment(3000, frames(3000))
        + writer.fragment(7000, frames(7000))
    )
    events = run(data)
    assert kinds(events) == [
        "FragmentStarted", "FragmentComplete",
        "FragmentStarted", "ERROR 4004",
        "FragmentStarted", "FragmentComplete",
    ]  # fmt: skip
    rejected = events[3]
    assert isinstance(rejected, FragmentRejected)
    assert (rejected.timecode, rejected.fatal) == (3000, False)
    assert "lower than the previous" in rejected.reason


def test_previous_upload_timestamp_counts() -> None:
    writer = MkvWriter([VIDEO])
    events = run(writer.header() + writer.fragment(10, frames(10)), last_producer_timestamp_ms=50)
    assert kinds(events) == ["FragmentStarted", "ERROR 4004"]


def test_track_mismatch_and_missing_track() -> None:
    writer = MkvWriter([VIDEO, AUDIO])
    both = [*frames(0), FrameData(2, 10, b"aac")]
    wrong = [*frames(1000), FrameData(2, 1010, b"aac")]
    data = writer.header() + writer.fragment(0, both) + writer.fragment(1000, wrong)
    # a frame for track 3, which was never declared: hand-made block after the writer's
    data = data + element(ids.SIMPLE_BLOCK, b"\x83\x00\x05\x80zz")
    events = run(data + writer.fragment(2000, frames(2000)))
    assert kinds(events) == [
        "FragmentStarted", "FragmentComplete",
        "FragmentStarted", "ERROR 4010",
        "FragmentStarted", "ERROR 4011",
    ]  # fmt: skip


def test_metadata_over_the_limits_is_4009() -> None:
    writer = MkvWriter([VIDEO])
    too_many = [Tag(f"k{i}", "v") for i in range(11)]
    data = (
        writer.header()
        + writer.fragment(0, frames(0), too_many)  # the first may carry header tags too
        + writer.fragment(100, frames(100), too_many)
        + writer.fragment(200, frames(200), [Tag("AWS_mine", "x")])
    )
    assert (
        kinds(run(data))
        == ["FragmentStarted", "FragmentComplete"]
        + [
            "FragmentStarted",
            "ERROR 4009",
        ]
        * 2
    )


def test_size_and_duration_limits() -> None:
    writer = MkvWriter([VIDEO])
    big = [FrameData(1, 0, b"x" * 5000, keyframe=True), FrameData(1, 33, b"y" * 5000)]
    data = writer.header() + writer.fragment(0, big) + writer.fragment(100, frames(100))
    events = run(data, limits=IngestLimits(max_fragment_bytes=8000))
    assert kinds(events) == ["FragmentStarted", "ERROR 4001", "FragmentStarted", "FragmentComplete"]
    long = [FrameData(1, 0, b"k", keyframe=True), FrameData(1, 10_001, b"p")]
    data = writer.header() + writer.fragment(0, long)
    assert kinds(run(data)) == ["FragmentStarted", "ERROR 4002"]


def test_invalid_mkv_is_fatal_4006() -> None:
    writer = MkvWriter([VIDEO])
    data = writer.header() + writer.fragment(0, frames(0)) + b"\x00garbage"
    events = run(data)
    assert kinds(events)[-1] == "ERROR 4006"
    assert isinstance(events[-1], FragmentRejected) and events[-1].fatal
    assert kinds(run(b"not mkv at all")) == ["ERROR 4006"]


def test_two_segments_is_4006_and_four_tracks_is_4012() -> None:
    writer = MkvWriter([VIDEO])
    data = writer.header() + writer.fragment(0, frames(0)) + writer.header()
    assert kinds(run(data))[-1] == "ERROR 4006"
    tracks = element(ids.TRACKS, b"".join(track_entry(TrackInfo(n, "A_AAC")) for n in range(1, 5)))
    data = ebml_header() + encode_id(ids.SEGMENT) + UNKNOWN_SIZE_BYTES + tracks
    assert kinds(run(data)) == ["ERROR 4012"]


def test_dropped_connection_discards_the_partial_fragment() -> None:
    writer = MkvWriter([VIDEO])
    data = writer.header() + writer.fragment(0, frames(0)) + writer.fragment(1000, frames(1000))
    session = IngestSession()
    events = session.feed(data[:-2]) + session.close()
    assert kinds(events) == ["FragmentStarted", "FragmentComplete", "FragmentStarted"]
    assert session.failed
    assert isinstance(events[0], FragmentStarted)
