from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from kvs_toolkit.analysis import Detection, box_iou
from kvs_toolkit.consumer.frames import DecodedFrame, PixelFormat
from kvs_toolkit.samples import SampleSpec, ground_truth, render_frame

SPEC = SampleSpec(width=640, height=360, fps=25, seconds=6.0)
# 2023-11-14T22:13:20Z, the producer start the consumer tests use too.
START_NS = 1_700_000_000_000_000_000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def make_frame(
    image: npt.NDArray[np.uint8],
    index: int = 0,
    *,
    fps: int = 25,
    format: PixelFormat = "bgr24",
    fragment_frames: int = 25,
) -> DecodedFrame:
    """A DecodedFrame as FragmentDecoder makes them: one fragment per ``fragment_frames``."""
    fragment = index // fragment_frames
    timestamp_ns = START_NS + index * 1_000_000_000 // fps
    fragment_ns = START_NS + fragment * fragment_frames * 1_000_000_000 // fps
    producer = EPOCH + dt.timedelta(microseconds=fragment_ns // 1000)
    return DecodedFrame(
        image=image,
        format=format,
        track_number=1,
        fragment_number=f"9134385233318150666908441974{fragment:020d}",
        producer_timestamp=producer,
        server_timestamp=producer + dt.timedelta(milliseconds=520),
        timestamp_ns=timestamp_ns,
        mkv_timestamp_ns=timestamp_ns - START_NS,
        keyframe=index % fragment_frames == 0,
        index=index % fragment_frames,
    )


def sample_frames(
    spec: SampleSpec = SPEC, count: int | None = None, start: int = 0
) -> Iterator[DecodedFrame]:
    end = spec.frame_count if count is None else start + count
    for index in range(start, end):
        yield make_frame(render_frame(spec, index), index, fps=spec.fps)


def truth_boxes(spec: SampleSpec, index: int) -> npt.NDArray[np.float64]:
    return np.array(
        [(b.x, b.y, b.x + b.width, b.y + b.height) for b in ground_truth(spec, index)],
        dtype=np.float64,
    )


def best_ious(spec: SampleSpec, index: int, found: list[Detection]) -> npt.NDArray[np.float64]:
    """For each ground-truth box of frame ``index``, the best IoU of any detection."""
    truth = truth_boxes(spec, index)
    boxes = np.array([(d.box.x, d.box.y, d.box.x2, d.box.y2) for d in found]).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(len(truth))
    return np.asarray(box_iou(truth, boxes).max(axis=1), dtype=np.float64)


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """An encoded image decoded with OpenCV (independently of the code under test)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return np.asarray(image, dtype=np.uint8)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, and no shared config: nothing reaches a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
