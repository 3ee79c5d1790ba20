"""Detections, the detector interface and the detector registry.

A detector takes a batch of :class:`~kvs_toolkit.consumer.DecodedFrame` objects and
returns one list of :class:`Detection` per frame::

    detector = create_detector("motion", min_area=400)
    for frame, found in zip(frames, detector.detect(frames)):
        ...

Detectors are found by name in a registry (:func:`register_detector`); a spec of the form
``"package.module:attribute"`` imports a plug-in instead: a detector class (called with
the options), a detector object, or any callable ``f(frames) -> list[list[Detection]]``.

Boxes are kept twice, in frame pixels and relative to the frame (0..1), because sinks
want pixels and services such as Rekognition speak in fractions. Confidence is always
0..1 (Rekognition's percentages are divided by 100).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.errors import AnalysisError

__all__ = [
    "AnalysisError",
    "BoundingBox",
    "CallableDetector",
    "Detection",
    "Detector",
    "DetectorFactory",
    "box_iou",
    "create_detector",
    "register_detector",
    "registered_detectors",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """An axis-aligned box: top-left corner, width and height (pixels or fractions)."""

    x: float
    y: float
    width: float
    height: float

    @property
    def x2(self) -> float:
        return self.x + self.width

    @property
    def y2(self) -> float:
        return self.y + self.height

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def to_json(self, digits: int) -> dict[str, float]:
        return {
            "x": round(self.x, digits),
            "y": round(self.y, digits),
            "width": round(self.width, digits),
            "height": round(self.height, digits),
        }


@dataclass(frozen=True, slots=True)
class Detection:
    """One thing found in a frame.

    ``box`` is in frame pixels, ``box_relative`` in fractions of the frame's width and
    height (0..1). ``confidence`` is 0..1. ``track_id`` is set by trackers: the same id
    in consecutive frames means the same object.
    """

    label: str
    confidence: float
    box: BoundingBox
    box_relative: BoundingBox
    track_id: int | None = None

    @classmethod
    def from_pixels(
        cls,
        label: str,
        confidence: float,
        box: tuple[float, float, float, float],
        frame_size: tuple[int, int],
        *,
        track_id: int | None = None,
    ) -> Detection:
        """A detection from a pixel box ``(x, y, width, height)`` in a frame of
        ``frame_size`` ``(width, height)``."""
        x, y, width, height = (float(v) for v in box)
        frame_width, frame_height = frame_size
        relative = BoundingBox(
            x / frame_width, y / frame_height, width / frame_width, height / frame_height
        )
        return cls(label, float(confidence), BoundingBox(x, y, width, height), relative, track_id)

    @classmethod
    def from_relative(
        cls,
        label: str,
        confidence: float,
        box: tuple[float, float, float, float],
        frame_size: tuple[int, int],
        *,
        track_id: int | None = None,
    ) -> Detection:
        """A detection from a relative box ``(left, top, width, height)`` (fractions of
        the frame), clipped to 0..1, in a frame of ``frame_size`` ``(width, height)``.

        Rekognition's boxes may start below 0 or end past 1 when an object leaves the
        picture; the part outside the frame is cut off.
        """
        left, top, width, height = (float(v) for v in box)
        x1, y1 = min(max(left, 0.0), 1.0), min(max(top, 0.0), 1.0)
        x2, y2 = min(max(left + width, 0.0), 1.0), min(max(top + height, 0.0), 1.0)
        frame_width, frame_height = frame_size
        relative = BoundingBox(x1, y1, x2 - x1, y2 - y1)
        pixels = BoundingBox(
            x1 * frame_width, y1 * frame_height, (x2 - x1) * frame_width, (y2 - y1) * frame_height
        )
        return cls(label, float(confidence), pixels, relative, track_id)

    def with_track(self, track_id: int | None) -> Detection:
        return replace(self, track_id=track_id)

    def to_json(self) -> dict[str, Any]:
        """``{"label", "confidence", "box": {x, y, width, height}, "box_relative": {...},
        "track_id"?}``: pixels to 2 decimals, fractions to 6; ``track_id`` only when set."""
        out: dict[str, Any] = {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "box": self.box.to_json(2),
            "box_relative": self.box_relative.to_json(6),
        }
        if self.track_id is not None:
            out["track_id"] = self.track_id
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Detection:
        """The inverse of :meth:`to_json` (up to its rounding)."""

        def box(key: str) -> BoundingBox:
            b = data[key]
            return BoundingBox(float(b["x"]), float(b["y"]), float(b["width"]), float(b["height"]))

        track = data.get("track_id")
        return cls(
            str(data["label"]),
            float(data["confidence"]),
            box("box"),
            box("box_relative"),
            None if track is None else int(track),
        )


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``x1, y1, x2, y2``: an ``(N, M)``
    array. Vectorised; empty inputs give an empty matrix."""
    first = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    second = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(first[:, 2:] - first[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(second[:, 2:] - second[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - overlap
    iou: npt.NDArray[np.float64] = np.divide(
        overlap, union, out=np.zeros_like(overlap), where=union > 0
    )
    return iou


@runtime_checkable
class Detector(Protocol):
    """Finds things in frames.

    ``detect`` takes a batch and returns one list per frame, in the same order. Detectors
    may keep state between calls (a background model, a tracker, a rate limiter): give
    each stream its own detector and feed its frames in order.
    """

    @property
    def name(self) -> str: ...

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]: ...


DetectorFactory: TypeAlias = Callable[..., Detector]
BatchFunction: TypeAlias = Callable[[Sequence[DecodedFrame]], Sequence[Sequence[Detection]]]

_DETECTORS: dict[str, DetectorFactory] = {}


class CallableDetector:
    """A plain function ``f(frames) -> list[list[Detection]]`` as a :class:`Detector`."""

    def __init__(self, function: BatchFunction, name: str | None = None) -> None:
        self._function = function
        self._name = name or str(getattr(function, "__name__", "callable"))

    @property
    def name(self) -> str:
        return self._name

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        results = [list(found) for found in self._function(frames)]
        if len(results) != len(frames):
            raise AnalysisError(
                f"detector {self._name!r} returned {len(results)} results for {len(frames)} frames"
            )
        return results


def register_detector(name: str, factory: DetectorFactory, *, replace: bool = False) -> None:
    """Make ``create_detector(name, **options)`` call ``factory(**options)``."""
    if ":" in name:
        raise ValueError(f"detector names cannot contain ':' (plug-in syntax): {name!r}")
    if name in _DETECTORS and not replace:
        raise ValueError(f"a detector named {name!r} is already registered")
    _DETECTORS[name] = factory


def registered_detectors() -> list[str]:
    return sorted(_DETECTORS)


def _import_object(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AnalysisError(f"cannot import plug-in module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise AnalysisError(f"{module_name!r} has no attribute {attribute!r}") from exc
    return target


def _plugin(spec: str, options: Mapping[str, Any]) -> Detector:
    target = _import_object(spec)
    if isinstance(target, type):
        made = target(**options)
        if not isinstance(made, Detector):
            raise AnalysisError(f"{spec} did not make a detector (no name/detect)")
        return made
    if options:
        raise AnalysisError(f"{spec} is not a class: it takes no options ({sorted(options)})")
    if isinstance(target, Detector):
        return target
    if callable(target):
        return CallableDetector(target, name=spec)
    raise AnalysisError(f"{spec} is neither a detector nor a callable")


def create_detector(spec: str | Mapping[str, Any], **options: Any) -> Detector:
    """A detector from a registered name (``"motion"``), a plug-in
    (``"package.module:attribute"``) or a mapping ``{"type": name, **options}``."""
    if not isinstance(spec, str):
        merged = dict(spec)
        try:
            spec = str(merged.pop("type"))
        except KeyError:
            raise AnalysisError("a detector mapping needs a 'type'") from None
        options = {**merged, **options}
    if ":" in spec:
        return _plugin(spec, options)
    try:
        factory = _DETECTORS[spec]
    except KeyError:
        known = ", ".join(registered_detectors()) or "none"
        raise AnalysisError(f"unknown detector {spec!r} (registered: {known})") from None
    return factory(**options)
