"""Rekognition Video stream processors and their results.

moto 5 implements none of the stream-processor operations (CreateStreamProcessor,
StartStreamProcessor, ...), so botocore's Stubber answers them: it checks every request
against the Rekognition service model. The results path is real: frame records shaped
like the service's output are put into a moto Kinesis data stream, and our reader joins
them to fragments of a stream produced into the real emulator (ListFragments over HTTP).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials
from botocore.stub import Stubber
from moto import mock_aws

from kvs_toolkit import cli
from kvs_toolkit.analysis import (
    AnalysisError,
    FaceSearchResults,
    FragmentIndex,
    ResultsPosition,
    StreamProcessorNotFoundError,
    StreamProcessors,
    parse_frame_record,
)
from kvs_toolkit.analysis.rekognition import RekognitionError
from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample

ACCOUNT = "123456789012"
VIDEO_ARN = f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT}:stream/door/1700000000000"
DATA_ARN = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/door-results"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/RekognitionVideo"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT}:door-events"
PROCESSOR_ARN = f"arn:aws:rekognition:us-east-1:{ACCOUNT}:streamprocessor/door"
STREAM = "door"
SPEC = SampleSpec(width=320, height=240, fps=10, seconds=3.0, codec="h264", gop_seconds=1.0)
FRAGMENTS = 3


# --- Stubber: the control plane ------------------------------------------------------------
@pytest.fixture
def stubbed(aws: None) -> Iterator[tuple[StreamProcessors, Stubber]]:
    client = boto3.client("rekognition", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield StreamProcessors(client=client, clock=lambda: 1_700_000_123.456), stubber
        stubber.assert_no_pending_responses()


def describe_answer(kind: str, status: str = "STOPPED") -> dict[str, Any]:
    created = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)
    answer: dict[str, Any] = {
        "Name": "door",
        "StreamProcessorArn": PROCESSOR_ARN,
        "Status": status,
        "CreationTimestamp": created,
        "LastUpdateTimestamp": created,
        "Input": {"KinesisVideoStream": {"Arn": VIDEO_ARN}},
        "RoleArn": ROLE_ARN,
    }
    if kind == "face-search":
        answer["Output"] = {"KinesisDataStream": {"Arn": DATA_ARN}}
        answer["Settings"] = {"FaceSearch": {"CollectionId": "staff", "FaceMatchThreshold": 85.0}}
    else:
        answer["Output"] = {"S3Destination": {"Bucket": "door-bucket", "KeyPrefix": "events/"}}
        answer["Settings"] = {"ConnectedHome": {"Labels": ["PERSON", "PET"], "MinConfidence": 60.0}}
        answer["NotificationChannel"] = {"SNSTopicArn": TOPIC_ARN}
    return answer


def test_create_face_search_sends_the_api_shape(
    stubbed: tuple[StreamProcessors, Stubber],
) -> None:
    processors, stubber = stubbed
    stubber.add_response(
        "create_stream_processor",
        {"StreamProcessorArn": PROCESSOR_ARN},
        {
            "Name": "door",
            "Input": {"KinesisVideoStream": {"Arn": VIDEO_ARN}},
            "Output": {"KinesisDataStream": {"Arn": DATA_ARN}},
            "Settings": {"FaceSearch": {"CollectionId": "staff", "FaceMatchThreshold": 85.0}},
            "RoleArn": ROLE_ARN,
            "Tags": {"site": "lab"},
        },
    )
    arn = processors.create_face_search(
        "door",
        video_stream_arn=VIDEO_ARN,
        data_stream_arn=DATA_ARN,
        role_arn=ROLE_ARN,
        collection_id="staff",
        face_match_threshold=85,
        tags={"site": "lab"},
    )
    assert arn == PROCESSOR_ARN


def test_create_connected_home_sends_labels_s3_and_sns(
    stubbed: tuple[StreamProcessors, Stubber],
) -> None:
    processors, stubber = stubbed
    stubber.add_response(
        "create_stream_processor",
        {"StreamProcessorArn": PROCESSOR_ARN},
        {
            "Name": "door",
            "Input": {"KinesisVideoStream": {"Arn": VIDEO_ARN}},
            "Output": {"S3Destination": {"Bucket": "door-bucket", "KeyPrefix": "events/"}},
            "Settings": {"ConnectedHome": {"Labels": ["PERSON", "PACKAGE"], "MinConfidence": 60.0}},
            "RoleArn": ROLE_ARN,
            "NotificationChannel": {"SNSTopicArn": TOPIC_ARN},
        },
    )
    arn = processors.create_connected_home(
        "door",
        video_stream_arn=VIDEO_ARN,
        role_arn=ROLE_ARN,
        bucket="door-bucket",
        key_prefix="events/",
        sns_topic_arn=TOPIC_ARN,
        labels=["person", "PACKAGE", "PERSON"],
        min_confidence=60,
    )
    assert arn == PROCESSOR_ARN


def test_start_connected_home_with_producer_timestamp_in_milliseconds(
    stubbed: tuple[StreamProcessors, Stubber],
) -> None:
    processors, stubber = stubbed
    stubber.add_response(
        "describe_stream_processor", describe_answer("connected-home"), {"Name": "door"}
    )
    stubber.add_response(
        "start_stream_processor",
        {"SessionId": "session-1"},
        {
            "Name": "door",
            "StartSelector": {"KVSStreamStartSelector": {"ProducerTimestamp": 1_700_000_123_456}},
            "StopSelector": {"MaxDurationInSeconds": 60},
        },
    )
    # No start point given: now (the injected clock), in milliseconds as the API wants.
    assert processors.start("door", max_duration_seconds=60) == "session-1"
    stubber.add_response(
        "start_stream_processor",
        {"SessionId": "session-2"},
        {
            "Name": "door",
            "StartSelector": {"KVSStreamStartSelector": {"FragmentNumber": "91343852333181"}},
            "StopSelector": {"MaxDurationInSeconds": 120},
        },
    )
    started = processors.start(
        "door", fragment_number="91343852333181", max_duration_seconds=120, kind="connected-home"
    )
    assert started == "session-2"


def test_start_face_search_takes_no_selectors(stubbed: tuple[StreamProcessors, Stubber]) -> None:
    processors, stubber = stubbed
    stubber.add_response("describe_stream_processor", describe_answer("face-search"))
    stubber.add_response("start_stream_processor", {}, {"Name": "door"})
    assert processors.start("door") is None
    with pytest.raises(AnalysisError, match="face-search processor: it takes no start or stop"):
        processors.start("door", max_duration_seconds=10, kind="face-search")


def test_start_argument_errors(stubbed: tuple[StreamProcessors, Stubber]) -> None:
    processors, _ = stubbed
    home = "connected-home"
    with pytest.raises(AnalysisError, match="needs a maximum duration"):
        processors.start("door", kind=home)
    for bad in (0, 121):
        with pytest.raises(AnalysisError, match=f"maximum duration must be 1-120 s, not {bad}"):
            processors.start("door", max_duration_seconds=bad, kind=home)
    with pytest.raises(AnalysisError, match="not both"):
        processors.start(
            "door", fragment_number="1", producer_timestamp=1.0, max_duration_seconds=5, kind=home
        )
    with pytest.raises(AnalysisError, match="invalid fragment number '12a'"):
        processors.start("door", fragment_number="12a", max_duration_seconds=5, kind=home)


def test_create_argument_errors_name_the_field(stubbed: tuple[StreamProcessors, Stubber]) -> None:
    processors, _ = stubbed
    common: dict[str, Any] = {"video_stream_arn": VIDEO_ARN, "role_arn": ROLE_ARN}
    face: dict[str, Any] = {**common, "data_stream_arn": DATA_ARN, "collection_id": "staff"}
    with pytest.raises(AnalysisError, match="invalid stream processor name 'front door'"):
        processors.create_face_search("front door", **face)
    with pytest.raises(AnalysisError, match="face match threshold must be 0-100"):
        processors.create_face_search("door", **face, face_match_threshold=101)
    with pytest.raises(AnalysisError, match="invalid Kinesis data stream ARN 'door-results'"):
        processors.create_face_search("door", **{**face, "data_stream_arn": "door-results"})
    with pytest.raises(AnalysisError, match="invalid IAM role ARN"):
        processors.create_face_search("door", **{**face, "role_arn": "RekognitionVideo"})
    home: dict[str, Any] = {**common, "bucket": "door-bucket", "sns_topic_arn": TOPIC_ARN}
    with pytest.raises(AnalysisError, match=r"unknown connected-home labels \['CAR'\]"):
        processors.create_connected_home("door", **home, labels=["PERSON", "car"])
    with pytest.raises(AnalysisError, match="needs at least one label"):
        processors.create_connected_home("door", **home, labels=[])
    with pytest.raises(AnalysisError, match="invalid SNS topic ARN"):
        processors.create_connected_home("door", **{**home, "sns_topic_arn": "door-events"})


def test_describe_stop_delete_and_list(stubbed: tuple[StreamProcessors, Stubber]) -> None:
    processors, stubber = stubbed
    stubber.add_response(
        "describe_stream_processor", describe_answer("connected-home", "RUNNING"), {"Name": "door"}
    )
    info = processors.describe("door")
    assert (info.kind, info.status, info.s3_bucket, info.sns_topic_arn) == (
        "connected-home",
        "RUNNING",
        "door-bucket",
        TOPIC_ARN,
    )
    assert info.to_json()["video_stream_arn"] == VIDEO_ARN
    stubber.add_response("stop_stream_processor", {}, {"Name": "door"})
    processors.stop("door")
    stubber.add_response("delete_stream_processor", {}, {"Name": "door"})
    processors.delete("door")
    stubber.add_response(
        "list_stream_processors",
        {"StreamProcessors": [{"Name": "door", "Status": "STOPPED"}], "NextToken": "page-2"},
        {"MaxResults": 100},
    )
    stubber.add_response(
        "list_stream_processors",
        {"StreamProcessors": [{"Name": "garden", "Status": "RUNNING"}]},
        {"MaxResults": 100, "NextToken": "page-2"},
    )
    assert processors.list() == [("door", "STOPPED"), ("garden", "RUNNING")]


def test_processor_not_found_and_invalid_parameters(
    stubbed: tuple[StreamProcessors, Stubber],
) -> None:
    processors, stubber = stubbed
    stubber.add_client_error(
        "describe_stream_processor",
        "ResourceNotFoundException",
        "Stream processor not found",
        400,
    )
    with pytest.raises(StreamProcessorNotFoundError) as caught:
        processors.describe("ghost")
    assert "DescribeStreamProcessor: stream processor 'ghost' not found" in str(caught.value)
    assert caught.value.code == "ResourceNotFoundException"
    stubber.add_client_error(
        "stop_stream_processor", "ResourceNotFoundException", "Stream processor not found", 400
    )
    with pytest.raises(StreamProcessorNotFoundError, match="'ghost' not found"):
        processors.stop("ghost")
    stubber.add_client_error(
        "create_stream_processor",
        "InvalidParameterException",
        "Collection staff does not exist",
        400,
    )
    with pytest.raises(RekognitionError, match="invalid parameters for stream processor 'door'"):
        processors.create_face_search(
            "door",
            video_stream_arn=VIDEO_ARN,
            data_stream_arn=DATA_ARN,
            role_arn=ROLE_ARN,
            collection_id="staff",
        )
    stubber.add_client_error(
        "delete_stream_processor", "ResourceInUseException", "Processor is RUNNING", 400
    )
    with pytest.raises(RekognitionError, match="'door' is in use: Processor is RUNNING"):
        processors.delete("door")


def test_requests_botocore_refuses_are_rekognition_errors(aws: None) -> None:
    # botocore validates MaxResults (minimum 1) before anything is sent: no network here.
    processors = StreamProcessors(client=boto3.client("rekognition", region_name="us-east-1"))
    with pytest.raises(RekognitionError, match="list_stream_processors: request refused by"):
        processors.list(page_size=0)


def test_cli_create_describe_and_usage_errors(
    stubbed: tuple[StreamProcessors, Stubber],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    processors, stubber = stubbed
    client = processors._client
    # the command builds its Rekognition client through AwsAccess: hand it the stubbed one
    monkeypatch.setattr(AwsAccess, "client", lambda *_args, **_kwargs: client)
    stubber.add_response("describe_stream_processor", describe_answer("face-search"))
    assert cli.main(["rekognition-processor", "describe", "door"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["kind"] == "face-search" and described["data_stream_arn"] == DATA_ARN
    base = ["rekognition-processor", "create", "door", "--video-stream-arn", VIDEO_ARN,
            "--role-arn", ROLE_ARN]  # fmt: skip
    assert cli.main(base) == 2
    assert "create needs --collection-id (face search) or --labels" in capsys.readouterr().err
    assert cli.main([*base, "--collection-id", "staff"]) == 2
    assert "needs --data-stream-arn" in capsys.readouterr().err
    stubber.add_response("create_stream_processor", {"StreamProcessorArn": PROCESSOR_ARN})
    args = [*base, "--labels", "PERSON,PET", "--s3", "s3://door-bucket/events/",
            "--sns-topic-arn", TOPIC_ARN]  # fmt: skip
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "door", "arn": PROCESSOR_ARN}
    stubber.add_response("describe_stream_processor", describe_answer("connected-home"))
    noon = dt.datetime(2026, 11, 26, 12, tzinfo=dt.timezone.utc)
    stubber.add_response(
        "start_stream_processor",
        {"SessionId": "s-9"},
        {
            "Name": "door",
            "StartSelector": {
                "KVSStreamStartSelector": {"ProducerTimestamp": round(noon.timestamp() * 1000)}
            },
            "StopSelector": {"MaxDurationInSeconds": 30},
        },
    )
    start = ["rekognition-processor", "start", "door", "--start-timestamp", "2026-11-26T12:00:00Z"]
    assert cli.main([*start, "--max-duration", "30"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "door", "session_id": "s-9"}
    with pytest.raises(SystemExit):
        cli.main(["rekognition-processor", "start", "door", "--start-timestamp", "noon"])
    assert "expected epoch seconds or an ISO 8601 time, not 'noon'" in capsys.readouterr().err


# --- frame records -----------------------------------------------------------------------------
def frame_record(
    fragment_number: str,
    producer: float | None,
    server: float | None,
    offset: float,
    *,
    stream_arn: str = VIDEO_ARN,
    matched: bool = True,
) -> bytes:
    """A record as Rekognition Video writes it (developer guide, "Understanding the Kinesis
    face recognition JSON frame record")."""
    video: dict[str, Any] = {
        "StreamArn": stream_arn,
        "FragmentNumber": fragment_number,
        "FrameOffsetInSeconds": offset,
    }
    if producer is not None:
        video["ProducerTimestamp"] = producer
    if server is not None:
        video["ServerTimestamp"] = server
    face = {
        "BoundingBox": {"Width": 0.25, "Top": 0.5, "Height": 0.25, "Left": 0.125},
        "Confidence": 99.5,
        "Landmarks": [{"Type": "eyeLeft", "X": 0.2, "Y": 0.55}],
        "Pose": {"Pitch": 1.0, "Roll": 2.0, "Yaw": 3.0},
        "Quality": {"Brightness": 80.0, "Sharpness": 90.0},
    }
    matches = [
        {
            "Similarity": 88.0,
            "Face": {
                "BoundingBox": {"Width": 0.5, "Top": 0.1, "Height": 0.5, "Left": 0.1},
                "Confidence": 99.9,
                "ExternalImageId": "alice",
                "FaceId": "f-1",
                "ImageId": "i-1",
            },
        },
        {"Similarity": 70.0, "Face": {"FaceId": "f-2", "ExternalImageId": "bob"}},
    ]
    document = {
        "InputInformation": {"KinesisVideo": video},
        "StreamProcessorInformation": {"Status": "RUNNING"},
        "FaceSearchResponse": [{"DetectedFace": face, "MatchedFaces": matches if matched else []}],
    }
    return json.dumps(document).encode()


def test_parse_frame_record_without_a_stream_to_join() -> None:
    record = parse_frame_record(
        frame_record("91343852333289682796718532614445757584843717598", 1510552593.193,
                     1510552593.455, 2.0),
        frame_size=(640, 480),
    )  # fmt: skip
    assert record.stream_name == "door"
    assert record.frame_timestamp == pytest.approx(1510552595.193)
    assert record.server_timestamp is not None
    assert record.server_timestamp.timestamp() == pytest.approx(1510552593.455)
    [face] = record.detections
    assert (face.label, face.confidence) == ("face:alice", pytest.approx(0.88))
    assert (face.box.x, face.box.y, face.box.width, face.box.height) == (80, 240, 160, 120)
    unmatched = parse_frame_record(frame_record("1", 10.0, 11.0, 0.5, matched=False))
    assert [(d.label, d.confidence) for d in unmatched.detections] == [
        ("face", pytest.approx(0.995))
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"StreamProcessorInformation": {}}', "no InputInformation.KinesisVideo"),
        (frame_record("12x", 1.0, 2.0, 0.0), "bad FragmentNumber '12x'"),
        (frame_record("12", 1.0, 2.0, -1.0), "negative FrameOffsetInSeconds"),
        (frame_record("12", None, 2.0, 0.5), "no producer timestamp for fragment 12"),
        (
            json.dumps(
                {
                    "InputInformation": {
                        "KinesisVideo": {
                            "FragmentNumber": "1",
                            "FrameOffsetInSeconds": "soon",
                            "ProducerTimestamp": 1,
                        }
                    }
                }
            ).encode(),
            "FrameOffsetInSeconds is not a number: 'soon'",
        ),
        (
            json.dumps(
                {
                    "InputInformation": {
                        "KinesisVideo": {
                            "FragmentNumber": "1",
                            "FrameOffsetInSeconds": 0,
                            "ProducerTimestamp": 1,
                        }
                    },
                    "FaceSearchResponse": [{"MatchedFaces": []}],
                }
            ).encode(),
            "malformed FaceSearchResponse",
        ),
    ],
)
def test_malformed_frame_records_are_refused_by_name(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_frame_record(data)


def test_results_position_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "position.json"
    assert ResultsPosition.load(path).shards == {}
    ResultsPosition({"shardId-000000000001": "42"}).save(path)
    assert ResultsPosition.load(path).shards == {"shardId-000000000001": "42"}
    path.write_text("{")
    with pytest.raises(AnalysisError, match="is not JSON"):
        ResultsPosition.load(path)
    path.write_text('{"shards": [1]}')
    with pytest.raises(AnalysisError, match=r"needs \{'shards'"):
        ResultsPosition.load(path)


# --- Kinesis (moto) + the real emulator -------------------------------------------------------
@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    sample = write_sample(tmp_path_factory.mktemp("sample") / "door.mkv", SPEC)
    with Emulator() as emu:
        stats = asyncio.run(
            produce(
                open_source(str(sample), SourceOptions(realtime=False, audio=False)),
                emu.endpoint_url,
                STREAM,
                create_stream=True,
                credentials=Credentials("AKIDPROCESSORS", "secret"),
                fragment_duration_ms=1000,
            )
        )
        assert stats.acked == FRAGMENTS
        yield emu


@pytest.fixture
def moto_kinesis(aws: None) -> Iterator[Any]:
    """moto for Kinesis Data Streams; requests to the emulator on 127.0.0.1 pass."""
    config: Any = {"core": {"passthrough": {"urls": [r"http://127\.0\.0\.1.*"]}}}
    with mock_aws(config=config):
        client = boto3.client("kinesis", region_name="us-east-1")
        client.create_stream(StreamName="door-results", ShardCount=2)
        yield client


def archive(emulator: Emulator) -> tuple[str, list[dict[str, Any]]]:
    """The stream's ARN and its fragments, oldest first, straight from the emulator."""
    control = boto3.client(
        "kinesisvideo", endpoint_url=emulator.endpoint_url, region_name="us-east-1"
    )
    arn = control.describe_stream(StreamName=STREAM)["StreamInfo"]["StreamARN"]
    archived = boto3.client(
        "kinesis-video-archived-media", endpoint_url=emulator.endpoint_url, region_name="us-east-1"
    )
    fragments = archived.list_fragments(StreamName=STREAM)["Fragments"]
    fragments.sort(key=lambda f: f["ProducerTimestamp"])
    assert len(fragments) == FRAGMENTS
    return arn, fragments


def put_frame_records(
    kinesis: Any, arn: str, fragments: list[dict[str, Any]], *, with_producer: bool
) -> list[tuple[str, float]]:
    """Two records per fragment (offsets 0.2 and 0.7 s), alternating between the two
    shards; returns the (fragment number, expected frame timestamp) of each."""
    expected = []
    for index, fragment in enumerate(fragments):
        producer = fragment["ProducerTimestamp"].timestamp()
        server = fragment["ServerTimestamp"].timestamp()
        for offset in (0.2, 0.7):
            data = frame_record(
                fragment["FragmentNumber"],
                producer if with_producer else None,
                server,
                offset,
                stream_arn=arn,
            )
            kinesis.put_record(StreamName="door-results", Data=data, PartitionKey=f"k{index}")
            expected.append((fragment["FragmentNumber"], producer + offset))
    return expected


def test_results_are_joined_to_fragments_listed_by_the_emulator(
    emulator: Emulator, moto_kinesis: Any
) -> None:
    arn, fragments = archive(emulator)
    # The records lack ProducerTimestamp: only ListFragments can supply it.
    expected = put_frame_records(moto_kinesis, arn, fragments, with_producer=False)
    index = FragmentIndex(endpoint_url=emulator.endpoint_url, region_name="us-east-1")
    reader = FaceSearchResults(
        "door-results", client=moto_kinesis, fragments=index, frame_size=(SPEC.width, SPEC.height)
    )
    records = list(reader.read())
    got = sorted((r.fragment_number, round(r.frame_timestamp, 6)) for r in records)
    assert got == sorted((n, round(t, 6)) for n, t in expected)
    by_number = {f["FragmentNumber"]: f for f in fragments}
    for record in records:
        fragment = by_number[record.fragment_number]
        assert record.stream_name == STREAM
        assert record.producer_timestamp == fragment["ProducerTimestamp"]
        assert record.server_timestamp == fragment["ServerTimestamp"]
        assert record.model == "rekognition-face-search"
        assert record.to_json()["detections"][0]["label"] == "face:alice"
        assert record.detections[0].box.x == pytest.approx(0.125 * SPEC.width)
    assert reader.stats.joined == len(expected) and reader.stats.malformed == 0
    windows = {int(f["ServerTimestamp"].timestamp() // 60) for f in fragments}
    assert index.listings == len(windows)  # one listing per window served every record
    assert sorted(reader.position.shards) == sorted(reader.shards())


def test_malformed_records_are_skipped_and_counted(
    emulator: Emulator, moto_kinesis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    arn, fragments = archive(emulator)
    moto_kinesis.put_record(StreamName="door-results", Data=b"garbage", PartitionKey="k")
    expected = put_frame_records(moto_kinesis, arn, fragments[:1], with_producer=True)
    moto_kinesis.put_record(
        StreamName="door-results", Data=frame_record("7", 1.0, 2.0, -3.0), PartitionKey="k"
    )
    reader = FaceSearchResults("door-results", client=moto_kinesis)
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.analysis.processors"):
        records = list(reader.read())
    assert len(records) == len(expected)
    assert (reader.stats.records, reader.stats.malformed, reader.stats.joined) == (4, 2, 0)
    warnings = [r.getMessage() for r in caplog.records]
    assert any("skipping malformed frame record" in w and "not JSON" in w for w in warnings)
    assert any("negative FrameOffsetInSeconds" in w and "(2 skipped so far)" in w for w in warnings)


def test_reading_resumes_from_the_saved_position(
    emulator: Emulator, moto_kinesis: Any, tmp_path: Path
) -> None:
    arn, fragments = archive(emulator)
    expected = put_frame_records(moto_kinesis, arn, fragments, with_producer=True)
    first = FaceSearchResults("door-results", client=moto_kinesis)
    head = list(first.read(max_records=4))
    assert len(head) == 4
    path = tmp_path / "position.json"
    first.position.save(path)
    second = FaceSearchResults(
        "door-results", client=moto_kinesis, position=ResultsPosition.load(path)
    )
    tail = list(second.read())
    seen = [(r.fragment_number, round(r.frame_timestamp, 6)) for r in head + tail]
    assert sorted(seen) == sorted((n, round(t, 6)) for n, t in expected)  # none twice
    assert list(second.read()) == []  # caught up
    with pytest.raises(AnalysisError, match="Kinesis data stream 'nowhere' not found"):
        list(FaceSearchResults("nowhere", client=moto_kinesis).read())


def test_fragment_index_relists_a_window_only_after_a_while(emulator: Emulator, aws: None) -> None:
    arn, fragments = archive(emulator)
    now = [100.0]
    index = FragmentIndex(
        endpoint_url=emulator.endpoint_url, region_name="us-east-1", clock=lambda: now[0]
    )
    first = fragments[0]
    near = first["ServerTimestamp"]
    found = index.lookup(arn, first["FragmentNumber"], near)
    assert found is not None and found.producer_timestamp == first["ProducerTimestamp"]
    assert index.lookup(arn, "99999", near) is None  # not in the stream
    assert index.listings == 1  # the window was listed a moment ago: not again
    now[0] += 5.0
    assert index.lookup(arn, "99999", near) is None
    assert index.listings == 2
    assert index.lookup(arn, first["FragmentNumber"], None) is not None  # cached
    assert index.lookup(arn, "1", None) is None  # nothing to pick a window with


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_unreachable_kvs_falls_back_to_the_records_timestamps(
    emulator: Emulator, moto_kinesis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    arn, fragments = archive(emulator)
    expected = put_frame_records(moto_kinesis, arn, fragments[:1], with_producer=True)
    closed = f"http://127.0.0.1:{free_port()}"
    index = FragmentIndex(endpoint_url=closed, region_name="us-east-1", max_retries=0)
    reader = FaceSearchResults("door-results", client=moto_kinesis, fragments=index)
    with caplog.at_level(logging.WARNING, logger="kvs_toolkit.analysis.processors"):
        records = list(reader.read())
    assert [round(r.frame_timestamp, 6) for r in records] == [round(t, 6) for _, t in expected]
    assert reader.stats.joined == 0
    assert sum("cannot list the fragments of" in r.getMessage() for r in caplog.records) == 1


def test_cli_results_follow_prints_json_lines_and_saves_the_position(
    emulator: Emulator,
    moto_kinesis: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arn, fragments = archive(emulator)
    expected = put_frame_records(moto_kinesis, arn, fragments, with_producer=False)
    moto_kinesis.put_record(StreamName="door-results", Data=b"{}", PartitionKey="k")
    position = tmp_path / "position.json"
    argv = ["rekognition-processor", "--region", "us-east-1", "results", "--data-stream",
            "door-results", "--endpoint-url", emulator.endpoint_url, "--position",
            str(position)]  # fmt: skip
    follow = ["--follow", "--poll-interval", "0.05", "--max-records", str(len(expected)),
              "--frame-size", "320x240"]  # fmt: skip
    assert cli.main([*argv, *follow]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert sorted((r["fragment_number"], r["timestamp"]) for r in lines) == sorted(
        (n, round(t, 6)) for n, t in expected
    )
    assert all(r["stream_name"] == STREAM and r["producer_timestamp"] for r in lines)
    assert set(lines[0]) == {"stream_name", "fragment_number", "producer_timestamp",
                             "server_timestamp", "timestamp", "model", "latency_ms",
                             "detections"}  # fmt: skip
    assert set(json.loads(position.read_text())["shards"]) == set(
        FaceSearchResults("door-results", client=moto_kinesis).shards()
    )
    # Resuming from the saved position finds nothing new.
    assert cli.main(argv) == 0  # one pass
    resumed = capsys.readouterr()
    assert resumed.out == ""
    # The malformed record was skipped in one of the two runs (shard order decides which).
    assert "skipped 1 malformed records" in captured.err + resumed.err


# --- consumers/face_search_alerts.py ----------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "consumers" / "face_search_alerts.py"


def load_program() -> Any:
    spec = importlib.util.spec_from_file_location("face_search_alerts", PROGRAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_face_search_alerts_program_prints_who_was_seen(
    emulator: Emulator,
    moto_kinesis: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arn, fragments = archive(emulator)
    expected = put_frame_records(moto_kinesis, arn, fragments[:1], with_producer=False)
    moto_kinesis.put_record(
        StreamName="door-results",
        Data=frame_record(fragments[1]["FragmentNumber"], None,
                          fragments[1]["ServerTimestamp"].timestamp(), 0.1, stream_arn=arn,
                          matched=False),
        PartitionKey="k",
    )  # fmt: skip
    position = tmp_path / "position.json"
    program = load_program()
    argv = ["--data-stream", "door-results", "--region", "us-east-1", "--endpoint-url",
            emulator.endpoint_url, "--from", "trim-horizon", "--once", "--position",
            str(position)]  # fmt: skip
    assert program.main(argv) == 0
    lines = sorted(capsys.readouterr().out.splitlines())
    first = fragments[0]["FragmentNumber"]
    assert len(lines) == len(expected) + 1
    assert sum(f"door fragment {first}  alice (88%)" in line for line in lines) == 2
    assert any(line.endswith("unknown face") for line in lines)
    when = dt.datetime.fromtimestamp(expected[0][1], dt.timezone.utc)
    assert any(line.startswith(when.isoformat(timespec="milliseconds")) for line in lines)
    assert position.exists()
    assert program.main([*argv, "--min-similarity", "0.9"]) == 0  # resumed: nothing new
    assert capsys.readouterr().out == ""


def test_face_search_alerts_program_usage_and_errors(
    moto_kinesis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    done = subprocess.run(
        [sys.executable, str(PROGRAM), "--help"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--data-stream" in done.stdout and "--position" in done.stdout
    program = load_program()
    assert program.main(["--data-stream", "nowhere", "--region", "us-east-1", "--once"]) == 2
    assert (
        "kvs face_search_alerts: Kinesis data stream 'nowhere' not found" in capsys.readouterr().err
    )
