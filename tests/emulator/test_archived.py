"""ListFragments through the kinesis-video-archived-media boto3 client."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from botocore.config import Config

from kvs_toolkit.emulator import Emulator, FragmentMeta, FragmentRecord

from .conftest import ClientFactory
from .helpers import raw_post

START_MS = 1_700_000_000_000


def _ms(value: datetime.datetime) -> int:
    return round(value.timestamp() * 1000)


def _seconds(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)


@pytest.fixture
def filled(emulator: Emulator, kv: Any) -> list[FragmentRecord]:
    kv.create_stream(StreamName="cam", DataRetentionInHours=24)
    now = int(time.time() * 1000)
    return [
        emulator.store.sync.append_fragment(
            "cam",
            b"x" * (100 + i),
            FragmentMeta(
                producer_timestamp_ms=START_MS + i * 2000 + 7,
                duration_ms=2000 + i,
                server_timestamp_ms=now - 25_000 + i * 1000,
            ),
        )
        for i in range(25)
    ]


def _numbers(fragments: list[dict[str, Any]]) -> list[str]:
    return sorted(f["FragmentNumber"] for f in fragments)


def test_list_all_fragments(archived: Any, filled: list[FragmentRecord]) -> None:
    result = archived.list_fragments(StreamName="cam", MaxResults=1000)
    assert "NextToken" not in result
    fragments = sorted(result["Fragments"], key=lambda f: f["FragmentNumber"])
    assert [f["FragmentNumber"] for f in fragments] == [r.fragment_number for r in filled]
    for fragment, record in zip(fragments, filled, strict=True):
        assert fragment["FragmentSizeInBytes"] == record.size
        assert fragment["FragmentLengthInMilliseconds"] == record.duration_ms
        assert _ms(fragment["ProducerTimestamp"]) == record.producer_timestamp_ms
        assert _ms(fragment["ServerTimestamp"]) == record.server_timestamp_ms
    # The default page size is 100: everything fits.
    assert len(archived.list_fragments(StreamName="cam")["Fragments"]) == 25


def test_producer_timestamp_selector_with_pagination(
    archived: Any, filled: list[FragmentRecord]
) -> None:
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {
            "StartTimestamp": _seconds(filled[3].producer_timestamp_ms),
            "EndTimestamp": _seconds(filled[20].producer_timestamp_ms),
        },
    }
    first = archived.list_fragments(StreamName="cam", FragmentSelector=selector, MaxResults=5)
    assert len(first["Fragments"]) == 5
    assert "NextToken" in first
    pages = archived.get_paginator("list_fragments").paginate(
        StreamName="cam", FragmentSelector=selector, PaginationConfig={"PageSize": 4}
    )
    got = [f for page in pages for f in page["Fragments"]]
    assert _numbers(got) == [r.fragment_number for r in filled[3:21]]


def test_server_timestamp_selector(
    archived: Any, emulator: Emulator, filled: list[FragmentRecord]
) -> None:
    arn = emulator.store.sync.get_stream("cam").arn
    result = archived.list_fragments(
        StreamARN=arn,
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": _seconds(filled[10].server_timestamp_ms),
                "EndTimestamp": _seconds(filled[12].server_timestamp_ms),
            },
        },
    )
    assert _numbers(result["Fragments"]) == [r.fragment_number for r in filled[10:13]]
    empty = archived.list_fragments(
        StreamName="cam",
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": _seconds(0), "EndTimestamp": _seconds(1000)},
        },
    )
    assert empty["Fragments"] == []


def test_list_fragments_errors(archived: Any, filled: list[FragmentRecord]) -> None:
    with pytest.raises(archived.exceptions.ResourceNotFoundException):
        archived.list_fragments(StreamName="missing")
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(StreamName="cam", MaxResults=1001)
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(StreamName="cam", NextToken="AAAA")
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(
            StreamName="cam",
            FragmentSelector={
                "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {
                    "StartTimestamp": _seconds(2000),
                    "EndTimestamp": _seconds(1000),
                },
            },
        )
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments(
            StreamName="cam",
            FragmentSelector={
                "FragmentSelectorType": "ARRIVAL_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": _seconds(0), "EndTimestamp": _seconds(1)},
            },
        )
    with pytest.raises(archived.exceptions.InvalidArgumentException):
        archived.list_fragments()


def test_list_fragments_raw_selector_errors(
    emulator: Emulator, make_client: ClientFactory, filled: list[FragmentRecord]
) -> None:
    client = make_client(
        "kinesis-video-archived-media",
        emulator.endpoint_url,
        config=Config(parameter_validation=False),
    )
    with pytest.raises(client.exceptions.InvalidArgumentException):
        client.list_fragments(
            StreamName="cam", FragmentSelector={"FragmentSelectorType": "SERVER_TIMESTAMP"}
        )
    with pytest.raises(client.exceptions.InvalidArgumentException):
        client.list_fragments(StreamName="cam", MaxResults=0)
    with Emulator() as open_emu:
        response = raw_post(
            open_emu.endpoint_url,
            "/listFragments",
            b'{"StreamName":"x","FragmentSelector":{"FragmentSelectorType":"SERVER_TIMESTAMP",'
            b'"TimestampRange":{"StartTimestamp":"yesterday","EndTimestamp":1}}}',
        )
        assert response.status == 400
        assert response.headers["x-amzn-errortype"] == "InvalidArgumentException"
