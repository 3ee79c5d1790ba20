"""YOLO-family ONNX models with ONNX Runtime (an optional extra: ``pip install
onnxruntime``), and the decoding of their raw output in numpy.

::

    detector = OnnxDetector("yolov8n.onnx", labels=COCO_NAMES, conf_threshold=0.3)
    detector.detect(frames)

Frames are letterboxed into the model input by :class:`~kvs_toolkit.consumer.FrameBatcher`
(RGB, NCHW, float32 0..1, grey 114 padding: what Ultralytics exports expect). The raw
output is decoded by :func:`decode_yolo_output`:

* YOLOv8/v9/v11 exports: ``(batch, 4 + classes, anchors)`` - centre x, centre y, width,
  height, then one score per class (no objectness);
* YOLOv5/v7 exports: ``(batch, anchors, 5 + classes)`` with an objectness column that
  multiplies the class scores (``channels_first=False, has_objectness=True``).

Then class-wise non-maximum suppression (:func:`nms`) and
:func:`~kvs_toolkit.consumer.unletterbox_boxes` back to frame pixels. Everything is
vectorised numpy, and the suppression one call into OpenCV's C++.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from kvs_toolkit.analysis.base import AnalysisError, Detection, register_detector
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.tensor import FrameBatcher, LetterboxParams, unletterbox_boxes

__all__ = [
    "OnnxDetector",
    "YoloOutput",
    "decode_yolo_output",
    "greedy_nms",
    "nms",
    "xywh_to_xyxy",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


class YoloOutput(NamedTuple):
    """Decoded detections of one image: ``boxes`` ``(K, 4)`` x1, y1, x2, y2 (input
    pixels), ``scores`` ``(K,)``, ``class_ids`` ``(K,)``; best score first."""

    boxes: FloatArray
    scores: FloatArray
    class_ids: npt.NDArray[np.int64]


def xywh_to_xyxy(boxes: npt.ArrayLike) -> FloatArray:
    """Centre x, centre y, width, height to corners, over the last axis."""
    array = np.asarray(boxes, dtype=np.float64)
    half = array[..., 2:4] / 2
    return np.concatenate([array[..., 0:2] - half, array[..., 0:2] + half], axis=-1)


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    class_ids: npt.ArrayLike | None = None,
    *,
    max_detections: int | None = None,
) -> npt.NDArray[np.int64]:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    ``boxes`` ``(N, 4)`` x1, y1, x2, y2. With ``class_ids`` boxes only suppress boxes of
    their own class: each class is shifted to its own region of the plane (the
    "batched NMS" offset trick), so one pass serves all classes. A box with no area
    overlaps nothing: it is kept and suppresses nothing (as in torchvision). Boxes or
    scores that are not finite are dropped. Equal scores keep the input order.

    The greedy pass is OpenCV's ``cv2.dnn.NMSBoxes`` (C++), given the boxes' ranks as
    scores so its order is exactly this one; it gives the same boxes as
    :func:`greedy_nms`, the numpy loop (the tests compare them), which takes over where
    OpenCV has no ``dnn`` module. The loop's cost grows with the boxes kept: 7 ms for
    300 kept of 300, against 0.3 ms in C++.
    """
    xyxy, score, keep_finite = _nms_inputs(boxes, scores, class_ids)
    limit = xyxy.shape[0] if max_detections is None else max_detections
    if not xyxy.shape[0] or limit <= 0:
        return np.empty(0, np.int64)
    try:
        import cv2

        # Typed as taking lists; numpy arrays (N, 4) float64 and (N,) float32 go in as such.
        suppress: Any = cv2.dnn.NMSBoxes
    except (ImportError, AttributeError):  # an OpenCV built without dnn
        return keep_finite[_greedy(xyxy, score, iou_threshold, limit)]
    order = np.argsort(-score, kind="stable")
    # Ranks as float32 scores: exact below 2**24 boxes, ties already broken by index.
    rank = np.empty(order.size, np.float32)
    rank[order] = np.arange(order.size, 0, -1, dtype=np.float32)
    sizes = xyxy[:, 2:] - xyxy[:, :2]
    has_area = (sizes > 0).all(axis=1)
    with_area = np.flatnonzero(has_area)
    kept = np.flatnonzero(~has_area)  # overlap nothing: never suppressed, never suppress
    if with_area.size:
        rects = np.concatenate([xyxy[with_area, :2], sizes[with_area]], axis=1)
        chosen = np.asarray(
            suppress(rects, rank[with_area], 0.0, float(iou_threshold)), dtype=np.int64
        ).reshape(-1)
        kept = np.concatenate([kept, with_area[chosen]])
    kept = kept[np.argsort(-rank[kept], kind="stable")][:limit]
    return keep_finite[kept]


def greedy_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    class_ids: npt.ArrayLike | None = None,
    *,
    max_detections: int | None = None,
) -> npt.NDArray[np.int64]:
    """:func:`nms` as a numpy loop, one iteration per kept box: the reference it is
    tested against, and what it falls back on."""
    xyxy, score, keep_finite = _nms_inputs(boxes, scores, class_ids)
    limit = xyxy.shape[0] if max_detections is None else max_detections
    return keep_finite[_greedy(xyxy, score, iou_threshold, limit)]


def _nms_inputs(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, class_ids: npt.ArrayLike | None
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """The finite boxes (shifted per class) and their scores, and their indices."""
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    score = np.asarray(scores, dtype=np.float64).reshape(-1)
    if xyxy.shape[0] != score.shape[0]:
        raise ValueError(f"{xyxy.shape[0]} boxes but {score.shape[0]} scores")
    classes = None
    if class_ids is not None:
        classes = np.asarray(class_ids, dtype=np.float64).reshape(-1)
        if classes.shape[0] != score.shape[0]:
            raise ValueError(f"{classes.shape[0]} class ids but {score.shape[0]} scores")
    finite = np.isfinite(xyxy).all(axis=1) & np.isfinite(score)
    keep_finite = np.flatnonzero(finite)
    if not finite.all():
        xyxy, score = xyxy[finite], score[finite]
        classes = None if classes is None else classes[finite]
    if classes is not None and xyxy.size:
        offset = xyxy.max() - min(xyxy.min(), 0.0) + 1.0
        xyxy = xyxy + (classes * offset)[:, None]
    return xyxy, score, keep_finite


def _greedy(
    xyxy: FloatArray, score: FloatArray, iou_threshold: float, limit: int
) -> npt.NDArray[np.int64]:
    areas = np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)
    order = np.argsort(-score, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = np.maximum(xyxy[best, :2], xyxy[rest, :2])
        bottom_right = np.minimum(xyxy[best, 2:], xyxy[rest, 2:])
        overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
        union = areas[best] + areas[rest] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_yolo_output(
    prediction: npt.ArrayLike,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    max_candidates: int = 30_000,
    channels_first: bool = True,
    has_objectness: bool = False,
    class_agnostic: bool = False,
) -> YoloOutput:
    """Boxes, scores and classes of one image's raw YOLO output.

    ``prediction``: ``(4 + C, N)`` when ``channels_first`` (YOLOv8 and later), else
    ``(N, 4 + C)``, or ``(N, 5 + C)`` with ``has_objectness`` (YOLOv5/v7). A leading
    batch axis of 1 is accepted. Boxes are centre/size in network-input pixels; they
    come back as corners. At most ``max_candidates`` best-scoring boxes enter NMS.
    """
    array = np.asarray(prediction, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected one image's (4+C, N) or (N, 4+C) output, got {array.shape}")
    # (4 + C, N): one row per value, one column per anchor, as YOLOv8 exports it.
    columns = array if channels_first else array.T
    first_class = 5 if has_objectness else 4
    if columns.shape[0] <= first_class:
        raise ValueError(f"output rows have {columns.shape[0]} values: no class scores")
    class_scores = columns[first_class:]
    if has_objectness:
        class_scores = class_scores * columns[4:5]
    # Best score per anchor by an element-wise max down the class rows (contiguous
    # for a YOLOv8 output, 0.16 ms for 80 x 8400); the class index only for the few
    # hundred anchors over the threshold: argmax over every anchor's 80 strided scores
    # took 0.7 ms, most of the post-processing (benchmarks/onnx_pipeline.py).
    scores = class_scores.max(axis=0)
    candidates = np.flatnonzero(scores >= conf_threshold)
    if candidates.size > max_candidates:
        best = np.argpartition(-scores[candidates], max_candidates - 1)[:max_candidates]
        candidates = candidates[best]
    boxes = xywh_to_xyxy(columns[:4, candidates].T)
    picked_scores = scores[candidates].astype(np.float64)
    picked_classes = class_scores[:, candidates].argmax(axis=0).astype(np.int64)
    kept = nms(
        boxes,
        picked_scores,
        iou_threshold,
        None if class_agnostic else picked_classes,
        max_detections=max_detections,
    )
    return YoloOutput(boxes[kept], picked_scores[kept], picked_classes[kept])


def _load_labels(labels: Sequence[str] | str | Path | None) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        return [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
    return list(labels)


class OnnxDetector:
    """A YOLO ONNX export run with ONNX Runtime; see the module docs.

    ``labels``: class names (a sequence or a file with one name a line); without them,
    labels are ``class_<id>``. ``input_size``: the network input (W, H) or an int;
    taken from the model when its input has fixed spatial dimensions (else 640). A
    model with a fixed batch of 1 is run frame by frame; a dynamic batch runs the
    whole batch at once. ``providers``: ONNX Runtime execution providers (CPU by default).
    """

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        labels: Sequence[str] | str | Path | None = None,
        input_size: int | tuple[int, int] | None = None,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        channels_first: bool = True,
        has_objectness: bool = False,
        class_agnostic: bool = False,
        providers: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        try:
            # Imported by name: an optional extra without type information.
            onnxruntime: Any = importlib.import_module("onnxruntime")
        except ImportError as exc:
            raise AnalysisError("OnnxDetector needs ONNX Runtime: pip install onnxruntime") from exc
        source: Any = model if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise AnalysisError(f"ONNX model not found: {model}")
        try:
            self._session = onnxruntime.InferenceSession(
                source, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # ONNX Runtime raises its own untyped errors
            raise AnalysisError(f"ONNX Runtime cannot load the model: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        shape = list(model_input.shape)
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        if input_size is None:
            spatial = shape[2:4] if len(shape) == 4 else []
            fixed = all(isinstance(d, int) for d in spatial) and len(spatial) == 2
            input_size = (int(spatial[1]), int(spatial[0])) if fixed else 640
        self.batcher = FrameBatcher(input_size, batch_size=self._fixed_batch or 1)
        self.labels = _load_labels(labels)
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.channels_first = channels_first
        self.has_objectness = has_objectness
        self.class_agnostic = class_agnostic
        self._name = name or (
            f"onnx:{Path(model).name}" if not isinstance(model, bytes) else "onnx"
        )

    @property
    def name(self) -> str:
        return self._name

    def label(self, class_id: int) -> str:
        if self.labels is not None and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class_{class_id}"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        step = self._fixed_batch or max(1, len(frames))
        results: list[list[Detection]] = []
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            batch = self.batcher(chunk)
            tensor = batch.tensor
            if self._fixed_batch is not None and len(chunk) < self._fixed_batch:
                # A model exported with a fixed batch needs it full: pad with zeros.
                padding = np.zeros(
                    (self._fixed_batch - len(chunk), *tensor.shape[1:]), dtype=tensor.dtype
                )
                tensor = np.concatenate([tensor, padding])
            outputs = self._session.run(None, {self._input_name: tensor})
            raw = np.asarray(outputs[0])
            if raw.shape[0] < len(chunk):
                raise AnalysisError(
                    f"model returned {raw.shape[0]} outputs for a batch of {len(chunk)}"
                )
            for index, frame in enumerate(chunk):
                results.append(self._detections(raw[index], batch.params[index], frame))
        return results

    def _detections(
        self, raw: npt.NDArray[Any], params: LetterboxParams, frame: DecodedFrame
    ) -> list[Detection]:
        decoded = decode_yolo_output(
            raw,
            conf_threshold=self.conf_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
            channels_first=self.channels_first,
            has_objectness=self.has_objectness,
            class_agnostic=self.class_agnostic,
        )
        boxes = unletterbox_boxes(decoded.boxes, params)
        frame_size = (frame.width, frame.height)
        return [
            Detection.from_pixels(
                self.label(int(c)), float(s), (x1, y1, x2 - x1, y2 - y1), frame_size
            )
            for (x1, y1, x2, y2), s, c in zip(boxes, decoded.scores, decoded.class_ids, strict=True)
        ]


def _onnx(**options: Any) -> OnnxDetector:
    return OnnxDetector(**options)


register_detector("onnx", _onnx)
