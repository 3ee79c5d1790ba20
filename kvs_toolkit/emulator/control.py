"""The control plane (service ``kinesisvideo``): REST-JSON, every operation a POST.

URIs, members, limits and error shapes follow the botocore model
``kinesisvideo/2017-09-30``. Signaling channels, edge and storage configuration are
not emulated.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from kvs_toolkit.emulator.context import EMULATOR, EmulatorContext, json_response, read_json
from kvs_toolkit.emulator.errors import InvalidArgumentError
from kvs_toolkit.emulator.store import StreamRecord, decode_token, encode_token
from kvs_toolkit.emulator.validation import (
    MAX_RETENTION_HOURS,
    MAX_TAGS_PER_STREAM,
    optional_int,
    optional_str,
    parse_stream_arn,
    require_object,
    validate_device_name,
    validate_kms_key_id,
    validate_media_type,
    validate_stream_name,
    validate_tag_key,
    validate_tags,
    validate_version,
)

__all__ = ["API_NAMES", "install", "stream_info"]

logger = logging.getLogger(__name__)

API_NAMES = frozenset(
    {
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_DASH_STREAMING_SESSION_URL",
        "GET_CLIP",
        "GET_IMAGES",
    }
)
_MAX_LIST_STREAMS = 10000  # ListStreamsInputLimit max (and the default)


def stream_info(stream: StreamRecord) -> dict[str, Any]:
    """A StreamInfo structure; CreationTime in epoch seconds (the JSON timestamp format)."""
    info: dict[str, Any] = {
        "StreamName": stream.name,
        "StreamARN": stream.arn,
        "KmsKeyId": stream.kms_key_id,
        "Version": stream.version,
        "Status": stream.status,
        "CreationTime": stream.creation_time_ms / 1000,
        "DataRetentionInHours": stream.retention_hours,
    }
    if stream.device_name is not None:
        info["DeviceName"] = stream.device_name
    if stream.media_type is not None:
        info["MediaType"] = stream.media_type
    return info


def _required_str(body: dict[str, Any], key: str) -> str:
    value = optional_str(body, key)
    if value is None:
        raise InvalidArgumentError(f"{key} is required.")
    return value


def _required_int(body: dict[str, Any], key: str) -> int:
    value = optional_int(body, key)
    if value is None:
        raise InvalidArgumentError(f"{key} is required.")
    return value


async def _finish_create(ctx: EmulatorContext, name: str) -> None:
    await asyncio.sleep(ctx.config.state_delay)
    await ctx.store.set_status(name, "ACTIVE")


async def finish_delete(ctx: EmulatorContext, stream: StreamRecord, delay: float = 0.0) -> None:
    """Remove a DELETING stream and its fragments, and wake its readers."""
    if delay > 0:
        await asyncio.sleep(delay)
    await ctx.store.purge_stream(stream.stream_id)
    ctx.events.notify_deleted(stream.name)
    logger.info("deleted stream %s", stream.name)


async def create_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    name = validate_stream_name(_required_str(body, "StreamName"))
    retention = optional_int(body, "DataRetentionInHours")
    if retention is None:
        retention = 0
    if not 0 <= retention <= MAX_RETENTION_HOURS:
        raise InvalidArgumentError(
            f"DataRetentionInHours {retention} is outside the range 0..{MAX_RETENTION_HOURS}."
        )
    kms_key_id = optional_str(body, "KmsKeyId")
    media_type = optional_str(body, "MediaType")
    device_name = optional_str(body, "DeviceName")
    tags: dict[str, str] = {}
    if body.get("Tags") is not None:
        tags = validate_tags(body["Tags"])
        if not tags:
            raise InvalidArgumentError("Tags must have at least one entry.")
    storage = body.get("StreamStorageConfiguration")
    if storage is not None:
        tier = require_object(storage, "StreamStorageConfiguration").get("DefaultStorageTier")
        if tier not in ("HOT", "WARM"):
            raise InvalidArgumentError("DefaultStorageTier must be HOT or WARM.")
    delayed = ctx.config.state_delay > 0
    stream = await ctx.store.create_stream(
        name,
        region=ctx.request_region(request),
        account_id=ctx.config.account_id,
        retention_hours=retention,
        kms_key_id=None if kms_key_id is None else validate_kms_key_id(kms_key_id),
        media_type=None if media_type is None else validate_media_type(media_type),
        device_name=None if device_name is None else validate_device_name(device_name),
        tags=tags,
        status="CREATING" if delayed else "ACTIVE",
    )
    if delayed:
        ctx.spawn(_finish_create(ctx, name), name=f"create {name}")
    logger.info("created stream %s", stream.arn)
    return json_response({"StreamARN": stream.arn})


async def describe_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    stream = await ctx.resolve_stream(await read_json(request))
    return json_response({"StreamInfo": stream_info(stream)})


async def list_streams(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    limit = optional_int(body, "MaxResults")
    if limit is None:
        limit = _MAX_LIST_STREAMS
    if not 1 <= limit <= _MAX_LIST_STREAMS:
        raise InvalidArgumentError(
            f"MaxResults {limit} is outside the range 1..{_MAX_LIST_STREAMS}."
        )
    after: str | None = None
    token = optional_str(body, "NextToken")
    if token:
        after_value = decode_token(token).get("after")
        if not isinstance(after_value, str):
            raise InvalidArgumentError("NextToken is not valid")
        after = after_value
    prefix: str | None = None
    condition = body.get("StreamNameCondition")
    if condition is not None:
        condition = require_object(condition, "StreamNameCondition")
        operator = optional_str(condition, "ComparisonOperator")
        if operator is not None and operator != "BEGINS_WITH":
            raise InvalidArgumentError(f"ComparisonOperator {operator!r} is not BEGINS_WITH.")
        value = optional_str(condition, "ComparisonValue")
        if value is not None:
            prefix = validate_stream_name(value)
    streams, more = await ctx.store.list_streams(prefix=prefix, after_name=after, limit=limit)
    result: dict[str, Any] = {"StreamInfoList": [stream_info(s) for s in streams]}
    if more:
        result["NextToken"] = encode_token({"after": streams[-1].name})
    return json_response(result)


async def delete_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    # The model requires StreamARN here (no StreamName member).
    arn = _required_str(body, "StreamARN")
    parse_stream_arn(arn)
    version = optional_str(body, "CurrentVersion")
    if version is not None:
        validate_version(version)
    stream = await ctx.store.get_stream_by_arn(arn)
    stream = await ctx.store.begin_delete(stream.name, version)
    delay = ctx.config.state_delay
    if delay > 0:
        ctx.spawn(finish_delete(ctx, stream, delay), name=f"delete {stream.name}")
    else:
        await finish_delete(ctx, stream)
    return json_response({})


async def update_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    version = validate_version(_required_str(body, "CurrentVersion"))
    device_name = optional_str(body, "DeviceName")
    media_type = optional_str(body, "MediaType")
    stream = await ctx.resolve_stream(body)
    await ctx.store.update_stream(
        stream.name,
        version,
        device_name=None if device_name is None else validate_device_name(device_name),
        media_type=None if media_type is None else validate_media_type(media_type),
    )
    return json_response({})


async def update_data_retention(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    version = validate_version(_required_str(body, "CurrentVersion"))
    operation = _required_str(body, "Operation")
    change = _required_int(body, "DataRetentionChangeInHours")
    if operation not in ("INCREASE_DATA_RETENTION", "DECREASE_DATA_RETENTION"):
        raise InvalidArgumentError(
            f"Operation {operation!r} is not INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION."
        )
    if change < 1:
        raise InvalidArgumentError("DataRetentionChangeInHours must be at least 1.")
    stream = await ctx.resolve_stream(body)
    delta = change if operation == "INCREASE_DATA_RETENTION" else -change
    await ctx.store.change_retention(stream.name, version, delta)
    return json_response({})


async def tag_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    if body.get("Tags") is None:
        raise InvalidArgumentError("Tags is required.")
    tags = validate_tags(body["Tags"])
    if not tags:
        raise InvalidArgumentError("Tags must have at least one entry.")
    stream = await ctx.resolve_stream(body)
    await ctx.store.tag_stream(stream.name, tags)
    return json_response({})


async def untag_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    keys = body.get("TagKeyList")
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_TAGS_PER_STREAM:
        raise InvalidArgumentError(
            f"TagKeyList must be a list of 1..{MAX_TAGS_PER_STREAM} tag keys."
        )
    checked = [validate_tag_key(key) for key in keys]
    stream = await ctx.resolve_stream(body)
    await ctx.store.untag_stream(stream.name, checked)
    return json_response({})


async def list_tags_for_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    optional_str(body, "NextToken")  # all of a stream's (at most 50) tags fit one page
    stream = await ctx.resolve_stream(body)
    return json_response({"Tags": dict(stream.tags)})


async def get_data_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    api_name = _required_str(body, "APIName")
    if api_name not in API_NAMES:
        raise InvalidArgumentError(
            f"APIName {api_name!r} is not one of {', '.join(sorted(API_NAMES))}."
        )
    await ctx.resolve_stream(body)
    # The emulator serves every API itself.
    return json_response({"DataEndpoint": ctx.data_endpoint(request)})


def install(app: web.Application) -> None:
    """Add the control-plane routes to an emulator application."""
    app.router.add_routes(
        [
            web.post("/createStream", create_stream),
            web.post("/describeStream", describe_stream),
            web.post("/listStreams", list_streams),
            web.post("/deleteStream", delete_stream),
            web.post("/updateStream", update_stream),
            web.post("/updateDataRetention", update_data_retention),
            web.post("/tagStream", tag_stream),
            web.post("/untagStream", untag_stream),
            web.post("/listTagsForStream", list_tags_for_stream),
            web.post("/getDataEndpoint", get_data_endpoint),
        ]
    )
