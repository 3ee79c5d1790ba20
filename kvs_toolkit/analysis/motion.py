"""Motion detection with OpenCV: a background model, a threshold, morphology and
connected components. No model weights.

Each frame is shrunk to ``process_width`` (motion does not need full resolution, and
every step below costs per pixel), turned grey, blurred and compared with a background
model:

* ``average`` (the default) - a running average that learns only the background:

  - **Selective update.** Pixels in (or next to) the foreground are not learned, so a
    moving object never bleeds into the model and its box has no trail behind it.
  - **Global light.** The median difference between the frame and the model over the
    background is added to the whole model every frame, so a slow (or sudden, global)
    light change moves the model under objects too and leaves no false box where an
    object was when it goes.
  - **Noise.** The threshold is ``threshold`` grey levels or 4.5 times the sensor
    noise measured on the background (robust MAD estimate), whichever is larger.
  - **Stopped objects: absorbed after ``absorb_seconds`` (default 5 s).** A foreground
    region (one connected component) in which nothing has changed from one frame to
    the next for ``absorb_seconds`` is copied into the model and its box goes. A region
    with moving pixels is kept whole, so the still inside of a large flat object that
    moves slowly is not absorbed.
  - **Ghosts: gone about 0.2 s after the object has left.** Where the model remembers
    an object that has gone (it stood there while the background was built, or was
    absorbed and then left), the region's outline is an edge in the model and not in
    the picture; an object that moves or stopped shows its own outline in the picture.
    Such a still region is absorbed at once; while it still touches the object that
    left it, it melts from its outline, one processing pixel per frame.

  Limit: the first background is the median of the warm-up frames, so an object that
  stays in view over more than half of the warm-up is part of it. Until the object has
  left that place, its box covers only its part outside it (and the ghost goes as
  above); an object that walks into view after the warm-up, or crosses its own length
  within half of it, is found from the first frame after.

* ``mog2`` and ``knn`` - OpenCV's Gaussian-mixture and k-nearest-neighbour subtractors
  (``createBackgroundSubtractorMOG2`` / ``KNN``, shadows not marked). They learn every
  pixel, moving objects included (hence a trail while they move), and are kept for
  comparison and for scenes that need several background modes per pixel (waving trees).

Every method then goes through the same steps: ignore zones (``ignore_zones``, in frame
pixels: on-screen clocks, trees) are cleared, the mask is opened (removes speckle noise)
and closed (joins the pieces of one object without growing its outline), and
``cv2.connectedComponentsWithStats`` gives the boxes; components smaller than
``min_area`` frame pixels are dropped. Confidence is the share of the box that is
foreground. An optional :class:`IouTracker` gives boxes stable track ids.

Time (for ``absorb_seconds``) is the frames' own timestamps when frames come through
:meth:`MotionDetector.detect`, else ``detect_image``'s ``timestamp_s``, else the frame
count over ``assumed_fps``; a clock that goes back (a file played again) carries on
from where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from kvs_toolkit.analysis.base import Detection, box_iou, register_detector
from kvs_toolkit.consumer.frames import DecodedFrame, Image

__all__ = ["IouTracker", "MotionDetector", "parse_ignore_zone"]

log = logging.getLogger(__name__)

_GRAY_CONVERSIONS: Final = {"bgr24": cv2.COLOR_BGR2GRAY, "rgb24": cv2.COLOR_RGB2GRAY}

Zone = tuple[int, int, int, int]  # x, y, width, height in frame pixels


def parse_ignore_zone(text: str) -> Zone:
    """``"x,y,w,h"`` (frame pixels, whole numbers) as a zone for ``ignore_zones``.

    Raises ValueError with the reason for anything else (suits argparse's ``type=``).
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"an ignore zone is x,y,w,h (four whole numbers), not {text!r}")
    try:
        x, y, width, height = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"an ignore zone is x,y,w,h (four whole numbers), not {text!r}") from None
    if x < 0 or y < 0 or width <= 0 or height <= 0:
        raise ValueError(
            f"an ignore zone needs x, y >= 0 and a positive width and height, not {text!r}"
        )
    return x, y, width, height


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


class _BackgroundModel(Protocol):
    def initialise(self, warmup: Sequence[Image]) -> None: ...

    def mask(self, gray: Image, learning_rate: float) -> Image: ...

    def learn(
        self, gray: Image, foreground: Image, *, labels: npt.NDArray[np.int32],
        areas: npt.NDArray[np.int32], now: float, learning_rate: float,
    ) -> None: ...  # fmt: skip


def _median(frames: Sequence[Image]) -> Image:
    """The per-pixel median: whatever moved during the warm-up is not in it."""
    if len(frames) == 1:
        return frames[0]
    return np.asarray(np.median(np.stack(frames), axis=0), dtype=np.uint8)


class _OpenCvSubtractor:
    """MOG2 or KNN: OpenCV learns inside ``apply``; nothing to do afterwards."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._model = make()

    def initialise(self, warmup: Sequence[Image]) -> None:
        # The warm-up's median, as for the average, learnt as many times as there were
        # warm-up frames at OpenCV's automatic rate: KNN keeps samples per pixel, and
        # one image at rate 1 would give it a single one.
        background = _median(warmup)
        for _ in warmup:
            self._model.apply(background)

    def mask(self, gray: Image, learning_rate: float) -> Image:
        return np.asarray(self._model.apply(gray, learningRate=learning_rate), dtype=np.uint8)

    def learn(
        self, gray: Image, foreground: Image, *, labels: npt.NDArray[np.int32],
        areas: npt.NDArray[np.int32], now: float, learning_rate: float,
    ) -> None:  # fmt: skip
        return


def _mog2(threshold: float, history: int, absorb_seconds: float) -> _OpenCvSubtractor:
    return _OpenCvSubtractor(
        lambda: cv2.createBackgroundSubtractorMOG2(
            history=history, varThreshold=threshold, detectShadows=False
        )
    )


def _knn(threshold: float, history: int, absorb_seconds: float) -> _OpenCvSubtractor:
    return _OpenCvSubtractor(
        lambda: cv2.createBackgroundSubtractorKNN(
            history=history, dist2Threshold=threshold, detectShadows=False
        )
    )


# Statistics (light, noise) come from every 4th pixel of every 4th row: plenty, and cheap.
_SAMPLE_STEP: Final = 4
# Sensor noise (sigma) to threshold: 4.5 sigma keeps false pixels near 1 in 100,000.
_NOISE_FACTOR: Final = 4.5
_MAD_TO_SIGMA: Final = 1.4826
# A component "moves" when this many of its pixels (or this share of it) changed since
# the previous frame; fewer are noise.
_MOVING_PIXELS: Final = 3
_MOVING_SHARE: Final = 0.002


# A still outline pixel is a ghost's when its edge in the picture is weaker than this
# share of its edge in the model.
_GHOST_EDGE_RATIO: Final = 0.5
# How long an outline pixel must be still before the ghost test looks at it.
_GHOST_SECONDS: Final = 0.2


def _edges(image: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    dx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(cv2.magnitude(dx, dy), dtype=np.float32)


class _SelectiveAverage:
    """The running average of the module docs: selective, light- and noise-aware,
    absorbing still regions after ``absorb_seconds``."""

    def __init__(self, threshold: float, history: int, absorb_seconds: float) -> None:
        self.threshold = threshold
        self.absorb_seconds = absorb_seconds
        self.ghost_seconds = _GHOST_SECONDS
        self.noise_sigma = 0.0
        self._background: npt.NDArray[np.float32] | None = None
        self._previous: Image | None = None
        self._change_threshold = threshold / 2
        self._still_since: npt.NDArray[np.float32] | None = None
        self._sample: npt.NDArray[np.bool_] | None = None  # background pixels, subsampled
        self._pixel_still_since: npt.NDArray[np.float32] | None = None
        self._dilate = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))

    def initialise(self, warmup: Sequence[Image]) -> None:
        background = _median(warmup)
        self._background = background.astype(np.float32)
        self._previous = background.copy()
        self._still_since = np.zeros(background.shape, dtype=np.float32)
        self._pixel_still_since = np.zeros(background.shape, dtype=np.float32)
        self._sample = None

    def mask(self, gray: Image, learning_rate: float) -> Image:
        if self._background is None or self._background.shape != gray.shape:
            self.initialise([gray])
        assert self._background is not None
        difference = gray.astype(np.float32)
        difference -= self._background
        sample = difference[::_SAMPLE_STEP, ::_SAMPLE_STEP]
        if self._sample is not None and np.count_nonzero(self._sample) >= sample.size // 20:
            sample = sample[self._sample]
        light = float(np.median(sample))
        self.noise_sigma = _MAD_TO_SIGMA * float(np.median(np.abs(sample - light)))
        # The whole model follows the light, under objects too.
        self._background += np.float32(light)
        difference -= np.float32(light)
        np.abs(difference, out=difference)
        threshold = max(self.threshold, _NOISE_FACTOR * self.noise_sigma)
        # Frame-to-frame noise is sqrt(2) times the model's; changes are sought more
        # finely than foreground (an edge moving half a pixel changes by less).
        self._change_threshold = max(self.threshold / 2, _NOISE_FACTOR * 1.5 * self.noise_sigma)
        _, mask = cv2.threshold(difference, threshold, 255, cv2.THRESH_BINARY)
        return np.asarray(mask, dtype=np.uint8)

    def learn(
        self, gray: Image, foreground: Image, *, labels: npt.NDArray[np.int32],
        areas: npt.NDArray[np.int32], now: float, learning_rate: float,
    ) -> None:  # fmt: skip
        count = len(areas)  # connected components, the background (0) included
        background, previous = self._background, self._previous
        still_since, pixel_still_since = self._still_since, self._pixel_still_since
        assert background is not None and previous is not None
        assert still_since is not None and pixel_still_since is not None
        near_foreground = cv2.dilate(foreground, self._dilate)
        learnable = cv2.bitwise_not(near_foreground)
        cv2.accumulateWeighted(gray, background, learning_rate, mask=learnable)
        self._sample = learnable[::_SAMPLE_STEP, ::_SAMPLE_STEP] > 0
        self._previous = gray
        if count <= 1:
            still_since.fill(now)
            pixel_still_since.fill(now)
            return
        changed = cv2.absdiff(gray, previous) > self._change_threshold
        in_foreground = foreground > 0
        np.copyto(pixel_still_since, np.float32(now), where=changed | ~in_foreground)
        # Regions: one that has not changed at all for absorb_seconds joins the model.
        moving_pixels = np.bincount(labels[changed], minlength=count)
        moving = moving_pixels >= np.maximum(_MOVING_PIXELS, _MOVING_SHARE * areas)
        moving[0] = True  # the background: nothing to absorb
        region_still = ~moving[labels]
        np.copyto(still_since, np.float32(now), where=~region_still)
        still_for = now - still_since
        absorb = region_still & (still_for >= self.absorb_seconds)
        # Ghosts: the model remembers an object that has gone (it stood there during the
        # warm-up, or was absorbed and left): the region's outline is an edge in the
        # model, and not in the picture. An object that moves or stopped shows its own
        # outline in the picture instead. Per region, the outline's edge strength in
        # the picture and in the model decide; a still ghost region is absorbed whole,
        # and a ghost-like region that still moves (a ghost joined to the object that
        # left it) loses the outline pixels that have been still a moment and are an
        # edge only in the model: that moves the model's edge one pixel inwards, so the
        # ghost melts from its outline in a few frames.
        outline = in_foreground & (cv2.erode(foreground, self._cross) == 0)
        picture, model = _edges(gray), _edges(background)
        on_outline = labels[outline]
        picture_edges = np.bincount(on_outline, weights=picture[outline], minlength=count)
        model_edges = np.bincount(on_outline, weights=model[outline], minlength=count)
        ghost_like = picture_edges < model_edges
        ghost_like[0] = False
        if ghost_like.any():
            mean_still = np.bincount(labels.ravel(), weights=still_for.ravel(), minlength=count)
            ghosts = ghost_like & ~moving & (picture_edges < _GHOST_EDGE_RATIO * model_edges)
            ghosts &= mean_still >= self.ghost_seconds * areas
            melting = outline & ghost_like[labels]
            melting &= now - pixel_still_since >= self.ghost_seconds
            melting &= picture < _GHOST_EDGE_RATIO * model
            absorb |= ghosts[labels] | melting
        if absorb.any():
            np.copyto(background, gray, where=absorb, casting="unsafe")


_BACKGROUND_MODELS: Final[dict[str, Callable[[float, int, float], _BackgroundModel]]] = {
    "average": _SelectiveAverage,
    "mog2": _mog2,
    "knn": _knn,
}
# average: grey levels; mog2: squared Mahalanobis distance; knn: squared distance.
_DEFAULT_THRESHOLDS: Final = {"average": 20.0, "mog2": 16.0, "knn": 400.0}
# The running average learns only the background and can afford a quick memory (light
# changes pass); MOG2 and KNN learn every pixel and keep OpenCV's long default memory.
_DEFAULT_HISTORY: Final = {"average": 50, "mog2": 500, "knn": 500}


class MotionDetector:
    """Boxes around what moves, label ``motion``; stateful: feed one stream in order.

    ``method``: ``average``, ``mog2`` or ``knn`` (see the module docs). ``threshold``:
    the grey level difference for ``average`` (raised to 4.5x the measured noise),
    OpenCV's variance / distance threshold for ``mog2`` / ``knn``. ``history``: frames
    the background remembers; the learning rate is ``1/history`` unless
    ``learning_rate`` is given (-1: OpenCV's automatic rate for ``mog2`` / ``knn``).
    ``min_area``: the smallest box kept, in frame pixels.

    ``absorb_seconds`` (``average`` only): a region in which nothing changed for this
    long - an object that stopped, or a ghost where one stood during the warm-up - joins
    the background. ``ignore_zones``: ``(x, y, width, height)`` rectangles in frame
    pixels where nothing is reported (clocks, trees; :func:`parse_ignore_zone` reads
    ``"x,y,w,h"``). ``assumed_fps``: the frame rate for frames given without a time.

    ``warmup``: the first frames only build the background and return no detections:
    it starts as their per-pixel median, from which anything that moved during the
    warm-up is gone (what stood still leaves a ghost until ``absorb_seconds`` after it
    moved away). 0: start from the first frame.

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
        absorb_seconds: float = 5.0,
        ignore_zones: Iterable[Zone] = (),
        assumed_fps: float = 25.0,
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
        if absorb_seconds <= 0 or assumed_fps <= 0:
            raise ValueError("absorb_seconds and assumed_fps must be positive")
        self.ignore_zones: tuple[Zone, ...] = tuple(
            parse_ignore_zone(",".join(str(v) for v in zone)) for zone in ignore_zones
        )
        self.method = method
        self.process_width = process_width
        self.learning_rate = 1.0 / history if learning_rate is None else learning_rate
        self.min_area = min_area
        self.warmup = warmup
        self.absorb_seconds = absorb_seconds
        self.assumed_fps = assumed_fps
        self.label = label
        threshold = _DEFAULT_THRESHOLDS[method] if threshold is None else threshold
        self._model = make_model(threshold, history, absorb_seconds)
        self._blur = blur if blur % 2 == 1 else blur + 1
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_kernel, open_kernel))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_kernel, close_kernel))
        self._warmup_frames: list[Image] = []
        self._ready = warmup == 0
        self._keep: Image | None = None  # 0 in ignore zones, 255 elsewhere (processing size)
        self._keep_for: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.tracker = tracker if tracker is not None else (IouTracker() if track else None)
        self.frames_seen = 0
        self._time_origin: float | None = None
        self._last_now = 0.0

    @property
    def name(self) -> str:
        return f"motion-{self.method}"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [
            self.detect_image(frame.image, frame.format, timestamp_s=frame.timestamp_ns / 1e9)
            for frame in frames
        ]

    def _prepare(self, image: Image, format: str) -> Image:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, _GRAY_CONVERSIONS[format])
        height, width = gray.shape[:2]
        if self.process_width is not None and width > self.process_width:
            size = (self.process_width, max(1, round(height * self.process_width / width)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        if self._blur > 1:
            gray = cv2.GaussianBlur(gray, (self._blur, self._blur), 0)
        return np.ascontiguousarray(gray)

    def _keep_mask(self, frame_size: tuple[int, int], shape: tuple[int, ...]) -> Image | None:
        """255 where detections may be, 0 in the ignore zones; at processing size."""
        if not self.ignore_zones:
            return None
        key = (*frame_size, shape[1], shape[0])
        if self._keep is None or self._keep_for != key:
            keep = np.full(shape[:2], 255, dtype=np.uint8)
            scale_x, scale_y = shape[1] / frame_size[0], shape[0] / frame_size[1]
            for x, y, width, height in self.ignore_zones:
                # Cover every processing pixel the zone touches.
                left, top = int(x * scale_x), int(y * scale_y)
                right = int(np.ceil((x + width) * scale_x))
                bottom = int(np.ceil((y + height) * scale_y))
                keep[top:bottom, left:right] = 0
            self._keep, self._keep_for = keep, key
        return self._keep

    def _foreground(
        self, image: Image, format: str, timestamp_s: float | None
    ) -> tuple[Image, int, npt.NDArray[np.int32], npt.NDArray[np.int32]] | None:
        """(mask, component count, labels, stats) after updating the model; None while
        warming up."""
        gray = self._prepare(image, format)
        if not self._ready:
            if self._warmup_frames and self._warmup_frames[0].shape != gray.shape:
                self._warmup_frames.clear()  # the picture size changed: start again
            self._warmup_frames.append(gray)
            if len(self._warmup_frames) < self.warmup:
                return None
            self._model.initialise(self._warmup_frames)
            self._warmup_frames.clear()
            self._ready = True
            log.debug("motion background built from %d frames", self.warmup)
            return None
        if timestamp_s is None:
            now = self.frames_seen / self.assumed_fps
        else:
            # Seconds since the first frame, to the microsecond: the model keeps times in
            # float32, which would round an epoch time to minutes.
            if self._time_origin is None:
                self._time_origin = timestamp_s
            now = round(timestamp_s - self._time_origin, 6)
            if now < self._last_now:
                self._time_origin = timestamp_s - self._last_now
                now = self._last_now
        self._last_now = now
        mask = self._model.mask(gray, self.learning_rate)
        keep = self._keep_mask((image.shape[1], image.shape[0]), gray.shape)
        if keep is not None:
            cv2.bitwise_and(mask, keep, dst=mask)
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        cleaned = np.asarray(cv2.morphologyEx(opened, cv2.MORPH_CLOSE, self._close), np.uint8)
        count, found, found_stats, _ = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
        labels = np.asarray(found, dtype=np.int32)
        stats = np.asarray(found_stats, dtype=np.int32)
        areas = stats[:, cv2.CC_STAT_AREA]
        self._model.learn(
            gray, cleaned, labels=labels, areas=areas, now=now, learning_rate=self.learning_rate
        )
        return cleaned, count, labels, stats

    def foreground_mask(
        self, image: Image, format: str = "bgr24", *, timestamp_s: float | None = None
    ) -> Image | None:
        """The cleaned foreground mask (at processing size) after updating the model;
        None while warming up."""
        found = self._foreground(image, format, timestamp_s)
        return None if found is None else found[0]

    def detect_image(
        self, image: Image, format: str = "bgr24", *, timestamp_s: float | None = None
    ) -> list[Detection]:
        """Detections in one image (BGR, RGB or grey per ``format``). ``timestamp_s``:
        the frame's time in seconds (else frames are ``1/assumed_fps`` apart)."""
        frame_height, frame_width = image.shape[:2]
        self.frames_seen += 1
        found = self._foreground(image, format, timestamp_s)
        if found is None:
            return []
        mask, count, _labels, stats = found
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
