from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kvs_toolkit.analysis import Analyzer, IouTracker, JsonLinesSink, MotionDetector
from kvs_toolkit.analysis.base import Detection
from kvs_toolkit.analysis.motion import parse_ignore_zone
from kvs_toolkit.consumer import DecodedFrame, FragmentDecoder
from kvs_toolkit.consumer.frames import Image, PixelFormat
from kvs_toolkit.samples import SampleSpec, ground_truth, render_frame
from tests.consumer.media import sample_stream
from tests.scenes import Box, Mover, Scene, iou, moving_scenes, scaled, score, static_scenes

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


@pytest.mark.parametrize("method", ["average", "mog2", "knn"])
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
    with pytest.raises(ValueError, match=r"unknown motion method 'vibe' \(known: average, knn"):
        MotionDetector(method="vibe")


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


# --- generated ground truth (tests/scenes.py) ----------------------------------------------
def run_scene(detector: MotionDetector, scene: Scene, start_s: float = 0.0) -> list[list[Box]]:
    """The detector's boxes in every frame of ``scene``, timed by the frames' timestamps."""
    found = []
    for index in range(scene.frames):
        time_s = start_s + index / scene.fps
        detections = detector.detect_image(scene.render(index), timestamp_s=time_s)
        found.append([(round(d.box.x), round(d.box.y), round(d.box.width), round(d.box.height))
                      for d in detections])  # fmt: skip
    return found


@pytest.mark.parametrize("scene", moving_scenes(), ids=lambda scene: scene.name)
def test_boxes_hug_every_moving_object(scene: Scene) -> None:
    """After a 1 s warm-up, each object has a box at IoU >= 0.5 in at least 90% of the
    frames: no trail behind it (the model does not learn it), no lasting ghost where it
    was during the warm-up, through noise and a light change."""
    detector = MotionDetector(ignore_zones=[scene.clock_zone])
    result = score(scene, run_scene(detector, scene), skip=scene.fps)
    assert min(result.scored) >= 40, result
    assert min(result.hit_rates) >= 0.9, result


@pytest.mark.parametrize("scene", static_scenes(), ids=lambda scene: scene.name)
def test_no_boxes_on_a_still_scene_with_noise_light_change_and_a_clock(scene: Scene) -> None:
    detector = MotionDetector(ignore_zones=[scene.clock_zone])
    result = score(scene, run_scene(detector, scene), skip=scene.fps)
    assert result.false_per_100 <= 1.0, result


def test_the_clock_is_found_unless_its_zone_is_ignored() -> None:
    scene = static_scenes()[0]
    found = run_scene(MotionDetector(), scene)
    assert sum(map(len, found[scene.fps :])) > scene.frames // 2  # the clock ticks
    x, y, width, _height = scene.clock_zone
    for box in (b for boxes in found for b in boxes):
        assert box[1] + box[3] > y and box[0] < x + width  # every box is on the clock


def ghost_and_stop_scene(*, textured: bool) -> Scene:
    """A square standing still through the warm-up and then leaving (frame 40, clear of
    its start by frame 60), and a square that stops at frame 60."""
    return Scene(
        "ghost-and-stop", frames=160, bright=textured, textured=textured, seed=31,
        movers=(
            Mover((80, 80), (60, 40), (4, 0), 60 if textured else 220, (0, 0, 640, 150),
                  hold=40),
            Mover((60, 60), (600, 200), (-5, 0), 90 if textured else 200, (0, 170, 640, 140),
                  stop=60, textured=True),
        ),
    )  # fmt: skip


@pytest.mark.parametrize("textured", [False, True], ids=["dark-flat", "bright-textured"])
def test_no_ghost_where_an_object_stood_and_stopped_objects_are_absorbed(
    textured: bool,
) -> None:
    scene = ghost_and_stop_scene(textured=textured)
    absorb_seconds = 2.0
    found = run_scene(
        MotionDetector(ignore_zones=[scene.clock_zone], absorb_seconds=absorb_seconds), scene
    )
    start = scene.positions(0)[0]
    cleared = 60  # the first frame the square no longer overlaps where it stood
    assert iou(scene.positions(cleared)[0], start) == 0
    # The ghost has gone one second after the square left its place, for good.
    late = found[cleared + scene.fps :]
    assert not [box for boxes in late for box in boxes if iou(box, start) > 0.1]
    # The square that stopped is still reported for most of absorb_seconds, then not.
    stop = 60
    stopped = scene.positions(stop)[1]

    def reported(index: int) -> bool:
        return any(iou(box, stopped) >= 0.5 for box in found[index])

    held = round(absorb_seconds * scene.fps)
    assert all(reported(i) for i in range(stop, stop + held * 3 // 4))
    assert not any(reported(i) for i in range(stop + held + scene.fps // 2, scene.frames))


def test_epoch_timestamps_time_absorption_as_well_as_small_ones() -> None:
    scene = scaled(ghost_and_stop_scene(textured=False), 0.5)
    found = [
        run_scene(MotionDetector(absorb_seconds=2.0), scene, start_s=start_s)
        for start_s in (0.0, 1_700_000_000.0)  # a producer timestamp: float32 cannot hold it
    ]
    assert found[0] == found[1]
    stopped = scene.positions(60)[1]  # stops at frame 60, absorbed 2 s later
    assert [iou(box, stopped) >= 0.5 for box in found[0][100]].count(True) == 1
    assert [iou(box, stopped) >= 0.5 for box in found[0][-1]].count(True) == 0


def test_a_clock_going_back_carries_on() -> None:
    """A file played again: its timestamps restart; the stopped square is still absorbed."""
    scene = scaled(ghost_and_stop_scene(textured=False), 0.5)
    detector = MotionDetector(absorb_seconds=2.0)
    stopped = scene.positions(60)[1]
    reported = []
    for index in range(scene.frames):
        time_s = index / scene.fps - (100.0 if index >= 80 else 0.0)
        found = detector.detect_image(scene.render(index), timestamp_s=time_s)
        boxes = [(round(d.box.x), round(d.box.y), round(d.box.width), round(d.box.height))
                 for d in found]  # fmt: skip
        reported.append(any(iou(box, stopped) >= 0.5 for box in boxes))
    assert all(reported[60:100])
    assert not any(reported[125:])


def test_an_ignore_zone_in_frame_pixels_at_any_processing_size() -> None:
    scene = dataclasses.replace(moving_scenes()[0], frames=60)  # the square: the top band
    zone = (0, 0, 640, 150)
    for process_width in (320, 200, None):
        detector = MotionDetector(ignore_zones=[zone, scene.clock_zone],
                                  process_width=process_width)  # fmt: skip
        found = run_scene(detector, scene)
        boxes = [box for boxes in found[scene.fps :] for box in boxes]
        assert boxes  # the other object, below the zone
        assert all(box[1] >= 150 for box in boxes), process_width


def test_parse_ignore_zone() -> None:
    assert parse_ignore_zone("10,20,300,40") == (10, 20, 300, 40)
    assert parse_ignore_zone(" 0, 0 ,5,5") == (0, 0, 5, 5)
    for bad in ("10,20,300", "1,2,3,4,5", "a,b,c,d", "1.5,2,3,4", "", "-1,0,5,5", "0,0,0,5"):
        with pytest.raises(ValueError, match="ignore zone"):
            parse_ignore_zone(bad)
    with pytest.raises(ValueError, match="ignore zone"):
        MotionDetector(ignore_zones=[(0, 0, -1, 5)])


def test_the_demo_ignores_its_clock_and_still_finds_the_squares() -> None:
    from kvs_toolkit.demo import ANALYSIS_FPS, CLOCK_ZONE

    frames = list(sample_frames(SPEC, 100))[:: round(SPEC.fps / ANALYSIS_FPS)]

    def on_clock(found: list[list[Detection]]) -> list[Detection]:
        return [d for boxes in found for d in boxes if d.box.y2 > CLOCK_ZONE[1]]

    assert on_clock(MotionDetector(warmup=10).detect(frames))  # as the demo was
    found = MotionDetector(track=True, warmup=10, ignore_zones=[CLOCK_ZONE]).detect(frames)
    assert not on_clock(found)
    for index, boxes in zip(range(0, 100, 5), found, strict=False):
        if index >= 50:
            assert (best_ious(SPEC, index, boxes) >= 0.5).all(), index
