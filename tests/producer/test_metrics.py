"""CloudWatch metrics of an upload, published off the upload path. moto stands in for
CloudWatch (we do not emulate it); the uploads go to the real emulator."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli.produce import run as cmd_produce
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer import Uploader
from kvs_toolkit.producer.metrics import CloudWatchMetrics
from kvs_toolkit.producer.uploader import UploadStats
from tests.producer.conftest import ClipFactory
from tests.producer.media import Clip
from tests.test_uploader import VIDEO, frame, kv

NAMESPACE = "KvsToolkit/Test"


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def total(client: Any, name: str, stream: str, statistic: str = "Sum") -> float:
    now = dt.datetime.now(dt.timezone.utc)
    answer = client.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName=name,
        Dimensions=[{"Name": "StreamName", "Value": stream}],
        StartTime=now - dt.timedelta(minutes=10),
        EndTime=now + dt.timedelta(minutes=1),
        Period=3600,
        Statistics=[statistic],
    )
    return float(sum(point[statistic] for point in answer["Datapoints"]))


def names(client: Any) -> set[str]:
    return {m["MetricName"] for m in client.list_metrics(Namespace=NAMESPACE)["Metrics"]}


def test_uploader_publishes_its_metrics(cloudwatch: Any) -> None:
    with Emulator() as emulator:
        kv(emulator).create_stream(StreamName="cam", DataRetentionInHours=1)
        metrics = CloudWatchMetrics(NAMESPACE, "cam", interval_s=0.15, client=cloudwatch)

        async def run() -> UploadStats:
            uploader = Uploader(
                emulator.endpoint_url, "cam", [VIDEO],
                fragment_duration_ms=1000, metrics=metrics,
            )  # fmt: skip
            await uploader.start()
            for i in range(50):
                uploader.put_frame(frame(i))
                await asyncio.sleep(0.01)
            return await uploader.close()

        stats = asyncio.run(run())
    assert stats.acked == 5
    assert names(cloudwatch) == {
        "Frames", "FragmentsSent", "FragmentsAcked", "BytesSent", "Errors", "Reconnects",
        "DroppedFragments", "BufferBytes", "BufferFragments", "SpoolBytes", "SpoolFragments",
        "AckLatency",
    }  # fmt: skip
    assert metrics.published_calls >= 2 and metrics.failed_calls == 0  # several intervals
    assert total(cloudwatch, "Frames", "cam") == 50
    assert total(cloudwatch, "FragmentsAcked", "cam") == 5
    assert total(cloudwatch, "FragmentsSent", "cam") == 5
    assert total(cloudwatch, "BytesSent", "cam") == stats.bytes_sent
    assert total(cloudwatch, "AckLatency", "cam", "SampleCount") == 5
    assert total(cloudwatch, "Errors", "cam") == 0
    assert total(cloudwatch, "BufferBytes", "cam", "Minimum") == 0  # empty at the end


def test_a_slow_cloudwatch_never_blocks_the_upload(cloudwatch: Any) -> None:
    def slow(**_: Any) -> None:
        time.sleep(0.5)  # a congested uplink to CloudWatch

    cloudwatch.meta.events.register("before-send.cloudwatch.PutMetricData", slow)
    metrics = CloudWatchMetrics(NAMESPACE, "cam", interval_s=0.1, client=cloudwatch)
    with Emulator() as emulator:
        kv(emulator).create_stream(StreamName="cam", DataRetentionInHours=1)

        async def run() -> tuple[UploadStats, float]:
            uploader = Uploader(
                emulator.endpoint_url, "cam", [VIDEO], fragment_duration_ms=1000,
                metrics=metrics,
            )  # fmt: skip
            await uploader.start()
            worst_lag = 0.0
            for i in range(50):
                before = time.monotonic()
                uploader.put_frame(frame(i))
                await asyncio.sleep(0.01)
                worst_lag = max(worst_lag, time.monotonic() - before - 0.01)
            return await uploader.close(), worst_lag

        stats, worst_lag = asyncio.run(run())
    assert stats.acked == 5
    assert worst_lag < 0.25  # the 0.5 s calls ran on the publisher's thread
    assert metrics.published_calls >= 1
    assert total(cloudwatch, "Frames", "cam") == 50  # late intervals were batched, not lost


def test_queue_full_drops_the_oldest_interval_and_counts(
    cloudwatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = CloudWatchMetrics(
        NAMESPACE, "cam", interval_s=60, client=cloudwatch, max_queued_intervals=2
    )
    stats = UploadStats()
    with caplog.at_level(logging.WARNING):
        for frames in (10, 20, 30, 40, 50):  # five intervals, CloudWatch not reached yet
            stats.frames = frames
            metrics.record(stats)
    assert metrics.dropped_intervals == 3
    assert "CloudWatch metrics queue full (2 intervals): dropped the oldest" in caplog.text
    metrics.start()
    metrics.close()
    assert metrics.published_calls == 1  # the two waiting intervals in one call
    assert total(cloudwatch, "Frames", "cam") == 20  # 10 + 10: the last two intervals


def test_unreachable_cloudwatch_is_a_counted_warning(caplog: pytest.LogCaptureFixture) -> None:
    client = boto3.client(
        "cloudwatch",
        endpoint_url="http://127.0.0.1:9",  # nothing listens on discard
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    metrics = CloudWatchMetrics(NAMESPACE, "cam", client=client)
    metrics.start()
    with caplog.at_level(logging.WARNING):
        metrics.record(UploadStats(frames=5))
        metrics.close()
    assert metrics.failed_calls == 1 and metrics.published_calls == 0
    assert "CloudWatch PutMetricData failed (11 metrics lost)" in caplog.text


def test_invalid_namespace_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid CloudWatch namespace 'AWS/KinesisVideo'"):
        CloudWatchMetrics("AWS/KinesisVideo", "cam")
    with pytest.raises(ValueError, match="interval_s must be positive"):
        CloudWatchMetrics(NAMESPACE, "cam", interval_s=0)


def test_cli_cloudwatch_namespace(cloudwatch: Any, make_clip: ClipFactory) -> None:
    with Emulator() as emulator:
        args = build_parser("produce").parse_args(
            ["produce", str(make_clip("clip.mkv", Clip())), "--stream", "porch",
             "--endpoint-url", emulator.endpoint_url, "--create-stream", "--no-realtime",
             "--fragment-duration", "1", "--cloudwatch-namespace", NAMESPACE,
             "--metrics-interval", "0.2"]
        )  # fmt: skip
        assert cmd_produce(args) == 0
    assert total(cloudwatch, "Frames", "porch") == 50
    assert total(cloudwatch, "FragmentsAcked", "porch") == 2
