"""``kvs consume --model``: real H.264 produced into the emulator, read back (live, archive
and from a file), analysed, written as JSON lines, sent to S3 / Kinesis (moto), and
published with boxes drawn into a second stream that is read back through GetMedia."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
import pytest
from botocore.credentials import Credentials
from moto import mock_aws

from kvs_toolkit.analysis import AnalysisError, Detection, label_colour
from kvs_toolkit.analysis.models import model_detector
from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli.consume import run as cmd_consume
from kvs_toolkit.consumer.decode import FragmentDecoder
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.readers import LiveReader
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, ground_truth, write_sample

from .conftest import best_ious

ACCESS_KEY = "AKIDANALYSIS"
SECRET = "analysis-secret"
SPEC = SampleSpec(width=640, height=360, fps=25, seconds=4.0, codec="h264", gop_seconds=1.0)
STREAM = "models"
FRAGMENTS = 4
FRAMES = SPEC.frame_count
WARMUP = 25  # MotionDetector's default: the first frames only build the background
RECORD_KEYS = {
    # the consumer's frame fields
    "fragment_number", "producer_timestamp", "server_timestamp", "timestamp", "keyframe",
    "width", "height", "track", "index",
    # the analysis record
    "stream_name", "model", "latency_ms", "detections",
}  # fmt: skip


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample") / "sample.mkv", SPEC)


@pytest.fixture(scope="module")
def emulator(sample: Path) -> Iterator[Emulator]:
    """One emulator for the module, with four one-second H.264 fragments in STREAM."""
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        stats = asyncio.run(
            produce(
                open_source(str(sample), SourceOptions(realtime=False, audio=False)),
                emu.endpoint_url,
                STREAM,
                create_stream=True,
                credentials=Credentials(ACCESS_KEY, SECRET),
                fragment_duration_ms=1000,
            )
        )
        assert stats.acked == FRAGMENTS
        yield emu


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("consume").parse_args(["consume", *argv])


def live(emulator: Emulator, *argv: str, stream: str = STREAM) -> argparse.Namespace:
    return parse("--stream", stream, "--endpoint-url", emulator.endpoint_url, *argv)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def frame_index(record: dict[str, Any], first: float) -> int:
    timestamp: float = record["timestamp"]
    return round((timestamp - first) * SPEC.fps)


def check_motion_records(records: list[dict[str, Any]], stream_name: str) -> None:
    """Shape of every record, and boxes against the ground truth after the warm-up."""
    assert len(records) == FRAMES
    first = records[0]["timestamp"]
    assert [frame_index(r, first) for r in records] == list(range(FRAMES))  # frame order
    matched = []
    for index, record in enumerate(records):
        assert set(record) == RECORD_KEYS
        assert record["stream_name"] == stream_name
        assert record["model"] == "motion-average"
        assert "frame_timestamp" not in record  # one name per field: "timestamp"
        assert record["latency_ms"] >= 0
        for detection in record["detections"]:
            assert set(detection) == {"label", "confidence", "box", "box_relative", "track_id"}
            assert detection["label"] == "motion" and 0 < detection["confidence"] <= 1
            box, relative = detection["box"], detection["box_relative"]
            assert set(box) == set(relative) == {"x", "y", "width", "height"}
            assert relative["x"] == pytest.approx(box["x"] / SPEC.width, abs=1e-4)
            assert relative["height"] == pytest.approx(box["height"] / SPEC.height, abs=1e-4)
        if index < WARMUP:
            assert record["detections"] == []
            continue
        found = [Detection.from_json(d) for d in record["detections"]]
        matched.append(best_ious(SPEC, index, found))
    assert float((np.concatenate(matched) >= 0.5).mean()) >= 0.9


def test_live_motion_writes_one_record_per_frame_with_boxes_on_the_objects(
    emulator: Emulator, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "motion.jsonl"
    args = live(emulator, "--start", "earliest", "--max-fragments", str(FRAGMENTS),
                "--model", "motion", "--out", str(out), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(out)
    check_motion_records(records, STREAM)
    assert len({r["fragment_number"] for r in records}) == FRAGMENTS
    assert all(r["server_timestamp"] is not None for r in records)
    detections = sum(len(r["detections"]) for r in records)
    err = capsys.readouterr().err
    assert f"motion-average: {FRAMES} frames analysed, {detections} detections " in err
    assert f"(motion {detections})" in err


def test_archive_and_file_give_the_same_detections(
    emulator: Emulator, aws_env: None, sample: Path, tmp_path: Path
) -> None:
    archived, from_file = tmp_path / "archive.jsonl", tmp_path / "file.jsonl"
    args = live(emulator, "--archive", "2000-01-01", "2100-01-01", "--model", "motion",
                "--out", str(archived), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    args = parse("--from-file", str(sample), "--model", "motion", "--out", str(from_file),
                 "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    archive_records, file_records = read_jsonl(archived), read_jsonl(from_file)
    check_motion_records(archive_records, STREAM)
    check_motion_records(file_records, sample.name)
    assert all(r["fragment_number"] is None for r in file_records)  # a plain MKV file
    # Same pictures, same detector: the same boxes whatever the reader.
    assert [r["detections"] for r in archive_records] == [r["detections"] for r in file_records]


def test_min_confidence_drops_weak_detections(
    emulator: Emulator, aws_env: None, sample: Path, tmp_path: Path
) -> None:
    out = tmp_path / "strict.jsonl"
    args = parse("--from-file", str(sample), "--model", "motion", "--min-confidence", "0.99",
                 "--out", str(out), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(out)
    assert len(records) == FRAMES
    confidences = [d["confidence"] for r in records for d in r["detections"]]
    assert all(c >= 0.99 for c in confidences)


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = str(tmp_path / "none.mkv")
    assert cmd_consume(parse("--from-file", file, "--to-kinesis", "results")) == 2
    assert "need --model" in capsys.readouterr().err
    assert cmd_consume(parse("--from-file", file, "--model", "nope")) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cmd_consume(parse("--from-file", file, "--model", "motion", "--to-s3", "bucket")) == 2
    assert "--to-s3 takes s3://BUCKET/PREFIX" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--model", "motion", "--min-confidence", "1.5")
    with pytest.raises(AnalysisError, match="needs its file: onnx:PATH"):
        model_detector("onnx")
    with pytest.raises(AnalysisError, match="takes no ':' argument"):
        model_detector("motion:fast")


def plugin(frames: list[DecodedFrame]) -> list[list[Detection]]:
    """A ``module:function`` plug-in: one whole-frame detection per frame."""
    return [
        [Detection.from_pixels("frame", 0.5, (0, 0, f.width, f.height), (f.width, f.height))]
        for f in frames
    ]


def test_plugin_model(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "plugin.jsonl"
    args = parse("--from-file", str(sample), "--model", f"{__name__}:plugin", "--out", str(out),
                 "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(out)
    assert len(records) == FRAMES
    assert {r["model"] for r in records} == {f"{__name__}:plugin"}
    assert all(len(r["detections"]) == 1 for r in records)


# --- the annotated stream --------------------------------------------------------------------
COLOUR = np.array(label_colour("motion"), dtype=np.int16)


def box_colour_share(image: npt.NDArray[np.uint8], box: Any, margin: int = 5) -> float:
    """Share of the pixels on a ring around ``box`` (``margin`` pixels either side of its
    outline) close to the colour the boxes of label ``motion`` are drawn in."""
    height, width = image.shape[:2]
    x1, y1 = max(box.x - margin, 0), max(box.y - margin, 0)
    x2, y2 = min(box.x + box.width + margin, width), min(box.y + box.height + margin, height)
    ring = np.zeros((height, width), dtype=bool)
    ring[y1:y2, x1:x2] = True
    ring[
        box.y + margin : box.y + box.height - margin, box.x + margin : box.x + box.width - margin
    ] = False
    close = (np.abs(image.astype(np.int16) - COLOUR) <= 40).all(axis=2)
    return float(close[ring].mean())


def read_stream(emulator: Emulator, stream: str, frames: int) -> list[DecodedFrame]:
    """``frames`` decoded frames of ``stream`` from its start, through GetMedia."""
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    reader = LiveReader(stream, start="earliest", endpoint_url=emulator.endpoint_url,
                        session=session)  # fmt: skip
    decoded: list[DecodedFrame] = []
    timer = threading.Timer(30.0, reader.stop)  # a safety net, not the normal end
    timer.start()
    try:
        with reader, FragmentDecoder() as decoder:
            for fragment in reader:
                decoded += decoder.decode(fragment)
                if len(decoded) >= frames:
                    break
            else:
                decoded += decoder.flush()
    finally:
        timer.cancel()
    return decoded


def test_annotate_to_publishes_frames_with_boxes_drawn(
    emulator: Emulator, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "annotated.jsonl"
    args = live(emulator, "--start", "earliest", "--max-fragments", str(FRAGMENTS),
                "--model", "motion", "--out", str(out), "--annotate-to", "annotated",
                "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    err = capsys.readouterr().err
    summary = re.search(r"annotated: (\d+) of (\d+) frames published, (\d+) dropped", err)
    assert summary is not None, err
    published, submitted, dropped = (int(g) for g in summary.groups())
    assert submitted == FRAMES and published + dropped == FRAMES and published >= FRAMES // 2
    records = read_jsonl(out)
    index_of = {round(r["timestamp"] * 1000): i for i, r in enumerate(records)}

    frames = read_stream(emulator, "annotated", published)
    assert len(frames) == published
    assert {(f.width, f.height) for f in frames} == {(SPEC.width, SPEC.height)}
    checked = boxed = 0
    for frame in frames:
        # The annotated stream keeps the source's timestamps (ms): find the source frame.
        index = index_of[frame.timestamp_ns // 1_000_000]
        found = [Detection.from_json(d) for d in records[index]["detections"]]
        for truth, iou in zip(
            ground_truth(SPEC, index), best_ious(SPEC, index, found), strict=True
        ):
            if iou < 0.5:
                continue  # no box was drawn around this object in this frame
            checked += 1
            boxed += box_colour_share(frame.image, truth) >= 0.2
    assert checked >= published // 2
    assert boxed >= 0.9 * checked


def test_the_source_stream_has_no_box_colour(emulator: Emulator, aws_env: None) -> None:
    """The control for the test above: without drawing, the ring has no box colour."""
    frames = read_stream(emulator, STREAM, FRAMES)
    shares = [
        box_colour_share(frame.image, truth)
        for index, frame in enumerate(frames)
        for truth in ground_truth(SPEC, index)
    ]
    assert max(shares) < 0.02


# --- sinks with moto ------------------------------------------------------------------------
@pytest.fixture
def moto_aws(aws_env: None) -> Iterator[None]:
    """moto for S3 and Kinesis; the emulator (on 127.0.0.1) and our credentials pass."""
    config: Any = {
        "core": {"mock_credentials": False, "passthrough": {"urls": [r"http://127\.0\.0\.1.*"]}}
    }
    with mock_aws(config=config):
        yield


def test_to_s3_and_to_kinesis_carry_the_jsonl_fragments_and_timestamps(
    emulator: Emulator, moto_aws: None, tmp_path: Path
) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="results")
    kinesis = boto3.client("kinesis", region_name="us-east-1")
    kinesis.create_stream(StreamName="detections", ShardCount=1)
    out = tmp_path / "sinks.jsonl"
    args = live(emulator, "--start", "earliest", "--max-fragments", str(FRAGMENTS),
                "--model", "motion", "--out", str(out), "--to-s3", "s3://results/runs/1",
                "--to-kinesis", "detections", "--region", "us-east-1", "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(out)
    assert len(records) == FRAMES

    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        fields = ("fragment_number", "producer_timestamp", "server_timestamp",
                  "timestamp", "detections")  # fmt: skip
        return tuple(record[name] for name in fields)

    expected = [key(r) for r in records]

    shard = kinesis.describe_stream(StreamName="detections")["StreamDescription"]["Shards"][0]
    iterator = kinesis.get_shard_iterator(
        StreamName="detections", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    sent = [json.loads(r["Data"]) for r in kinesis.get_records(ShardIterator=iterator)["Records"]]
    assert [key(r) for r in sent] == expected
    assert {r["stream_name"] for r in sent} == {STREAM}

    listed = s3.list_objects_v2(Bucket="results", Prefix="runs/1/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert len(keys) == 2 * FRAMES  # a .json and a .jpg per frame
    stored = [
        json.loads(s3.get_object(Bucket="results", Key=k)["Body"].read())
        for k in keys
        if k.endswith(".json")
    ]
    assert sorted(key(r) for r in stored) == sorted(expected)
    for record in records[:3]:
        millis = round(record["timestamp"] * 1000)
        assert f"runs/1/{STREAM}/{record['fragment_number']}/{millis}.jpg" in keys
    assert os.environ["AWS_ACCESS_KEY_ID"] == ACCESS_KEY


# --- the programs in consumers/ -------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def run_program(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "consumers" / name), *argv],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_motion_alerts_prints_start_and_end(emulator: Emulator, aws_env: None) -> None:
    done = run_program("motion_alerts.py", "--stream", STREAM, "--endpoint-url",
                       emulator.endpoint_url, "--start", "earliest", "--fps", "25",
                       "--max-fragments", str(FRAGMENTS))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The squares never stop: motion starts once the background is built, and is still
    # going at the end.
    assert len(lines) == 2 and "motion started" in lines[0], lines
    assert lines[1].startswith("motion still going at the end")


@pytest.mark.parametrize("name", ["rekognition_labels.py", "onnx_detector.py"])
def test_other_programs_show_their_usage(name: str) -> None:
    done = run_program(name, "--help")
    assert done.returncode == 0, done.stderr
    assert "--stream" in done.stdout and "--out" in done.stdout


def test_onnx_program_reports_a_missing_model(tmp_path: Path) -> None:
    done = run_program("onnx_detector.py", "--stream", STREAM, "--model",
                       str(tmp_path / "missing.onnx"), "--endpoint-url",
                       "http://127.0.0.1:9")  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kvs onnx_detector: ") and "missing.onnx" in last, done.stderr
