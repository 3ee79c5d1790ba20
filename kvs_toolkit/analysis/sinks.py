"""Where analysis results go: one :class:`AnalysisRecord` per analysed frame, written to
one or more :class:`ResultSink` objects.

A record as JSON (the shape every sink writes)::

    {"stream_name": "cam-1", "fragment_number": "9134...", "producer_timestamp": 1700000000.0,
     "server_timestamp": 1700000000.52, "timestamp": 1700000000.04,
     "model": "motion-average", "latency_ms": 3.1,
     "detections": [{"label": "motion", "confidence": 0.98,
                     "box": {"x": 26.0, "y": 68.0, "width": 80.0, "height": 80.0},
                     "box_relative": {"x": 0.040625, ...}, "track_id": 1}]}

Timestamps are epoch seconds (``null`` when unknown), as KVS itself gives them.

Sinks (a registry: :func:`create_sink` takes ``"name"`` or ``"name:target"``):

* ``jsonl`` - JSON lines to a file or stdout (``jsonl:-``);
* ``kinesis`` - a Kinesis data stream, ``PutRecords`` in batches of at most 500 records
  and 5 MiB, failed records re-sent with back-off;
* ``s3`` - per frame a JPEG with the boxes drawn and the record as JSON beside it;
* ``webhook`` - HTTP POST of ``{"records": [...]}`` (stdlib ``urllib``, no extra
  dependency), retried on 429/5xx and connection errors;
* ``memory`` - a list, for tests and notebooks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeAlias, runtime_checkable

import cv2

from kvs_toolkit.analysis.base import AnalysisError, Detection
from kvs_toolkit.analysis.draw import draw_detections, to_bgr
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.timestamps import epoch_seconds

__all__ = [
    "AnalysisRecord",
    "JsonLinesSink",
    "KinesisSink",
    "MemorySink",
    "ResultSink",
    "S3Sink",
    "SinkError",
    "SinkFactory",
    "WebhookSink",
    "create_sink",
    "draw_detections",
    "register_sink",
    "registered_sinks",
]

log = logging.getLogger(__name__)

# Kinesis Data Streams PutRecords limits (API reference): 500 records, 5 MiB per request,
# 1 MiB per record (data plus partition key), partition keys of 1-256 characters.
KINESIS_MAX_RECORDS: Final = 500
KINESIS_MAX_REQUEST_BYTES: Final = 5 * 1024 * 1024
KINESIS_MAX_RECORD_BYTES: Final = 1024 * 1024
KINESIS_MAX_KEY_LENGTH: Final = 256


class SinkError(AnalysisError):
    """A result could not be delivered (after retries where they make sense)."""


@dataclass(frozen=True, slots=True)
class AnalysisRecord:
    """The result of analysing one frame. ``frame`` (not serialised) is the frame
    itself, for sinks that store pictures; it is None when not kept."""

    stream_name: str | None
    fragment_number: str | None
    producer_timestamp: dt.datetime | None
    server_timestamp: dt.datetime | None
    frame_timestamp: float
    detections: tuple[Detection, ...]
    model: str
    latency_ms: float
    frame: DecodedFrame | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_frame(
        cls,
        frame: DecodedFrame,
        detections: Sequence[Detection],
        *,
        model: str,
        latency_ms: float,
        stream_name: str | None = None,
        keep_frame: bool = True,
    ) -> AnalysisRecord:
        return cls(
            stream_name,
            frame.fragment_number,
            frame.producer_timestamp,
            frame.server_timestamp,
            frame.timestamp,
            tuple(detections),
            model,
            float(latency_ms),
            frame if keep_frame else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_name": self.stream_name,
            "fragment_number": self.fragment_number,
            "producer_timestamp": epoch_seconds(self.producer_timestamp),
            "server_timestamp": epoch_seconds(self.server_timestamp),
            "timestamp": round(self.frame_timestamp, 6),
            "model": self.model,
            "latency_ms": round(self.latency_ms, 3),
            "detections": [d.to_json() for d in self.detections],
        }

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON, no newline."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


@runtime_checkable
class ResultSink(Protocol):
    """Receives records in frame order. ``flush`` delivers anything buffered; ``close``
    flushes and releases resources (a closed sink is not written to again)."""

    def write(self, record: AnalysisRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


SinkFactory: TypeAlias = Callable[..., ResultSink]
_SINKS: dict[str, SinkFactory] = {}


def register_sink(name: str, factory: SinkFactory, *, replace: bool = False) -> None:
    """Make ``create_sink("name:target", **options)`` call ``factory(target, **options)``
    (``target`` is None when the spec has no ``:``)."""
    if ":" in name:
        raise ValueError(f"sink names cannot contain ':': {name!r}")
    if name in _SINKS and not replace:
        raise ValueError(f"a sink named {name!r} is already registered")
    _SINKS[name] = factory


def registered_sinks() -> list[str]:
    return sorted(_SINKS)


def create_sink(spec: str, **options: Any) -> ResultSink:
    """A sink from ``"name"`` or ``"name:target"``: ``jsonl:out.jsonl``, ``jsonl:-``,
    ``kinesis:my-stream``, ``s3:bucket/prefix``, ``webhook:https://host/path``."""
    name, colon, target = spec.partition(":")
    try:
        factory = _SINKS[name]
    except KeyError:
        known = ", ".join(registered_sinks())
        raise AnalysisError(f"unknown result sink {name!r} (registered: {known})") from None
    return factory(target if colon else None, **options)


# --- memory --------------------------------------------------------------------------------
class MemorySink:
    """Keeps every record in :attr:`records`."""

    def __init__(self) -> None:
        self.records: list[AnalysisRecord] = []
        self.closed = False

    def write(self, record: AnalysisRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


# --- JSON lines ------------------------------------------------------------------------------
class JsonLinesSink:
    """One JSON object per line, to a path (``-`` or None: stdout) or an open text stream.

    ``line_buffered``: flush after every line (default: for stdout and streams, so a
    ``tail -f`` or a pipe sees results at once; files are flushed on :meth:`flush`).
    """

    def __init__(
        self,
        target: str | Path | IO[str] | None = None,
        *,
        append: bool = False,
        line_buffered: bool | None = None,
    ) -> None:
        self._owned = False
        if target is None or target == "-":
            self._stream: IO[str] = sys.stdout
        elif isinstance(target, (str, Path)):
            # Open for the sink's lifetime; close() closes it.
            self._stream = Path(target).open("a" if append else "w", encoding="utf-8")  # noqa: SIM115
            self._owned = True
        else:
            self._stream = target
        self._line_buffered = not self._owned if line_buffered is None else line_buffered
        self.lines = 0

    def write(self, record: AnalysisRecord) -> None:
        self._stream.write(record.to_bytes().decode() + "\n")
        self.lines += 1
        if self._line_buffered:
            self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._owned:
            if not self._stream.closed:
                self._stream.close()
        else:
            self._stream.flush()


# --- Kinesis Data Streams -----------------------------------------------------------------
def _default_partition_key(record: AnalysisRecord) -> str:
    # One key per video stream keeps a stream's results in order on one shard.
    return record.stream_name or record.model


class KinesisSink:
    """Records as JSON into a Kinesis data stream with ``PutRecords``.

    Buffers up to ``batch_size`` records (at most 500) or 5 MiB and sends them in one
    request; records the service rejects (``FailedRecordCount``, e.g. throttled
    shards) are sent again, with back-off, up to ``max_attempts`` times. Re-sent
    records may arrive after later ones. ``partition_key``: a function of the record
    (default: the stream name, else the model name).
    """

    def __init__(
        self,
        stream_name: str,
        *,
        client: Any | None = None,
        region_name: str | None = None,
        partition_key: Callable[[AnalysisRecord], str] = _default_partition_key,
        batch_size: int = KINESIS_MAX_RECORDS,
        max_attempts: int = 5,
        backoff_base: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= batch_size <= KINESIS_MAX_RECORDS:
            raise ValueError(f"batch_size must be 1-{KINESIS_MAX_RECORDS}, not {batch_size}")
        self.stream_name = stream_name
        if client is None:
            from kvs_toolkit.aws import AwsAccess

            client = AwsAccess(region_name=region_name).client("kinesis")
        self._client = client
        self._partition_key = partition_key
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self._sleep = sleep
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self.records_sent = 0
        self.requests = 0
        self.resent = 0

    def write(self, record: AnalysisRecord) -> None:
        data = record.to_bytes()
        key = self._partition_key(record)[:KINESIS_MAX_KEY_LENGTH] or "-"
        size = len(data) + len(key.encode())
        if size > KINESIS_MAX_RECORD_BYTES:
            raise SinkError(
                f"record of frame {record.frame_timestamp} is {size} bytes; Kinesis takes "
                f"at most {KINESIS_MAX_RECORD_BYTES}"
            )
        if self._pending_bytes + size > KINESIS_MAX_REQUEST_BYTES:
            self.flush()
        self._pending.append({"Data": data, "PartitionKey": key})
        self._pending_bytes += size
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        from botocore.exceptions import ClientError

        entries, self._pending, self._pending_bytes = self._pending, [], 0
        attempt = 0
        while entries:
            attempt += 1
            try:
                response = self._client.put_records(StreamName=self.stream_name, Records=entries)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code != "ProvisionedThroughputExceededException" or attempt >= self.max_attempts:
                    raise SinkError(f"PutRecords to {self.stream_name} failed: {exc}") from exc
                failed = entries
            else:
                self.requests += 1
                results = response.get("Records", [])
                failed = [e for e, r in zip(entries, results, strict=True) if "ErrorCode" in r]
                self.records_sent += len(entries) - len(failed)
                if failed and attempt >= self.max_attempts:
                    codes = sorted({r["ErrorCode"] for r in results if "ErrorCode" in r})
                    raise SinkError(
                        f"{len(failed)} records not accepted by {self.stream_name} after "
                        f"{attempt} attempts ({', '.join(codes)})"
                    )
            if failed:
                self.resent += len(failed)
                delay = self.backoff_base * 2 ** (attempt - 1)
                log.warning(
                    "Kinesis %s: re-sending %d records in %.2f s",
                    self.stream_name,
                    len(failed),
                    delay,
                )
                self._sleep(delay)
            entries = failed

    def close(self) -> None:
        self.flush()


# --- S3 --------------------------------------------------------------------------------------
class S3Sink:
    """Per record, ``<prefix><stream>/<fragment>/<frame ms>.json`` and, when the record
    carries its frame, ``.jpg`` beside it with the boxes drawn (``draw=False``: the bare
    frame). ``only_with_detections``: skip frames where nothing was found."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any | None = None,
        region_name: str | None = None,
        jpeg_quality: int = 85,
        draw: bool = True,
        only_with_detections: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            from kvs_toolkit.aws import AwsAccess

            client = AwsAccess(region_name=region_name).client("s3")
        self._client = client
        self.jpeg_quality = jpeg_quality
        self.draw = draw
        self.only_with_detections = only_with_detections
        self.objects_written = 0

    def key(self, record: AnalysisRecord) -> str:
        """The object key without its suffix."""
        millis = round(record.frame_timestamp * 1000)
        return (
            f"{self.prefix}{record.stream_name or 'stream'}/"
            f"{record.fragment_number or 'no-fragment'}/{millis}"
        )

    def write(self, record: AnalysisRecord) -> None:
        if self.only_with_detections and not record.detections:
            return
        key = self.key(record)
        if record.frame is not None:
            frame = record.frame
            image = (
                draw_detections(frame.image, record.detections, format=frame.format)
                if self.draw
                else to_bgr(frame.image, frame.format)
            )
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise SinkError(f"could not encode the frame of {key} as JPEG")
            self._put(f"{key}.jpg", jpeg.tobytes(), "image/jpeg")
        self._put(f"{key}.json", record.to_bytes(), "application/json")

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise SinkError(f"S3 PutObject s3://{self.bucket}/{key} failed: {exc}") from exc
        self.objects_written += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# --- webhook ---------------------------------------------------------------------------------
class WebhookSink:
    """``POST`` ``{"records": [...]}`` as JSON to an http(s) URL, ``batch_size`` records at
    a time. 429 and 5xx answers and connection errors are retried with exponential
    back-off (``max_attempts`` in all); other statuses fail at once."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 1,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise AnalysisError(f"a webhook URL must be http or https, not {url!r}")
        if batch_size < 1 or max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")
        self.url = url
        self.batch_size = batch_size
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self._sleep = sleep
        self._pending: list[dict[str, Any]] = []
        self.requests = 0

    def write(self, record: AnalysisRecord) -> None:
        self._pending.append(record.to_json())
        if len(self._pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        body = json.dumps({"records": self._pending}, separators=(",", ":")).encode()
        count, self._pending = len(self._pending), []
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(
                self.url, data=body, headers=self.headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.requests += 1
                return
            except urllib.error.HTTPError as exc:
                exc.close()
                retryable = exc.code == 429 or exc.code >= 500
                problem = f"HTTP {exc.code}"
                if not retryable:
                    raise SinkError(
                        f"webhook {self.url} refused {count} records: {problem}"
                    ) from exc
                error: Exception = exc
            except (urllib.error.URLError, OSError) as exc:
                problem, error = str(exc), exc
            if attempt == self.max_attempts:
                raise SinkError(
                    f"webhook {self.url} failed {attempt} times ({problem}); {count} records lost"
                ) from error
            delay = self.backoff_base * 2 ** (attempt - 1)
            log.warning("webhook %s: %s, retry in %.2f s", self.url, problem, delay)
            self._sleep(delay)

    def close(self) -> None:
        self.flush()


# --- registry ------------------------------------------------------------------------------
def _jsonl(target: str | None, **options: Any) -> ResultSink:
    return JsonLinesSink(target, **options)


def _kinesis(target: str | None, **options: Any) -> ResultSink:
    name = target or options.pop("stream_name", None)
    if not name:
        raise AnalysisError("the kinesis sink needs a stream name: kinesis:<stream>")
    return KinesisSink(name, **options)


def _s3(target: str | None, **options: Any) -> ResultSink:
    location = (target or options.pop("bucket", "")).removeprefix("s3://")
    bucket, _, prefix = location.partition("/")
    if not bucket:
        raise AnalysisError("the s3 sink needs a bucket: s3:<bucket>[/<prefix>]")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Sink(bucket, options.pop("prefix", prefix), **options)


def _webhook(target: str | None, **options: Any) -> ResultSink:
    url = target or options.pop("url", None)
    if not url:
        raise AnalysisError("the webhook sink needs a URL: webhook:https://host/path")
    return WebhookSink(url, **options)


def _memory(target: str | None, **options: Any) -> ResultSink:
    return MemorySink()


register_sink("jsonl", _jsonl)
register_sink("kinesis", _kinesis)
register_sink("s3", _s3)
register_sink("webhook", _webhook)
register_sink("memory", _memory)
