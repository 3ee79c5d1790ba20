"""Upload metrics to Amazon CloudWatch, off the upload path.

The :class:`~kvs_toolkit.producer.uploader.Uploader` calls :meth:`record` on its event
loop every ``interval_s``: that only computes the interval's numbers from its
:class:`~kvs_toolkit.producer.uploader.UploadStats` and queues them (never blocks). A
worker thread of its own sends them with boto3 ``PutMetricData``, several intervals
per call when it fell behind. The queue is bounded: when CloudWatch cannot be reached
for long, the *oldest* interval is dropped (counted, with a warning), like the
fragment buffers.

Metrics (namespace of your choice, dimension ``StreamName``), per interval:
``Frames``, ``FragmentsSent``, ``FragmentsAcked``, ``BytesSent``, ``Errors`` (error acks
and failed connections), ``Reconnects``, ``DroppedFragments`` (Count or Bytes, sums over
the interval); ``AckLatency`` (Milliseconds, a statistic set of the interval's acks);
``BufferBytes``, ``BufferFragments``, ``SpoolBytes``, ``SpoolFragments`` (use at the end
of the interval).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import botocore.exceptions

from kvs_toolkit.producer.defaults import DEFAULT_INTERVAL_S

if TYPE_CHECKING:
    from botocore.credentials import Credentials

    from kvs_toolkit.producer.uploader import UploadStats

__all__ = ["CloudWatchMetrics", "MetricsPublisher"]

log = logging.getLogger(__name__)

# PutMetricData takes up to 1000 metric data per request (and 1 MB).
_MAX_DATA_PER_CALL: Final = 1000
_QUEUE_INTERVALS: Final = 60  # an hour of one-minute intervals waiting at most
_STOP: Final = object()


class MetricsPublisher(Protocol):
    """Receives an upload's stats every ``interval_s`` (on the event loop: must not block)."""

    interval_s: float

    def start(self) -> None: ...

    def record(self, stats: UploadStats) -> None: ...

    def close(self) -> None:
        """Send what is queued and stop (blocking; the uploader calls it in a thread)."""


@dataclass(frozen=True)
class _Totals:
    frames: int = 0
    fragments_sent: int = 0
    acked: int = 0
    bytes_sent: int = 0
    errors: int = 0
    reconnects: int = 0
    dropped: int = 0

    @classmethod
    def of(cls, stats: UploadStats) -> _Totals:
        return cls(
            frames=stats.frames,
            fragments_sent=stats.fragments_sent,
            acked=stats.acked,
            bytes_sent=stats.bytes_sent,
            errors=sum(stats.errors.values()) + stats.connection_failures,
            reconnects=stats.reconnects,
            dropped=stats.dropped_fragments,
        )


class CloudWatchMetrics:
    """Publishes upload metrics to CloudWatch every ``interval_s`` seconds.

    ``client`` is a boto3 CloudWatch client; without one it is made in the worker
    thread from ``region``, ``credentials`` and ``endpoint_url`` (botocore's usual
    chain when None). IAM: ``cloudwatch:PutMetricData``.
    """

    def __init__(
        self,
        namespace: str,
        stream_name: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        client: Any = None,
        region: str | None = None,
        credentials: Credentials | None = None,
        endpoint_url: str | None = None,
        dimensions: Mapping[str, str] | None = None,
        max_queued_intervals: int = _QUEUE_INTERVALS,
    ) -> None:
        if not namespace or namespace.startswith("AWS/"):
            # CloudWatch reserves AWS/ for AWS services' own metrics.
            raise ValueError(f"invalid CloudWatch namespace {namespace!r}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.namespace = namespace
        self.interval_s = interval_s
        self.dimensions = [{"Name": "StreamName", "Value": stream_name}] + [
            {"Name": k, "Value": v} for k, v in (dimensions or {}).items()
        ]
        self.client = client
        self._region = region
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        self._queue: queue.Queue[object] = queue.Queue(max_queued_intervals)
        self._last = _Totals()
        self._latencies_seen = 0
        self._thread: threading.Thread | None = None
        self.published_calls = 0
        self.failed_calls = 0
        self.dropped_intervals = 0

    # --- the event loop side -------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kvs-metrics", daemon=True)
            self._thread.start()

    def record(self, stats: UploadStats) -> None:
        """Queue this interval's metrics (no I/O)."""
        totals = _Totals.of(stats)
        last, self._last = self._last, totals
        new_acks = totals.acked - last.acked
        latencies = list(stats.ack_latency_ms)[-new_acks:] if new_acks > 0 else []
        now = dt.datetime.now(dt.timezone.utc)

        def datum(name: str, value: float, unit: str) -> dict[str, Any]:
            return {
                "MetricName": name,
                "Dimensions": self.dimensions,
                "Timestamp": now,
                "Value": float(value),
                "Unit": unit,
            }

        data = [
            datum("Frames", totals.frames - last.frames, "Count"),
            datum("FragmentsSent", totals.fragments_sent - last.fragments_sent, "Count"),
            datum("FragmentsAcked", new_acks, "Count"),
            datum("BytesSent", totals.bytes_sent - last.bytes_sent, "Bytes"),
            datum("Errors", totals.errors - last.errors, "Count"),
            datum("Reconnects", totals.reconnects - last.reconnects, "Count"),
            datum("DroppedFragments", totals.dropped - last.dropped, "Count"),
            datum("BufferBytes", stats.buffer_bytes, "Bytes"),
            datum("BufferFragments", stats.buffer_fragments, "Count"),
            datum("SpoolBytes", stats.spool_bytes, "Bytes"),
            datum("SpoolFragments", stats.spool_fragments, "Count"),
        ]
        if latencies:
            data.append(
                {
                    "MetricName": "AckLatency",
                    "Dimensions": self.dimensions,
                    "Timestamp": now,
                    "StatisticValues": {
                        "SampleCount": float(len(latencies)),
                        "Sum": sum(latencies),
                        "Minimum": min(latencies),
                        "Maximum": max(latencies),
                    },
                    "Unit": "Milliseconds",
                }
            )
        self._put(data)

    def _put(self, item: object) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:  # pragma: no cover - the worker just took it
                    continue
                self.dropped_intervals += 1
                log.warning(
                    "CloudWatch metrics queue full (%d intervals): dropped the oldest "
                    "(%d dropped so far)",
                    self._queue.maxsize,
                    self.dropped_intervals,
                )

    def close(self) -> None:
        """Send what is queued, then stop the worker (blocking)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout=30)
        self._thread = None

    # --- the worker thread ---------------------------------------------------------------
    def _make_client(self) -> Any:
        from botocore.config import Config

        from kvs_toolkit.aws import AwsAccess

        # AwsAccess signs with the credentials object as it is (a session made from
        # frozen keys would fail once temporary credentials expire); botocore's own
        # retries, as before, for a call that is repeated next period anyway
        aws = AwsAccess(region_name=self._region, credentials_override=self._credentials)
        client: Any = aws.client("cloudwatch", endpoint_url=self._endpoint_url, config=Config())
        return client

    def _work(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[dict[str, Any]] = []
            while True:
                if item is _STOP:
                    stopping = True
                else:
                    assert isinstance(item, list)
                    batch.extend(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for start in range(0, len(batch), _MAX_DATA_PER_CALL):
                self._send(batch[start : start + _MAX_DATA_PER_CALL])

    def _send(self, data: list[dict[str, Any]]) -> None:
        try:
            if self.client is None:
                self.client = self._make_client()
            self.client.put_metric_data(Namespace=self.namespace, MetricData=data)
            self.published_calls += 1
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            # never fatal for the upload: log, count, move on
            self.failed_calls += 1
            log.warning("CloudWatch PutMetricData failed (%d metrics lost): %s", len(data), exc)
