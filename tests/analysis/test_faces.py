from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from kvs_toolkit.analysis import AnalysisError, HaarFaceDetector, create_detector
from kvs_toolkit.analysis.faces import default_cascade_path
from kvs_toolkit.samples import render_frame

from .conftest import SPEC, make_frame

HAVE_CASCADE = hasattr(cv2, "CascadeClassifier") and (
    (path := default_cascade_path()) is not None and path.is_file()
)


def test_missing_cascade_file_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "no-such-cascade.xml"
    with pytest.raises(AnalysisError, match=r"Haar cascade file not found: .*no-such-cascade\.xml"):
        HaarFaceDetector(bogus)


def test_opencv_without_cascade_classifier_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenCV 5 wheels have no CascadeClassifier: the error must say so and what to do.
    cascade = tmp_path / "cascade.xml"
    cascade.write_text("<opencv_storage/>")
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)
    with pytest.raises(AnalysisError, match=r"has no CascadeClassifier .*opencv-python-headless<5"):
        HaarFaceDetector(cascade)


class FakeClassifier:
    """Stands in for cv2.CascadeClassifier: answers detectMultiScale2 like OpenCV does."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, path: str) -> None:
        self.path = path

    def empty(self) -> bool:
        return False

    def detectMultiScale2(self, image: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        FakeClassifier.calls.append({"shape": image.shape, "dtype": image.dtype, **kwargs})
        return np.array([[100, 50, 80, 80], [10, 10, 48, 48]], np.int32), np.array([15, 5])


def test_boxes_are_mapped_back_from_the_searched_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cascade = tmp_path / "cascade.xml"
    cascade.write_text("<opencv_storage/>")
    monkeypatch.setattr(cv2, "CascadeClassifier", FakeClassifier, raising=False)
    FakeClassifier.calls.clear()
    detector = create_detector("haar-face", cascade_path=cascade, max_width=320, min_size=(40, 40))
    image = np.zeros((360, 640, 3), np.uint8)
    [found] = detector.detect([make_frame(image)])
    [call] = FakeClassifier.calls
    assert call["shape"] == (180, 320) and call["dtype"] == np.uint8  # grey, at max_width
    assert call["minSize"] == (20, 20) and call["minNeighbors"] == 5
    assert [d.label for d in found] == ["face", "face"]
    first = found[0]
    assert (first.box.x, first.box.y, first.box.width, first.box.height) == (200, 100, 160, 160)
    assert first.confidence == pytest.approx(15 / 20)
    assert found[1].confidence == pytest.approx(0.5)


@pytest.mark.skipif(not HAVE_CASCADE, reason="this OpenCV has no Haar cascades (OpenCV 5 wheel)")
def test_runs_on_a_synthetic_frame() -> None:
    detector = HaarFaceDetector()
    results = detector.detect([make_frame(render_frame(SPEC, 10))])
    assert isinstance(results, list) and len(results) == 1
    assert isinstance(results[0], list)
