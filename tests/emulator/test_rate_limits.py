"""``Emulator(rate_limits=True)`` / ``kvs emulator --rate-limits``: the service's
per-stream TPS limits, so a client's throttling and back-off can be tried locally."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer import Uploader
from kvs_toolkit.producer.uploader import UploadStats
from tests.emulator.test_hls import archived_client, client
from tests.test_uploader import VIDEO, frame

STREAM = "throttled"
EMPTY_RANGE = {
    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
    "TimestampRange": {"StartTimestamp": 1000, "EndTimestamp": 2000},
}


def emulator_with_stream(*, rate_limits: bool) -> Iterator[Emulator]:
    with Emulator(rate_limits=rate_limits) as emulator:
        client("kinesisvideo", emulator.endpoint_url).create_stream(
            StreamName=STREAM, DataRetentionInHours=1
        )
        yield emulator


@pytest.fixture
def limited() -> Iterator[Emulator]:
    yield from emulator_with_stream(rate_limits=True)


@pytest.fixture
def unlimited() -> Iterator[Emulator]:
    yield from emulator_with_stream(rate_limits=False)


def get_clip_error(archived: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        archived.get_clip(StreamName=STREAM, ClipFragmentSelector=EMPTY_RANGE)
    error = info.value.response["Error"]
    return str(error["Code"]), str(error["Message"])


def test_get_clip_over_one_call_per_second_is_refused(limited: Emulator) -> None:
    archived = archived_client(limited, STREAM, "GET_CLIP")
    assert get_clip_error(archived)[0] == "ResourceNotFoundException"  # the call went in
    assert get_clip_error(archived) == (
        "ClientLimitExceededException",
        f"GetClip on stream {STREAM} is over its limit of 1 calls per second.",
    )
    time.sleep(1.05)  # a second later the bucket has one call again
    assert get_clip_error(archived)[0] == "ResourceNotFoundException"


def test_without_rate_limits_nothing_is_throttled(unlimited: Emulator) -> None:
    archived = archived_client(unlimited, STREAM, "GET_CLIP")
    assert {get_clip_error(archived)[0] for _ in range(4)} == {"ResourceNotFoundException"}


def put_media_answer(endpoint: str) -> tuple[int, str]:
    """An empty PutMedia (headers only): the status and error type the emulator answers."""
    request = urllib.request.Request(
        f"{endpoint}/putMedia",
        data=b"",
        method="POST",
        headers={
            "x-amzn-stream-name": STREAM,
            "x-amzn-fragment-timecode-type": "ABSOLUTE",
            "x-amzn-producer-start-timestamp": "1790000000.000",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status), ""
    except urllib.error.HTTPError as error:
        return int(error.code), str(error.headers.get("x-amzn-ErrorType", ""))


def test_put_media_over_five_calls_per_second_is_refused_and_the_uploader_backs_off(
    limited: Emulator,
) -> None:
    endpoint = limited.endpoint_url
    started = time.monotonic()
    accepted = 0
    for _ in range(30):  # calls in a row until one is refused
        status, error_type = put_media_answer(endpoint)
        if status != 200:
            break
        accepted += 1
    elapsed = time.monotonic() - started
    assert (status, error_type.split(":")[0]) == (400, "ClientLimitExceededException")
    # a burst of 5, then 5 more per second (however slow this machine is)
    assert 5 <= accepted <= 5 + 5 * elapsed + 1

    async def upload() -> UploadStats:
        # the bucket is empty: the first connection is refused, a later one goes in
        uploader = Uploader(endpoint, STREAM, [VIDEO], fragment_duration_ms=1000)
        await uploader.start()
        for i in range(20):
            uploader.put_frame(frame(i))
        return await uploader.close(timeout=20)

    stats = asyncio.run(upload())
    assert stats.connection_failures >= 1 and stats.acked == 2 and stats.all_acknowledged
