"""The public Python API in a few lines each, against the emulator, on a machine with
no AWS configuration: Producer uploads, open_stream reads frames back, a Pipeline runs
the motion detector."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import kvs_toolkit
from kvs_toolkit import Pipeline, Producer, open_stream
from kvs_toolkit.analysis import Analyzer, MotionDetector
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.samples import SampleSpec, write_sample

SPEC = SampleSpec(width=320, height=240, fps=10, seconds=4.0, gop_seconds=1.0)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


def test_upload_a_file_then_read_it_back_as_frames(
    emulator: Emulator, no_aws_config: None, tmp_path: Path
) -> None:
    sample = write_sample(tmp_path / "sample.mp4", SPEC)
    with Producer("cam-1", endpoint_url=emulator.endpoint_url, create_stream=True) as producer:
        stats = producer.upload(str(sample))
    assert stats.all_acknowledged and stats.acked == 2  # 2 s fragments of a 4 s file

    with open_stream(
        "cam-1", endpoint_url=emulator.endpoint_url, start="earliest", idle_exit_s=3.0
    ) as frames:
        seen = [(f.timestamp_ns, f.image.shape, f.keyframe) for f in frames]
    assert len(seen) == SPEC.frame_count
    assert all(shape == (240, 320, 3) for _, shape, _ in seen)
    assert [t for t, _, _ in seen] == sorted(t for t, _, _ in seen)
    assert sum(key for _, _, key in seen) == 4  # the file has a key frame every second


def test_put_numpy_frames_and_read_them_back_in_gray(
    emulator: Emulator, no_aws_config: None
) -> None:
    with Producer(
        "numpy", endpoint_url=emulator.endpoint_url, create_stream=True, fragment_duration_ms=1000
    ) as producer:
        for i in range(30):
            image = np.full((120, 160, 3), i * 8, np.uint8)
            producer.put_frame(image, 1_700_000_000_000 + i * 100, fps=10)
    assert producer.stats is not None and producer.stats.all_acknowledged

    with open_stream(
        "numpy", endpoint_url=emulator.endpoint_url, start="earliest", idle_exit_s=3.0,
        format="gray",
    ) as frames:  # fmt: skip
        means = [float(frame.image.mean()) for frame in frames]
    assert len(means) == 30
    # gray is the decoder's luma plane: limited range, 16 + 219/255 of the grey level
    assert means == pytest.approx([16 + i * 8 * 219 / 255 for i in range(30)], abs=4)


def test_put_encoded_annex_b_passes_through(
    emulator: Emulator, no_aws_config: None, tmp_path: Path
) -> None:
    stream = write_sample(tmp_path / "sample.h264", SPEC).read_bytes()  # Annex-B H.264
    with Producer("annexb", endpoint_url=emulator.endpoint_url, create_stream=True) as producer:
        for start in range(0, len(stream), 777):  # any chunking
            producer.put_encoded(stream[start : start + 777], fps=SPEC.fps)
    assert producer.stats is not None and producer.stats.all_acknowledged
    with open_stream(
        "annexb", endpoint_url=emulator.endpoint_url, start="earliest", idle_exit_s=3.0
    ) as frames:
        assert sum(1 for _ in frames) == SPEC.frame_count


def test_pipeline_with_the_motion_detector(
    emulator: Emulator, no_aws_config: None, tmp_path: Path
) -> None:
    sample = write_sample(tmp_path / "sample.mkv", SPEC)
    Producer("moving", endpoint_url=emulator.endpoint_url, create_stream=True).upload(str(sample))
    out = io.StringIO()
    with open_stream(
        "moving", endpoint_url=emulator.endpoint_url, start="earliest", idle_exit_s=3.0
    ) as stream:
        analyzer = Analyzer(MotionDetector(), batch_size=1, stream_name="moving")
        result = Pipeline(stream.source, analyzer=analyzer, out=out).run()
        analyzer.close()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert result.frames == len(records) == SPEC.frame_count
    # the sample's squares move from the first frame; the background model warms up first
    assert sum(1 for r in records if r["detections"]) >= SPEC.frame_count // 4
    assert {"timestamp", "fragment_number", "detections", "model"} <= set(records[0])


def test_package_exports_are_lazy() -> None:
    assert {"Producer", "open_stream", "Pipeline", "AwsAccess"} <= set(kvs_toolkit.__all__)
    with pytest.raises(AttributeError):
        _ = kvs_toolkit.NoSuchName  # type: ignore[attr-defined]


def test_put_frame_does_not_hang_when_the_upload_ended(no_aws_config: None) -> None:
    """A dead endpoint ends the upload; put_frame then raises instead of waiting forever
    for room in the source's queue (a program putting frames used to hang)."""
    import time

    from kvs_toolkit import EndpointUnreachableError, KvsError
    from kvs_toolkit.retry import RetryPolicy

    aws = kvs_toolkit.AwsAccess(
        endpoint_url="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=2, base_s=0.01)
    )
    producer = Producer("dead", aws=aws)
    started = time.monotonic()
    with pytest.raises(KvsError) as raised:
        for i in range(100_000):
            producer.put_frame(np.zeros((64, 64, 3), np.uint8), i * 40, fps=25)
    assert isinstance(raised.value, EndpointUnreachableError)
    assert time.monotonic() - started < 60
