"""Amazon Rekognition Video stream processors on a KVS stream, and their results.

Two kinds of processor (Rekognition API reference, CreateStreamProcessor):

* **face search** - faces in the stream are searched in a face collection; one JSON
  frame record per analysed frame goes to a Kinesis data stream;
* **connected home** - PERSON, PET, PACKAGE (or ALL) labels; results go to S3 and
  notifications to an SNS topic. StartStreamProcessor needs a start selector (producer
  timestamp in milliseconds or a fragment number) and a stop selector (at most 120 s)
  for these, and must not get them for face search.

::

    processors = StreamProcessors(region_name="us-east-1")
    processors.create_face_search("door", video_stream_arn=..., data_stream_arn=...,
                                  role_arn=..., collection_id="staff")
    processors.start("door")
    for record in FaceSearchResults("door-results", fragments=FragmentIndex()).read():
        print(record.to_json())

:class:`FaceSearchResults` reads the Kinesis data stream (every shard, bounded per pass,
with a resumable :class:`ResultsPosition`) and turns each frame record into the
project's :class:`~kvs_toolkit.analysis.sinks.AnalysisRecord`: the frame's timestamp is
the fragment's producer timestamp plus ``FrameOffsetInSeconds``. When the KVS stream is
reachable, :class:`FragmentIndex` takes the fragment's timestamps from ListFragments
(the archive is the authority); otherwise the record's own timestamps are used.
Malformed records are skipped, logged and counted, never fatal.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from kvs_toolkit.analysis.base import Detection
from kvs_toolkit.analysis.rekognition import RekognitionError
from kvs_toolkit.analysis.sinks import AnalysisRecord
from kvs_toolkit.aws import AwsAccess, call_with_retry
from kvs_toolkit.errors import AnalysisError, KvsError
from kvs_toolkit.timestamps import epoch_seconds

__all__ = [
    "CONNECTED_HOME_LABELS",
    "FaceSearchResults",
    "FragmentIndex",
    "ProcessorKind",
    "ResultsPosition",
    "ResultsStats",
    "StreamProcessorInfo",
    "StreamProcessorNotFoundError",
    "StreamProcessors",
    "parse_frame_record",
]

log = logging.getLogger(__name__)

ProcessorKind = Literal["face-search", "connected-home"]

# Rekognition API reference (CreateStreamProcessor, StartStreamProcessor): name pattern
# and length, ARN patterns, the connected-home labels, percent ranges, and the stop
# selector's 1-120 s range.
NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9_.\-]{1,128}")
COLLECTION_PATTERN: Final = re.compile(r"[a-zA-Z0-9_.\-]{1,255}")
VIDEO_ARN_PATTERN: Final = re.compile(r"arn:[a-z\d-]+:kinesisvideo:[a-z\d-]+:\d{12}:.+")
DATA_ARN_PATTERN: Final = re.compile(r"arn:[a-z\d-]+:kinesis:[a-z\d-]+:\d{12}:.+")
ROLE_ARN_PATTERN: Final = re.compile(r"arn:aws:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
SNS_ARN_PATTERN: Final = re.compile(r"arn:aws:sns:.*:\w{12}:.+")
BUCKET_PATTERN: Final = re.compile(r"[0-9A-Za-z.\-_]{3,255}")
FRAGMENT_NUMBER_PATTERN: Final = re.compile(r"[0-9]{1,128}")
CONNECTED_HOME_LABELS: Final = ("PERSON", "PET", "PACKAGE", "ALL")
MAX_DURATION_SECONDS: Final = 120
MAX_KEY_PREFIX: Final = 1024
# Kinesis Data Streams GetRecords: at most 10,000 records per call.
KINESIS_MAX_GET_RECORDS: Final = 10_000
DEFAULT_MODEL: Final = "rekognition-face-search"


class StreamProcessorNotFoundError(RekognitionError):
    """The named stream processor does not exist (ResourceNotFoundException)."""


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise AnalysisError(f"invalid {what} {value!r}: must match {pattern.pattern}")
    return value


def _check_percent(value: float, what: str) -> float:
    if not 0.0 <= value <= 100.0:
        raise AnalysisError(f"{what} must be 0-100 (percent), not {value}")
    return float(value)


def _epoch(value: Any) -> float | None:
    # the service's answer may lack the field or carry something else
    return epoch_seconds(value) if isinstance(value, dt.datetime) else None


# --- describing a processor ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamProcessorInfo:
    """DescribeStreamProcessor's answer, flattened."""

    name: str
    arn: str | None
    status: str
    status_message: str | None
    kind: ProcessorKind | None
    video_stream_arn: str | None
    data_stream_arn: str | None
    s3_bucket: str | None
    s3_key_prefix: str | None
    sns_topic_arn: str | None
    settings: Mapping[str, Any]
    created: dt.datetime | None = None
    updated: dt.datetime | None = None

    @classmethod
    def from_api(cls, answer: Mapping[str, Any]) -> StreamProcessorInfo:
        settings = dict(answer.get("Settings") or {})
        kind: ProcessorKind | None = None
        if "FaceSearch" in settings:
            kind = "face-search"
        elif "ConnectedHome" in settings:
            kind = "connected-home"
        output = answer.get("Output") or {}
        s3 = output.get("S3Destination") or {}
        return cls(
            name=str(answer.get("Name", "")),
            arn=answer.get("StreamProcessorArn"),
            status=str(answer.get("Status", "UNKNOWN")),
            status_message=answer.get("StatusMessage"),
            kind=kind,
            video_stream_arn=(answer.get("Input") or {}).get("KinesisVideoStream", {}).get("Arn"),
            data_stream_arn=(output.get("KinesisDataStream") or {}).get("Arn"),
            s3_bucket=s3.get("Bucket"),
            s3_key_prefix=s3.get("KeyPrefix"),
            sns_topic_arn=(answer.get("NotificationChannel") or {}).get("SNSTopicArn"),
            settings=settings,
            created=answer.get("CreationTimestamp"),
            updated=answer.get("LastUpdateTimestamp"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arn": self.arn,
            "status": self.status,
            "status_message": self.status_message,
            "kind": self.kind,
            "video_stream_arn": self.video_stream_arn,
            "data_stream_arn": self.data_stream_arn,
            "s3_bucket": self.s3_bucket,
            "s3_key_prefix": self.s3_key_prefix,
            "sns_topic_arn": self.sns_topic_arn,
            "settings": self.settings,
            "created": _epoch(self.created),
            "updated": _epoch(self.updated),
        }


# --- the control plane ---------------------------------------------------------------------
def _default_rekognition(region_name: str | None, endpoint_url: str | None) -> Any:
    from botocore.config import Config

    from kvs_toolkit.aws import AwsAccess

    config = Config(retries={"mode": "standard", "max_attempts": 5})
    return AwsAccess(region_name=region_name).client(
        "rekognition", endpoint_url=endpoint_url, config=config
    )


class StreamProcessors:
    """Create, start, stop, describe, list and delete Rekognition Video stream
    processors. Arguments are checked against the API's limits before any request, so a
    mistake is reported by name; service errors become :class:`RekognitionError`
    (:class:`StreamProcessorNotFoundError` for an unknown name)."""

    def __init__(
        self,
        *,
        client: Any | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        clock: Callable[[], float] = time.time,
        aws: AwsAccess | None = None,
    ) -> None:
        # with ``aws``: its credentials, and an unreachable endpoint retried with its
        # policy and reported in the shared one line
        self._aws = aws
        if client is None and aws is not None:
            from botocore.config import Config

            client = aws.client(
                "rekognition",
                endpoint_url=endpoint_url,
                config=Config(connect_timeout=5, retries={"total_max_attempts": 1}),
            )
        self._client = (
            client if client is not None else _default_rekognition(region_name, endpoint_url)
        )
        self._clock = clock

    def _call(self, operation: str, name: str | None, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        method = getattr(self._client, operation)
        try:
            if self._aws is not None:
                api = "".join(part.title() for part in operation.split("_"))
                return call_with_retry(self._aws, api, lambda: method(**params))
            return method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(exc)
            api = exc.operation_name
            if code == "ResourceNotFoundException":
                raise StreamProcessorNotFoundError(
                    f"{api}: stream processor {name!r} not found ({message})", code=code
                ) from exc
            if code == "InvalidParameterException":
                raise RekognitionError(
                    f"{api}: invalid parameters for stream processor {name!r}: {message}",
                    code=code,
                ) from exc
            if code == "ResourceInUseException":
                raise RekognitionError(
                    f"{api}: stream processor {name!r} is in use: {message}", code=code
                ) from exc
            raise RekognitionError(
                f"{api} failed ({code or 'error'}): {message}", code=code or None
            ) from exc
        except ParamValidationError as exc:
            raise RekognitionError(f"{operation}: request refused by botocore: {exc}") from exc
        except BotoCoreError as exc:
            raise RekognitionError(f"{operation} failed: {exc}") from exc

    def create_face_search(
        self,
        name: str,
        *,
        video_stream_arn: str,
        data_stream_arn: str,
        role_arn: str,
        collection_id: str,
        face_match_threshold: float = 80.0,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """A face-search processor: faces of ``video_stream_arn`` searched in
        ``collection_id``, frame records to the Kinesis data stream. Returns its ARN."""
        settings = {
            "FaceSearch": {
                "CollectionId": _check(COLLECTION_PATTERN, collection_id, "collection id"),
                "FaceMatchThreshold": _check_percent(face_match_threshold, "face match threshold"),
            }
        }
        output = {
            "KinesisDataStream": {
                "Arn": _check(DATA_ARN_PATTERN, data_stream_arn, "Kinesis data stream ARN")
            }
        }
        return self._create(name, video_stream_arn, role_arn, output, settings, tags=tags)

    def create_connected_home(
        self,
        name: str,
        *,
        video_stream_arn: str,
        role_arn: str,
        bucket: str,
        sns_topic_arn: str,
        labels: Sequence[str] = ("PERSON", "PET", "PACKAGE"),
        min_confidence: float = 50.0,
        key_prefix: str = "",
        kms_key_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """A connected-home label processor: ``labels`` (PERSON, PET, PACKAGE, ALL) at
        ``min_confidence`` percent or more, results to ``s3://bucket/key_prefix`` and
        notifications to ``sns_topic_arn``. Returns its ARN."""
        wanted = [label.upper() for label in labels]
        if not wanted:
            raise AnalysisError("a connected-home processor needs at least one label")
        unknown = sorted(set(wanted) - set(CONNECTED_HOME_LABELS))
        if unknown:
            raise AnalysisError(
                f"unknown connected-home labels {unknown} "
                f"(known: {', '.join(CONNECTED_HOME_LABELS)})"
            )
        if len(key_prefix) > MAX_KEY_PREFIX:
            raise AnalysisError(f"S3 key prefix longer than {MAX_KEY_PREFIX} characters")
        s3: dict[str, str] = {"Bucket": _check(BUCKET_PATTERN, bucket, "S3 bucket name")}
        if key_prefix:
            s3["KeyPrefix"] = key_prefix
        settings = {
            "ConnectedHome": {
                "Labels": list(dict.fromkeys(wanted)),
                "MinConfidence": _check_percent(min_confidence, "minimum confidence"),
            }
        }
        extra: dict[str, Any] = {
            "NotificationChannel": {
                "SNSTopicArn": _check(SNS_ARN_PATTERN, sns_topic_arn, "SNS topic ARN")
            }
        }
        if kms_key_id:
            extra["KmsKeyId"] = kms_key_id
        return self._create(
            name, video_stream_arn, role_arn, {"S3Destination": s3}, settings, tags=tags, **extra
        )

    def _create(
        self,
        name: str,
        video_stream_arn: str,
        role_arn: str,
        output: Mapping[str, Any],
        settings: Mapping[str, Any],
        *,
        tags: Mapping[str, str] | None,
        **extra: Any,
    ) -> str:
        params: dict[str, Any] = {
            "Name": _check(NAME_PATTERN, name, "stream processor name"),
            "Input": {
                "KinesisVideoStream": {
                    "Arn": _check(VIDEO_ARN_PATTERN, video_stream_arn, "Kinesis video stream ARN")
                }
            },
            "Output": dict(output),
            "Settings": dict(settings),
            "RoleArn": _check(ROLE_ARN_PATTERN, role_arn, "IAM role ARN"),
            **extra,
        }
        if tags:
            params["Tags"] = dict(tags)
        answer = self._call("create_stream_processor", name, **params)
        arn = str(answer.get("StreamProcessorArn", ""))
        log.info("created stream processor %s (%s)", name, arn)
        return arn

    def start(
        self,
        name: str,
        *,
        fragment_number: str | None = None,
        producer_timestamp: dt.datetime | float | None = None,
        max_duration_seconds: int | None = None,
        kind: ProcessorKind | None = None,
    ) -> str | None:
        """Start processing; returns the session id (connected home) or None.

        Connected home needs a stop selector (``max_duration_seconds``, 1-120) and a start
        point: ``fragment_number`` or ``producer_timestamp`` (a datetime or epoch
        seconds; sent in milliseconds as the API wants), default now. Face search takes
        neither. ``kind`` saves a DescribeStreamProcessor call when known.
        """
        _check(NAME_PATTERN, name, "stream processor name")
        if kind is None:
            kind = self.describe(name).kind
        params: dict[str, Any] = {"Name": name}
        selecting = (
            fragment_number is not None
            or producer_timestamp is not None
            or max_duration_seconds is not None
        )
        if kind == "face-search":
            if selecting:
                raise AnalysisError(
                    f"stream processor {name!r} is a face-search processor: it takes no start "
                    "or stop selector (the API allows them only for connected home)"
                )
        else:
            if fragment_number is not None and producer_timestamp is not None:
                raise AnalysisError(
                    "give a start fragment number or a producer timestamp, not both"
                )
            if max_duration_seconds is None:
                raise AnalysisError(
                    f"stream processor {name!r} is a connected-home processor: starting it needs "
                    f"a maximum duration (1-{MAX_DURATION_SECONDS} s)"
                )
            if not 1 <= max_duration_seconds <= MAX_DURATION_SECONDS:
                raise AnalysisError(
                    f"maximum duration must be 1-{MAX_DURATION_SECONDS} s, "
                    f"not {max_duration_seconds}"
                )
            selector: dict[str, Any]
            if fragment_number is not None:
                selector = {
                    "FragmentNumber": _check(
                        FRAGMENT_NUMBER_PATTERN, fragment_number, "fragment number"
                    )
                }
            else:
                seconds = (
                    self._clock()
                    if producer_timestamp is None
                    else producer_timestamp.timestamp()
                    if isinstance(producer_timestamp, dt.datetime)
                    else float(producer_timestamp)
                )
                if seconds < 0:
                    raise AnalysisError(f"producer timestamp {seconds} is before 1970")
                selector = {"ProducerTimestamp": round(seconds * 1000)}
            params["StartSelector"] = {"KVSStreamStartSelector": selector}
            params["StopSelector"] = {"MaxDurationInSeconds": int(max_duration_seconds)}
        answer = self._call("start_stream_processor", name, **params)
        session = answer.get("SessionId")
        log.info("started stream processor %s (session %s)", name, session)
        return None if session is None else str(session)

    def stop(self, name: str) -> None:
        self._call(
            "stop_stream_processor", name, Name=_check(NAME_PATTERN, name, "stream processor name")
        )

    def delete(self, name: str) -> None:
        self._call(
            "delete_stream_processor",
            name,
            Name=_check(NAME_PATTERN, name, "stream processor name"),
        )

    def describe(self, name: str) -> StreamProcessorInfo:
        answer = self._call(
            "describe_stream_processor",
            name,
            Name=_check(NAME_PATTERN, name, "stream processor name"),
        )
        return StreamProcessorInfo.from_api(answer)

    def list(self, *, page_size: int = 100) -> list[tuple[str, str]]:
        """Every processor as ``(name, status)``, following NextToken."""
        found: list[tuple[str, str]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"MaxResults": page_size}
            if token:
                params["NextToken"] = token
            answer = self._call("list_stream_processors", None, **params)
            found.extend(
                (str(p.get("Name", "")), str(p.get("Status", "UNKNOWN")))
                for p in answer.get("StreamProcessors", [])
            )
            token = answer.get("NextToken")
            if not token:
                return found


# --- fragments of the KVS stream -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FragmentTimes:
    producer_timestamp: dt.datetime
    server_timestamp: dt.datetime


class FragmentIndex:
    """Fragment number -> the fragment's producer and server timestamps, from
    ListFragments on the KVS stream (through the consumer's archive reader).

    Time is cut into windows of ``window_seconds`` of server time. A miss lists the
    window holding the record's server timestamp (one ListFragments listing, paged) and
    caches every fragment in it: at most ``max_entries``, least recently used dropped
    first. A window is listed again on a later miss only after ``relist_after_seconds``
    (live streams: the fragment may have been committed since). A stream that cannot be
    listed is remembered as unreachable and not asked again: its records keep their own
    timestamps.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        session: Any | None = None,
        window_seconds: float = 60.0,
        relist_after_seconds: float = 5.0,
        max_entries: int = 10_000,
        max_retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be positive, not {window_seconds}")
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.session = session
        self.window_seconds = window_seconds
        self.relist_after_seconds = relist_after_seconds
        self.max_entries = max_entries
        self.max_retries = max_retries
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], FragmentTimes] = OrderedDict()
        # (stream ARN, window) -> when it was listed; bounded like the cache.
        self._listed: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._unreachable: set[str] = set()
        self.listings = 0

    def lookup(
        self, stream_arn: str, fragment_number: str, near: dt.datetime | None
    ) -> FragmentTimes | None:
        """The fragment's timestamps, or None when it cannot be found. ``near``: the
        record's server (else producer) timestamp, which picks the window to list."""
        key = (stream_arn, fragment_number)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        if near is None or stream_arn in self._unreachable:
            return None
        window = int(near.timestamp() // self.window_seconds)
        listed_at = self._listed.get((stream_arn, window))
        if listed_at is not None and self._clock() - listed_at < self.relist_after_seconds:
            return None
        self._list(stream_arn, window)
        return self._cache.get(key)

    def _list(self, stream_arn: str, window: int) -> None:
        from kvs_toolkit.consumer.readers import ArchiveReader

        # One second of margin either side: the record's timestamps are rounded to ms.
        start = _when(window * self.window_seconds - 1.0)
        end = _when((window + 1) * self.window_seconds + 1.0)
        assert start is not None and end is not None
        reader = ArchiveReader(
            stream_arn=stream_arn,
            start=start,
            end=end,
            timestamp_type="SERVER_TIMESTAMP",
            endpoint_url=self.endpoint_url,
            region=self.region_name,
            session=self.session,
            max_retries=self.max_retries,
        )
        try:
            fragments = reader.list_fragments()
        except KvsError as exc:
            log.warning(
                "cannot list the fragments of %s (%s): using the records' timestamps",
                stream_arn,
                exc,
            )
            self._unreachable.add(stream_arn)
            return
        finally:
            reader.close()
        self.listings += 1
        self._listed[(stream_arn, window)] = self._clock()
        self._listed.move_to_end((stream_arn, window))
        while len(self._listed) > self.max_entries:
            self._listed.popitem(last=False)
        for info in fragments:
            key = (stream_arn, info.fragment_number)
            self._cache[key] = FragmentTimes(info.producer_timestamp, info.server_timestamp)
            self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


# --- frame records -----------------------------------------------------------------------------
def stream_name_from_arn(arn: str) -> str | None:
    """``arn:aws:kinesisvideo:<region>:<account>:stream/<name>/<created>`` -> name."""
    _, _, resource = arn.partition(":stream/")
    name = resource.partition("/")[0]
    return name or None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number: {value!r}")
    return float(value)


def _when(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


def _face_detections(entries: Any, frame_size: tuple[int, int]) -> list[Detection]:
    if not isinstance(entries, list):
        raise ValueError(f"FaceSearchResponse is not a list: {type(entries).__name__}")
    found = []
    for entry in entries:
        face = entry["DetectedFace"]
        box = face["BoundingBox"]
        edges = tuple(
            _number(box[k], f"BoundingBox.{k}") for k in ("Left", "Top", "Width", "Height")
        )
        matches = [m for m in entry.get("MatchedFaces") or [] if "Similarity" in m]
        if matches:
            best = max(matches, key=lambda m: _number(m["Similarity"], "Similarity"))
            matched = best.get("Face") or {}
            who = matched.get("ExternalImageId") or matched.get("FaceId") or "unknown"
            label, confidence = f"face:{who}", _number(best["Similarity"], "Similarity")
        else:
            label, confidence = "face", _number(face.get("Confidence", 0.0), "Confidence")
        found.append(
            Detection.from_relative(label, confidence / 100.0, edges, frame_size)  # type: ignore[arg-type]
        )
    return found


def parse_frame_record(
    data: bytes,
    *,
    fragments: FragmentIndex | None = None,
    frame_size: tuple[int, int] = (1, 1),
    model: str = DEFAULT_MODEL,
) -> AnalysisRecord:
    """One Rekognition Video face-search frame record (the Kinesis record's data) as an
    :class:`AnalysisRecord`. ``frame_size`` (width, height) turns the relative boxes into
    pixels (Rekognition does not say the frame's size; (1, 1) leaves pixels equal to
    fractions). Raises :class:`ValueError` naming what is wrong with a malformed record.
    """
    return _parse_frame_record(data, fragments, frame_size, model)[0]


def _parse_frame_record(
    data: bytes,
    fragments: FragmentIndex | None,
    frame_size: tuple[int, int],
    model: str,
) -> tuple[AnalysisRecord, bool]:
    """The record, and whether its fragment's timestamps came from ListFragments."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    try:
        video = document["InputInformation"]["KinesisVideo"]
    except (KeyError, TypeError):
        raise ValueError("no InputInformation.KinesisVideo") from None
    if not isinstance(video, dict):
        raise ValueError("InputInformation.KinesisVideo is not an object")
    fragment_number = video.get("FragmentNumber")
    if not isinstance(fragment_number, str) or not FRAGMENT_NUMBER_PATTERN.fullmatch(
        fragment_number
    ):
        raise ValueError(f"bad FragmentNumber {fragment_number!r}")
    offset = _number(video.get("FrameOffsetInSeconds"), "FrameOffsetInSeconds")
    if offset < 0:
        raise ValueError(f"negative FrameOffsetInSeconds {offset}")
    producer = video.get("ProducerTimestamp")
    server = video.get("ServerTimestamp")
    producer_at = _when(None if producer is None else _number(producer, "ProducerTimestamp"))
    server_at = _when(None if server is None else _number(server, "ServerTimestamp"))
    stream_arn = video.get("StreamArn")
    stream_arn = stream_arn if isinstance(stream_arn, str) else None
    try:
        detections = _face_detections(document.get("FaceSearchResponse", []), frame_size)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed FaceSearchResponse ({type(exc).__name__}: {exc})") from exc
    joined = False
    if fragments is not None and stream_arn is not None:
        times = fragments.lookup(stream_arn, fragment_number, server_at or producer_at)
        if times is not None:
            producer_at, server_at = times.producer_timestamp, times.server_timestamp
            joined = True
    if producer_at is None:
        raise ValueError(f"no producer timestamp for fragment {fragment_number}")
    record = AnalysisRecord(
        stream_name=None if stream_arn is None else stream_name_from_arn(stream_arn),
        fragment_number=fragment_number,
        producer_timestamp=producer_at,
        server_timestamp=server_at,
        frame_timestamp=producer_at.timestamp() + offset,
        detections=tuple(detections),
        model=model,
        latency_ms=0.0,
    )
    return record, joined


# --- reading the Kinesis data stream -------------------------------------------------------------
@dataclass(slots=True)
class ResultsPosition:
    """The last sequence number read from each shard: where the next read resumes.
    Saved as JSON (``{"shards": {shard id: sequence number}}``)."""

    shards: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"shards": dict(sorted(self.shards.items()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultsPosition:
        shards = data.get("shards")
        if not isinstance(shards, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in shards.items()
        ):
            raise AnalysisError("a results position needs {'shards': {shard id: sequence number}}")
        return cls(dict(shards))

    @classmethod
    def load(cls, path: Path) -> ResultsPosition:
        """The position saved in ``path``; an empty one when the file does not exist."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise AnalysisError(f"cannot read results position {path}: {exc}") from exc
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise AnalysisError(f"results position {path} is not JSON: {exc}") from exc

    def save(self, path: Path) -> None:
        """Written to a temporary file and renamed, so a crash leaves the old position."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_json()), encoding="utf-8")
        temporary.replace(path)


@dataclass(slots=True)
class ResultsStats:
    records: int = 0  # Kinesis records read
    emitted: int = 0  # frame records turned into AnalysisRecords
    malformed: int = 0  # skipped with a warning
    joined: int = 0  # whose fragment timestamps came from ListFragments
    requests: int = 0  # GetRecords calls


class FaceSearchResults:
    """Frame records of a face-search processor's Kinesis data stream, as
    :class:`AnalysisRecord` objects in shard order.

    :meth:`read` makes one bounded pass: every shard (ListShards) from the saved
    :attr:`position` (else ``initial``: ``TRIM_HORIZON`` or ``LATEST``) until it is
    caught up (``MillisBehindLatest`` 0 or no more records) or ``max_records`` in all.
    :attr:`position` advances past a record once the caller asks for the next one (at
    least once delivery). Throttled reads (``ProvisionedThroughputExceededException``;
    5 GetRecords per second per shard) are retried with back-off. :meth:`follow` repeats passes
    until stopped.
    """

    def __init__(
        self,
        data_stream: str,
        *,
        client: Any | None = None,
        region_name: str | None = None,
        fragments: FragmentIndex | None = None,
        position: ResultsPosition | None = None,
        initial: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON",
        frame_size: tuple[int, int] = (1, 1),
        model: str = DEFAULT_MODEL,
        records_per_request: int = 1000,
        max_requests_per_shard: int = 100,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 1 <= records_per_request <= KINESIS_MAX_GET_RECORDS:
            raise ValueError(
                f"records_per_request must be 1-{KINESIS_MAX_GET_RECORDS}, "
                f"not {records_per_request}"
            )
        self._stream = (
            {"StreamARN": data_stream}
            if data_stream.startswith("arn:")
            else {"StreamName": data_stream}
        )
        self.data_stream = data_stream
        if client is None:
            from kvs_toolkit.aws import AwsAccess

            client = AwsAccess(region_name=region_name).client("kinesis")
        self._client = client
        self.fragments = fragments
        self.position = position or ResultsPosition()
        self.initial = initial
        self.frame_size = frame_size
        self.model = model
        self.records_per_request = records_per_request
        self.max_requests_per_shard = max_requests_per_shard
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self._sleep = sleep
        self.stats = ResultsStats()

    def _kinesis(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(**self._stream, **params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code == "ResourceNotFoundException":
                raise AnalysisError(
                    f"Kinesis data stream {self.data_stream!r} not found: "
                    f"{error.get('Message', '')}"
                ) from exc
            raise AnalysisError(
                f"Kinesis {exc.operation_name} on {self.data_stream} failed: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise AnalysisError(f"Kinesis {operation} on {self.data_stream} failed: {exc}") from exc

    def shards(self) -> list[str]:
        found: list[str] = []
        answer = self._kinesis("list_shards")
        while True:
            found.extend(s["ShardId"] for s in answer.get("Shards", []))
            token = answer.get("NextToken")
            if not token:
                return found
            # NextToken replaces the stream name in ListShards' follow-up requests.
            answer = self._paged_shards(token)

    def _paged_shards(self, token: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.list_shards(NextToken=token)
        except (ClientError, BotoCoreError) as exc:
            raise AnalysisError(f"Kinesis ListShards on {self.data_stream} failed: {exc}") from exc

    def _iterator(self, shard_id: str) -> str | None:
        last = self.position.shards.get(shard_id)
        params: dict[str, Any] = {"ShardId": shard_id}
        if last is None:
            params["ShardIteratorType"] = self.initial
        else:
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["StartingSequenceNumber"] = last
        iterator = self._kinesis("get_shard_iterator", **params).get("ShardIterator")
        return None if iterator is None else str(iterator)

    def read(self, *, max_records: int | None = None) -> Iterator[AnalysisRecord]:
        """One pass over every shard (see the class docs)."""
        emitted = 0
        for shard_id in self.shards():
            iterator = self._iterator(shard_id)
            for _ in range(self.max_requests_per_shard):
                if iterator is None:
                    break  # a closed shard, read to its end
                limit = self.records_per_request
                if max_records is not None:
                    limit = min(limit, max_records - emitted)
                    if limit <= 0:
                        return
                answer = self._get_records(iterator, limit)
                self.stats.requests += 1
                records = answer.get("Records", [])
                for record in records:
                    self.stats.records += 1
                    converted = self._convert(shard_id, record)
                    if converted is not None:
                        emitted += 1
                        self.stats.emitted += 1
                        yield converted
                    # Advanced once the caller has taken the record (at least once: a
                    # crash while handling it reads it again after a restart).
                    self.position.shards[shard_id] = str(record["SequenceNumber"])
                iterator = answer.get("NextShardIterator")
                if not records or answer.get("MillisBehindLatest", 0) == 0:
                    break

    def _get_records(self, iterator: str, limit: int) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(self.max_attempts):
            try:
                return self._client.get_records(ShardIterator=iterator, Limit=limit)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code != "ProvisionedThroughputExceededException" or (
                    attempt + 1 >= self.max_attempts
                ):
                    raise AnalysisError(
                        f"Kinesis GetRecords on {self.data_stream} failed: {exc}"
                    ) from exc
                delay = self.backoff_base * 2**attempt
                log.warning("Kinesis %s throttled: retry in %.2f s", self.data_stream, delay)
                self._sleep(delay)
            except BotoCoreError as exc:
                raise AnalysisError(
                    f"Kinesis GetRecords on {self.data_stream} failed: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _convert(self, shard_id: str, record: Mapping[str, Any]) -> AnalysisRecord | None:
        try:
            converted, joined = _parse_frame_record(
                record["Data"], self.fragments, self.frame_size, self.model
            )
        except ValueError as exc:
            self.stats.malformed += 1
            log.warning(
                "skipping malformed frame record %s of shard %s (%d skipped so far): %s",
                record.get("SequenceNumber"),
                shard_id,
                self.stats.malformed,
                exc,
            )
            return None
        self.stats.joined += joined
        arrival = record.get("ApproximateArrivalTimestamp")
        if isinstance(arrival, dt.datetime) and converted.server_timestamp is not None:
            # latency: from the fragment reaching KVS to its result reaching Kinesis
            latency = (arrival - converted.server_timestamp).total_seconds() * 1000
            converted = dataclasses.replace(converted, latency_ms=latency)
        return converted

    def follow(
        self,
        *,
        poll_interval: float = 1.0,
        stop: threading.Event | None = None,
        max_records: int | None = None,
        on_pass: Callable[[ResultsPosition], None] | None = None,
    ) -> Iterator[AnalysisRecord]:
        """Pass after pass, waiting ``poll_interval`` between them (Kinesis allows 5
        GetRecords per second per shard), until ``stop`` is set or ``max_records``."""
        stop = stop or threading.Event()
        emitted = 0
        while not stop.is_set():
            remaining = None if max_records is None else max_records - emitted
            for record in self.read(max_records=remaining):
                emitted += 1
                yield record
            if on_pass is not None:
                on_pass(self.position)
            if max_records is not None and emitted >= max_records:
                return
            stop.wait(poll_interval)
