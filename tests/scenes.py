"""Generated motion scenes with exact ground truth, for the motion tests and benchmark.

A :class:`Scene` is a background (dark or bright, flat or textured), a few
:class:`Mover` rectangles (40-160 px, 1-12 px/frame, each bouncing inside its own lane
so that objects never touch), per-pixel sensor noise, a slow light change (the whole
picture's gain drifts, as a camera's exposure follows the sun) and a clock overlay at
the bottom left (:attr:`Scene.clock_zone` is where it is drawn, to be ignored).

Everything is a pure function of the scene and the frame index (the noise too: OpenCV's
generator, seeded per frame), so a test and the benchmark see the same pictures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels


def _bounce(position: float, low: float, high: float) -> float:
    """``position`` folded into [low, high] as a ball bounces between two walls."""
    span = high - low
    if span <= 0:
        return low
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


@dataclass(frozen=True)
class Mover:
    """A rectangle of ``size`` starting at ``start`` and moving ``velocity`` px/frame
    inside ``lane`` (x, y, w, h; the whole frame when None), bouncing off its walls.

    It stands still for the first ``hold`` frames and from frame ``stop`` on (when given).
    ``level`` is its grey level; ``textured`` adds its own fixed pattern.
    """

    size: tuple[int, int]
    start: tuple[float, float]
    velocity: tuple[float, float]
    level: int
    lane: Box | None = None
    hold: int = 0
    stop: int | None = None
    textured: bool = False

    def box(self, index: int, frame_size: tuple[int, int]) -> Box:
        moving = max(0, index - self.hold)
        if self.stop is not None:
            moving = min(moving, max(0, self.stop - self.hold))
        lane = self.lane or (0, 0, *frame_size)
        width, height = self.size
        x = _bounce(self.start[0] + self.velocity[0] * moving, lane[0], lane[0] + lane[2] - width)
        y = _bounce(self.start[1] + self.velocity[1] * moving, lane[1], lane[1] + lane[3] - height)
        return round(x), round(y), width, height


@dataclass(frozen=True)
class Scene:
    """A generated camera scene; ``render(i)`` is frame ``i`` (BGR), ``truth(i)`` the
    movers' boxes in it."""

    name: str
    width: int = 640
    height: int = 360
    frames: int = 150
    fps: int = 25
    bright: bool = False
    textured: bool = False
    movers: tuple[Mover, ...] = ()
    noise_sigma: float = 6.0  # grey levels, independent per pixel and channel
    light_change: float = -0.15  # relative gain change from the first to the last frame
    clock: bool = True
    seed: int = 1
    _cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def clock_zone(self) -> Box:
        """Where the clock is drawn (with a margin): an ignore zone."""
        scale = self.height / 480
        (text_width, text_height), _baseline = cv2.getTextSize(
            "00:00.000  #0000", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(2 * scale))
        )
        top = self.height - 12 - text_height - 6
        return 0, top, min(self.width, 8 + text_width + 12), self.height - top

    def positions(self, index: int) -> list[Box]:
        """Where the movers are in frame ``index``, partly or wholly outside it too."""
        return [mover.box(index, (self.width, self.height)) for mover in self.movers]

    def clip(self, box: Box) -> Box:
        x, y, width, height = box
        left, top = max(0, x), max(0, y)
        right, bottom = min(self.width, x + width), min(self.height, y + height)
        return left, top, max(0, right - left), max(0, bottom - top)

    def truth(self, index: int) -> list[Box | None]:
        """The movers' boxes in frame ``index`` (the part inside the frame), None for one
        less than half in view (not scored: entering or leaving)."""
        boxes: list[Box | None] = []
        for box in self.positions(index):
            seen = self.clip(box)
            boxes.append(seen if 2 * seen[2] * seen[3] >= box[2] * box[3] else None)
        return boxes

    @cached_property
    def _background(self) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(self.seed)
        base = 200.0 if self.bright else 45.0
        if not self.textured:
            return np.full((self.height, self.width), base, dtype=np.float32)
        # Structure at several scales, as walls, grass and tarmac have: blurred noise
        # (soft shading) plus a finer grain, about +-35 grey levels in all.
        size = (self.height, self.width)
        coarse = np.asarray(cv2.GaussianBlur(rng.normal(0, 1, size), (0, 0), 12), np.float64)
        fine = np.asarray(cv2.GaussianBlur(rng.normal(0, 1, size), (0, 0), 1.5), np.float64)
        coarse *= 25 / max(float(coarse.std()), 1e-6)
        fine *= 10 / max(float(fine.std()), 1e-6)
        return np.asarray(base + coarse + fine, dtype=np.float32)

    def _mover_patch(self, number: int, mover: Mover) -> npt.NDArray[np.float32]:
        key = f"mover{number}"
        patch = self._cache.get(key)
        if patch is None:
            width, height = mover.size
            patch = np.full((height, width), float(mover.level), dtype=np.float32)
            if mover.textured:
                rng = np.random.default_rng(self.seed * 1000 + number)
                grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)), (0, 0), 2.0)
                patch += grain * (18 / max(float(grain.std()), 1e-6))
            self._cache[key] = patch
        assert isinstance(patch, np.ndarray)
        return patch

    def gain(self, index: int) -> float:
        return 1.0 + self.light_change * index / max(1, self.frames - 1)

    def render(self, index: int) -> Image:
        picture = self._background.copy()
        for number, (mover, box) in enumerate(zip(self.movers, self.positions(index), strict=True)):
            left, top, width, height = self.clip(box)
            if width and height:
                patch = self._mover_patch(number, mover)
                dx, dy = left - box[0], top - box[1]
                picture[top : top + height, left : left + width] = patch[
                    dy : dy + height, dx : dx + width
                ]
        picture *= self.gain(index)
        # OpenCV's generator is several times faster than numpy's normal; seeded per frame.
        cv2.setRNGSeed(self.seed * 100_003 + index)
        noise = np.empty((self.height, self.width, 3), dtype=np.float32)
        sigma = np.full(3, self.noise_sigma)  # per channel (a scalar would be channel 0 only)
        cv2.randn(noise, np.zeros(3), sigma)
        noise += picture[:, :, None]
        np.clip(noise, 0, 255, out=noise)
        image = noise.astype(np.uint8)
        if self.clock:
            seconds = index / self.fps
            text = f"{int(seconds // 60):02d}:{seconds % 60:06.3f}  #{index}"
            scale = self.height / 480
            cv2.putText(
                image, text, (8, self.height - 12), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (235, 235, 235), max(1, int(2 * scale)), cv2.LINE_AA,
            )  # fmt: skip
        return image

    def images(self) -> Iterator[Image]:
        return (self.render(index) for index in range(self.frames))


def moving_scenes(width: int = 640, height: int = 360, frames: int = 150) -> list[Scene]:
    """Scenes of moving objects: dark and bright, flat and textured backgrounds, flat and
    textured objects of 40-160 px moving 1-12 px/frame, horizontally and diagonally.

    Objects moving 4 px/frame or more are in view from the first frame (the warm-up
    must not leave a lasting ghost of them); slower ones walk in from a side, as an
    object slower than its own length per warm-up would otherwise be part of the first
    background (see :mod:`kvs_toolkit.analysis.motion`)."""

    wide = (-200, width + 440)  # lanes from 200 px left of the frame to 240 px right of it
    return [
        Scene(
            "dark-flat", width, height, frames, bright=False, textured=False, seed=11,
            movers=(
                # the white square crossing a dark scene, in view from the start
                Mover((80, 80), (40, 40), (4, 0), 230, (0, 0, width, 150)),
                Mover((40, 40), (500, 200), (-12, 3), 150, (0, 170, width, 140)),
            ),
        ),
        Scene(
            "bright-textured", width, height, frames, bright=True, textured=True, seed=12,
            movers=(
                Mover((60, 60), (-85, 40), (1, 0), 60, (*wide[:1], 0, wide[1], 140)),
                Mover((60, 100), (400, 160), (6, 2), 110, (0, 150, width, 150), textured=True),
            ),
        ),
        Scene(
            "dark-textured", width, height, frames, bright=False, textured=True, seed=13,
            movers=(
                Mover((160, 120), (690, 10), (-2, 1), 170, (*wide[:1], 0, wide[1], 150),
                      textured=True),
                Mover((50, 50), (60, 200), (9, -5), 220, (0, 150, width, 160)),
            ),
        ),
        Scene(
            "bright-flat", width, height, frames, bright=True, textured=False, seed=14,
            movers=(
                Mover((100, 60), (715, 30), (-3, 0), 40, (*wide[:1], 0, wide[1], 150)),
                Mover((70, 90), (100, 170), (7, 1), 120, (0, 160, width, 140), textured=True),
            ),
        ),
    ]  # fmt: skip


def static_scenes(width: int = 640, height: int = 360, frames: int = 150) -> list[Scene]:
    """Nothing moves: noise, the clock and a light change of 35% over the scene (6 s at
    the defaults: a cloud over the sun on the bright scenes, lights coming up on the dark
    ones)."""
    return [
        Scene(f"static-{tone}-{kind}", width, height, frames, bright=bright, textured=textured,
              light_change=-0.35 if bright else 0.35, seed=20 + n)
        for n, (tone, bright, kind, textured) in enumerate(
            [("dark", False, "flat", False), ("dark", False, "textured", True),
             ("bright", True, "flat", False), ("bright", True, "textured", True)]
        )
    ]  # fmt: skip


def scaled(scene: Scene, factor: float) -> Scene:
    """The same scene at ``factor`` times the size (movers, lanes and speeds too)."""

    def box(b: Box) -> Box:
        return (round(b[0] * factor), round(b[1] * factor), round(b[2] * factor),
                round(b[3] * factor))  # fmt: skip

    movers = tuple(
        Mover(
            (round(m.size[0] * factor), round(m.size[1] * factor)),
            (m.start[0] * factor, m.start[1] * factor),
            (m.velocity[0] * factor, m.velocity[1] * factor),
            m.level,
            None if m.lane is None else box(m.lane),
            m.hold,
            m.stop,
            m.textured,
        )
        for m in scene.movers
    )
    return Scene(
        scene.name, round(scene.width * factor), round(scene.height * factor), scene.frames,
        scene.fps, scene.bright, scene.textured, movers, scene.noise_sigma, scene.light_change,
        scene.clock, scene.seed,
    )  # fmt: skip


@dataclass(frozen=True)
class Score:
    """How a detector did on a scene after its warm-up."""

    scene: str
    frames: int  # frames scored
    scored: tuple[int, ...]  # per mover: frames in which at least half of it is in view
    hits: tuple[int, ...]  # per mover: of those, frames with a box at IoU >= 0.5
    boxes: int  # boxes reported in all
    false_boxes: int  # boxes at IoU < 0.1 with every mover

    @property
    def hit_rates(self) -> tuple[float, ...]:
        return tuple(h / max(1, n) for h, n in zip(self.hits, self.scored, strict=True))

    @property
    def false_per_100(self) -> float:
        return 100 * self.false_boxes / max(1, self.frames)


def iou(a: Box, b: Box) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def score(scene: Scene, found: list[list[Box]], skip: int) -> Score:
    """Score ``found`` (boxes per frame, one list per frame from frame 0) from frame
    ``skip`` on."""
    hits = [0] * len(scene.movers)
    scored = [0] * len(scene.movers)
    boxes = false = 0
    for index in range(skip, len(found)):
        for n, true_box in enumerate(scene.truth(index)):
            if true_box is None:
                continue
            scored[n] += 1
            if any(iou(true_box, box) >= 0.5 for box in found[index]):
                hits[n] += 1
        everywhere = [scene.clip(box) for box in scene.positions(index)]
        boxes += len(found[index])
        false += sum(all(iou(t, box) < 0.1 for t in everywhere) for box in found[index])
    return Score(scene.name, len(found) - skip, tuple(scored), tuple(hits), boxes, false)
