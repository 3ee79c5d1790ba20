"""Sans-I/O producer packaging and the bounded re-send buffer."""

from __future__ import annotations

import pytest

from kvs_toolkit.mkv import FragmentReader, Tag, TrackInfo
from kvs_toolkit.producer import EncodedFrame, FragmentBuffer, Fragmenter, PendingFragment

VIDEO = TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e", width=64, height=48)


def camera(
    seconds: float, fps: int = 10, gop: int = 10, start: int = 1_000_000
) -> list[EncodedFrame]:
    return [
        EncodedFrame(b"frame%d" % i, start + i * 1000 // fps, keyframe=i % gop == 0)
        for i in range(int(seconds * fps))
    ]


def package(
    fragmenter: Fragmenter, frames: list[EncodedFrame]
) -> tuple[bytes, list[PendingFragment]]:
    fragments: list[PendingFragment] = []
    for frame in frames:
        fragment, _completed = fragmenter.add(frame)
        if fragment is not None and fragment not in fragments:
            fragments.append(fragment)
    fragmenter.flush()
    return fragmenter.header + b"".join(f.data for f in fragments), fragments


def test_fragments_cut_on_key_frames_after_the_target_duration() -> None:
    fragmenter = Fragmenter([VIDEO], fragment_duration_ms=2000)
    fragmenter.metadata.put("site", "porch")
    data, fragments = package(fragmenter, camera(7))  # key frame every second
    assert [f.frames for f in fragments] == [20, 20, 20, 10]
    assert all(f.complete for f in fragments)
    reader = FragmentReader()
    parsed = reader.feed(data) + reader.close()
    assert [len(p.frames) for p in parsed] == [20, 20, 20, 10]
    assert all(p.frames[0].keyframe for p in parsed)
    assert [p.cluster_timecode for p in parsed] == [1_000_000, 1_002_000, 1_004_000, 1_006_000]
    assert all(p.tags[:1] == (Tag("site", "porch"),) for p in parsed)
    # the last fragment carries the end-of-fragment marker so the service closes it at once
    assert parsed[-1].tags[-1].name == "AWS_KINESISVIDEO_END_OF_FRAGMENT"


def test_frames_before_the_first_key_frame_are_dropped() -> None:
    fragmenter = Fragmenter([VIDEO])
    frames = camera(2, gop=10)[3:]  # starts mid-GOP
    _, fragments = package(fragmenter, frames)
    assert sum(f.frames for f in fragments) == len(frames) - 7


def test_buffer_drops_oldest_when_full_and_releases_on_ack() -> None:
    buffer = FragmentBuffer(max_bytes=250)
    fragments = []
    for i in range(4):
        fragment = PendingFragment(timecode=i)
        fragment.append(b"x" * 100)
        fragments.append(fragment)
    assert buffer.add(fragments[0]) == []
    assert buffer.add(fragments[1]) == []
    assert buffer.add(fragments[2]) == [fragments[0]]  # 300 > 250: the oldest goes
    assert buffer.dropped == 1
    assert [f.timecode for f in buffer.pending()] == [1, 2]
    assert buffer.acknowledge(1) is fragments[1]
    assert buffer.acknowledge(1) is None
    assert buffer.bytes == 100
    fragments[2].append(b"y" * 200)
    assert buffer.grew(fragments[2], 200) == []  # the growing fragment itself is kept
    assert buffer.bytes == 300


def test_a_key_frame_stamped_a_little_early_still_ends_the_fragment() -> None:
    # a jittery clock stamps the key frame due at +2000 ms at +1995 ms: still a cut there
    frames = camera(6, gop=20)
    jittered = [
        EncodedFrame(f.data, f.timestamp_ms - 5, f.keyframe) if i == 20 else f
        for i, f in enumerate(frames)
    ]
    _, fragments = package(Fragmenter([VIDEO], fragment_duration_ms=2000), jittered)
    assert [f.timecode for f in fragments] == [1_000_000, 1_001_995, 1_004_000]
    assert [f.frames for f in fragments] == [20, 20, 20]
    # without tolerance the early key frame cannot cut: the fragment runs to the next one
    strict = Fragmenter([VIDEO], fragment_duration_ms=2000, cut_tolerance_ms=0)
    _, fragments = package(strict, jittered)
    assert [f.frames for f in fragments] == [40, 20]


def test_tolerance_is_bounded_by_a_quarter_of_the_duration() -> None:
    assert Fragmenter([VIDEO], fragment_duration_ms=2000).cut_tolerance_ms == 100
    assert Fragmenter([VIDEO], fragment_duration_ms=200).cut_tolerance_ms == 50
    frames = camera(1, fps=20, gop=2)  # key frames every 100 ms
    _, fragments = package(Fragmenter([VIDEO], fragment_duration_ms=200), frames)
    # 100 ms is more than 50 ms early: no cut there
    assert [f.timecode - 1_000_000 for f in fragments] == [0, 200, 400, 600, 800]
    with pytest.raises(ValueError, match="cut_tolerance_ms must be in"):
        Fragmenter([VIDEO], fragment_duration_ms=200, cut_tolerance_ms=200)
    with pytest.raises(ValueError, match="fragment_duration_ms must not be negative"):
        Fragmenter([VIDEO], fragment_duration_ms=-1)
