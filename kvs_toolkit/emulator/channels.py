"""Signaling channels in the control plane (service ``kinesisvideo``).

CreateSignalingChannel, DescribeSignalingChannel, ListSignalingChannels,
UpdateSignalingChannel, DeleteSignalingChannel, TagResource / UntagResource /
ListTagsForResource on channel ARNs, GetSignalingChannelEndpoint and the media storage
configuration (Update/DescribeMediaStorageConfiguration). URIs, members, limits and
error shapes follow the botocore model ``kinesisvideo/2017-09-30`` and the WebRTC
developer guide's quotas (see docs/kvs-wire.md).

:class:`ChannelRegistry` is the state: a dict owned by the emulator's event loop (every
handler runs there, so no lock), written through to ``signaling/channels.json`` in the
data directory with an atomic rename, so channels survive a restart as streams do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kvs_toolkit.emulator.context import EMULATOR, json_response, read_json
from kvs_toolkit.emulator.errors import (
    InvalidArgumentError,
    ResourceInUseError,
    ResourceNotFoundError,
    ServiceError,
    TagsPerResourceExceededLimitError,
    VersionMismatchError,
)
from kvs_toolkit.emulator.store import decode_token, encode_token
from kvs_toolkit.emulator.validation import (
    MAX_TAGS_PER_STREAM,
    optional_int,
    optional_str,
    parse_stream_arn,
    require_object,
    validate_tag_key,
    validate_tags,
    validate_version,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_MESSAGE_TTL_SECONDS",
    "ChannelRecord",
    "ChannelRegistry",
    "NoDataRetentionError",
    "install",
    "parse_channel_arn",
]

logger = logging.getLogger(__name__)

DEFAULT_MESSAGE_TTL_SECONDS: Final = 60  # SingleMasterConfiguration's documented default
MIN_MESSAGE_TTL_SECONDS: Final = 5
MAX_MESSAGE_TTL_SECONDS: Final = 120
MAX_CHANNELS: Final = 10_000  # channels per account in us-east-1 / us-west-2
_DEFAULT_LIST_LIMIT: Final = 500  # ListSignalingChannels' documented default
_MAX_LIST_LIMIT: Final = 10_000
_CHANNEL_NAME = re.compile(r"[a-zA-Z0-9_.-]+")
_ARN = re.compile(
    r"arn:([a-z\d-]+):kinesisvideo:([a-z0-9-]+):([0-9]+):([a-z]+)/([a-zA-Z0-9_.-]+)/([0-9]+)"
)
_PROTOCOLS: Final = ("WSS", "HTTPS", "WEBRTC")
_ROLES: Final = ("MASTER", "VIEWER")


class NoDataRetentionError(ServiceError):
    """UpdateMediaStorageConfiguration with a stream that keeps no data."""

    code = "NoDataRetentionException"
    status = 400


class AccountChannelLimitExceededError(ServiceError):
    code = "AccountChannelLimitExceededException"
    status = 400


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """One signaling channel as the control plane describes it."""

    name: str
    arn: str
    creation_time_ms: int
    version: str
    message_ttl_seconds: int = DEFAULT_MESSAGE_TTL_SECONDS
    channel_type: str = "SINGLE_MASTER"
    status: str = "ACTIVE"
    tags: dict[str, str] = field(default_factory=dict)
    storage_stream_arn: str | None = None
    storage_status: str = "DISABLED"

    def info(self) -> dict[str, Any]:
        """The ChannelInfo structure (CreationTime in epoch seconds, the JSON timestamp)."""
        return {
            "ChannelName": self.name,
            "ChannelARN": self.arn,
            "ChannelType": self.channel_type,
            "ChannelStatus": self.status,
            "CreationTime": self.creation_time_ms / 1000,
            "SingleMasterConfiguration": {"MessageTtlSeconds": self.message_ttl_seconds},
            "Version": self.version,
        }


def _new_version() -> str:
    return secrets.token_hex(10)


def validate_channel_name(name: str, what: str = "ChannelName") -> str:
    if not 1 <= len(name) <= 256:
        raise InvalidArgumentError(f"{what} length {len(name)} is outside the range 1..256")
    if not _CHANNEL_NAME.fullmatch(name):
        raise InvalidArgumentError(f"{what} {name!r} must match the pattern [a-zA-Z0-9_.-]+")
    return name


def parse_channel_arn(arn: str, what: str = "ChannelARN") -> str:
    """Check a channel ARN against the model's pattern; return the channel name in it."""
    if not 1 <= len(arn) <= 1024:
        raise InvalidArgumentError(f"{what} length {len(arn)} is outside the range 1..1024")
    match = _ARN.fullmatch(arn)
    if match is None:
        raise InvalidArgumentError(f"{what} {arn!r} is not a valid ARN")
    if match.group(4) != "channel":
        raise ResourceNotFoundError(f"{what} {arn!r} is not a signaling channel.")
    return match.group(5)


def _message_ttl(config: Any) -> int | None:
    if config is None:
        return None
    ttl = optional_int(require_object(config, "SingleMasterConfiguration"), "MessageTtlSeconds")
    if ttl is not None and not MIN_MESSAGE_TTL_SECONDS <= ttl <= MAX_MESSAGE_TTL_SECONDS:
        raise InvalidArgumentError(
            f"MessageTtlSeconds {ttl} is outside the range "
            f"{MIN_MESSAGE_TTL_SECONDS}..{MAX_MESSAGE_TTL_SECONDS}."
        )
    return ttl


def _tag_list(value: Any, *, allow_empty: bool) -> dict[str, str]:
    """A TagList (``[{"Key", "Value"}]``, at most 50) as a dict."""
    if not isinstance(value, list):
        raise InvalidArgumentError("Tags must be a list of {Key, Value} objects")
    if len(value) > MAX_TAGS_PER_STREAM:
        raise TagsPerResourceExceededLimitError(
            f"{len(value)} tags exceed the limit of {MAX_TAGS_PER_STREAM} tags per resource"
        )
    if not value and not allow_empty:
        raise InvalidArgumentError("Tags must have at least one entry.")
    pairs: dict[str, Any] = {}
    for item in value:
        tag = require_object(item, "Tag")
        key, tag_value = tag.get("Key"), tag.get("Value")
        if key is None or tag_value is None:
            raise InvalidArgumentError("every tag needs a Key and a Value")
        pairs[validate_tag_key(key)] = tag_value
    return validate_tags(pairs)


class ChannelRegistry:
    """The emulator's signaling channels, by name (see the module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path: Path | None = None
        self._channels: dict[str, ChannelRecord] = {}
        if path is not None:
            self.load(path)

    def load(self, path: Path) -> None:
        """Read the channels saved at ``path`` (if any) and save there from now on."""
        self._path = path
        self._channels.clear()
        if path.exists():
            try:
                rows = json.loads(path.read_text("utf-8"))
                for row in rows:
                    record = ChannelRecord(**row)
                    self._channels[record.name] = record
            except (OSError, ValueError, TypeError) as exc:
                logger.error("ignoring unreadable channel file %s: %s", path, exc)

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(c) for c in self._channels.values()]), "utf-8")
        os.replace(tmp, self._path)

    def __iter__(self) -> Iterator[ChannelRecord]:
        return iter(sorted(self._channels.values(), key=lambda c: c.name))

    def get(self, name: str) -> ChannelRecord:
        record = self._channels.get(name)
        if record is None:
            raise ResourceNotFoundError(f"The requested channel {name} is not found.")
        return record

    def get_by_arn(self, arn: str) -> ChannelRecord:
        record = self._channels.get(parse_channel_arn(arn))
        if record is None or record.arn != arn:
            raise ResourceNotFoundError(f"The requested channel {arn} is not found.")
        return record

    def create(
        self, name: str, *, region: str, account_id: str, ttl: int, tags: dict[str, str]
    ) -> ChannelRecord:
        if name in self._channels:
            raise ResourceInUseError(f"The signaling channel {name} already exists.")
        if len(self._channels) >= MAX_CHANNELS:
            raise AccountChannelLimitExceededError(
                f"The account already has {MAX_CHANNELS} signaling channels."
            )
        now_ms = int(time.time() * 1000)
        arn = f"arn:aws:kinesisvideo:{region}:{account_id}:channel/{name}/{now_ms}"
        record = ChannelRecord(
            name=name,
            arn=arn,
            creation_time_ms=now_ms,
            version=_new_version(),
            message_ttl_seconds=ttl,
            tags=tags,
        )
        self._channels[name] = record
        self._save()
        return record

    def put(self, record: ChannelRecord, *, new_version: bool = False) -> ChannelRecord:
        if new_version:
            record = replace(record, version=_new_version())
        self._channels[record.name] = record
        self._save()
        return record

    def delete(self, record: ChannelRecord) -> None:
        self._channels.pop(record.name, None)
        self._save()


CHANNELS = web.AppKey("kvs_signaling_channels", ChannelRegistry)


def _registry(request: web.Request) -> ChannelRegistry:
    return request.app[CHANNELS]


def _required_str(body: dict[str, Any], key: str) -> str:
    value = optional_str(body, key)
    if value is None:
        raise InvalidArgumentError(f"{key} is required.")
    return value


def _check_version(record: ChannelRecord, version: str | None) -> None:
    if version is not None and validate_version(version) != record.version:
        raise VersionMismatchError(
            f"The version {version} does not match the channel's current version."
        )


def resolve_channel(request: web.Request, body: dict[str, Any]) -> ChannelRecord:
    """The channel named by ``ChannelName`` or ``ChannelARN`` (one is required)."""
    name = optional_str(body, "ChannelName")
    arn = optional_str(body, "ChannelARN")
    registry = _registry(request)
    if name is None and arn is None:
        raise InvalidArgumentError("Either ChannelName or ChannelARN must be specified.")
    if arn is not None:
        record = registry.get_by_arn(arn)
        if name is not None and validate_channel_name(name) != record.name:
            raise InvalidArgumentError("ChannelName and ChannelARN do not name the same channel.")
        return record
    assert name is not None
    return registry.get(validate_channel_name(name))


async def create_signaling_channel(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    name = validate_channel_name(_required_str(body, "ChannelName"))
    channel_type = optional_str(body, "ChannelType") or "SINGLE_MASTER"
    if channel_type != "SINGLE_MASTER":
        raise InvalidArgumentError(
            f"ChannelType {channel_type!r} is not supported: SINGLE_MASTER is the only type."
        )
    ttl = _message_ttl(body.get("SingleMasterConfiguration"))
    tags = {} if body.get("Tags") is None else _tag_list(body["Tags"], allow_empty=True)
    record = _registry(request).create(
        name,
        region=ctx.request_region(request),
        account_id=ctx.config.account_id,
        ttl=DEFAULT_MESSAGE_TTL_SECONDS if ttl is None else ttl,
        tags=tags,
    )
    logger.info("created signaling channel %s", record.arn)
    return json_response({"ChannelARN": record.arn})


async def describe_signaling_channel(request: web.Request) -> web.Response:
    record = resolve_channel(request, await read_json(request))
    return json_response({"ChannelInfo": record.info()})


async def list_signaling_channels(request: web.Request) -> web.Response:
    body = await read_json(request)
    limit = optional_int(body, "MaxResults")
    limit = _DEFAULT_LIST_LIMIT if limit is None else limit
    if not 1 <= limit <= _MAX_LIST_LIMIT:
        raise InvalidArgumentError(f"MaxResults {limit} is outside the range 1..{_MAX_LIST_LIMIT}.")
    after: str | None = None
    token = optional_str(body, "NextToken")
    if token:
        value = decode_token(token).get("after_channel")
        if not isinstance(value, str):
            raise InvalidArgumentError("NextToken is not valid")
        after = value
    prefix = ""
    condition = body.get("ChannelNameCondition")
    if condition is not None:
        condition = require_object(condition, "ChannelNameCondition")
        operator = optional_str(condition, "ComparisonOperator")
        if operator is not None and operator != "BEGINS_WITH":
            raise InvalidArgumentError(f"ComparisonOperator {operator!r} is not BEGINS_WITH.")
        value = optional_str(condition, "ComparisonValue")
        if value is not None:
            prefix = validate_channel_name(value, "ComparisonValue")
    matching = [
        c
        for c in _registry(request)
        if c.name.startswith(prefix) and (after is None or c.name > after)
    ]
    page = matching[:limit]
    result: dict[str, Any] = {"ChannelInfoList": [c.info() for c in page]}
    if len(matching) > limit:
        result["NextToken"] = encode_token({"after_channel": page[-1].name})
    return json_response(result)


async def update_signaling_channel(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn = _required_str(body, "ChannelARN")
    version = validate_version(_required_str(body, "CurrentVersion"))
    ttl = _message_ttl(body.get("SingleMasterConfiguration"))
    registry = _registry(request)
    record = registry.get_by_arn(arn)
    _check_version(record, version)
    if ttl is not None:
        record = replace(record, message_ttl_seconds=ttl)
    registry.put(record, new_version=True)
    return json_response({})


async def delete_signaling_channel(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn = _required_str(body, "ChannelARN")
    version = optional_str(body, "CurrentVersion")
    registry = _registry(request)
    record = registry.get_by_arn(arn)
    _check_version(record, version)
    registry.delete(record)
    for listener in request.app[CHANNEL_DELETE_LISTENERS]:
        listener(record)
    logger.info("deleted signaling channel %s", record.arn)
    return json_response({})


async def tag_resource(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn = _required_str(body, "ResourceARN")
    if body.get("Tags") is None:
        raise InvalidArgumentError("Tags is required.")
    tags = _tag_list(body["Tags"], allow_empty=False)
    registry = _registry(request)
    record = registry.get_by_arn(arn)
    merged = {**record.tags, **tags}
    if len(merged) > MAX_TAGS_PER_STREAM:
        raise TagsPerResourceExceededLimitError(
            f"The channel would have {len(merged)} tags, over the limit of {MAX_TAGS_PER_STREAM}."
        )
    registry.put(replace(record, tags=merged))
    return json_response({})


async def untag_resource(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn = _required_str(body, "ResourceARN")
    keys = body.get("TagKeyList")
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_TAGS_PER_STREAM:
        raise InvalidArgumentError(f"TagKeyList must be a list of 1..{MAX_TAGS_PER_STREAM} keys.")
    checked = {validate_tag_key(key) for key in keys}
    registry = _registry(request)
    record = registry.get_by_arn(arn)
    registry.put(replace(record, tags={k: v for k, v in record.tags.items() if k not in checked}))
    return json_response({})


async def list_tags_for_resource(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn = _required_str(body, "ResourceARN")
    optional_str(body, "NextToken")  # at most 50 tags: one page
    record = _registry(request).get_by_arn(arn)
    return json_response({"Tags": dict(record.tags)})


async def get_signaling_channel_endpoint(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    record = _registry(request).get_by_arn(_required_str(body, "ChannelARN"))
    config = body.get("SingleMasterChannelEndpointConfiguration")
    protocols: list[str] = list(_PROTOCOLS[:2])
    role = "MASTER"
    if config is not None:
        config = require_object(config, "SingleMasterChannelEndpointConfiguration")
        given = config.get("Protocols")
        if given is not None:
            if not isinstance(given, list) or not 1 <= len(given) <= 5:
                raise InvalidArgumentError("Protocols must be a list of 1..5 protocols.")
            for protocol in given:
                if protocol not in _PROTOCOLS:
                    raise InvalidArgumentError(
                        f"Protocol {protocol!r} is not one of {', '.join(_PROTOCOLS)}."
                    )
            protocols = list(dict.fromkeys(given))
        role = optional_str(config, "Role") or role
        if role not in _ROLES:
            raise InvalidArgumentError(f"Role {role!r} is not MASTER or VIEWER.")
    if "WEBRTC" in protocols and (role != "MASTER" or record.storage_status != "ENABLED"):
        # The service gives a media server endpoint only to a master of a channel with
        # media storage enabled.
        raise InvalidArgumentError(
            "The WEBRTC protocol needs Role MASTER and media storage ENABLED on the channel."
        )
    endpoints = request.app[SIGNALING_ENDPOINTS]
    urls = {
        "WSS": endpoints.wss_url,
        "HTTPS": ctx.data_endpoint(request),
        "WEBRTC": ctx.data_endpoint(request),
    }
    return json_response(
        {"ResourceEndpointList": [{"Protocol": p, "ResourceEndpoint": urls[p]} for p in protocols]}
    )


async def update_media_storage_configuration(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    arn = _required_str(body, "ChannelARN")
    config = body.get("MediaStorageConfiguration")
    if config is None:
        raise InvalidArgumentError("MediaStorageConfiguration is required.")
    config = require_object(config, "MediaStorageConfiguration")
    status = _required_str(config, "Status")
    if status not in ("ENABLED", "DISABLED"):
        raise InvalidArgumentError(f"Status {status!r} is not ENABLED or DISABLED.")
    stream_arn = optional_str(config, "StreamARN")
    registry = _registry(request)
    record = registry.get_by_arn(arn)
    if status == "ENABLED":
        if stream_arn is None:
            raise InvalidArgumentError("StreamARN is required when Status is ENABLED.")
        parse_stream_arn(stream_arn)
        stream = await ctx.store.get_stream_by_arn(stream_arn)
        if stream.retention_hours == 0:
            raise NoDataRetentionError(
                f"The stream {stream.name} has no data retention: WebRTC ingestion needs it."
            )
        for other in registry:
            if (
                other.name != record.name
                and other.storage_status == "ENABLED"
                and other.storage_stream_arn == stream_arn
            ):
                raise ResourceInUseError(
                    f"The stream {stream.name} is already the storage of channel {other.name}."
                )
    elif stream_arn is not None:
        parse_stream_arn(stream_arn)
    registry.put(
        replace(record, storage_status=status, storage_stream_arn=stream_arn),
        new_version=True,
    )
    return json_response({})


async def describe_media_storage_configuration(request: web.Request) -> web.Response:
    record = resolve_channel(request, await read_json(request))
    config: dict[str, Any] = {"Status": record.storage_status}
    if record.storage_stream_arn is not None:
        config["StreamARN"] = record.storage_stream_arn
    return json_response({"MediaStorageConfiguration": config})


@dataclass(slots=True)
class SignalingEndpoints:
    """Where the WebSocket endpoint listens, filled in when it starts (see :mod:`.signaling`)."""

    wss_url: str = ""
    ws_url: str = ""
    ca_file: Path | None = None


SIGNALING_ENDPOINTS = web.AppKey("kvs_signaling_endpoints", SignalingEndpoints)
CHANNEL_DELETE_LISTENERS = web.AppKey("kvs_channel_delete_listeners", list[Any])


def install(app: web.Application) -> None:
    """Add the signaling-channel control-plane routes; the registry is opened at startup."""
    app[SIGNALING_ENDPOINTS] = SignalingEndpoints()
    app[CHANNEL_DELETE_LISTENERS] = []
    app[CHANNELS] = ChannelRegistry()

    async def open_registry(app: web.Application) -> None:
        data_dir = app[EMULATOR].store.sync.data_dir
        app[CHANNELS].load(Path(data_dir) / "signaling" / "channels.json")

    app.on_startup.append(open_registry)
    app.router.add_routes(
        [
            web.post("/createSignalingChannel", create_signaling_channel),
            web.post("/describeSignalingChannel", describe_signaling_channel),
            web.post("/listSignalingChannels", list_signaling_channels),
            web.post("/updateSignalingChannel", update_signaling_channel),
            web.post("/deleteSignalingChannel", delete_signaling_channel),
            web.post("/TagResource", tag_resource),
            web.post("/UntagResource", untag_resource),
            web.post("/ListTagsForResource", list_tags_for_resource),
            web.post("/getSignalingChannelEndpoint", get_signaling_channel_endpoint),
            web.post("/updateMediaStorageConfiguration", update_media_storage_configuration),
            web.post("/describeMediaStorageConfiguration", describe_media_storage_configuration),
        ]
    )
