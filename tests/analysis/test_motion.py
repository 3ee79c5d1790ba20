from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kvs_toolkit.analysis import Analyzer, IouTracker, JsonLinesSink, MotionDetector
from kvs_toolkit.analysis.base import Detection
from kvs_toolkit.consumer import DecodedFrame, FragmentDecoder
from kvs_toolkit.consumer.frames import Image, PixelFormat
from kvs_toolkit.samples import SampleSpec, ground_truth, render_frame
from tests.consumer.media import sample_stream

from .conftest import SPEC, START_NS, best_ious, make_frame, sample_frames

WARMUP = 25


def frame_index(frame: DecodedFrame, fps: int = 25) -> int:
    return round((frame.timestamp_ns - START_NS) * fps / 1e9)


def _recall(detector: MotionDetector, spec: SampleSpec, count: int) -> tuple[float, float]:
    """Share of ground-truth boxes (after warm-up) matched at IoU >= 0.5, and the median IoU."""
    frames = list(sample_frames(spec, count))
    ious = [
        best_ious(spec, frame_index(frame), found)
        for frame, found in zip(frames, detector.detect(frames), strict=True)
        if frame_index(frame) >= WARMUP
    ]
    values = np.concatenate(ious)
    return float((values >= 0.5).mean()), float(np.median(values))


@pytest.mark.parametrize("method", ["average", "mog2"])
def test_finds_the_moving_squares(method: str) -> None:
    detector = MotionDetector(method=method, warmup=WARMUP)
    matched, median = _recall(detector, SPEC, 125)
    assert matched >= 0.95
    assert median >= 0.8


def test_warmup_frames_return_nothing_and_then_boxes_are_found() -> None:
    detector = MotionDetector(warmup=5)
    results = detector.detect(list(sample_frames(SPEC, 8)))
    assert results[:5] == [[], [], [], [], []]
    assert all(results[5:])
    assert {d.label for found in results for d in found} == {"motion"}
    assert all(0 < d.confidence <= 1 for found in results for d in found)


def test_no_ghost_where_the_squares_started() -> None:
    """The median background leaves out objects present in the first frames."""
    detector = MotionDetector(warmup=WARMUP)
    results = detector.detect(list(sample_frames(SPEC, 60)))
    first = ground_truth(SPEC, 0)[0]  # the red square's position in frame 0
    late = [d for d in results[-1] if d.box.y < 300]  # ignore the clock
    for d in late:
        assert not (abs(d.box.x - first.x) < 10 and abs(d.box.y - first.y) < 10)
    assert len(late) == 2


def test_tracker_keeps_one_id_per_square() -> None:
    detector = MotionDetector(warmup=WARMUP, track=True)
    frames = list(sample_frames(SPEC, 100))
    ids: dict[str, set[int | None]] = {"red-square": set(), "green-square": set()}
    for frame, found in zip(frames[WARMUP:], detector.detect(frames)[WARMUP:], strict=True):
        for truth in ground_truth(SPEC, frame_index(frame)):
            ids[truth.label].update(
                d.track_id
                for d in found
                if abs(d.box.x - truth.x) < 8 and abs(d.box.y - truth.y) < 8
            )
    assert len(ids["red-square"]) == 1
    assert len(ids["green-square"]) == 1
    assert ids["red-square"] != ids["green-square"]


def test_iou_tracker_expires_tracks() -> None:
    tracker = IouTracker(max_missed=1)
    box = Detection.from_pixels("m", 1, (10, 10, 20, 20), (100, 100))
    [first] = tracker.update([box])
    tracker.update([])
    [again] = tracker.update([box])  # missed once: still known
    assert again.track_id == first.track_id
    tracker.update([])
    tracker.update([])
    [new] = tracker.update([box])  # missed twice: a new track
    assert new.track_id != first.track_id


def test_min_area_and_formats() -> None:
    index = 40
    images = [render_frame(SPEC, i) for i in range(index + 1)]
    conversions: list[tuple[PixelFormat, Callable[[Image], Image]]] = [
        ("bgr24", lambda im: im),
        ("rgb24", lambda im: im[:, :, ::-1].copy()),
        ("gray", lambda im: np.ascontiguousarray(im.mean(axis=2).astype(np.uint8))),
    ]
    for format, convert in conversions:
        detector = MotionDetector(warmup=WARMUP)
        frames = [make_frame(convert(im), i, format=format) for i, im in enumerate(images)]
        found = detector.detect(frames)[-1]
        assert (best_ious(SPEC, index, found) >= 0.5).all(), format
    big_only = MotionDetector(warmup=WARMUP, min_area=5000)
    found = big_only.detect(list(sample_frames(SPEC, index + 1)))[-1]
    # Only the 79x79 red square is over 5000 px; the green one (57x57) and the clock go.
    assert len(found) == 1 and found[0].box.width > 70


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown motion method 'knn'"):
        MotionDetector(method="knn")


def test_on_real_h264_fragments(tmp_path: Path) -> None:
    """Real encoded video through the consumer's decoder, then the Analyzer to JSON lines."""
    spec = SampleSpec(width=640, height=360, fps=25, seconds=3.0, codec="h264", gop_seconds=1.0)
    stream = sample_stream(spec, tmp_path)
    decoder = FragmentDecoder(format="bgr24")
    frames = [f for fragment in stream.fragments for f in decoder.decode(fragment)]
    frames += decoder.flush()
    assert len(frames) == spec.frame_count
    out = tmp_path / "motion.jsonl"
    with Analyzer(MotionDetector(warmup=WARMUP), [JsonLinesSink(out)], batch_size=4) as analyzer:
        records = list(analyzer.process(frames))
    assert len(records) == spec.frame_count
    assert len(out.read_text().splitlines()) == spec.frame_count
    matched = [
        best_ious(spec, index, list(record.detections))
        for index, record in enumerate(records)
        if index >= WARMUP
    ]
    share = float((np.concatenate(matched) >= 0.5).mean())
    assert share >= 0.9
    assert {r.fragment_number for r in records} == {f.fragment_number for f in frames}
    assert len({r.fragment_number for r in records}) == 3
