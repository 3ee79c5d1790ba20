from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from kvs_toolkit.analysis import (
    AnalysisError,
    AnalysisRecord,
    Detection,
    JsonLinesSink,
    KinesisSink,
    MemorySink,
    ResultSink,
    S3Sink,
    SinkError,
    WebhookSink,
    create_sink,
    registered_sinks,
)
from kvs_toolkit.samples import render_frame

from .conftest import SPEC, decode_image, make_frame

RECORD_KEYS = [
    "stream_name",
    "fragment_number",
    "producer_timestamp",
    "server_timestamp",
    "timestamp",
    "model",
    "latency_ms",
    "detections",
]


@functools.cache
def rendered(index: int) -> npt.NDArray[np.uint8]:
    image = render_frame(SPEC, index)
    image.flags.writeable = False
    return image


def record(index: int = 30, detections: int = 1, *, stream: str = "cam-1") -> AnalysisRecord:
    found = [
        Detection.from_pixels("motion", 0.9, (100 + 10 * n, 50, 80, 80), (640, 360)).with_track(n)
        for n in range(detections)
    ]
    frame = make_frame(rendered(index), index)
    return AnalysisRecord.from_frame(
        frame, found, model="motion-average", latency_ms=3.25, stream_name=stream
    )


# --- JSON lines --------------------------------------------------------------------------
def test_jsonl_record_shape_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = create_sink(f"jsonl:{path}")
    assert isinstance(sink, ResultSink)
    sink.write(record(30, 1))
    sink.write(record(31, 0))
    sink.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert list(first) == RECORD_KEYS
    assert first == {
        "stream_name": "cam-1",
        "fragment_number": "9134385233318150666908441974" + f"{1:020d}",
        "producer_timestamp": 1700000001.0,
        "server_timestamp": 1700000001.52,
        "timestamp": 1700000001.2,
        "model": "motion-average",
        "latency_ms": 3.25,
        "detections": [
            {
                "label": "motion",
                "confidence": 0.9,
                "box": {"x": 100.0, "y": 50.0, "width": 80.0, "height": 80.0},
                "box_relative": {"x": 0.15625, "y": 0.138889, "width": 0.125, "height": 0.222222},
                "track_id": 0,
            }
        ],
    }
    assert second["detections"] == []  # a record also when nothing was found


def test_jsonl_to_a_stream_flushes_each_line() -> None:
    class Recording(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    stream = Recording()
    sink = JsonLinesSink(stream)
    sink.write(record())
    assert stream.flushes == 1 and stream.getvalue().count("\n") == 1
    sink.close()
    assert not stream.closed  # not ours to close


def test_jsonl_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = create_sink("jsonl:-")
    sink.write(record(5, 2))
    sink.close()
    line = capsys.readouterr().out
    assert json.loads(line)["detections"][1]["track_id"] == 1


def test_sink_registry() -> None:
    assert {"jsonl", "kinesis", "s3", "webhook", "memory"} <= set(registered_sinks())
    assert isinstance(create_sink("memory"), MemorySink)
    with pytest.raises(AnalysisError, match="unknown result sink 'ftp'"):
        create_sink("ftp:host")
    with pytest.raises(AnalysisError, match="needs a stream name"):
        create_sink("kinesis")
    with pytest.raises(AnalysisError, match="must be http or https"):
        create_sink("webhook:file:///etc/passwd")


# --- Kinesis (moto) ------------------------------------------------------------------------
@pytest.fixture
def kinesis(aws: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("kinesis", region_name="us-east-1")
        client.create_stream(StreamName="results", ShardCount=1)
        yield client


def read_all(client: Any, stream: str) -> list[dict[str, Any]]:
    shard = client.describe_stream(StreamName=stream)["StreamDescription"]["Shards"][0]
    iterator = client.get_shard_iterator(
        StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    out: list[dict[str, Any]] = []
    while True:
        response = client.get_records(ShardIterator=iterator, Limit=10000)
        out.extend(response["Records"])
        if not response["Records"]:
            return out
        iterator = response["NextShardIterator"]


def test_kinesis_sink_batches_put_records(kinesis: Any) -> None:
    requests: list[int] = []
    kinesis.meta.events.register(
        "provide-client-params.kinesis.PutRecords",
        lambda params, **kwargs: requests.append(len(params["Records"])),
    )
    sink = create_sink("kinesis:results", client=kinesis)
    records = [record(i % 100, i % 3) for i in range(1203)]
    for item in records:
        sink.write(item)
    assert requests == [500, 500]  # full batches go at once
    sink.close()
    assert requests == [500, 500, 203]
    stored = read_all(kinesis, "results")
    assert len(stored) == 1203
    assert {r["PartitionKey"] for r in stored} == {"cam-1"}
    assert json.loads(stored[0]["Data"]) == records[0].to_json()
    assert json.loads(stored[-1]["Data"]) == records[-1].to_json()


def test_kinesis_sink_resends_failed_records(aws: None) -> None:
    client = boto3.client("kinesis", region_name="us-east-1")
    sleeps: list[float] = []
    sink = KinesisSink("results", client=client, batch_size=3, sleep=sleeps.append)
    ok = {"SequenceNumber": "1", "ShardId": "shardId-000000000000"}
    failed = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"}
    items = [record(i) for i in range(3)]
    with Stubber(client) as stubber:
        stubber.add_response("put_records", {"FailedRecordCount": 1, "Records": [ok, failed, ok]})
        stubber.add_response(
            "put_records",
            {"Records": [ok]},
            {"StreamName": "results",
             "Records": [{"Data": items[1].to_bytes(), "PartitionKey": "cam-1"}]},
        )  # fmt: skip
        for item in items:
            sink.write(item)
        stubber.assert_no_pending_responses()
    assert sink.records_sent == 3 and sink.resent == 1 and sleeps == [0.1]


def test_kinesis_sink_gives_up(aws: None) -> None:
    client = boto3.client("kinesis", region_name="us-east-1")
    sink = KinesisSink("results", client=client, max_attempts=2, sleep=lambda s: None)
    failed = {"ErrorCode": "InternalFailure", "ErrorMessage": "oops"}
    with Stubber(client) as stubber:
        for _ in range(2):
            stubber.add_response("put_records", {"FailedRecordCount": 1, "Records": [failed]})
        sink.write(record())
        with pytest.raises(
            SinkError, match=r"1 records not accepted .* 2 attempts \(InternalFailure\)"
        ):
            sink.flush()


# --- S3 (moto) -----------------------------------------------------------------------------------
def test_s3_sink_writes_jpeg_with_boxes_and_json(aws: None) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="frames")
        sink = create_sink("s3:frames/runs/1", client=client)
        assert isinstance(sink, S3Sink)
        item = record(30, 2)
        sink.write(item)
        sink.write(record(31, 0))
        sink.close()
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="frames")["Contents"])
        base = f"runs/1/cam-1/{item.fragment_number}/1700000001200"
        assert f"{base}.jpg" in keys and f"{base}.json" in keys and len(keys) == 4
        jpeg = client.get_object(Bucket="frames", Key=f"{base}.jpg")
        assert jpeg["ContentType"] == "image/jpeg"
        image = decode_image(jpeg["Body"].read())
        assert image.shape == (360, 640, 3)
        # The box outline is drawn where the detection is (the background is dark there).
        plain = render_frame(SPEC, 30)
        assert np.abs(image[90:130, 100].astype(int) - plain[90:130, 100]).mean() > 40
        body = client.get_object(Bucket="frames", Key=f"{base}.json")["Body"].read()
        assert json.loads(body) == item.to_json()


def test_s3_sink_only_with_detections_and_errors(aws: None) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        sink = S3Sink("missing-bucket", client=client, only_with_detections=True)
        sink.write(record(31, 0))  # nothing found: nothing written, no error
        with pytest.raises(SinkError, match=r"s3://missing-bucket/.*NoSuchBucket"):
            sink.write(record(30, 1))


# --- webhook (a real local HTTP server) -------------------------------------------------
class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []  # answers to give first, then 204


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            state.bodies.append(json.loads(self.rfile.read(length)))
            state.headers.append(dict(self.headers))
            status = state.statuses.pop(0) if state.statuses else 204
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_webhook_posts_records(receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    sink = create_sink(f"webhook:{url}", batch_size=2, headers={"X-Token": "t"})
    items = [record(i) for i in range(3)]
    for item in items:
        sink.write(item)
    assert len(state.bodies) == 1
    sink.close()
    assert [len(b["records"]) for b in state.bodies] == [2, 1]
    assert state.bodies[0]["records"][0] == items[0].to_json()
    assert state.headers[0]["Content-Type"] == "application/json"
    assert state.headers[0]["X-Token"] == "t"


def test_webhook_retries_server_errors_but_not_client_errors(
    receiver: tuple[Receiver, str],
) -> None:
    state, url = receiver
    sleeps: list[float] = []
    sink = WebhookSink(url, sleep=sleeps.append, max_attempts=3)
    state.statuses = [503, 429]
    sink.write(record())
    assert len(state.bodies) == 3 and sleeps == [0.2, 0.4]
    state.statuses = [400]
    with pytest.raises(SinkError, match="refused 1 records: HTTP 400"):
        sink.write(record())
    assert len(sleeps) == 2


def test_webhook_connection_refused() -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/", max_attempts=2, sleep=lambda s: None)
    with pytest.raises(SinkError, match=r"failed 2 times .* 1 records lost"):
        sink.write(record())
