"""Motion detection: boxes against generated ground truth, and speed at 720p on one core.

The scenes are :mod:`tests.scenes`: objects of 40-160 px moving 1-12 px/frame on dark
and bright, flat and textured backgrounds, with sensor noise, a slow light change and a
clock overlay (an ignore zone), and still scenes with noise, a 35% light change and the
clock. Three background models go through the same :class:`MotionDetector` pipeline
(grey at 320 px wide, blur, ignore zones, open/close, connected components, boxes scaled
back), so only the model differs:

* ours: ``method="average"``, the selective running average (the default);
* references: OpenCV's ``createBackgroundSubtractorMOG2`` and ``...KNN``
  (``method="mog2"`` / ``"knn"``, shadows off, OpenCV's default thresholds and 500-frame
  history, started from the same warm-up).

Rows: the share of frames in which each moving object has a box at IoU >= 0.5 after a
1 s warm-up (the worst object, and all objects together), false boxes per 100 frames on
the still scenes, and frames/s at 1280x720 (the first moving scene scaled 2x, frames made
before timing; only ``detect_image`` is timed, in CPU seconds of this process) with
``cv2.setNumThreads(1)``: one core, as a consumer per stream on a small instance would
get.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Final

import cv2

from benchmarks.common import Options, Result, fmt_ratio, gc_paused
from kvs_toolkit.analysis import MotionDetector
from tests.scenes import Box, Image, Scene, Score, moving_scenes, scaled, score, static_scenes

GOAL_FPS: Final = 200.0
GOAL_HIT_RATE: Final = 0.9
GOAL_FALSE_PER_100: Final = 1.0
METHODS: Final = ("average", "mog2", "knn")
NAMES: Final = {"average": "ours", "mog2": "MOG2", "knn": "KNN"}


def detector(method: str, scene: Scene) -> MotionDetector:
    return MotionDetector(method=method, ignore_zones=[scene.clock_zone])


def boxes_of(method: str, scene: Scene, images: list[Image] | None = None) -> list[list[Box]]:
    found: list[list[Box]] = []
    motion = detector(method, scene)
    for index in range(scene.frames):
        image = scene.render(index) if images is None else images[index]
        detections = motion.detect_image(image, timestamp_s=index / scene.fps)
        found.append(
            [(round(d.box.x), round(d.box.y), round(d.box.width), round(d.box.height))
             for d in detections]
        )  # fmt: skip
    return found


def hit_rates(scores: list[Score]) -> tuple[float, float]:
    """(worst object's hit rate, all objects' hits over all scored frames)."""
    worst = min(rate for s in scores for rate in s.hit_rates)
    overall = sum(sum(s.hits) for s in scores) / max(1, sum(sum(s.scored) for s in scores))
    return worst, overall


def frames_per_second(
    method: str, scene: Scene, images: list[Image], rounds: int
) -> tuple[float, float]:
    """(frames per CPU second, frames per wall-clock second), the best round of each.

    CPU time is what "one core" means on a shared machine: other processes' load
    stretches the wall clock but not the time this (single-threaded) loop runs."""
    best_cpu = best_wall = 0.0
    for _ in range(rounds):
        motion = detector(method, scene)
        for index in range(scene.fps):  # the warm-up builds the background, untimed
            motion.detect_image(images[index], timestamp_s=index / scene.fps)
        timed = range(scene.fps, len(images))
        with gc_paused():
            start_cpu, start = time.process_time(), time.perf_counter()
            for index in timed:
                motion.detect_image(images[index], timestamp_s=index / scene.fps)
            cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
        best_cpu = max(best_cpu, len(timed) / cpu)
        best_wall = max(best_wall, len(timed) / wall)
    return best_cpu, best_wall


def run(options: Options | None = None) -> list[Result]:
    options = options or Options()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    frames = 150  # as the tests see them (the light change is spread over the scene)
    rounds = 2 if options.quick else 3
    try:
        moving, still = moving_scenes(frames=frames), static_scenes(frames=frames)
        hits: dict[str, tuple[float, float]] = {}
        false: dict[str, float] = {}
        for method in METHODS:
            hits[method] = hit_rates([score(s, boxes_of(method, s), s.fps) for s in moving])
            still_scores = [score(s, boxes_of(method, s), s.fps) for s in still]
            false[method] = (
                100 * sum(s.false_boxes for s in still_scores)
                / sum(s.frames for s in still_scores)
            )  # fmt: skip
        big_frames = 100 if options.quick else 125
        big = scaled(dataclasses.replace(moving[0], frames=big_frames), 2.0)  # 1280x720
        images = [big.render(index) for index in range(big_frames)]
        timings = {method: frames_per_second(method, big, images, rounds) for method in METHODS}
        fps = {method: cpu for method, (cpu, _wall) in timings.items()}
        big_hits = hit_rates([score(big, boxes_of("average", big, images), big.fps)])
    finally:
        cv2.setNumThreads(threads)

    def refs(values: dict[str, str]) -> str:
        return ", ".join(f"{NAMES[m]} {values[m]}" for m in METHODS[1:])

    best_ref_hits = max(hits[m][0] for m in METHODS[1:])
    best_ref_false = min(false[m] for m in METHODS[1:])
    best_ref_fps = max(fps[m] for m in METHODS[1:])
    notes = (
        f"motion_detect: {len(moving)} moving scenes and {len(still)} still scenes of "
        f"640x360, {frames} frames each at 25 fps (tests/scenes.py); the first 25 frames "
        "(1 s) are the warm-up and not scored. Hit rate: frames with a box at IoU >= 0.5 "
        "for an object, over the frames it is at least half in view; worst object (all "
        "objects). False boxes: boxes on the still scenes per 100 scored frames. All "
        "methods run through the same MotionDetector pipeline (320 px, ignore zone on the "
        "clock, open/close, components); MOG2 and KNN with OpenCV's default thresholds.",
        f"motion_detect: frames/s at 1280x720: {big.name} scaled 2x, {big_frames - big.fps} "
        f"timed frames after a 25-frame warm-up, best of {rounds} rounds, "
        f"cv2.setNumThreads(1), detect_image only (frames made before timing), frames per "
        f"CPU second of the process (wall clock: "
        + ", ".join(f"{NAMES[m]} {timings[m][1]:,.0f}" for m in METHODS)
        + f" frames/s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); "
        f"ours finds the objects there too: worst object {big_hits[0]:.0%}.",
    )
    pct = {m: f"{hits[m][0]:.0%} ({hits[m][1]:.0%})" for m in METHODS}
    per_100 = {m: f"{false[m]:.1f}" for m in METHODS}
    rate = {m: f"{fps[m]:,.0f} frames/s" for m in METHODS}
    return [
        Result(
            benchmark="motion boxes on moving objects (IoU >= 0.5)",
            ours=pct["average"],
            reference=refs(pct),
            ratio=fmt_ratio(hits["average"][0] / max(best_ref_hits, 1e-9)),
            goal=f">= {GOAL_HIT_RATE:.0%} per object after 1 s",
            met=hits["average"][0] >= GOAL_HIT_RATE,
            notes=notes,
        ),
        Result(
            benchmark="motion false boxes per 100 frames, still scenes",
            ours=per_100["average"],
            reference=refs(per_100),
            ratio=fmt_ratio(false["average"] / best_ref_false) if best_ref_false else "-",
            goal=f"<= {GOAL_FALSE_PER_100:g}",
            met=false["average"] <= GOAL_FALSE_PER_100,
            notes=notes,
        ),
        Result(
            benchmark="motion detect 720p, 1 core",
            ours=rate["average"],
            reference=refs(rate),
            ratio=fmt_ratio(fps["average"] / best_ref_fps),
            goal=f">= {GOAL_FPS:.0f} frames/s on one core",
            met=fps["average"] >= GOAL_FPS,
            notes=notes,
        ),
    ]


if __name__ == "__main__":
    for result in run(Options(quick=True)):
        print(result)
