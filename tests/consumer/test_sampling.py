"""Sampling that saves work: key frames only, N frames per second, one every S seconds."""

from __future__ import annotations

import av
import numpy as np
import pytest

from kvs_toolkit.consumer import FragmentDecoder, FrameSampler
from kvs_toolkit.mkv import Fragment, FrameData, TrackInfo

from .media import (
    SampleStream,
    bframe_video,
    getmedia_stream,
    read_fragments,
    reference_decode_h264,
)


def payloads(fragments: list[Fragment]) -> list[bytes]:
    return [bytes(f.data) for fragment in fragments for f in fragment.frames]


@pytest.fixture(scope="module")
def capture(get_media: bytes) -> list[Fragment]:
    return read_fragments(get_media)


@pytest.fixture(scope="module")
def reference(capture: list[Fragment]) -> list[np.ndarray]:
    return reference_decode_h264(capture[0].tracks[0].codec_private, payloads(capture))


def test_keyframes_only_sends_only_key_frames_to_the_decoder(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder(keyframes_only=True)
    frames = list(decoder.decode_all(capture))
    keyframes = sum(f.keyframe_count for f in capture)
    assert len(frames) == keyframes == 5
    assert all(f.keyframe and f.index == 0 for f in frames)
    assert decoder.stats.packets_sent == 5  # nothing else reached FFmpeg
    assert decoder.stats.packets_skipped == 295
    assert decoder.stats.frames_decoded == 5
    for frame, n in zip(frames, range(0, 300, 60), strict=True):
        assert np.array_equal(frame.image, reference[n])


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"fps": 1}, list(range(0, 300, 30))),
    ({"fps": 2}, list(range(0, 300, 15))),
    ({"every": 2.5}, [0, 75, 150, 225]),
    ({"fps": 30}, list(range(300))),   # the stream's own rate: every frame (33/34 ms steps)
    ({"fps": 100}, list(range(300))),  # more than the stream has: every frame once
])  # fmt: skip
def test_time_sampling_picks_the_right_frames(
    capture: list[Fragment],
    reference: list[np.ndarray],
    kwargs: dict[str, float],
    expected: list[int],
) -> None:
    decoder = FragmentDecoder(**kwargs)  # type: ignore[arg-type]
    frames = list(decoder.decode_all(capture))
    picked = [round(f.mkv_timestamp_ns / 1e9 * 30) for f in frames]
    assert picked == expected
    for frame, n in zip(frames, expected, strict=True):
        assert np.array_equal(frame.image, reference[n])
    # Every P-frame of this stream is a reference: all decoded, only the kept converted.
    assert decoder.stats.packets_sent == 300
    assert decoder.stats.frames_converted == len(expected)
    assert decoder.stats.frames_not_sampled == 300 - len(expected)


def test_sampling_an_intra_only_stream_never_sends_the_other_packets(
    mjpeg_sample: SampleStream,
) -> None:
    decoder = FragmentDecoder(fps=2)  # the sample runs at 10 fps for 3 s
    frames = list(decoder.decode_all(mjpeg_sample.fragments))
    assert len(frames) == 6
    assert decoder.stats.packets_sent == 6
    assert decoder.stats.packets_skipped == mjpeg_sample.frame_count - 6
    full = {
        f.mkv_timestamp_ns: f.image for f in FragmentDecoder().decode_all(mjpeg_sample.fragments)
    }
    assert all(np.array_equal(f.image, full[f.mkv_timestamp_ns]) for f in frames)


def test_keyframes_and_a_time_grid_combine(mjpeg_sample: SampleStream) -> None:
    decoder = FragmentDecoder(keyframes_only=True, every=1.0)
    assert len(list(decoder.decode_all(mjpeg_sample.fragments))) == 3


@pytest.fixture(scope="module", params=["libx264", "libx265"])
def bframes(request: pytest.FixtureRequest) -> list[Fragment]:
    if request.param not in av.codecs_available:
        pytest.skip(f"PyAV's FFmpeg has no {request.param}")
    source = read_fragments(bframe_video(request.param))
    track = source[0].tracks[0]
    frames = [
        FrameData(1, 1_700_000_000_000 + f.timestamp_ns // 1_000_000, bytes(f.data), f.keyframe)
        for fragment in source
        for f in fragment.frames
    ]
    stream = getmedia_stream([TrackInfo(1, track.codec_id, track.codec_private)], frames)
    return read_fragments(stream)


def test_non_reference_b_frames_are_left_undecoded_when_not_sampled(
    bframes: list[Fragment],
) -> None:
    full = list(FragmentDecoder().decode_all(bframes))
    assert len(full) == 50
    by_time = {f.mkv_timestamp_ns: f.image for f in full}
    stamps = sorted(by_time)
    assert stamps != [f.timestamp_ns for fr in bframes for f in fr.frames]  # reordered

    decoder = FragmentDecoder(fps=5)  # the stream runs at 25 fps: one frame in five
    frames = list(decoder.decode_all(bframes))
    # One frame per 200 ms slot, even though frames arrive out of presentation order.
    slots = {(t - stamps[0] + 1_000_000) // 200_000_000 for t in stamps}
    assert len(frames) == len(slots) == 10
    assert decoder.stats.packets_skipped > 0  # B-frames nobody needs never reached FFmpeg
    assert decoder.stats.packets_sent + decoder.stats.packets_skipped == 50
    assert all(np.array_equal(f.image, by_time[f.mkv_timestamp_ns]) for f in frames)

    no_skip = FragmentDecoder(fps=5, skip_nonref=False)
    same = list(no_skip.decode_all(bframes))
    assert no_skip.stats.packets_sent == 50 and no_skip.stats.packets_skipped == 0
    assert [f.mkv_timestamp_ns for f in same] == [f.mkv_timestamp_ns for f in frames]


def test_sampler_grid() -> None:
    sampler = FrameSampler.per_second(1)
    ms = 1_000_000
    assert [sampler.keep(t * ms) for t in (0, 500, 998, 999, 1500, 2100)] == [
        True, False, False, True, False, True,
    ]  # fmt: skip
    # 999 ms is slot 1: MKV rounds 1000 ms to the millisecond, so 1 ms early still counts.
    assert sampler.keep(-5000 * ms)  # a jump back in time starts a new grid
    assert not sampler.keep(-4500 * ms)
    with pytest.raises(ValueError, match="positive"):
        FrameSampler.every(0)
    with pytest.raises(ValueError, match="positive"):
        FrameSampler.per_second(float("nan"))


def test_keyframes_only_kept_warm_gives_the_same_key_frames_with_their_fragments(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    # flush_each_fragment=False: frame threads overlap successive key frames, so a key
    # frame may come out with a later fragment's call; it still carries its own
    # fragment's number and time, and flush() returns the rest.
    decoder = FragmentDecoder(keyframes_only=True, flush_each_fragment=False)
    frames = [frame for fragment in capture for frame in decoder.iter_decode(fragment)]
    frames += decoder.flush()
    assert [f.fragment_number for f in frames] == [f.fragment_number for f in capture]
    assert [f.mkv_timestamp_ns for f in frames] == [f.frames[0].timestamp_ns for f in capture]
    for frame, n in zip(frames, range(0, 300, 60), strict=True):
        assert np.array_equal(frame.image, reference[n])
    assert decoder.stats.decoder_opens == 1 and decoder.stats.packets_sent == 5


def test_keyframes_only_drained_returns_each_key_frame_within_its_fragment(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder(keyframes_only=True)  # drained after every fragment
    for fragment, n in zip(capture, range(0, 300, 60), strict=True):
        (frame,) = decoder.decode(fragment)
        assert frame.fragment_number == fragment.fragment_number
        assert np.array_equal(frame.image, reference[n])
    assert decoder.flush() == []
    assert decoder.stats.decoder_opens == 1 and decoder.stats.packets_without_frame == 0


def test_a_fragment_starting_mid_gop_goes_on_when_the_decoder_holds_nothing(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    # A single-threaded decoder returns each picture from the call that sent it, so at
    # a fragment's end nothing is inside: the decoder is not reset, and a next fragment
    # that starts with a P-frame (an MKV file's cluster cut mid-GOP) decodes in full
    # instead of waiting for the next key frame.
    track = capture[0].tracks[0]
    first = [
        FrameData(1, f.timestamp_ns // 1_000_000, bytes(f.data), f.keyframe)
        for f in capture[0].frames
    ]
    halves = read_fragments(
        getmedia_stream([track], first[:30])
        + getmedia_stream([track], first[30:], first_fragment=2)
    )
    assert len(halves) == 2 and not halves[1].frames[0].keyframe
    decoder = FragmentDecoder(threads=1)
    frames = [frame for fragment in halves for frame in decoder.decode(fragment)]
    assert len(frames) == 60 and decoder.stats.packets_before_keyframe == 0
    assert all(np.array_equal(f.image, reference[n]) for n, f in enumerate(frames))
