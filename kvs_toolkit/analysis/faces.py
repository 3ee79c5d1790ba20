"""Frontal faces with an OpenCV Haar cascade (Viola-Jones): no extra download where the
OpenCV wheel ships its cascade files.

OpenCV 4.x wheels include ``cv2.CascadeClassifier`` and the cascade XML files under
``cv2.data.haarcascades``. OpenCV 5 moved Haar cascades out of the main modules, so
its wheels have neither: there this detector raises :class:`AnalysisError` saying so,
and ``cascade_path`` plus an OpenCV build that has ``CascadeClassifier`` (``<5`` or a
contrib build that provides it) is the way back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from kvs_toolkit.analysis.base import AnalysisError, Detection, register_detector
from kvs_toolkit.consumer.frames import DecodedFrame, Image

__all__ = ["DEFAULT_CASCADE", "HaarFaceDetector", "default_cascade_path"]

log = logging.getLogger(__name__)

DEFAULT_CASCADE: Final = "haarcascade_frontalface_default.xml"
_GRAY_CONVERSIONS: Final = {"bgr24": cv2.COLOR_BGR2GRAY, "rgb24": cv2.COLOR_RGB2GRAY}


def default_cascade_path(name: str = DEFAULT_CASCADE) -> Path | None:
    """Where the OpenCV wheel keeps cascade ``name``, or None when it ships none."""
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    return None if folder is None else Path(folder) / name


class HaarFaceDetector:
    """Faces (label ``face``) with ``CascadeClassifier.detectMultiScale2``.

    A Haar cascade gives no probability; ``confidence`` is ``n / (n + min_neighbors)``
    where ``n`` is the number of overlapping raw detections merged into the box (the
    more, the surer), so it grows towards 1 and is 0.5 at the acceptance threshold.
    ``min_size``: the smallest face searched for, in pixels. Frames wider than
    ``max_width`` are searched at that width (the cascade's cost grows with the area).
    """

    def __init__(
        self,
        cascade_path: str | Path | None = None,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: tuple[int, int] = (40, 40),
        max_width: int | None = 960,
        equalize: bool = True,
        label: str = "face",
    ) -> None:
        classifier_type = getattr(cv2, "CascadeClassifier", None)
        missing_class = (
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar "
            "cascades out of its main modules); install one that has it, e.g. "
            "opencv-python-headless<5"
        )
        path = Path(cascade_path) if cascade_path is not None else default_cascade_path()
        if path is None or not path.is_file():
            where = "this OpenCV wheel ships no cascade data" if path is None else str(path)
            raise AnalysisError(
                f"Haar cascade file not found: {where}; pass cascade_path= to an existing "
                f"{DEFAULT_CASCADE}"
                + ("" if classifier_type is not None else f". Also: {missing_class}")
            )
        if classifier_type is None:
            raise AnalysisError(missing_class)
        self._classifier: Any = classifier_type(str(path))
        if self._classifier.empty():
            raise AnalysisError(f"OpenCV could not load the Haar cascade {path}")
        self.cascade_path = path
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_width = max_width
        self.equalize = equalize
        self.label = label

    @property
    def name(self) -> str:
        return "haar-face"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [self.detect_image(frame.image, frame.format) for frame in frames]

    def detect_image(self, image: Image, format: str = "bgr24") -> list[Detection]:
        frame_height, frame_width = image.shape[:2]
        gray = image if image.ndim == 2 else cv2.cvtColor(image, _GRAY_CONVERSIONS[format])
        scale = 1.0
        if self.max_width is not None and frame_width > self.max_width:
            scale = self.max_width / frame_width
            size = (self.max_width, max(1, round(frame_height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        min_size = (
            max(1, round(self.min_size[0] * scale)),
            max(1, round(self.min_size[1] * scale)),
        )
        rects, neighbours = self._classifier.detectMultiScale2(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=min_size,
        )
        boxes = np.asarray(rects, dtype=np.float64).reshape(-1, 4) / scale
        counts = np.asarray(neighbours, dtype=np.float64).reshape(-1)
        confidence = counts / (counts + max(1, self.min_neighbors))
        return [
            Detection.from_pixels(self.label, c, (x, y, w, h), (frame_width, frame_height))
            for (x, y, w, h), c in zip(boxes, confidence, strict=True)
        ]


def _haar_face(**options: Any) -> HaarFaceDetector:
    return HaarFaceDetector(**options)


register_detector("haar-face", _haar_face)
