from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kvs_toolkit.analysis import (
    AnalysisError,
    OnnxDetector,
    create_detector,
    decode_yolo_output,
    nms,
)
from kvs_toolkit.analysis.yolo import greedy_nms, xywh_to_xyxy

from .conftest import make_frame


def yolov8_output(
    rows: Sequence[tuple[float, float, float, float, Sequence[float]]],
) -> npt.NDArray[np.float32]:
    """A (1, 4 + C, N) tensor from (cx, cy, w, h, class scores) rows."""
    table = np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in rows], np.float32)
    return np.ascontiguousarray(table.T[np.newaxis], dtype=np.float32)


# In a 64x64 network input: two overlapping class-1 boxes, one class-0 box on top of them,
# one box under the confidence threshold, and one far away.
ROWS = [
    (32, 32, 20, 10, [0.05, 0.90]),
    (33, 32, 20, 10, [0.02, 0.80]),  # same class, IoU ~0.9 with the first: suppressed
    (32, 32, 20, 10, [0.70, 0.10]),  # other class: kept (class-wise NMS)
    (10, 10, 4, 4, [0.10, 0.05]),  # under conf_threshold
    (50, 20, 8, 8, [0.00, 0.60]),
]


def test_xywh_to_xyxy() -> None:
    np.testing.assert_array_equal(xywh_to_xyxy([[10, 20, 4, 6]]), [[8, 17, 12, 23]])


def test_decode_yolov8_output() -> None:
    out = decode_yolo_output(yolov8_output(ROWS), conf_threshold=0.25, iou_threshold=0.45)
    np.testing.assert_allclose(out.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(out.class_ids, [1, 0, 1])
    np.testing.assert_allclose(out.boxes[0], [22, 27, 42, 37])
    np.testing.assert_allclose(out.boxes[2], [46, 16, 54, 24])
    agnostic = decode_yolo_output(yolov8_output(ROWS), class_agnostic=True)
    np.testing.assert_array_equal(agnostic.class_ids, [1, 1])  # the class-0 box went too


def test_decode_yolov5_layout_with_objectness() -> None:
    # (N, 5 + C): the class score is multiplied by the objectness.
    rows = np.array([[32, 32, 20, 10, 0.5, 0.1, 0.9], [50, 20, 8, 8, 0.2, 0.9, 0.1]], np.float32)
    out = decode_yolo_output(rows, channels_first=False, has_objectness=True, conf_threshold=0.3)
    np.testing.assert_allclose(out.scores, [0.45])
    np.testing.assert_array_equal(out.class_ids, [1])


def test_decode_rejects_bad_shapes_and_handles_nothing() -> None:
    with pytest.raises(ValueError, match="expected one image's"):
        decode_yolo_output(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(ValueError, match="no class scores"):
        decode_yolo_output(np.zeros((4, 3), np.float32))
    empty = decode_yolo_output(np.zeros((6, 100), np.float32))
    assert empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)


def test_nms() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]]
    scores = [0.9, 0.8, 0.7, 0.95]
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, [0, 1, 0, 0]), [3, 1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_detections=1), [3])
    assert nms(np.empty((0, 4)), [], 0.5).shape == (0,)


def test_nms_is_greedy_in_score_order() -> None:
    rng = np.random.default_rng(5)
    corners = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, (200, 2))], axis=1)
    scores = rng.uniform(0, 1, 200)
    kept = nms(boxes, scores, 0.3)
    assert np.all(np.diff(scores[kept]) <= 0)
    from kvs_toolkit.analysis import box_iou

    iou = box_iou(boxes[kept], boxes[kept])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.3  # no two survivors overlap more than the threshold


@pytest.mark.parametrize("seed", range(6))
def test_nms_in_cpp_keeps_what_the_greedy_loop_keeps(seed: int) -> None:
    """OpenCV's NMSBoxes against the numpy loop on crowded, tied, degenerate input."""
    rng = np.random.default_rng(seed)
    count = 400
    centres = rng.uniform(0, 600, (12, 2))[rng.integers(0, 12, count)]
    centres += rng.normal(0, 6, (count, 2))
    sizes = rng.uniform(20, 120, (count, 2))
    sizes[rng.random(count) < 0.05] = 0  # boxes with no area
    sizes[rng.random(count) < 0.02, 0] = -5  # inverted ones
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).round(1)
    scores = rng.choice(np.linspace(0.25, 0.95, 30), count)  # many equal scores
    classes = rng.integers(0, 3, count)
    boxes[rng.integers(0, count, 3), 1] = np.nan  # dropped by both
    for threshold in (0.3, 0.45, 0.7):
        for class_ids in (None, classes):
            for limit in (None, 5):
                ours = nms(boxes, scores, threshold, class_ids, max_detections=limit)
                loop = greedy_nms(boxes, scores, threshold, class_ids, max_detections=limit)
                np.testing.assert_array_equal(ours, loop)
    assert 5 < nms(boxes, scores, 0.45).size < count - 20  # suppression happened


def test_nms_drops_what_is_not_finite() -> None:
    boxes = [[0, 0, 10, 10], [np.nan, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    scores = [0.5, 0.9, np.inf, 0.6]
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 0])
    np.testing.assert_array_equal(greedy_nms(boxes, scores, 0.5), [3, 0])
    with pytest.raises(ValueError, match="class ids"):
        nms(boxes, scores, 0.5, [0, 1])


# --- ONNX Runtime ----------------------------------------------------------------------------
def test_missing_onnxruntime_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(AnalysisError, match="pip install onnxruntime"):
        OnnxDetector(tmp_path / "model.onnx")


def tiny_model(path: Path, output: npt.NDArray[np.float32], size: int = 64) -> Path:
    """An ONNX graph with a YOLO-shaped input whose output is a fixed tensor."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    constant = helper.make_node("Constant", [], ["raw"], value=numpy_helper.from_array(output))
    # Tie the output to the input (x * 0 summed), as a real network's output is.
    nodes = [
        constant,
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_detector_decodes_and_unletterboxes(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = tiny_model(tmp_path / "tiny.onnx", yolov8_output(ROWS))
    detector = create_detector("onnx", model=model, labels=["cat", "dog"])
    assert isinstance(detector, OnnxDetector)
    assert detector.batcher.size == (64, 64)  # from the model's input
    # 128x72 (16:9) letterboxed into 64x64: scale 0.5, 14 px of padding above and below.
    frames = [make_frame(np.zeros((72, 128, 3), np.uint8), i) for i in range(3)]
    results = detector.detect(frames)  # a fixed batch of 1: run frame by frame
    assert len(results) == 3 and results[0] == results[2]
    dog, cat, far = results[0]
    assert (dog.label, cat.label, far.label) == ("dog", "cat", "dog")
    assert dog.confidence == pytest.approx(0.9)
    assert (dog.box.x, dog.box.y, dog.box.width, dog.box.height) == pytest.approx((44, 26, 40, 20))
    assert (far.box.x, far.box.y) == pytest.approx((92, 4))
    assert dog.box_relative.x == pytest.approx(44 / 128)
    assert detector.name == "onnx:tiny.onnx"


def test_onnx_detector_errors(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    with pytest.raises(AnalysisError, match="ONNX model not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(AnalysisError, match="ONNX Runtime cannot load the model"):
        OnnxDetector(broken)
