"""Amazon Rekognition Image, one call per frame: labels, faces, text, protective
equipment or Custom Labels.

Each frame is encoded as JPEG within the service's limits and sent as ``Image.Bytes``::

    detector = RekognitionDetector("labels", max_calls_per_second=5, min_change=2.0)
    results = detector.detect(frames)
    detector.stats.images_sent, detector.stats.estimated_cost

What keeps the bill and the throttling down:

* a calls-per-second cap, shared by every call of the detector: a :class:`TokenBucket`
  spaces the calls' starts, and a :class:`CallWindow` makes sure no 1-second window at
  the service holds more than the cap, whatever the network's latency;
* retries with exponential back-off and jitter on ``ThrottlingException``,
  ``ProvisionedThroughputExceededException``, ``InternalServerError`` and connection
  errors (the default client has botocore's own retries turned off so that the two do
  not multiply);
* a minimum-change filter (:class:`ChangeFilter`): a frame whose small grey thumbnail
  differs from the last *sent* frame's by less than ``min_change`` grey levels (mean
  absolute difference) is not sent, and gets the last result again;
* counters: images sent, bytes, frames skipped, retries, an estimated cost.

Image limits (Rekognition developer guide, "Guidelines and quotas"): raw image bytes at
most 5 MB (4 MB for DetectProtectiveEquipment), at least 80 px a side (64 for PPE), at
most 10,000 px a side for DetectLabels and 4,096 for PPE. Faces must be about 40x40 px
in a 1920x1080 picture, so frames are only shrunk to ``max_side`` (1920 by default).
Rekognition's boxes are fractions of the image; they are clipped to the frame and
converted to frame pixels.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cv2
import numpy as np

from kvs_toolkit.analysis.base import AnalysisError, Detection, register_detector
from kvs_toolkit.consumer.frames import DecodedFrame, Image
from kvs_toolkit.retry import TokenBucket

__all__ = [
    "MODES",
    "CallWindow",
    "ChangeFilter",
    "EncodedImage",
    "ImageLimits",
    "RekognitionDetector",
    "RekognitionError",
    "RekognitionStats",
    "TokenBucket",
    "encode_image",
]

log = logging.getLogger(__name__)

RETRYABLE_ERROR_CODES: Final = frozenset(
    {"ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError"}
)
MEGABYTE: Final = 1024 * 1024


class RekognitionError(AnalysisError):
    """A Rekognition call failed for good (after retries, or an error not worth one)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


# --- limits and encoding ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What one operation accepts as ``Image.Bytes``."""

    max_bytes: int = 5 * MEGABYTE
    min_side: int = 80
    max_side: int = 10_000


@dataclass(frozen=True, slots=True)
class EncodedImage:
    data: bytes
    width: int
    height: int
    quality: int


_TO_BGR: Final = {"rgb24": cv2.COLOR_RGB2BGR}


def encode_image(
    image: Image,
    limits: ImageLimits = ImageLimits(),
    *,
    max_side: int | None = 1920,
    quality: int = 90,
    min_quality: int = 50,
) -> EncodedImage:
    """``image`` (BGR or grey) as a JPEG that ``limits`` allow.

    Scales (keeping the aspect ratio) so the long side is at most ``max_side`` and the
    service's maximum, and the short side at least its minimum; then lowers the JPEG
    quality in steps down to ``min_quality`` and, if still too big, shrinks by 3/4 until
    the bytes fit. Raises :class:`AnalysisError` when no size satisfies the limits.
    """
    height, width = image.shape[:2]
    longest = min(limits.max_side, max_side or limits.max_side)
    scale = min(1.0, longest / max(width, height))
    scale = max(scale, limits.min_side / min(width, height))
    if max(width, height) * scale > limits.max_side + 0.5:
        raise AnalysisError(
            f"a {width}x{height} frame cannot be scaled to at least {limits.min_side} px a "
            f"side and at most {limits.max_side} px"
        )
    while True:
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(target) < limits.min_side:
            target = (max(target[0], limits.min_side), max(target[1], limits.min_side))
        resized = image
        if target != (width, height):
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            resized = np.asarray(cv2.resize(image, target, interpolation=interpolation), np.uint8)
        for q in range(quality, min_quality - 1, -10):
            ok, buffer = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, q])
            if not ok:
                raise AnalysisError(f"OpenCV could not encode a {target[0]}x{target[1]} JPEG")
            if buffer.size <= limits.max_bytes:
                return EncodedImage(buffer.tobytes(), target[0], target[1], q)
        smaller = scale * 0.75
        if min(width, height) * smaller < limits.min_side:
            raise AnalysisError(
                f"a {width}x{height} frame does not fit in {limits.max_bytes} bytes as a JPEG "
                f"of at least {limits.min_side} px a side"
            )
        log.debug("JPEG over %d bytes at %dx%d: shrinking", limits.max_bytes, *target)
        scale = smaller


# --- rate cap and change filter --------------------------------------------------------
class CallWindow:
    """At most ``max_calls`` calls arrive at the service in any window of ``window_s``.

    Spacing the *starts* of calls is not enough: a call that spends a few milliseconds
    longer on the way than the one ``max_calls`` later puts one call too many into some
    window at the server. A call arrives before its response leaves, so a new call may
    start only while fewer than ``max_calls`` calls are in flight or answered within the
    last ``window_s``: then no window at the server can hold more. Thread-safe;
    :meth:`acquire` before each call, :meth:`release` when it is answered (or failed).
    """

    def __init__(
        self,
        max_calls: int,
        window_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.max_calls = max_calls
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._answered: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._lock = threading.Lock()

    @classmethod
    def for_rate(cls, calls_per_second: float, **kwargs: Any) -> CallWindow:
        """A window that keeps to ``calls_per_second`` in every second (2.5/s: 2 a second;
        0.5/s: 1 in 2 seconds)."""
        if not calls_per_second > 0:
            raise ValueError(f"calls_per_second must be positive, not {calls_per_second}")
        max_calls = max(1, int(calls_per_second))
        return cls(max_calls, max(1.0, max_calls / calls_per_second), **kwargs)

    def acquire(self) -> float:
        """Wait for a free slot and take it; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._answered and self._answered[0] <= now - self.window_s:
                    self._answered.popleft()
                if self._in_flight + len(self._answered) < self.max_calls:
                    self._in_flight += 1
                    return waited
                # the oldest answer leaves the window first (a call in flight frees
                # nothing until it is answered, and then only window_s later)
                wait = (
                    self._answered[0] + self.window_s - now
                    if self._answered
                    else self.window_s / self.max_calls
                )
            wait = max(wait, 1e-4)
            self._sleep(wait)
            waited += wait

    def release(self) -> None:
        """The call taken by :meth:`acquire` was answered (or failed) now."""
        with self._lock:
            self._in_flight -= 1
            self._answered.append(self._clock())


class ChangeFilter:
    """Tells whether a frame differs enough from the last one let through.

    Compares ``thumb_width``-wide grey thumbnails (``cv2.resize`` with area averaging,
    which also irons out sensor noise) by their mean absolute difference in grey levels
    (0-255), in numpy. ``min_change`` 0 lets every frame through.
    """

    def __init__(self, min_change: float, *, thumb_width: int = 64) -> None:
        self.min_change = min_change
        self.thumb_width = thumb_width
        self._last: Image | None = None
        self.last_difference: float | None = None

    def thumbnail(self, image: Image, format: str = "bgr24") -> Image:
        gray = image
        if image.ndim == 3:
            code = cv2.COLOR_RGB2GRAY if format == "rgb24" else cv2.COLOR_BGR2GRAY
            gray = np.asarray(cv2.cvtColor(image, code), dtype=np.uint8)
        height, width = gray.shape[:2]
        size = (self.thumb_width, max(1, round(height * self.thumb_width / width)))
        return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)

    def difference(self, thumb: Image) -> float | None:
        if self._last is None or self._last.shape != thumb.shape:
            return None
        return float(np.abs(thumb.astype(np.int16) - self._last.astype(np.int16)).mean())

    def should_send(self, image: Image, format: str = "bgr24") -> bool:
        """True (and remember this frame) when it changed enough or is the first."""
        if self.min_change <= 0:
            return True
        thumb = self.thumbnail(image, format)
        self.last_difference = self.difference(thumb)
        if self.last_difference is not None and self.last_difference < self.min_change:
            return False
        self._last = thumb
        return True

    def reset(self) -> None:
        self._last = None


# --- the operations ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Options:
    min_confidence: float
    max_labels: int | None
    project_version_arn: str | None
    include_image_labels: bool
    text_types: frozenset[str]
    required_equipment: tuple[str, ...]


Params = dict[str, Any]
Response = Mapping[str, Any]
Parser = Callable[[Response, int, int, _Options], list[Detection]]


@dataclass(frozen=True, slots=True)
class _Mode:
    operation: str  # the boto3 method
    build: Callable[[bytes, _Options], Params]
    parse: Parser
    limits: ImageLimits = ImageLimits()


def _box(label: str, confidence: float, box: Mapping[str, Any], w: int, h: int) -> Detection:
    edges = (
        box.get("Left", 0.0),
        box.get("Top", 0.0),
        box.get("Width", 0.0),
        box.get("Height", 0.0),
    )
    return Detection.from_relative(label, confidence / 100.0, edges, (w, h))


def _whole_frame(label: str, confidence: float, w: int, h: int) -> Detection:
    return Detection.from_relative(label, confidence / 100.0, (0.0, 0.0, 1.0, 1.0), (w, h))


def _labels_params(data: bytes, o: _Options) -> Params:
    params: Params = {"Image": {"Bytes": data}, "MinConfidence": o.min_confidence}
    if o.max_labels is not None:
        params["MaxLabels"] = o.max_labels
    return params


def _parse_labels(response: Response, w: int, h: int, o: _Options) -> list[Detection]:
    out = []
    for label in response.get("Labels", []):
        instances = label.get("Instances") or []
        for instance in instances:
            if "BoundingBox" in instance:
                out.append(
                    _box(label["Name"], instance["Confidence"], instance["BoundingBox"], w, h)
                )
        if not instances and o.include_image_labels:
            out.append(_whole_frame(label["Name"], label["Confidence"], w, h))
    return out


def _faces_params(data: bytes, o: _Options) -> Params:
    return {"Image": {"Bytes": data}, "Attributes": ["DEFAULT"]}


def _parse_faces(response: Response, w: int, h: int, o: _Options) -> list[Detection]:
    return [
        _box("face", face["Confidence"], face["BoundingBox"], w, h)
        for face in response.get("FaceDetails", [])
        if face.get("Confidence", 0.0) >= o.min_confidence  # DetectFaces has no threshold
    ]


def _text_params(data: bytes, o: _Options) -> Params:
    return {
        "Image": {"Bytes": data},
        "Filters": {"WordFilter": {"MinConfidence": o.min_confidence}},
    }


def _parse_text(response: Response, w: int, h: int, o: _Options) -> list[Detection]:
    return [
        _box(
            f"text:{text['DetectedText']}",
            text["Confidence"],
            text["Geometry"]["BoundingBox"],
            w,
            h,
        )
        for text in response.get("TextDetections", [])
        if text.get("Type") in o.text_types and text.get("Confidence", 0.0) >= o.min_confidence
    ]


def _ppe_params(data: bytes, o: _Options) -> Params:
    params: Params = {"Image": {"Bytes": data}}
    if o.required_equipment:
        params["SummarizationAttributes"] = {
            "MinConfidence": o.min_confidence,
            "RequiredEquipmentTypes": list(o.required_equipment),
        }
    return params


def _parse_ppe(response: Response, w: int, h: int, o: _Options) -> list[Detection]:
    out = []
    for person in response.get("Persons", []):
        if "BoundingBox" in person and person.get("Confidence", 0.0) >= o.min_confidence:
            out.append(_box("person", person["Confidence"], person["BoundingBox"], w, h))
        for part in person.get("BodyParts", []):
            for item in part.get("EquipmentDetections", []):
                if item.get("Confidence", 0.0) >= o.min_confidence:
                    label = str(item.get("Type", "equipment")).lower()
                    out.append(_box(label, item["Confidence"], item["BoundingBox"], w, h))
    return out


def _custom_params(data: bytes, o: _Options) -> Params:
    if not o.project_version_arn:
        raise AnalysisError("mode 'custom' needs project_version_arn (a running model)")
    return {
        "Image": {"Bytes": data},
        "ProjectVersionArn": o.project_version_arn,
        "MinConfidence": o.min_confidence,
    }


def _parse_custom(response: Response, w: int, h: int, o: _Options) -> list[Detection]:
    out = []
    for label in response.get("CustomLabels", []):
        box = (label.get("Geometry") or {}).get("BoundingBox")
        if box is not None:
            out.append(_box(label["Name"], label["Confidence"], box, w, h))
        elif o.include_image_labels:
            out.append(_whole_frame(label["Name"], label["Confidence"], w, h))
    return out


#: The operations by mode name. Add one with ``MODES[name] = _Mode(...)``.
MODES: Final[dict[str, _Mode]] = {
    "labels": _Mode("detect_labels", _labels_params, _parse_labels),
    "faces": _Mode("detect_faces", _faces_params, _parse_faces),
    "text": _Mode("detect_text", _text_params, _parse_text),
    "ppe": _Mode(
        "detect_protective_equipment",
        _ppe_params,
        _parse_ppe,
        ImageLimits(max_bytes=4 * MEGABYTE, min_side=64, max_side=4096),
    ),
    "custom": _Mode("detect_custom_labels", _custom_params, _parse_custom),
}


# --- the detector ------------------------------------------------------------------------
@dataclass(slots=True)
class RekognitionStats:
    frames: int = 0
    images_sent: int = 0
    bytes_sent: int = 0
    frames_skipped: int = 0  # by the change filter: the last result was repeated
    retries: int = 0
    throttled: int = 0  # throttling errors seen (each one retried or fatal)
    rate_wait_seconds: float = 0.0  # time spent waiting for the calls-per-second cap
    price_per_image: float = 0.0

    @property
    def estimated_cost(self) -> float:
        """Images sent times ``price_per_image`` (USD; check the current price list)."""
        return self.images_sent * self.price_per_image


def _default_client(region_name: str | None) -> Any:
    from botocore.config import Config

    from kvs_toolkit.aws import AwsAccess

    # Our loop retries throttling with the rate cap in mind; botocore's own retries on
    # top would multiply the attempts.
    config = Config(retries={"mode": "standard", "max_attempts": 1})
    return AwsAccess(region_name=region_name).client("rekognition", config=config)


class RekognitionDetector:
    """Rekognition Image on every frame (or every changed frame); see the module docs.

    ``mode``: ``labels``, ``faces``, ``text``, ``ppe`` or ``custom`` (needs
    ``project_version_arn``). ``min_confidence`` in percent, as Rekognition takes it.
    ``include_image_labels``: also report labels without a box (DetectLabels' scene
    labels, Custom Labels' classifications) as a whole-frame box. ``text_types``:
    DetectText's ``LINE`` and/or ``WORD``. ``required_equipment``: PPE summarisation
    types (``FACE_COVER``, ``HAND_COVER``, ``HEAD_COVER``). ``price_per_image``: for
    :attr:`RekognitionStats.estimated_cost` (the default is DetectLabels' first tier in
    us-east-1, USD 0.001).
    """

    def __init__(
        self,
        mode: str = "labels",
        *,
        client: Any | None = None,
        region_name: str | None = None,
        min_confidence: float = 50.0,
        max_labels: int | None = None,
        project_version_arn: str | None = None,
        include_image_labels: bool = False,
        text_types: Sequence[str] = ("LINE",),
        required_equipment: Sequence[str] = (),
        max_calls_per_second: float | None = 5.0,
        burst: int = 1,
        max_retries: int = 5,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        min_change: float = 0.0,
        thumb_width: int = 64,
        max_side: int | None = 1920,
        jpeg_quality: int = 90,
        price_per_image: float = 0.001,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        try:
            self._mode = MODES[mode]
        except KeyError:
            known = ", ".join(sorted(MODES))
            raise AnalysisError(f"unknown Rekognition mode {mode!r} (known: {known})") from None
        if mode == "custom" and not project_version_arn:
            raise AnalysisError("mode 'custom' needs project_version_arn (a running model)")
        self.mode = mode
        self._options = _Options(
            min_confidence,
            max_labels,
            project_version_arn,
            include_image_labels,
            frozenset(text_types),
            tuple(required_equipment),
        )
        self._client = client if client is not None else _default_client(region_name)
        self._call: Callable[..., Response] = getattr(self._client, self._mode.operation)
        self._bucket = (
            None
            if max_calls_per_second is None
            else TokenBucket(max_calls_per_second, burst, clock=clock, sleep=sleep)
        )
        self._window = (
            None
            if max_calls_per_second is None
            else CallWindow.for_rate(max_calls_per_second, clock=clock, sleep=sleep)
        )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_side = max_side
        self.jpeg_quality = jpeg_quality
        self.change_filter = ChangeFilter(min_change, thumb_width=thumb_width)
        self.stats = RekognitionStats(price_per_image=price_per_image)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._last_detections: list[Detection] = []

    @property
    def name(self) -> str:
        return f"rekognition-{self.mode}"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [self.detect_image(frame.image, frame.format) for frame in frames]

    def detect_image(self, image: Image, format: str = "bgr24") -> list[Detection]:
        """One frame: skipped (the last result again) or sent, converted to pixels."""
        self.stats.frames += 1
        height, width = image.shape[:2]
        if not self.change_filter.should_send(image, format):
            self.stats.frames_skipped += 1
            return [_rescale(d, width, height) for d in self._last_detections]
        bgr = image
        if format in _TO_BGR:
            bgr = np.asarray(cv2.cvtColor(image, _TO_BGR[format]), dtype=np.uint8)
        encoded = encode_image(
            bgr, self._mode.limits, max_side=self.max_side, quality=self.jpeg_quality
        )
        response = self._send(self._mode.build(encoded.data, self._options))
        self.stats.images_sent += 1
        self.stats.bytes_sent += len(encoded.data)
        detections = self._mode.parse(response, width, height, self._options)
        self._last_detections = detections
        return list(detections)

    def _call_within_window(self, params: Params) -> Response:
        if self._window is None:
            return self._call(**params)
        self.stats.rate_wait_seconds += self._window.acquire()
        try:
            return self._call(**params)
        finally:
            self._window.release()

    def _send(self, params: Params) -> Response:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        attempt = 0
        while True:
            if self._bucket is not None:
                self.stats.rate_wait_seconds += self._bucket.acquire()
            try:
                return self._call_within_window(params)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("ThrottlingException", "ProvisionedThroughputExceededException"):
                    self.stats.throttled += 1
                if code not in RETRYABLE_ERROR_CODES or attempt >= self.max_retries:
                    raise RekognitionError(
                        f"Rekognition {self._mode.operation} failed"
                        f"{' after ' + str(attempt) + ' retries' if attempt else ''}: {exc}",
                        code=code or None,
                    ) from exc
                reason = code
            except (ConnectionError, HTTPClientError) as exc:
                if attempt >= self.max_retries:
                    raise RekognitionError(
                        f"Rekognition {self._mode.operation} failed after {attempt} retries: {exc}"
                    ) from exc
                reason = type(exc).__name__
            delay = self.backoff_delay(attempt)
            attempt += 1
            self.stats.retries += 1
            log.warning(
                "Rekognition %s: %s, retry %d in %.2f s",
                self._mode.operation,
                reason,
                attempt,
                delay,
            )
            self._sleep(delay)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential back-off with "equal jitter": half fixed, half random, so delays
        grow and retries from many workers spread out."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


def _rescale(detection: Detection, width: int, height: int) -> Detection:
    r = detection.box_relative
    return Detection.from_relative(
        detection.label,
        detection.confidence,
        (r.x, r.y, r.width, r.height),
        (width, height),
        track_id=detection.track_id,
    )


def _rekognition(**options: Any) -> RekognitionDetector:
    return RekognitionDetector(**options)


register_detector("rekognition", _rekognition)
