from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from kvs_toolkit.analysis import (
    AnalysisError,
    Analyzer,
    Detection,
    MemorySink,
    MotionDetector,
    contact_sheet,
    draw_detections,
    label_colour,
    timeline_png,
)
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.samples import render_frame

from .conftest import SPEC, make_frame, sample_frames


class EveryOther:
    """Finds a box on even frames only, and records the batch sizes it was given."""

    name = "every-other"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        self.batches.append(len(frames))
        return [
            [Detection.from_pixels("thing", 0.8, (10, 10, 20, 20), (f.width, f.height))]
            if f.index % 2 == 0
            else []
            for f in frames
        ]


def test_one_record_per_frame_in_order_also_when_empty(tmp_path: Path) -> None:
    detector = EveryOther()
    memory = MemorySink()
    out = tmp_path / "r.jsonl"
    frames = list(sample_frames(SPEC, 10))
    with Analyzer(detector, [memory, f"jsonl:{out}"], batch_size=4, stream_name="cam") as run:
        stats = run.run(frames)
    assert detector.batches == [4, 4, 2]
    assert [r.frame_timestamp for r in memory.records] == [f.timestamp for f in frames]
    assert [len(r.detections) for r in memory.records] == [1, 0] * 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 10 and lines[1]["detections"] == []
    assert {line["stream_name"] for line in lines} == {"cam"}
    assert {line["model"] for line in lines} == {"every-other"}
    assert stats.frames_seen == stats.frames_analysed == 10
    assert stats.detections_by_label == {"thing": 5} and stats.detections == 5
    assert stats.batches == 3
    assert stats.latency_p50 is not None and stats.latency_p95 is not None
    assert 0 <= stats.latency_p50 <= stats.latency_p95
    assert memory.closed
    summary = stats.to_json()
    assert summary["detections_by_label"] == {"thing": 5} and summary["latency_ms_p95"] >= 0


def test_latency_counts_the_batch_wait() -> None:
    ticks = iter(range(100))
    analyzer = Analyzer(EveryOther(), batch_size=3, clock=lambda: float(next(ticks)))
    records = list(analyzer.process(sample_frames(SPEC, 3)))
    # Arrivals at t=0, 1, 2; detect runs from 3 to 4: latencies 4, 3 and 2 s.
    assert [r.latency_ms for r in records] == [4000.0, 3000.0, 2000.0]
    assert analyzer.stats.detect_seconds == 1.0


def test_fps_sampling_skips_frames_without_records() -> None:
    analyzer = Analyzer(EveryOther(), fps=5, batch_size=1)
    records = list(analyzer.process(sample_frames(SPEC, 50)))  # 2 s at 25 fps
    assert len(records) == 10
    assert analyzer.stats.frames_not_sampled == 40
    gaps = np.diff([r.frame_timestamp for r in records])
    np.testing.assert_allclose(gaps, 0.2, atol=1e-6)


def test_detector_by_name_and_keep_frames() -> None:
    analyzer = Analyzer("motion", keep_frames=False)
    assert isinstance(analyzer.detector, MotionDetector)
    [first] = analyzer.process(sample_frames(SPEC, 1))
    assert first.frame is None


def test_a_detector_returning_the_wrong_count_is_an_error() -> None:
    class Broken:
        name = "broken"

        def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
            return [[]]

    with pytest.raises(AnalysisError, match="returned 1 results for a batch of 2"):
        Analyzer(Broken(), batch_size=2).run(sample_frames(SPEC, 2))


# --- pictures -------------------------------------------------------------------------------
def test_draw_detections_draws_without_touching_the_input() -> None:
    image = render_frame(SPEC, 0)
    before = image.copy()
    box = Detection.from_pixels("person", 0.9, (300, 100, 100, 100), (640, 360)).with_track(3)
    drawn = draw_detections(image, [box])
    np.testing.assert_array_equal(image, before)
    assert tuple(int(v) for v in drawn[150, 300]) == label_colour("person")  # left edge
    assert tuple(int(v) for v in drawn[150, 350]) == tuple(before[150, 350])  # inside
    gray = draw_detections(image[:, :, 0].copy(), [box])
    assert gray.shape == (360, 640, 3)
    rgb = draw_detections(image[:, :, ::-1].copy(), [box], format="rgb24")
    np.testing.assert_array_equal(rgb, drawn)
    assert label_colour("person") == label_colour("person") != label_colour("car")


def _run(count: int) -> list:  # type: ignore[type-arg]
    analyzer = Analyzer(MotionDetector(warmup=10, track=True), batch_size=8)
    return list(analyzer.process(sample_frames(SPEC, count)))


def test_contact_sheet_png(tmp_path: Path) -> None:
    records = _run(40)
    path = tmp_path / "sheet.png"
    sheet = contact_sheet(records, columns=4, thumb_width=200, max_frames=10, path=path)
    # 10 tiles in 3 rows; 640x360 frames make 200x112 thumbnails; 4 px gaps.
    assert sheet.shape == (3 * (112 + 4) + 4, 4 * (200 + 4) + 4, 3)
    loaded = cv2.imread(str(path))
    assert loaded is not None and loaded.shape == sheet.shape
    np.testing.assert_array_equal(loaded, sheet)
    pairs = [(r.frame.image, r.detections) for r in records[:3] if r.frame is not None]
    assert contact_sheet(pairs, columns=2, thumb_width=64, gap=0).shape == (2 * 36, 2 * 64, 3)
    with pytest.raises(ValueError, match="no frames"):
        contact_sheet([])


def test_timeline_png(tmp_path: Path) -> None:
    records = _run(60)
    path = tmp_path / "timeline.png"
    image = timeline_png(records, path, width=800, row_height=20)
    labels = {d.label for r in records for d in r.detections}
    assert labels == {"motion"}
    assert image.shape == ((len(labels) + 1) * 20 + 56, 800, 3)
    loaded = cv2.imread(str(path))
    assert loaded is not None and loaded.shape == image.shape
    # The motion row is lit after the warm-up and dark before it.
    row = image[28 + 3 : 28 + 17, 180 : 180 + 604]
    lit = (row.max(axis=(0, 2)) > 60).nonzero()[0]
    assert lit.min() > 0.1 * 604 and lit.max() >= 600
    events = [(1.0, [Detection.from_pixels("a", 1, (0, 0, 1, 1), (2, 2))]), (2.0, [])]
    assert timeline_png(events, width=400).shape == (2 * 24 + 56, 400, 3)  # "a", analysed


def test_pictures_of_a_single_frame() -> None:
    frame = make_frame(render_frame(SPEC, 3), 3)
    found = [Detection.from_pixels("x", 0.5, (1, 1, 5, 5), (640, 360))]
    assert contact_sheet([(frame, found)], columns=3, thumb_width=100).shape[1] == 3 * 104 + 4
    assert timeline_png([(frame.timestamp, found)]).shape[1] == 1000
