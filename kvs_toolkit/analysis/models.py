"""``--model NAME``: detector specs resolved through the detector registry.

A spec is a registered detector name (``motion``, ``haar-face``, ``onnx``,
``rekognition``, or any name added with :func:`~kvs_toolkit.analysis.register_detector`),
an alias of one (``haar-faces``, ``rekognition-labels``, ``rekognition-faces``), a
name with its argument (``onnx:model.onnx``), or a ``module:function`` plug-in.
``min_confidence`` is 0..1 everywhere (Rekognition's percent scale is converted here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from kvs_toolkit.analysis.base import (
    AnalysisError,
    Detection,
    Detector,
    create_detector,
    registered_detectors,
)
from kvs_toolkit.consumer.frames import DecodedFrame

__all__ = ["MODEL_ALIASES", "MinConfidence", "model_detector", "model_names"]

#: Alias -> (registered detector, fixed options).
MODEL_ALIASES: Final[Mapping[str, tuple[str, Mapping[str, Any]]]] = {
    "haar-faces": ("haar-face", {}),
    "rekognition-labels": ("rekognition", {"mode": "labels"}),
    "rekognition-faces": ("rekognition", {"mode": "faces"}),
}
# The option of each registered detector that takes the text after ':' (onnx:PATH).
_ARGUMENT_OPTION: Final = {"onnx": "model"}
# Detectors whose own confidence threshold takes --min-confidence (and its unit).
_THRESHOLD_OPTION: Final = {
    "onnx": ("conf_threshold", 1.0),
    "rekognition": ("min_confidence", 100.0),
}


class MinConfidence:
    """Drops the detections of ``detector`` below ``min_confidence`` (0..1)."""

    def __init__(self, detector: Detector, min_confidence: float) -> None:
        self.detector = detector
        self.min_confidence = min_confidence

    @property
    def name(self) -> str:
        return self.detector.name

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [
            [d for d in found if d.confidence >= self.min_confidence]
            for found in self.detector.detect(frames)
        ]


def model_names() -> list[str]:
    """Every name ``--model`` takes (registered detectors and aliases)."""
    return sorted({*registered_detectors(), *MODEL_ALIASES})


def model_detector(
    spec: str,
    *,
    min_confidence: float | None = None,
    region: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Detector:
    """The detector of a ``--model`` spec; detections below ``min_confidence`` (0..1)
    are dropped. ``region`` goes to AWS-backed detectors; ``options`` to the factory
    (e.g. ``ignore_zones`` for motion). :class:`AnalysisError` for an unknown or bad spec.
    """
    extra: dict[str, Any] = dict(options or {})
    name, sep, argument = spec.partition(":")
    registered = set(registered_detectors())
    if name in MODEL_ALIASES:
        target, fixed = MODEL_ALIASES[name]
        extra = {**fixed, **extra}
    elif name in registered:
        target = name
    elif sep:
        detector = create_detector(spec, **extra)  # module:function plug-in
        return detector if min_confidence is None else MinConfidence(detector, min_confidence)
    else:
        known = ", ".join(n for n in model_names() if n != "onnx")
        raise AnalysisError(f"unknown model {spec!r} (known: {known}, onnx:PATH, module:function)")
    if sep:
        option = _ARGUMENT_OPTION.get(target)
        if option is None:
            raise AnalysisError(f"model {name!r} takes no ':' argument (got {argument!r})")
        extra[option] = argument
    elif target in _ARGUMENT_OPTION and _ARGUMENT_OPTION[target] not in extra:
        raise AnalysisError(f"model {name!r} needs its file: {name}:PATH")
    if target == "motion":
        extra.setdefault("track", True)
    if target == "rekognition":
        extra.setdefault("region_name", region)
    if min_confidence is not None and target in _THRESHOLD_OPTION:
        # the service (or model) filters on its side too: fewer detections come back
        option, scale = _THRESHOLD_OPTION[target]
        extra[option] = min_confidence * scale
    detector = create_detector(target, **extra)
    return detector if min_confidence is None else MinConfidence(detector, min_confidence)
