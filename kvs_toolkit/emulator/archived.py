"""Archived media (service ``kinesis-video-archived-media``): ListFragments.

Only the store is needed, so it lives here; GetMediaForFragmentList, GetClip, HLS and
the rest are added by other modules. Shapes follow the botocore model
``kinesis-video-archived-media/2017-09-30``; timestamps are epoch seconds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from kvs_toolkit.emulator.context import EMULATOR, json_response, read_json
from kvs_toolkit.emulator.errors import InvalidArgumentError
from kvs_toolkit.emulator.store import FragmentRecord, TimestampType, decode_fragment_token
from kvs_toolkit.emulator.validation import (
    optional_int,
    optional_str,
    require_object,
    timestamp_ms,
)

__all__ = ["fragment_json", "install", "list_fragments"]

_MAX_RESULTS = 1000  # ListFragmentsMaxResults max
_DEFAULT_RESULTS = 100  # the API reference's default for MaxResults


def fragment_json(record: FragmentRecord) -> dict[str, Any]:
    """A Fragment structure of ListFragments."""
    return {
        "FragmentNumber": record.fragment_number,
        "FragmentSizeInBytes": record.size,
        "ProducerTimestamp": record.producer_timestamp_ms / 1000,
        "ServerTimestamp": record.server_timestamp_ms / 1000,
        "FragmentLengthInMilliseconds": record.duration_ms,
    }


def _timestamp_ms(value: Any, what: str) -> int:
    return timestamp_ms(value, what)


async def list_fragments(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    limit = optional_int(body, "MaxResults")
    if limit is None:
        limit = _DEFAULT_RESULTS
    if not 1 <= limit <= _MAX_RESULTS:
        raise InvalidArgumentError(f"MaxResults {limit} is outside the range 1..{_MAX_RESULTS}.")
    token = optional_str(body, "NextToken")
    after = decode_fragment_token(token) if token else None
    timestamp_type: TimestampType | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    selector = body.get("FragmentSelector")
    if selector is not None:
        selector = require_object(selector, "FragmentSelector")
        kind = selector.get("FragmentSelectorType")
        if kind == "PRODUCER_TIMESTAMP":
            timestamp_type = "PRODUCER_TIMESTAMP"
        elif kind == "SERVER_TIMESTAMP":
            timestamp_type = "SERVER_TIMESTAMP"
        else:
            raise InvalidArgumentError(
                "FragmentSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP."
            )
        if selector.get("TimestampRange") is None:
            raise InvalidArgumentError("TimestampRange is required.")
        time_range = require_object(selector["TimestampRange"], "TimestampRange")
        start_ms = _timestamp_ms(time_range.get("StartTimestamp"), "StartTimestamp")
        end_ms = _timestamp_ms(time_range.get("EndTimestamp"), "EndTimestamp")
        if start_ms > end_ms:
            raise InvalidArgumentError("StartTimestamp must not be later than EndTimestamp.")
    stream = await ctx.resolve_stream(body)
    page = await ctx.store.list_fragments(
        stream.name,
        timestamp_type=timestamp_type,
        start_ms=start_ms,
        end_ms=end_ms,
        after_fragment_number=after,
        limit=limit,
    )
    result: dict[str, Any] = {"Fragments": [fragment_json(f) for f in page.fragments]}
    if page.next_token is not None:
        result["NextToken"] = page.next_token
    return json_response(result)


def install(app: web.Application) -> None:
    """Add the archived-media routes this module serves."""
    app.router.add_post("/listFragments", list_fragments)
