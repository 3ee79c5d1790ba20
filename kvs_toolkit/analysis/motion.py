"""Motion detection with OpenCV: a background model, a threshold, morphology and
connected components. No model weights.

Each frame is shrunk to ``process_width`` (motion does not need full resolution, and
every step below costs per pixel), turned grey, and compared with a background model:

* ``mog2`` - OpenCV's Gaussian-mixture subtractor (``createBackgroundSubtractorMOG2``),
  robust to slow lighting changes and noise; shadows are not marked.
* ``average`` - a running average (``cv2.accumulateWeighted``) and ``cv2.absdiff``:
  simpler and faster, the classic choice for a fixed camera.

The foreground mask is opened (removes speckle noise) and closed (joins the pieces of
one object without growing its outline), then ``cv2.connectedComponentsWithStats``
gives the boxes; components smaller than ``min_area`` frame pixels are dropped.
Confidence is the share of the box that is foreground. An optional :class:`IouTracker`
gives boxes stable track ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from kvs_toolkit.analysis.base import Detection, box_iou, register_detector
from kvs_toolkit.consumer.frames import DecodedFrame, Image

__all__ = ["IouTracker", "MotionDetector"]

log = logging.getLogger(__name__)

_GRAY_CONVERSIONS: Final = {"bgr24": cv2.COLOR_BGR2GRAY, "rgb24": cv2.COLOR_RGB2GRAY}


@dataclass(slots=True)
class _Track:
    track_id: int
    box: npt.NDArray[np.float64]  # x1, y1, x2, y2
    missed: int = 0


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the previous frame's tracks.

    A box takes the id of the unmatched track it overlaps most (IoU at least
    ``min_iou``); boxes left over start new tracks; a track not seen for more than
    ``max_missed`` frames is dropped. Enough for motion blobs and slow objects; not a
    re-identifying tracker.
    """

    def __init__(self, *, min_iou: float = 0.3, max_missed: int = 5) -> None:
        self.min_iou = min_iou
        self.max_missed = max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self._tracks.clear()

    def update(self, detections: Sequence[Detection]) -> list[Detection]:
        """The detections with ``track_id`` set, in the same order."""
        boxes = np.array(
            [(d.box.x, d.box.y, d.box.x2, d.box.y2) for d in detections], dtype=np.float64
        ).reshape(-1, 4)
        previous = np.array([t.box for t in self._tracks], dtype=np.float64).reshape(-1, 4)
        iou = box_iou(boxes, previous)
        assigned: list[int | None] = [None] * len(detections)
        matched_tracks: set[int] = set()
        # Best pairs first; each pair only while both sides are still free.
        for flat in np.argsort(-iou, axis=None):
            row, col = divmod(int(flat), iou.shape[1])
            if iou[row, col] < self.min_iou:
                break
            if assigned[row] is not None or col in matched_tracks:
                continue
            track = self._tracks[col]
            track.box, track.missed = boxes[row], 0
            assigned[row] = track.track_id
            matched_tracks.add(col)
        for index, track in enumerate(self._tracks):
            if index not in matched_tracks:
                track.missed += 1
        survivors = [track for track in self._tracks if track.missed <= self.max_missed]
        for row, track_id in enumerate(assigned):
            if track_id is None:
                assigned[row] = self._next_id
                survivors.append(_Track(self._next_id, boxes[row]))
                self._next_id += 1
        self._tracks = survivors
        return [d.with_track(t) for d, t in zip(detections, assigned, strict=True)]


class _Mog2:
    def __init__(self, threshold: float) -> None:
        self._model = cv2.createBackgroundSubtractorMOG2(
            varThreshold=threshold, detectShadows=False
        )

    def initialise(self, background: Image) -> None:
        # A learning rate of 1 re-initialises the whole model from this one image.
        self._model.apply(background, learningRate=1.0)

    def mask(self, gray: Image, learning_rate: float) -> Image:
        return np.asarray(self._model.apply(gray, learningRate=learning_rate), dtype=np.uint8)


class _RunningAverage:
    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._background: npt.NDArray[np.float32] | None = None

    def initialise(self, background: Image) -> None:
        self._background = background.astype(np.float32)

    def mask(self, gray: Image, learning_rate: float) -> Image:
        if self._background is None or self._background.shape != gray.shape:
            self.initialise(gray)
        assert self._background is not None
        difference = cv2.absdiff(gray, cv2.convertScaleAbs(self._background))
        _, mask = cv2.threshold(difference, self._threshold, 255, cv2.THRESH_BINARY)
        cv2.accumulateWeighted(gray, self._background, learning_rate)
        return np.asarray(mask, dtype=np.uint8)


_BACKGROUND_MODELS: Final[dict[str, Callable[[float], _Mog2 | _RunningAverage]]] = {
    "mog2": _Mog2,
    "average": _RunningAverage,
}
_DEFAULT_THRESHOLDS: Final = {"mog2": 16.0, "average": 25.0}
# The running average forgets fast so that lighting changes pass; MOG2 keeps several
# modes per pixel and can afford OpenCV's long default memory.
_DEFAULT_HISTORY: Final = {"mog2": 500, "average": 50}


class MotionDetector:
    """Boxes around what moves, label ``motion``; stateful: feed one stream in order.

    ``method``: ``average`` or ``mog2`` (see the module docs). ``threshold``: the grey
    level difference for ``average``, MOG2's variance threshold for ``mog2``.
    ``history``: frames the background remembers; the learning rate is ``1/history``
    unless ``learning_rate`` is given. ``min_area``: the smallest box kept, in frame
    pixels.

    ``warmup``: the first frames only build the background and return no detections:
    it starts as their per-pixel median, from which anything that moved during the
    warm-up is gone (a model started from the first frame alone would report a
    "ghost" wherever an object stood in it). An object is left out of the median when
    it covers a pixel for less than half the warm-up, so make the warm-up span at
    least twice the time an object takes to move its own length. 0: start from the
    first frame.

    ``track``: give boxes track ids with an :class:`IouTracker`.
    """

    def __init__(
        self,
        *,
        method: str = "average",
        process_width: int | None = 320,
        history: int | None = None,
        threshold: float | None = None,
        learning_rate: float | None = None,
        min_area: float = 100.0,
        blur: int = 3,
        open_kernel: int = 3,
        close_kernel: int = 7,
        warmup: int = 25,
        track: bool = False,
        tracker: IouTracker | None = None,
        label: str = "motion",
    ) -> None:
        try:
            make_model = _BACKGROUND_MODELS[method]
        except KeyError:
            known = ", ".join(sorted(_BACKGROUND_MODELS))
            raise ValueError(f"unknown motion method {method!r} (known: {known})") from None
        if process_width is not None and process_width < 16:
            raise ValueError("process_width must be at least 16 pixels")
        history = _DEFAULT_HISTORY[method] if history is None else history
        if history < 1 or warmup < 0:
            raise ValueError("history must be at least 1 and warmup at least 0")
        self.method = method
        self.process_width = process_width
        self.learning_rate = 1.0 / history if learning_rate is None else learning_rate
        self.min_area = min_area
        self.warmup = warmup
        self.label = label
        self._model = make_model(_DEFAULT_THRESHOLDS[method] if threshold is None else threshold)
        self._blur = blur if blur % 2 == 1 else blur + 1
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_kernel, open_kernel))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_kernel, close_kernel))
        self._warmup_frames: list[Image] = []
        self._ready = warmup == 0
        self.tracker = tracker if tracker is not None else (IouTracker() if track else None)
        self.frames_seen = 0

    @property
    def name(self) -> str:
        return f"motion-{self.method}"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [self.detect_image(frame.image, frame.format) for frame in frames]

    def _prepare(self, image: Image, format: str) -> Image:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, _GRAY_CONVERSIONS[format])
        height, width = gray.shape[:2]
        if self.process_width is not None and width > self.process_width:
            size = (self.process_width, max(1, round(height * self.process_width / width)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if self._blur > 1:
            gray = cv2.GaussianBlur(gray, (self._blur, self._blur), 0)
        return np.ascontiguousarray(gray)

    def foreground_mask(self, image: Image, format: str = "bgr24") -> Image | None:
        """The cleaned foreground mask (at processing size) after updating the model;
        None while warming up."""
        gray = self._prepare(image, format)
        if not self._ready:
            if self._warmup_frames and self._warmup_frames[0].shape != gray.shape:
                self._warmup_frames.clear()  # the picture size changed: start again
            self._warmup_frames.append(gray)
            if len(self._warmup_frames) < self.warmup:
                return None
            median = np.median(np.stack(self._warmup_frames), axis=0)
            self._model.initialise(np.asarray(median, dtype=np.uint8))
            self._warmup_frames.clear()
            self._ready = True
            log.debug("motion background built from the median of %d frames", self.warmup)
            return None
        mask = self._model.mask(gray, self.learning_rate)
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        return np.asarray(cv2.morphologyEx(opened, cv2.MORPH_CLOSE, self._close), dtype=np.uint8)

    def detect_image(self, image: Image, format: str = "bgr24") -> list[Detection]:
        """Detections in one image (BGR, RGB or grey per ``format``)."""
        frame_height, frame_width = image.shape[:2]
        self.frames_seen += 1
        mask = self.foreground_mask(image, format)
        if mask is None:
            return []
        count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        scale_x = frame_width / mask.shape[1]
        scale_y = frame_height / mask.shape[0]
        components = stats[1:count].astype(np.float64)  # row 0 is the background
        x, y = components[:, cv2.CC_STAT_LEFT], components[:, cv2.CC_STAT_TOP]
        w, h = components[:, cv2.CC_STAT_WIDTH], components[:, cv2.CC_STAT_HEIGHT]
        fill = components[:, cv2.CC_STAT_AREA] / np.maximum(w * h, 1.0)
        keep = np.flatnonzero(w * h * scale_x * scale_y >= self.min_area)
        detections = [
            Detection.from_pixels(
                self.label,
                fill[i],
                (x[i] * scale_x, y[i] * scale_y, w[i] * scale_x, h[i] * scale_y),
                (frame_width, frame_height),
            )
            for i in keep
        ]
        if self.tracker is not None:
            detections = self.tracker.update(detections)
        return detections


def _motion(**options: Any) -> MotionDetector:
    return MotionDetector(**options)


register_detector("motion", _motion)
