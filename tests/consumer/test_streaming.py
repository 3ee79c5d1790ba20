"""FragmentDecoder.iter_decode: frames stream out as they are decoded, the same frames as
decode(), and an iteration that ends early leaves the decoder ready for the next fragment."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import weakref
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvs_toolkit.consumer import DecodedFrame, DecodeError, FileReader, FragmentDecoder
from kvs_toolkit.consumer.pipeline import consume
from kvs_toolkit.mkv import Fragment, TrackInfo

from .media import SampleStream, read_fragments, reference_decode_h264

CAPTURE_FRAMES = 60  # output_get_media.mkv: 5 fragments of 60 frames, 640x360, no B-frames


def payloads(fragments: list[Fragment]) -> list[bytes]:
    return [bytes(f.data) for fragment in fragments for f in fragment.frames]


def digest(frame: DecodedFrame) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame.image).tobytes(), digest_size=16).digest()


def metadata(frame: DecodedFrame) -> dict[str, Any]:
    fields = dataclasses.fields(DecodedFrame)
    return {f.name: getattr(frame, f.name) for f in fields if f.name != "image"}


@pytest.fixture(scope="module")
def capture(captures: Path) -> list[Fragment]:
    return read_fragments((captures / "output_get_media.mkv").read_bytes())


@pytest.fixture(scope="module")
def reference(capture: list[Fragment]) -> list[np.ndarray]:
    return reference_decode_h264(capture[0].tracks[0].codec_private, payloads(capture))


def assert_stream_equals_list(
    fragments: list[Fragment], caplog: pytest.LogCaptureFixture, **options: Any
) -> list[DecodedFrame]:
    """Decode ``fragments`` with decode() and, on a second decoder, with iter_decode()
    consumed frame by frame: the same frames (metadata and pixels, the pixels as they
    were when yielded and still now), the same stats, the same log lines."""
    listed_decoder, streamed_decoder = FragmentDecoder(**options), FragmentDecoder(**options)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kvs_toolkit.consumer"):
        listed = [f for fragment in fragments for f in listed_decoder.decode(fragment)]
        listed += listed_decoder.flush()
        listed_log = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        streamed: list[tuple[DecodedFrame, bytes]] = []
        for fragment in fragments:
            for frame in streamed_decoder.iter_decode(fragment):
                streamed.append((frame, digest(frame)))  # the pixels at the moment of yield
        streamed += [(frame, digest(frame)) for frame in streamed_decoder.flush()]
        streamed_log = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(streamed) == len(listed)
    for n, ((ours, at_yield), theirs) in enumerate(zip(streamed, listed, strict=True)):
        assert metadata(ours) == metadata(theirs), f"frame {n}"
        assert at_yield == digest(ours) == digest(theirs), f"frame {n} pixels"
    assert streamed_log == listed_log
    assert dataclasses.asdict(streamed_decoder.stats) == dataclasses.asdict(listed_decoder.stats)
    assert streamed_decoder.stats.iterations_abandoned == 0
    return [frame for frame, _ in streamed]


# --- the same frames ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"format": "gray"},  # zero-copy views of the decoder's planes
        {"fps": 7},
        {"keyframes_only": True},
        {"fit": 320, "format": "rgb24"},
        {"flush_each_fragment": False},
        {"threads": 1},
    ],
    ids=repr,
)
def test_streamed_frames_equal_the_listed_ones_and_an_independent_decode(
    capture: list[Fragment],
    reference: list[np.ndarray],
    caplog: pytest.LogCaptureFixture,
    options: dict[str, Any],
) -> None:
    stream = [capture[0], capture[1], capture[1], *capture[2:]]  # with a duplicate
    frames = assert_stream_equals_list(stream, caplog, **options)
    if options in ({}, {"threads": 1}, {"flush_each_fragment": False}):
        assert len(frames) == 300
        assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference, strict=True))
    elif options == {"keyframes_only": True}:
        assert len(frames) == 5 and all(f.keyframe for f in frames)
    elif "fps" in options:
        assert 5 * 14 <= len(frames) <= 5 * 14 + 5  # 7 a second over 10 s
    elif "fit" in options:
        assert frames[0].image.shape == (180, 320, 3) and frames[0].source_size == (640, 360)


@pytest.mark.parametrize(
    "name",
    [
        "output-get-media-equal-timecode.mkv",  # 1280x674
        "output-get-media-non-increasing-timecode.mkv",  # 960x720, time jumps back
        "output_get_media_sparse_fragments.mkv",
        "test_mixed_tags.mkv",  # MJPEG placeholders: every frame rejected and warned about
        "test_tags_empty_cluster.mkv",
        "empty-mkv-with-tags.mkv",
    ],
)
def test_every_capture_streams_the_same_frames_stats_and_warnings(
    captures: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    fragments = read_fragments((captures / name).read_bytes())
    frames = assert_stream_equals_list(fragments, caplog, format="gray")
    if name == "test_mixed_tags.mkv":
        assert frames == [] and "decoder rejected the data" in caplog.text
    elif name.startswith("output"):
        assert len(frames) > 100


def test_resolution_change_and_generated_clips_stream_the_same_frames(
    captures: Path,
    capture: list[Fragment],
    h264_sample: SampleStream,
    mjpeg_sample: SampleStream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = read_fragments((captures / "output-get-media-equal-timecode.mkv").read_bytes())
    # 640x360 -> 1280x674 -> 640x360: the decoder is drained and re-opened twice.
    changing = [capture[0], other[0], capture[1]]
    frames = assert_stream_equals_list(changing, caplog, fit=480)
    assert {f.image.shape for f in frames} == {(270, 480, 3), (253, 480, 3)}
    assert "CodecPrivate changed" in caplog.text
    frames = assert_stream_equals_list(changing, caplog, format="gray", flush_each_fragment=False)
    assert len(frames) == 120 + len(other[0].frames)
    frames = assert_stream_equals_list(h264_sample.fragments, caplog)
    assert len(frames) == h264_sample.frame_count
    track = h264_sample.fragments[0].tracks[0]
    expected = reference_decode_h264(track.codec_private, payloads(h264_sample.fragments))
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, expected, strict=True))
    frames = assert_stream_equals_list(mjpeg_sample.fragments, caplog, fps=4)
    assert 0 < len(frames) < mjpeg_sample.frame_count


def test_hevc_clip_streams_the_same_frames(
    hevc_sample: SampleStream, caplog: pytest.LogCaptureFixture
) -> None:
    frames = assert_stream_equals_list(hevc_sample.fragments, caplog)
    assert len(frames) == hevc_sample.frame_count


# --- frames come out before the fragment is decoded ---------------------------------------------
def test_each_frame_is_yielded_before_the_next_packet_is_sent(capture: list[Fragment]) -> None:
    # One decoder thread and no B-frames: FFmpeg returns picture n for packet n, so
    # frame n must reach the caller while packets n+1.. have not been sent yet.
    decoder = FragmentDecoder(threads=1)
    sent_when_yielded = [decoder.stats.packets_sent for _ in decoder.iter_decode(capture[0])]
    assert sent_when_yielded == list(range(1, CAPTURE_FRAMES + 1))
    # With FFmpeg's frame threads (the default) a picture lags its packet by a few
    # packets, and the first frame still arrives long before the fragment is sent.
    threaded = FragmentDecoder(threads=2)
    sent_when_yielded = [threaded.stats.packets_sent for _ in threaded.iter_decode(capture[0])]
    assert len(sent_when_yielded) == CAPTURE_FRAMES
    assert sent_when_yielded[0] <= 4
    assert sent_when_yielded == sorted(sent_when_yielded)
    # decode() by contrast hands over nothing until the whole fragment went through.
    listed = FragmentDecoder(threads=1)
    assert len(listed.decode(capture[0])) == listed.stats.packets_sent == CAPTURE_FRAMES


def broken_tail(fragment: Fragment, start: int) -> Fragment:
    """``fragment`` with the NAL lengths of frames ``start``.. cut short: undecodable."""
    frames = [
        replace(f, data=memoryview(bytes(f.data[: len(f.data) // 3]))) if n >= start else f
        for n, f in enumerate(fragment.frames)
    ]
    return replace(fragment, frames=tuple(frames))


def test_frames_before_a_corrupt_tail_reach_the_caller_before_its_warnings(
    capture: list[Fragment], reference: list[np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    fragment = broken_tail(capture[0], 30)
    decoder = FragmentDecoder(threads=1)
    warnings_when_yielded: list[int] = []
    received: list[DecodedFrame] = []
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.consumer"):
        for frame in decoder.iter_decode(fragment):
            warnings_when_yielded.append(len(caplog.records))
            received.append(frame)
        after = len(caplog.records)
    assert [f.index for f in received] == list(range(30))
    assert warnings_when_yielded == [0] * 30  # no warning yet for any frame delivered
    assert after == 20  # frames 30-59: the first 20 problems are warned about
    assert "fragment 91343852333181432392682062607743920146159169392 frame 30" in caplog.text
    assert decoder.stats.decode_errors == 30
    assert all(np.array_equal(f.image, r) for f, r in zip(received, reference[:30], strict=True))
    # decode() logs every problem of the fragment before the caller gets a single frame.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.consumer"):
        frames = FragmentDecoder(threads=1).decode(fragment)
        assert len(frames) == 30 and len(caplog.records) == 20


# --- ending early -------------------------------------------------------------------------------
@pytest.mark.parametrize("flush_each_fragment", [True, False])
def test_break_skips_the_rest_of_the_fragment_and_the_next_decodes_normally(
    capture: list[Fragment], reference: list[np.ndarray], flush_each_fragment: bool
) -> None:
    decoder = FragmentDecoder(flush_each_fragment=flush_each_fragment)
    taken = []
    for frame in decoder.iter_decode(capture[0]):
        taken.append(frame)
        if len(taken) == 5:
            break
    assert decoder.stats.iterations_abandoned == 1
    assert decoder.stats.packets_sent < 20  # the rest of the fragment was never sent
    assert all(np.array_equal(f.image, r) for f, r in zip(taken, reference[:5], strict=True))
    rest = [f for fragment in capture[1:] for f in decoder.iter_decode(fragment)]
    rest += decoder.flush()
    assert len(rest) == 240
    assert all(np.array_equal(f.image, r) for f, r in zip(rest, reference[60:], strict=True))
    assert [f.fragment_number for f in rest[:1]] == [capture[1].fragment_number]
    assert decoder.stats.iterations_abandoned == 1


def test_a_kept_iterator_is_superseded_by_the_next_call_and_yields_nothing_more(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder()
    first = decoder.iter_decode(capture[0])
    assert np.array_equal(next(first).image, reference[0])
    second = decoder.decode(capture[1])  # while `first` is still suspended
    assert decoder.stats.iterations_abandoned == 1
    assert list(first) == []  # resuming it does not touch the decoder again
    assert len(second) == 60
    assert all(np.array_equal(f.image, r) for f, r in zip(second, reference[60:120], strict=True))
    # flush() and close() end an unfinished iteration too.
    third = decoder.iter_decode(capture[2])
    next(third)
    assert decoder.flush() == []  # what the decoder held of capture[2] was discarded
    assert list(third) == [] and decoder.stats.iterations_abandoned == 2
    fourth = decoder.iter_decode(capture[3])
    next(fourth)
    decoder.close()
    assert list(fourth) == []
    assert len(decoder.decode(capture[4])) == 60  # re-opens after close()


def test_nothing_happens_until_the_iterator_is_first_advanced(capture: list[Fragment]) -> None:
    decoder = FragmentDecoder()
    frames = decoder.iter_decode(capture[0])
    assert decoder.stats.fragments == decoder.stats.packets_sent == 0
    assert decoder.codec is None
    next(frames)
    assert decoder.stats.fragments == 1 and decoder.codec is not None


def test_an_error_while_a_frame_is_handled_leaves_the_decoder_usable(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder()

    def handle(frame: DecodedFrame) -> None:
        if frame.index == 7:
            raise RuntimeError("the model failed on frame 7")

    with pytest.raises(RuntimeError, match="the model failed on frame 7"):
        for frame in decoder.iter_decode(capture[0]):
            handle(frame)
    # An exception thrown into the suspended iterator (as a context manager or a
    # framework would) also ends it; its fragment's remaining frames are dropped.
    frames = decoder.iter_decode(capture[1])
    next(frames)
    assert isinstance(frames, Generator)
    with pytest.raises(KeyError, match="cancelled"):
        frames.throw(KeyError("cancelled"))
    assert decoder.stats.iterations_abandoned == 2
    rest = list(decoder.decode_all(capture[2:]))
    assert all(np.array_equal(f.image, r) for f, r in zip(rest, reference[120:], strict=True))
    assert len(rest) == 180


def test_an_unsupported_codec_mid_stream_raises_and_the_stream_goes_on(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder()
    assert len(decoder.decode(capture[0])) == 60
    bad = replace(capture[1], tracks=(TrackInfo(1, "V_THEORA", b""),))
    with pytest.raises(DecodeError, match="codec 'V_THEORA' is not supported"):
        next(decoder.iter_decode(bad))
    frames = decoder.decode(capture[2])
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference[120:180], strict=True))
    assert len(frames) == 60


def test_breaking_out_of_decode_all_leaves_the_decoder_usable(
    capture: list[Fragment], reference: list[np.ndarray]
) -> None:
    decoder = FragmentDecoder()
    all_frames = decoder.decode_all(capture)
    for n, _frame in enumerate(all_frames):
        if n == 70:  # frame 10 of the second fragment
            break
    del all_frames  # the generator is closed, and with it the fragment's iteration
    assert decoder.stats.iterations_abandoned == 1
    frames = decoder.decode(capture[2])
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference[120:180], strict=True))
    # A decode_all() superseded by another call stops as a whole, not at the next fragment.
    fresh = FragmentDecoder()
    kept = fresh.decode_all(capture)
    next(kept)
    assert len(fresh.decode(capture[3])) == 60
    assert list(kept) == [] and fresh.stats.iterations_abandoned == 1


# --- consume() streams --------------------------------------------------------------------------
def test_consume_holds_a_few_frames_at_a_time(captures: Path) -> None:
    # Every frame's pixels stay alive only as long as something holds them: count the
    # ones alive each time consume() hands a frame on (decode() would hold all 60).
    images: list[weakref.ref[np.ndarray]] = []
    most = 0

    def on_frame(frame: DecodedFrame) -> None:
        nonlocal most
        images.append(weakref.ref(frame.image))
        most = max(most, sum(1 for image in images if image() is not None))

    out = io.StringIO()
    result = consume(FileReader(captures / "output_get_media.mkv"), FragmentDecoder(), out,
                     on_frame=on_frame)  # fmt: skip
    assert result.frames == 300 and len(out.getvalue().splitlines()) == 300
    assert most <= 2
