"""Signaling channels in the emulator's control plane, through boto3."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvs_toolkit.emulator import Emulator
from tests.webrtc.conftest import client


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_create_describe_list_update_delete(kv: Any) -> None:
    arn = kv.create_signaling_channel(
        ChannelName="front-door",
        SingleMasterConfiguration={"MessageTtlSeconds": 30},
        Tags=[{"Key": "site", "Value": "home"}],
    )["ChannelARN"]
    assert arn.startswith("arn:aws:kinesisvideo:us-east-1:123456789012:channel/front-door/")
    info = kv.describe_signaling_channel(ChannelName="front-door")["ChannelInfo"]
    assert info["ChannelARN"] == arn
    assert info["ChannelType"] == "SINGLE_MASTER"
    assert info["ChannelStatus"] == "ACTIVE"
    assert info["SingleMasterConfiguration"] == {"MessageTtlSeconds": 30}
    assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"] == info

    kv.update_signaling_channel(
        ChannelARN=arn,
        CurrentVersion=info["Version"],
        SingleMasterConfiguration={"MessageTtlSeconds": 90},
    )
    updated = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
    assert updated["SingleMasterConfiguration"] == {"MessageTtlSeconds": 90}
    assert updated["Version"] != info["Version"]
    with pytest.raises(ClientError) as exc:  # the old version is stale now
        kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=info["Version"])
    assert _code(exc) == "VersionMismatchException"
    kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=updated["Version"])
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_signaling_channel(ChannelName="front-door")


def test_list_pagination_and_prefix(kv: Any) -> None:
    for name in ["cam-a", "cam-b", "cam-c", "door"]:
        kv.create_signaling_channel(ChannelName=name)
    names: list[str] = []
    pages = kv.get_paginator("list_signaling_channels").paginate(
        ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam"},
        PaginationConfig={"PageSize": 2},
    )
    page_sizes = []
    for page in pages:
        page_sizes.append(len(page["ChannelInfoList"]))
        names += [c["ChannelName"] for c in page["ChannelInfoList"]]
    assert names == ["cam-a", "cam-b", "cam-c"]
    assert page_sizes == [2, 1]
    everything = kv.list_signaling_channels()["ChannelInfoList"]
    assert [c["ChannelName"] for c in everything] == ["cam-a", "cam-b", "cam-c", "door"]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"ChannelName": "bad name"}, "InvalidArgumentException"),
        ({"ChannelName": "x" * 257}, "InvalidArgumentException"),
        (
            {"ChannelName": "ok", "SingleMasterConfiguration": {"MessageTtlSeconds": 121}},
            "InvalidArgumentException",
        ),
        (
            {"ChannelName": "ok", "SingleMasterConfiguration": {"MessageTtlSeconds": 4}},
            "InvalidArgumentException",
        ),
        ({"ChannelName": "ok", "ChannelType": "FULL_MESH"}, "InvalidArgumentException"),
        (
            {"ChannelName": "ok", "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]},
            "TagsPerResourceExceededLimitException",
        ),
    ],
)
def test_create_validation(kv: Any, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ClientError) as exc:
        kv.create_signaling_channel(**kwargs)
    assert _code(exc) == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_duplicate_and_missing(kv: Any) -> None:
    arn = kv.create_signaling_channel(ChannelName="one")["ChannelARN"]
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.create_signaling_channel(ChannelName="one")
    with pytest.raises(kv.exceptions.ResourceNotFoundException):
        kv.describe_signaling_channel(ChannelARN=arn.replace("/one/", "/two/"))
    with pytest.raises(ClientError) as exc:
        kv.describe_signaling_channel(ChannelARN="arn:aws:nope")
    assert _code(exc) == "InvalidArgumentException"


def test_tags_on_channel_arns(kv: Any) -> None:
    arn = kv.create_signaling_channel(ChannelName="tagged")["ChannelARN"]
    kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}])
    kv.untag_resource(ResourceARN=arn, TagKeyList=["a"])
    assert kv.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"b": "2"}
    with pytest.raises(ClientError) as exc:
        kv.tag_resource(ResourceARN=arn, Tags=[{"Key": "aws:x", "Value": "1"}])
    assert _code(exc) == "InvalidArgumentException"


def test_endpoints_and_ice_config(emulator: Emulator, kv: Any) -> None:
    arn = kv.create_signaling_channel(ChannelName="ep")["ChannelARN"]
    endpoints = kv.get_signaling_channel_endpoint(
        ChannelARN=arn,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"},
    )["ResourceEndpointList"]
    by_protocol = {e["Protocol"]: e["ResourceEndpoint"] for e in endpoints}
    assert by_protocol["WSS"].startswith("wss://127.0.0.1:")
    assert by_protocol["HTTPS"] == emulator.endpoint_url
    with pytest.raises(ClientError) as exc:  # WEBRTC needs storage enabled
        kv.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
        )
    assert _code(exc) == "InvalidArgumentException"
    signaling = client("kinesis-video-signaling", emulator)
    answer = signaling.get_ice_server_config(ChannelARN=arn, ClientId="viewer-1")
    assert answer["IceServerList"] == []
    with pytest.raises(signaling.exceptions.ResourceNotFoundException):
        signaling.get_ice_server_config(ChannelARN=arn.replace("/ep/", "/none/"))


def test_media_storage_configuration(kv: Any) -> None:
    channel = kv.create_signaling_channel(ChannelName="stored")["ChannelARN"]
    kept = kv.create_stream(StreamName="kept", DataRetentionInHours=2)["StreamARN"]
    unkept = kv.create_stream(StreamName="unkept")["StreamARN"]
    described = kv.describe_media_storage_configuration(ChannelARN=channel)
    assert described["MediaStorageConfiguration"] == {"Status": "DISABLED"}
    with pytest.raises(ClientError) as exc:
        kv.update_media_storage_configuration(
            ChannelARN=channel,
            MediaStorageConfiguration={"StreamARN": unkept, "Status": "ENABLED"},
        )
    assert _code(exc) == "NoDataRetentionException"
    kv.update_media_storage_configuration(
        ChannelARN=channel, MediaStorageConfiguration={"StreamARN": kept, "Status": "ENABLED"}
    )
    described = kv.describe_media_storage_configuration(ChannelName="stored")
    assert described["MediaStorageConfiguration"] == {"StreamARN": kept, "Status": "ENABLED"}
    other = kv.create_signaling_channel(ChannelName="other")["ChannelARN"]
    with pytest.raises(kv.exceptions.ResourceInUseException):
        kv.update_media_storage_configuration(
            ChannelARN=other, MediaStorageConfiguration={"StreamARN": kept, "Status": "ENABLED"}
        )
    endpoints = kv.get_signaling_channel_endpoint(
        ChannelARN=channel,
        SingleMasterChannelEndpointConfiguration={"Protocols": ["WEBRTC"], "Role": "MASTER"},
    )["ResourceEndpointList"]
    assert [e["Protocol"] for e in endpoints] == ["WEBRTC"]


def test_channels_survive_a_restart(tmp_path: Any) -> None:
    from tests.webrtc.conftest import ACCESS_KEY, SECRET

    with Emulator(data_dir=tmp_path, credentials={ACCESS_KEY: SECRET}) as emu:
        made = client("kinesisvideo", emu)
        arn = made.create_signaling_channel(ChannelName="kept")["ChannelARN"]
        made.close()
    with Emulator(data_dir=tmp_path, credentials={ACCESS_KEY: SECRET}) as emu:
        made = client("kinesisvideo", emu)
        assert (
            made.describe_signaling_channel(ChannelName="kept")["ChannelInfo"]["ChannelARN"] == arn
        )
        made.close()


def test_service_ice_servers_from_the_emulator(emulator: Emulator, kv: Any) -> None:
    """A local endpoint: no STUN server, and the emulator's (empty) TURN list."""
    from kvs_toolkit.webrtc.client import resolve_channel, service_ice_servers
    from tests.webrtc.conftest import aws_for

    kv.create_signaling_channel(ChannelName="ice")
    aws = aws_for(emulator)
    endpoint = resolve_channel(aws, "ice", "VIEWER")
    assert endpoint.https_url == emulator.endpoint_url
    assert service_ice_servers(aws, endpoint, "viewer-1") == []
