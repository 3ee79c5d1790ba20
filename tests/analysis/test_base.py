from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs_toolkit.analysis import (
    AnalysisError,
    CallableDetector,
    Detection,
    Detector,
    MotionDetector,
    box_iou,
    create_detector,
    register_detector,
    registered_detectors,
)
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.errors import KvsError

from .conftest import make_frame


def test_to_json_has_exactly_the_documented_shape() -> None:
    detection = Detection.from_pixels("person", 0.875, (64, 36, 128, 72), (640, 360))
    data = detection.to_json()
    assert data == {
        "label": "person",
        "confidence": 0.875,
        "box": {"x": 64.0, "y": 36.0, "width": 128.0, "height": 72.0},
        "box_relative": {"x": 0.1, "y": 0.1, "width": 0.2, "height": 0.2},
    }
    tracked = detection.with_track(7).to_json()
    assert list(tracked) == ["label", "confidence", "box", "box_relative", "track_id"]
    assert tracked["track_id"] == 7
    assert Detection.from_json(json.loads(json.dumps(tracked))) == detection.with_track(7)


def test_from_relative_clips_boxes_that_leave_the_frame() -> None:
    # Rekognition reports boxes partly outside the picture with negative Left/Top.
    detection = Detection.from_relative("car", 0.9, (-0.1, 0.5, 0.3, 0.7), (1000, 500))
    assert detection.box_relative.x == 0.0
    assert detection.box_relative.width == pytest.approx(0.2)
    assert detection.box_relative.height == pytest.approx(0.5)
    assert (detection.box.x, detection.box.y) == (0.0, 250.0)
    assert detection.box.width == pytest.approx(200.0)
    assert detection.box.height == pytest.approx(250.0)


def test_box_iou_known_values() -> None:
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_array_equal(iou[1], 0.0)  # empty box: no division by zero
    assert box_iou(np.empty((0, 4)), b).shape == (0, 3)


boxes = st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.1, 50), st.floats(0.1, 50)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)


@given(st.lists(boxes, min_size=1, max_size=5), st.lists(boxes, min_size=1, max_size=5))
def test_box_iou_is_symmetric_and_bounded(a: list[list[float]], b: list[list[float]]) -> None:
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, box_iou(b, a).T)
    assert np.all((iou >= 0) & (iou <= 1 + 1e-9))
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0)


def test_builtin_detectors_are_registered() -> None:
    assert {"motion", "haar-face", "rekognition", "onnx"} <= set(registered_detectors())
    detector = create_detector("motion", min_area=50, method="mog2")
    assert isinstance(detector, MotionDetector)
    assert isinstance(detector, Detector)
    assert detector.name == "motion-mog2"
    from_mapping = create_detector({"type": "motion", "warmup": 3})
    assert isinstance(from_mapping, MotionDetector)
    assert from_mapping.warmup == 3


def test_unknown_detector_names_the_registered_ones() -> None:
    with pytest.raises(AnalysisError, match=r"unknown detector 'yolo9000' \(registered: .*motion"):
        create_detector("yolo9000")
    with pytest.raises(AnalysisError, match="needs a 'type'"):
        create_detector({"min_area": 3})
    assert issubclass(AnalysisError, KvsError)


def test_register_refuses_duplicates_and_colons() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_detector("motion", MotionDetector)
    with pytest.raises(ValueError, match="cannot contain ':'"):
        register_detector("a:b", MotionDetector)


# --- plug-ins: "module:attribute" ---------------------------------------------------------
def everything(frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
    """A plug-in detector function: the whole frame, every time."""
    return [
        [Detection.from_relative("all", 1.0, (0, 0, 1, 1), (f.width, f.height))] for f in frames
    ]


def wrong_count(frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
    return []


class PluginDetector:
    def __init__(self, label: str = "plugin") -> None:
        self.label = label

    @property
    def name(self) -> str:
        return f"plugin-{self.label}"

    def detect(self, frames: Sequence[DecodedFrame]) -> list[list[Detection]]:
        return [[] for _ in frames]


def test_plugin_function() -> None:
    detector = create_detector(f"{__name__}:everything")
    assert isinstance(detector, CallableDetector)
    assert detector.name == f"{__name__}:everything"
    frame = make_frame(np.zeros((90, 160, 3), np.uint8))
    [[found]] = detector.detect([frame])
    assert found.box.width == 160 and found.box.height == 90


def test_plugin_class_gets_the_options() -> None:
    detector = create_detector(f"{__name__}:PluginDetector", label="x")
    assert detector.name == "plugin-x"


def test_plugin_errors_are_clear() -> None:
    with pytest.raises(AnalysisError, match="cannot import plug-in module 'no_such_mod'"):
        create_detector("no_such_mod:f")
    with pytest.raises(AnalysisError, match="has no attribute 'missing'"):
        create_detector(f"{__name__}:missing")
    with pytest.raises(AnalysisError, match="takes no options"):
        create_detector(f"{__name__}:everything", threshold=3)
    detector = create_detector(f"{__name__}:wrong_count")
    with pytest.raises(AnalysisError, match="returned 0 results for 1 frames"):
        detector.detect([make_frame(np.zeros((8, 8, 3), np.uint8))])
