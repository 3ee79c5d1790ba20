from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import cv2
import numpy as np
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from kvs_toolkit.analysis import (
    AnalysisError,
    CallWindow,
    ChangeFilter,
    RekognitionDetector,
    RekognitionError,
    TokenBucket,
    create_detector,
    encode_image,
)
from kvs_toolkit.analysis.rekognition import MODES, ImageLimits
from kvs_toolkit.samples import render_frame

from .conftest import SPEC, decode_image, make_frame

ARN = "arn:aws:rekognition:us-east-1:123456789012:project/logos/version/logos.1/1"


@pytest.fixture
def moto_client(aws: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("rekognition", region_name="us-east-1")


@pytest.fixture
def stub_client(aws: None) -> Iterator[tuple[Any, Stubber]]:
    # DetectFaces and DetectProtectiveEquipment are not in moto; a Stubber answers them.
    client = boto3.client("rekognition", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def capture(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every request's operation name and parameters, as the detector built them."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def hook(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        calls.append((model.name, params))

    client.meta.events.register("provide-client-params.rekognition", hook)
    return calls


def frame(index: int = 10, **kwargs: Any) -> Any:
    return make_frame(render_frame(SPEC, index), index, **kwargs)


def no_sleep(seconds: float) -> None:
    pass


# --- moto: request shapes and conversions --------------------------------------------------
def test_detect_labels_request_and_pixel_boxes(moto_client: Any) -> None:
    calls = capture(moto_client)
    detector = RekognitionDetector(
        "labels", client=moto_client, min_confidence=60, max_labels=10, max_calls_per_second=None
    )
    [found] = detector.detect([frame()])
    [(operation, params)] = calls
    assert operation == "DetectLabels"
    assert set(params) == {"Image", "MinConfidence", "MaxLabels"}
    assert params["MinConfidence"] == 60 and params["MaxLabels"] == 10
    data = params["Image"]["Bytes"]
    assert data[:2] == b"\xff\xd8"  # a JPEG
    assert decode_image(data).shape == (360, 640, 3)
    # moto's canned answer: "Mobile Phone" with one instance box.
    [phone] = found
    assert phone.label == "Mobile Phone"
    assert phone.confidence == pytest.approx(0.999364, abs=1e-6)
    assert phone.box_relative.x == pytest.approx(0.3604024350643158)
    assert phone.box.x == pytest.approx(0.3604024350643158 * 640)
    assert phone.box.y == pytest.approx(0.09245597571134567 * 360)
    assert phone.box.width == pytest.approx(0.26779675483703613 * 640)
    assert phone.box.height == pytest.approx(0.8562285900115967 * 360)
    assert detector.stats.images_sent == 1
    assert detector.stats.bytes_sent == len(data)
    assert detector.stats.estimated_cost == pytest.approx(0.001)
    assert detector.name == "rekognition-labels"


def test_detect_text_keeps_lines(moto_client: Any) -> None:
    calls = capture(moto_client)
    detector = create_detector(
        "rekognition", mode="text", client=moto_client, min_confidence=90, max_calls_per_second=None
    )
    [found] = detector.detect([frame()])
    assert calls[0][1]["Filters"] == {"WordFilter": {"MinConfidence": 90}}
    # moto answers 4 LINEs and 5 WORDs; "Smiling" has 89 % confidence.
    assert [d.label for d in found] == ["text:IT'S", "text:MONDAY", "text:but keep"]
    words = RekognitionDetector(
        "text", client=moto_client, text_types=("WORD",), max_calls_per_second=None
    )
    assert len(words.detect([frame()])[0]) == 5


def test_detect_custom_labels(moto_client: Any) -> None:
    calls = capture(moto_client)
    detector = RekognitionDetector(
        "custom", client=moto_client, project_version_arn=ARN, max_calls_per_second=None
    )
    [[logo]] = detector.detect([frame()])
    assert calls[0][0] == "DetectCustomLabels"
    assert calls[0][1]["ProjectVersionArn"] == ARN
    assert logo.label == "MyLogo"
    assert logo.box.x == pytest.approx(0.07924537360668182 * 640)
    with pytest.raises(AnalysisError, match="needs project_version_arn"):
        RekognitionDetector("custom", client=moto_client)
    with pytest.raises(AnalysisError, match="unknown Rekognition mode 'celebs'"):
        RekognitionDetector("celebs", client=moto_client)


@pytest.mark.parametrize(
    ("size", "expected"),
    [((60, 40), (120, 80)), ((3840, 2160), (1920, 1080)), ((640, 360), (640, 360))],
)
def test_frames_are_resized_into_the_service_limits(
    moto_client: Any, size: tuple[int, int], expected: tuple[int, int]
) -> None:
    calls = capture(moto_client)
    detector = RekognitionDetector("labels", client=moto_client, max_calls_per_second=None)
    image = np.asarray(
        cv2.resize(render_frame(SPEC, 10), size, interpolation=cv2.INTER_AREA), np.uint8
    )
    [[phone]] = detector.detect([make_frame(image)])
    sent = decode_image(calls[0][1]["Image"]["Bytes"])
    assert (sent.shape[1], sent.shape[0]) == expected
    # Boxes are relative to the sent image and come back in the frame's own pixels.
    assert phone.box.width == pytest.approx(0.26779675483703613 * size[0])


# --- Stubber: operations moto lacks, throttling -------------------------------------------
FACE_BOX = {"Width": 0.25, "Height": 0.5, "Left": 0.5, "Top": 0.25}


def test_detect_faces(stub_client: tuple[Any, Stubber]) -> None:
    client, stubber = stub_client
    stubber.add_response(
        "detect_faces",
        {"FaceDetails": [{"BoundingBox": FACE_BOX, "Confidence": 99.5},
                         {"BoundingBox": FACE_BOX, "Confidence": 20.0}]},
        {"Image": {"Bytes": ANY}, "Attributes": ["DEFAULT"]},
    )  # fmt: skip
    detector = RekognitionDetector("faces", client=client, max_calls_per_second=None)
    [[face]] = detector.detect([frame()])  # the 20 % face is under min_confidence
    assert face.label == "face"
    assert (face.box.x, face.box.y, face.box.width, face.box.height) == (320, 90, 160, 180)


def test_detect_protective_equipment(stub_client: tuple[Any, Stubber]) -> None:
    client, stubber = stub_client
    response = {
        "ProtectiveEquipmentModelVersion": "1.0",
        "Persons": [
            {
                "Id": 0,
                "Confidence": 99.0,
                "BoundingBox": {"Width": 0.5, "Height": 1.0, "Left": 0.25, "Top": 0.0},
                "BodyParts": [
                    {
                        "Name": "FACE",
                        "Confidence": 99.0,
                        "EquipmentDetections": [
                            {"BoundingBox": FACE_BOX, "Confidence": 95.0, "Type": "FACE_COVER",
                             "CoversBodyPart": {"Confidence": 99.0, "Value": True}}
                        ],
                    }
                ],
            }
        ],
    }  # fmt: skip
    expected = {
        "Image": {"Bytes": ANY},
        "SummarizationAttributes": {
            "MinConfidence": 80,
            "RequiredEquipmentTypes": ["FACE_COVER", "HEAD_COVER"],
        },
    }
    stubber.add_response("detect_protective_equipment", response, expected)
    detector = RekognitionDetector(
        "ppe", client=client, min_confidence=80, required_equipment=["FACE_COVER", "HEAD_COVER"],
        max_calls_per_second=None,
    )  # fmt: skip
    [found] = detector.detect([frame()])
    assert [d.label for d in found] == ["person", "face_cover"]
    assert found[0].box.width == 320 and found[0].box.height == 360
    assert MODES["ppe"].limits == ImageLimits(4 * 1024 * 1024, 64, 4096)


def test_throttling_is_retried_with_growing_back_off(stub_client: tuple[Any, Stubber]) -> None:
    client, stubber = stub_client
    stubber.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)
    stubber.add_client_error(
        "detect_faces", "ProvisionedThroughputExceededException", "Slow down", 400
    )
    stubber.add_response("detect_faces", {"FaceDetails": [{"BoundingBox": FACE_BOX,
                                                           "Confidence": 99.0}]})  # fmt: skip
    sleeps: list[float] = []
    detector = RekognitionDetector(
        "faces", client=client, max_calls_per_second=None, backoff_base=0.5, sleep=sleeps.append,
        rng=random.Random(1),
    )  # fmt: skip
    [[face]] = detector.detect([frame()])
    assert face.label == "face"
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # equal jitter around 2^n
    assert detector.stats.retries == 2 and detector.stats.throttled == 2
    assert detector.stats.images_sent == 1


def test_retries_give_up_and_other_errors_are_not_retried(
    stub_client: tuple[Any, Stubber],
) -> None:
    client, stubber = stub_client
    for _ in range(3):
        stubber.add_client_error("detect_faces", "ThrottlingException", "Rate exceeded", 400)
    sleeps: list[float] = []
    detector = RekognitionDetector(
        "faces", client=client, max_calls_per_second=None, max_retries=2, sleep=sleeps.append
    )
    with pytest.raises(RekognitionError, match="detect_faces failed after 2 retries") as caught:
        detector.detect([frame()])
    assert caught.value.code == "ThrottlingException"
    assert len(sleeps) == 2 and detector.stats.images_sent == 0

    stubber.add_client_error("detect_faces", "InvalidImageFormatException", "bad image", 400)
    with pytest.raises(RekognitionError, match="InvalidImageFormatException") as caught:
        detector.detect([frame()])
    assert caught.value.code == "InvalidImageFormatException"
    assert len(sleeps) == 2  # no retry


# --- rate cap -------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_spaces_calls() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, burst=2, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]  # the burst
    assert waits[2:] == pytest.approx([0.25, 0.25, 0.25, 0.25])
    clock.now += 10  # idle: the bucket refills, but only to the burst size
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.25])


def _max_in_any_window(times: list[float], window_s: float) -> int:
    return max(sum(t <= u < t + window_s for u in times) for t in times)


def test_call_window_bounds_arrivals_whatever_the_latency() -> None:
    clock = FakeClock()
    window = CallWindow.for_rate(5.0, clock=clock, sleep=clock.sleep)
    rng = random.Random(7)
    arrivals: list[float] = []
    for _ in range(60):
        window.acquire()
        # a request spends 0-150 ms on the way out and as long again coming back
        clock.now += rng.uniform(0.0, 0.15)
        arrivals.append(clock.now)
        clock.now += rng.uniform(0.0, 0.15)
        window.release()
    assert _max_in_any_window(arrivals, 1.0) <= 5
    # and it does not idle: the 60 calls fit in well under 60 / 5 + 2 s
    assert arrivals[-1] - arrivals[0] < 14.0


def test_call_window_counts_calls_in_flight_across_threads() -> None:
    window = CallWindow(3, 0.2)
    lock = threading.Lock()
    arrivals: list[float] = []

    def call() -> None:
        window.acquire()
        try:
            time.sleep(0.01)
            with lock:
                arrivals.append(time.monotonic())
            time.sleep(0.01)
        finally:
            window.release()

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(arrivals) == 12
    assert _max_in_any_window(sorted(arrivals), 0.2) <= 3


def test_call_window_for_fractional_rates() -> None:
    assert (CallWindow.for_rate(2.5).max_calls, CallWindow.for_rate(2.5).window_s) == (2, 1.0)
    assert (CallWindow.for_rate(0.5).max_calls, CallWindow.for_rate(0.5).window_s) == (1, 2.0)
    with pytest.raises(ValueError, match="positive"):
        CallWindow.for_rate(0)
    with pytest.raises(ValueError, match="at least 1"):
        CallWindow(0)


def test_rate_cap_in_real_time(moto_client: Any) -> None:
    detector = RekognitionDetector("labels", client=moto_client, max_calls_per_second=25)
    frames = [frame(i) for i in range(6)]
    started = time.monotonic()
    detector.detect(frames)
    elapsed = time.monotonic() - started
    assert elapsed >= 5 / 25 - 0.01  # the first call is free, 5 more at 40 ms
    assert detector.stats.images_sent == 6
    assert detector.stats.rate_wait_seconds > 0.1


# --- change filter -----------------------------------------------------------------------------
def test_unchanged_frames_are_not_sent_and_repeat_the_last_result(moto_client: Any) -> None:
    calls = capture(moto_client)
    detector = RekognitionDetector(
        "labels", client=moto_client, min_change=2.0, max_calls_per_second=None
    )
    still = render_frame(SPEC, 10)
    noisy = np.clip(still.astype(np.int16) + 1, 0, 255).astype(np.uint8)  # tiny change
    different = 255 - still
    images = [still, still, noisy, still, different, different]
    results = detector.detect([make_frame(im, i) for i, im in enumerate(images)])
    assert len(calls) == 2  # the first and the inverted frame
    assert detector.stats.images_sent == 2 and detector.stats.frames_skipped == 4
    assert detector.stats.frames == 6
    assert all(r == results[0] for r in results)  # moto answers the same; skipped repeat it
    assert detector.change_filter.last_difference == 0.0


def test_change_filter_measures_mean_absolute_difference() -> None:
    gate = ChangeFilter(10.0, thumb_width=32)
    black = np.zeros((90, 160, 3), np.uint8)
    grey = np.full((90, 160, 3), 9, np.uint8)
    lighter = np.full((90, 160, 3), 20, np.uint8)
    assert gate.should_send(black)  # the first frame always goes
    assert not gate.should_send(grey)  # 9 < 10
    assert gate.last_difference == pytest.approx(9.0)
    assert gate.should_send(lighter)  # compared with the last *sent* frame: 20
    assert gate.thumbnail(black).shape == (18, 32)
    assert ChangeFilter(0).should_send(black) and ChangeFilter(0).should_send(black)


# --- image limits ------------------------------------------------------------------------------
def test_encode_image_limits() -> None:
    small = encode_image(np.zeros((40, 60, 3), np.uint8))
    assert (small.width, small.height) == (120, 80)  # at least 80 px a side
    ppe = encode_image(np.zeros((3000, 5000, 3), np.uint8), MODES["ppe"].limits, max_side=None)
    assert (ppe.width, ppe.height) == (4096, 2458)  # PPE: at most 4096 px
    decoded = decode_image(ppe.data)
    assert decoded.shape[:2] == (2458, 4096)


def test_encode_image_shrinks_until_the_bytes_fit() -> None:
    noise = np.random.default_rng(3).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    limits = ImageLimits(max_bytes=400_000)
    encoded = encode_image(noise, limits)
    assert len(encoded.data) <= 400_000
    assert encoded.width < 1920  # quality down to 50 was not enough: it shrank
    assert encoded.width / encoded.height == pytest.approx(16 / 9, rel=0.01)
    with pytest.raises(AnalysisError, match="does not fit in 300 bytes"):
        encode_image(noise, ImageLimits(max_bytes=300))


def test_encode_image_refuses_impossible_shapes() -> None:
    with pytest.raises(AnalysisError, match="cannot be scaled to at least 80 px a side"):
        encode_image(np.zeros((5000, 50, 3), np.uint8), ImageLimits(max_side=4096))
