"""The control plane through real boto3 clients against a running emulator."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path
from typing import Any

import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.emulator.control import API_NAMES

from .conftest import CREDENTIALS, ClientFactory
from .helpers import raw_post

ARN = re.compile(r"arn:aws:kinesisvideo:([a-z0-9-]+):123456789012:stream/([a-zA-Z0-9_.-]+)/(\d+)")


def _model(service: str) -> dict[str, Any]:
    path = Path(botocore.__file__).parent / "data" / service / "2017-09-30" / "service-2.json.gz"
    if not path.exists():
        path = path.with_suffix("")
        return dict(json.loads(path.read_text()))
    return dict(json.loads(gzip.decompress(path.read_bytes())))


def _error_code(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _status(exc: pytest.ExceptionInfo[Any]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


# -- CreateStream / DescribeStream ------------------------------------------------------


def test_create_and_describe(kv: Any) -> None:
    before = time.time()
    arn = kv.create_stream(
        StreamName="cam-1",
        DataRetentionInHours=24,
        MediaType="video/h264",
        DeviceName="device-1",
        Tags={"team": "vision"},
    )["StreamARN"]
    match = ARN.fullmatch(arn)
    assert match is not None
    assert match.group(1) == "us-east-1"
    assert match.group(2) == "cam-1"
    info = kv.describe_stream(StreamName="cam-1")["StreamInfo"]
    assert info["StreamName"] == "cam-1"
    assert info["StreamARN"] == arn
    assert info["Status"] == "ACTIVE"
    assert info["DataRetentionInHours"] == 24
    assert info["MediaType"] == "video/h264"
    assert info["DeviceName"] == "device-1"
    assert info["KmsKeyId"] == "arn:aws:kms:us-east-1:123456789012:alias/aws/kinesisvideo"
    assert re.fullmatch(r"[a-zA-Z0-9]{1,64}", info["Version"])
    assert before - 1 <= info["CreationTime"].timestamp() <= time.time() + 1
    # The ARN's trailing number is the creation time in milliseconds.
    assert int(match.group(3)) == round(info["CreationTime"].timestamp() * 1000)
    assert kv.describe_stream(StreamARN=arn)["StreamInfo"] == info


def test_arn_region_is_the_emulators_region(make_client: ClientFactory) -> None:
    with Emulator(credentials=CREDENTIALS, default_region="eu-west-1") as emulator:
        client = make_client("kinesisvideo", emulator.endpoint_url, region_name="eu-west-1")
        _check_regional(client)
        # With SigV4 verified, a credential scope naming another region is refused.
        other = make_client("kinesisvideo", emulator.endpoint_url, region_name="us-west-2")
        with pytest.raises(ClientError, match="scoped to a valid region"):
            other.list_streams()


def _check_regional(client: Any) -> None:
    arn = client.create_stream(StreamName="regional", KmsKeyId="my-key")["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:eu-west-1:123456789012:stream/regional/")
    info = client.describe_stream(StreamName="regional")["StreamInfo"]
    assert info["KmsKeyId"] == "my-key"
    assert "MediaType" not in info
    assert "DeviceName" not in info


def test_create_defaults_and_duplicate(kv: Any) -> None:
    kv.create_stream(StreamName="dup")
    info = kv.describe_stream(StreamName="dup")["StreamInfo"]
    assert info["DataRetentionInHours"] == 0
    with pytest.raises(kv.exceptions.ResourceInUseException) as exc:
        kv.create_stream(StreamName="dup")
    assert _status(exc) == 400


@pytest.mark.parametrize("name", ["a" * 257, "has space", "slash/name", "colon:name", "ünïcode"])
def test_invalid_stream_names(kv: Any, name: str) -> None:
    with pytest.raises(kv.exceptions.InvalidArgumentException) as exc:
        kv.create_stream(StreamName=name)
    assert _status(exc) == 400


def test_valid_stream_name_edges(kv: Any) -> None:
    for name in ("a" * 256, "x", "A-b_c.9", ".."):
        kv.create_stream(StreamName=name)
        assert kv.describe_stream(StreamName=name)["StreamInfo"]["StreamName"] == name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("DataRetentionInHours", 87601),
        ("MediaType", "not-a-media-type"),
        ("MediaType", "video/" + "a" * 123),
        ("DeviceName", "bad device"),
        ("DeviceName", "d" * 129),
        ("KmsKeyId", "k" * 2049),
    ],
)
def test_create_argument_limits(kv: Any, field: str, value: Any) -> None:
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_stream(StreamName="limits", **{field: value})
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamName="limits")


def test_retention_maximum_is_accepted(kv: Any) -> None:
    kv.create_stream(
        StreamName="long", DataRetentionInHours=87600, MediaType="video/h264,audio/aac"
    )
    assert kv.describe_stream(StreamName="long")["StreamInfo"]["DataRetentionInHours"] == 87600


def test_describe_errors(kv: Any) -> None:
    with pytest.raises(kv.exceptions.ResourceNotFoundException) as exc:
        kv.describe_stream(StreamName="missing")
    assert _status(exc) == 404
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamARN="arn:aws:kinesisvideo:us-east-1:123456789012:stream/missing/1")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.describe_stream(StreamARN="arn:aws:s3:::bucket")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.describe_stream()  # neither StreamName nor StreamARN
    arn = kv.create_stream(StreamName="one")["StreamARN"]
    kv.create_stream(StreamName="two")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.describe_stream(StreamName="two", StreamARN=arn)


def test_account_stream_limit(make_client: ClientFactory) -> None:
    with Emulator(max_streams=2) as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        client.create_stream(StreamName="s1")
        client.create_stream(StreamName="s2")
        with pytest.raises(client.exceptions.AccountStreamLimitExceededException):
            client.create_stream(StreamName="s3")


# -- ListStreams ------------------------------------------------------------------------


def test_list_streams_pagination_and_filter(kv: Any) -> None:
    names = [f"cam-{i:02d}" for i in range(7)] + ["other-1", "other-2"]
    for name in reversed(names):
        kv.create_stream(StreamName=name)
    page = kv.list_streams(MaxResults=3)
    assert [s["StreamName"] for s in page["StreamInfoList"]] == sorted(names)[:3]
    assert "NextToken" in page
    seen = [
        info["StreamName"]
        for page in kv.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 2})
        for info in page["StreamInfoList"]
    ]
    assert seen == sorted(names)
    filtered = kv.list_streams(
        StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam-0"},
        MaxResults=4,
    )
    assert [s["StreamName"] for s in filtered["StreamInfoList"]] == names[:4]
    rest = kv.list_streams(
        StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam-0"},
        NextToken=filtered["NextToken"],
    )
    assert [s["StreamName"] for s in rest["StreamInfoList"]] == names[4:7]
    assert "NextToken" not in rest
    everything = kv.list_streams()
    assert len(everything["StreamInfoList"]) == len(names)
    assert "NextToken" not in everything
    assert everything["StreamInfoList"][0]["Status"] == "ACTIVE"


def test_list_streams_prefix_is_literal(kv: Any) -> None:
    # '_' must not act as a wildcard.
    kv.create_stream(StreamName="a_b")
    kv.create_stream(StreamName="axb")
    result = kv.list_streams(
        StreamNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "a_"}
    )
    assert [s["StreamName"] for s in result["StreamInfoList"]] == ["a_b"]


def test_list_streams_errors(kv: Any) -> None:
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_streams(MaxResults=10001)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_streams(NextToken="bm90IGpzb24=")  # base64 of "not json"
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.list_streams(
            StreamNameCondition={"ComparisonOperator": "ENDS_WITH", "ComparisonValue": "x"}
        )


# -- DeleteStream -----------------------------------------------------------------------


def test_delete_stream_checks_version(kv: Any) -> None:
    arn = kv.create_stream(StreamName="doomed")["StreamARN"]
    with pytest.raises(kv.exceptions.VersionMismatchException) as exc:
        kv.delete_stream(StreamARN=arn, CurrentVersion="wrongversion1")
    assert _status(exc) == 400
    version = kv.describe_stream(StreamName="doomed")["StreamInfo"]["Version"]
    kv.delete_stream(StreamARN=arn, CurrentVersion=version)
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_stream(StreamName="doomed")
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.delete_stream(StreamARN=arn)
    # The name is free again, with a new ARN.
    new_arn = kv.create_stream(StreamName="doomed")["StreamARN"]
    assert ARN.fullmatch(new_arn)
    kv.delete_stream(StreamARN=new_arn)  # no CurrentVersion: no check


def test_delete_stream_removes_fragments(emulator: Emulator, kv: Any) -> None:
    from kvs_toolkit.emulator import FragmentMeta

    arn = kv.create_stream(StreamName="with-data", DataRetentionInHours=1)["StreamARN"]
    record = emulator.store.sync.append_fragment("with-data", b"payload", FragmentMeta(0, 10))
    segment = emulator.data_dir / record.path
    assert segment.exists()
    kv.delete_stream(StreamARN=arn)
    assert not segment.exists()
    kv.create_stream(StreamName="with-data")
    assert emulator.store.sync.earliest_fragment("with-data") is None


def test_delete_stream_requires_arn(emulator: Emulator, make_client: ClientFactory) -> None:
    client = make_client(
        "kinesisvideo", emulator.endpoint_url, config=Config(parameter_validation=False)
    )
    with pytest.raises(client.exceptions.InvalidArgumentException):
        client.delete_stream()
    with pytest.raises(client.exceptions.InvalidArgumentException):
        client.delete_stream(StreamARN="not-an-arn")


def test_state_transitions_with_delay(make_client: ClientFactory) -> None:
    with Emulator(state_delay=0.2) as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        arn = client.create_stream(StreamName="slow")["StreamARN"]
        assert client.describe_stream(StreamName="slow")["StreamInfo"]["Status"] == "CREATING"
        version = client.describe_stream(StreamName="slow")["StreamInfo"]["Version"]
        with pytest.raises(client.exceptions.ResourceInUseException):
            client.update_stream(StreamName="slow", CurrentVersion=version, DeviceName="d")
        _wait_for(
            lambda: client.describe_stream(StreamName="slow")["StreamInfo"]["Status"] == "ACTIVE"
        )
        client.delete_stream(StreamARN=arn)
        assert client.describe_stream(StreamName="slow")["StreamInfo"]["Status"] == "DELETING"
        with pytest.raises(client.exceptions.ResourceInUseException):
            client.create_stream(StreamName="slow")
        with pytest.raises(client.exceptions.ResourceInUseException):
            client.delete_stream(StreamARN=arn)

        def gone() -> bool:
            try:
                client.describe_stream(StreamName="slow")
            except client.exceptions.ResourceNotFoundException:
                return True
            return False

        _wait_for(gone)


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- UpdateStream / UpdateDataRetention -------------------------------------------------


def test_update_stream(kv: Any) -> None:
    kv.create_stream(StreamName="upd", MediaType="video/h264")
    version = kv.describe_stream(StreamName="upd")["StreamInfo"]["Version"]
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_stream(StreamName="upd", CurrentVersion="stale", DeviceName="d1")
    kv.update_stream(
        StreamName="upd", CurrentVersion=version, DeviceName="d1", MediaType="video/h265"
    )
    info = kv.describe_stream(StreamName="upd")["StreamInfo"]
    assert info["DeviceName"] == "d1"
    assert info["MediaType"] == "video/h265"
    assert info["Version"] != version
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_stream(StreamName="upd", CurrentVersion=version, DeviceName="d2")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_stream(StreamName="upd", CurrentVersion=info["Version"], MediaType="bad")
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.update_stream(StreamName="nope", CurrentVersion="v1")


def test_update_data_retention(kv: Any) -> None:
    arn = kv.create_stream(StreamName="ret", DataRetentionInHours=10)["StreamARN"]

    def current() -> dict[str, Any]:
        return dict(kv.describe_stream(StreamName="ret")["StreamInfo"])

    kv.update_data_retention(
        StreamName="ret",
        CurrentVersion=current()["Version"],
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=5,
    )
    assert current()["DataRetentionInHours"] == 15
    kv.update_data_retention(
        StreamARN=arn,
        CurrentVersion=current()["Version"],
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=15,
    )
    assert current()["DataRetentionInHours"] == 0
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName="ret",
            CurrentVersion=current()["Version"],
            Operation="DECREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName="ret",
            CurrentVersion=current()["Version"],
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=87601,
        )
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.update_data_retention(
            StreamName="ret",
            CurrentVersion=current()["Version"],
            Operation="DOUBLE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )
    with pytest.raises(kv.exceptions.VersionMismatchException):
        kv.update_data_retention(
            StreamName="ret",
            CurrentVersion="stale",
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )


# -- tags -------------------------------------------------------------------------------


def test_tags_round_trip(kv: Any) -> None:
    arn = kv.create_stream(StreamName="tagged", Tags={"a": "1"})["StreamARN"]
    version = kv.describe_stream(StreamName="tagged")["StreamInfo"]["Version"]
    kv.tag_stream(StreamARN=arn, Tags={"b": "2", "a": "one", "empty": ""})
    assert kv.list_tags_for_stream(StreamName="tagged")["Tags"] == {
        "a": "one",
        "b": "2",
        "empty": "",
    }
    kv.untag_stream(StreamName="tagged", TagKeyList=["a", "not-there"])
    assert kv.list_tags_for_stream(StreamARN=arn)["Tags"] == {"b": "2", "empty": ""}
    # Tagging does not change the stream's version.
    assert kv.describe_stream(StreamName="tagged")["StreamInfo"]["Version"] == version
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.tag_stream(StreamName="ghost", Tags={"a": "b"})
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.list_tags_for_stream(StreamName="ghost")


def test_tag_limits(kv: Any) -> None:
    many = {f"k{i}": "v" for i in range(51)}
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException) as exc:
        kv.create_stream(StreamName="too-many", Tags=many)
    assert _status(exc) == 400
    kv.create_stream(StreamName="limit", Tags={f"k{i}": "v" for i in range(45)})
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.tag_stream(StreamName="limit", Tags={f"n{i}": "v" for i in range(6)})
    # Overwriting existing keys does not count twice: exactly 50 is fine.
    kv.tag_stream(StreamName="limit", Tags={"k0": "new", **{f"n{i}": "v" for i in range(5)}})
    assert len(kv.list_tags_for_stream(StreamName="limit")["Tags"]) == 50
    with pytest.raises(kv.exceptions.TagsPerResourceExceededLimitException):
        kv.tag_stream(StreamName="limit", Tags={"one-more": "v"})


@pytest.mark.parametrize(
    "tags",
    [
        {"k" * 129: "v"},
        {"key": "v" * 257},
        {"aws:reserved": "v"},
        {"bad*key": "v"},
        {"key": "bad#value"},
    ],
)
def test_invalid_tags(kv: Any, tags: dict[str, str]) -> None:
    kv.create_stream(StreamName="t")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.tag_stream(StreamName="t", Tags=tags)
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.create_stream(StreamName="t2", Tags=tags)


def test_tag_edges_accepted(kv: Any) -> None:
    tags = {"k" * 128: "v" * 256, "ключ é 1 _.:/=+-@": "значение"}
    kv.create_stream(StreamName="edges", Tags=tags)
    assert kv.list_tags_for_stream(StreamName="edges")["Tags"] == tags


def test_untag_limits(kv: Any) -> None:
    kv.create_stream(StreamName="u")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.untag_stream(StreamName="u", TagKeyList=[f"k{i}" for i in range(51)])
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.untag_stream(StreamName="u", TagKeyList=["k" * 129])


# -- GetDataEndpoint --------------------------------------------------------------------


def test_api_names_match_the_model() -> None:
    model = _model("kinesisvideo")
    assert set(model["shapes"]["APIName"]["enum"]) == API_NAMES


@pytest.mark.parametrize("api_name", sorted(API_NAMES))
def test_get_data_endpoint(emulator: Emulator, kv: Any, api_name: str) -> None:
    arn = kv.create_stream(StreamName="ep")["StreamARN"]
    endpoint = kv.get_data_endpoint(StreamName="ep", APIName=api_name)["DataEndpoint"]
    assert endpoint == emulator.endpoint_url
    assert kv.get_data_endpoint(StreamARN=arn, APIName=api_name)["DataEndpoint"] == endpoint


def test_get_data_endpoint_errors(kv: Any) -> None:
    kv.create_stream(StreamName="ep")
    with pytest.raises(kv.exceptions.InvalidArgumentException):
        kv.get_data_endpoint(StreamName="ep", APIName="PUT_CLIP")
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.get_data_endpoint(StreamName="nothing", APIName="GET_MEDIA")


def test_get_data_endpoint_is_fixed_not_the_host_header(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    # The service answers one fixed endpoint, whatever Host the request carried.
    port = emulator.endpoint_url.rsplit(":", 1)[1]
    client = make_client("kinesisvideo", f"http://localhost:{port}")
    client.create_stream(StreamName="by-host")
    endpoint = client.get_data_endpoint(StreamName="by-host", APIName="GET_MEDIA")
    assert endpoint["DataEndpoint"] == emulator.endpoint_url


def test_advertised_url(make_client: ClientFactory) -> None:
    with Emulator(advertised_url="http://kvs.example:1234") as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        client.create_stream(StreamName="adv")
        endpoint = client.get_data_endpoint(StreamName="adv", APIName="PUT_MEDIA")
        assert endpoint["DataEndpoint"] == "http://kvs.example:1234"


# -- wire shapes ------------------------------------------------------------------------


def test_error_wire_shape() -> None:
    with Emulator() as emu:  # no credentials: unsigned raw requests pass
        response = raw_post(emu.endpoint_url, "/describeStream", b'{"StreamName":"nope"}')
        assert response.status == 404
        assert response.headers["x-amzn-errortype"] == "ResourceNotFoundException"
        assert response.headers["content-type"].startswith("application/json")
        assert "x-amzn-requestid" in response.headers
        assert set(response.json()) == {"Message"}

        response = raw_post(emu.endpoint_url, "/describeStream", b"{not json")
        assert response.status == 400
        assert response.headers["x-amzn-errortype"] == "SerializationException"

        response = raw_post(emu.endpoint_url, "/describeStream", b"[1, 2]")
        assert response.headers["x-amzn-errortype"] == "SerializationException"

        response = raw_post(emu.endpoint_url, "/createStream", b'{"StreamName": 5}')
        assert response.status == 400
        assert response.headers["x-amzn-errortype"] == "InvalidArgumentException"

        response = raw_post(emu.endpoint_url, "/createStream", b"{}")
        assert response.headers["x-amzn-errortype"] == "InvalidArgumentException"

        response = raw_post(emu.endpoint_url, "/noSuchOperation")
        assert response.status == 404
        assert response.headers["x-amzn-errortype"] == "UnknownOperationException"

        response = raw_post(
            emu.endpoint_url,
            "/createStream",
            b'{"StreamName":"x","DataRetentionInHours":true}',
        )
        assert response.headers["x-amzn-errortype"] == "InvalidArgumentException"


def test_error_statuses_match_the_model() -> None:
    from kvs_toolkit.emulator import errors

    model = _model("kinesisvideo")
    for cls in (
        errors.ResourceNotFoundError,
        errors.ResourceInUseError,
        errors.InvalidArgumentError,
        errors.ClientLimitExceededError,
        errors.NotAuthorizedError,
        errors.VersionMismatchError,
        errors.TagsPerResourceExceededLimitError,
        errors.AccountStreamLimitExceededError,
    ):
        assert model["shapes"][cls.code]["error"]["httpStatusCode"] == cls.status, cls.code


def test_endpoint_url_environment_variable(
    emulator: Emulator, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS_VIDEO", emulator.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    client = make_client("kinesisvideo", None)
    assert client.meta.endpoint_url == emulator.endpoint_url
    client.create_stream(StreamName="via-env")
    assert client.describe_stream(StreamName="via-env")["StreamInfo"]["Status"] == "ACTIVE"


def test_restart_keeps_streams(tmp_path: Path, make_client: ClientFactory) -> None:
    from kvs_toolkit.emulator import FragmentMeta

    with Emulator(data_dir=tmp_path, credentials=CREDENTIALS) as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        arn = client.create_stream(StreamName="durable", DataRetentionInHours=3, Tags={"x": "y"})[
            "StreamARN"
        ]
        info = client.describe_stream(StreamName="durable")["StreamInfo"]
        record = emu.store.sync.append_fragment("durable", b"abc", FragmentMeta(1000, 40))
    with Emulator(data_dir=tmp_path, credentials=CREDENTIALS) as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        assert client.describe_stream(StreamARN=arn)["StreamInfo"] == info
        assert client.list_tags_for_stream(StreamName="durable")["Tags"] == {"x": "y"}
        again = emu.store.sync.get_fragment("durable", record.fragment_number)
        assert again == record
        assert emu.store.sync.read_payload(record) == b"abc"
    assert (tmp_path / "index.sqlite3").exists()
