"""What every emulator request handler shares: the context object and wire helpers.

A handler module gets the context with ``request.app[EMULATOR]`` and uses the helpers
here for JSON bodies, error answers and stream lookup, so every operation answers in
the service's shapes. See :mod:`kvs_toolkit.emulator.server` for how handler modules
are installed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from kvs_toolkit.emulator.errors import (
    AccessDeniedError,
    ClientLimitExceededError,
    InvalidArgumentError,
    RequestTimeoutError,
    SerializationError,
    ServiceError,
)
from kvs_toolkit.emulator.events import StreamEvents
from kvs_toolkit.emulator.sigv4 import region_from_authorization
from kvs_toolkit.emulator.store import AsyncStore, StreamRecord
from kvs_toolkit.emulator.validation import (
    optional_str,
    parse_stream_arn,
    validate_stream_name,
)
from kvs_toolkit.retry import TokenBucket

__all__ = [
    "EMULATOR",
    "TPS_LIMITS",
    "EmulatorConfig",
    "EmulatorContext",
    "error_response",
    "json_response",
    "read_json",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Settings of one emulator.

    ``credentials``: access key -> secret; SigV4 is verified only when given.
    ``state_delay``: seconds a new stream stays CREATING and a deleted one DELETING
    (0: ACTIVE at once, removed at once). ``advertised_url``: what GetDataEndpoint and
    the HLS/DASH session URLs answer (default: the emulator's own bound address and
    port; never the request's Host header, which the C producer SDK sends without the
    port). ``default_region``: the emulator's region; with ``credentials``, a SigV4
    credential scope must name it. ``rate_limits``: refuse calls over the service's
    per-stream TPS limits (:data:`TPS_LIMITS`) with ClientLimitExceededException, so a
    client's back-off can be tried locally; off by default (tests would be throttled).
    ``idle_timeout_s``: a connection that sends nothing (or half a request head) for
    this long is closed, and a request body that stalls this long is refused.
    """

    account_id: str = "123456789012"
    default_region: str = "us-east-1"
    credentials: Mapping[str, str] | None = None
    state_delay: float = 0.0
    advertised_url: str | None = None
    rate_limits: bool = False
    idle_timeout_s: float = 30.0


#: Calls per second per stream (docs/kvs-wire.md "Limits": PutMedia and GetMedia 5 TPS per
#: stream, GetClip 1 TPS).
TPS_LIMITS: Final[Mapping[str, float]] = {"PutMedia": 5.0, "GetMedia": 5.0, "GetClip": 1.0}


@dataclass(eq=False, slots=True)
class EmulatorContext:
    """Shared state of a running emulator, reachable from handlers as ``request.app[EMULATOR]``.

    ``streaming_paths``: request paths whose bodies are streamed and so are not hashed
    for SigV4 (the signer used ``x-amz-content-sha256`` or the empty-string hash); a
    handler module for PutMedia adds its path here.
    """

    store: AsyncStore
    events: StreamEvents
    config: EmulatorConfig
    endpoint_url: str = ""
    # Replaces config.advertised_url when set (Emulator.advertised_url's setter).
    advertised_url: str | None = None
    streaming_paths: set[str] = field(default_factory=lambda: {"/putMedia"})
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _call_buckets: dict[tuple[int, str], TokenBucket] = field(default_factory=dict)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run a background task that the emulator cancels and awaits when it stops."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def check_rate(self, stream: StreamRecord, operation: str) -> None:
        """Refuse ``operation`` on ``stream`` over its TPS limit (with ``rate_limits``)."""
        rate = TPS_LIMITS.get(operation)
        if not self.config.rate_limits or rate is None:
            return
        key = (stream.stream_id, operation)
        bucket = self._call_buckets.get(key)
        if bucket is None:  # a second's calls in any burst, refilled at the rate
            bucket = self._call_buckets[key] = TokenBucket(rate, burst=rate)
        if not bucket.try_acquire():
            raise ClientLimitExceededError(
                f"{operation} on stream {stream.name} is over its limit of {rate:g} calls "
                "per second."
            )

    def request_region(self, request: web.Request) -> str:
        """The region of the request's SigV4 credential scope, else the default region."""
        region = region_from_authorization(request.headers.get("Authorization"))
        return region or self.config.default_region

    def data_endpoint(self, request: web.Request | None = None) -> str:
        """What GetDataEndpoint answers: a fixed URL, as the service's.

        Not built from the Host header: the C producer SDK signs and sends ``Host``
        without the port, and would then be sent to port 80.
        """
        advertised = self.advertised_url or self.config.advertised_url
        if advertised:
            return advertised.rstrip("/")
        return reachable_url(self.endpoint_url)

    def host_allowed(self, request: web.Request) -> bool:
        """Whether the request's Host names this emulator (DNS-rebinding defence).

        Loopback names, the bound address and the advertised URL's host pass; when
        bound to every interface (0.0.0.0 or ::) any IP literal passes too, since a
        rebinding attack needs a DNS name.
        """
        host = _host_name(request.host or "")
        if host is None:
            return False
        if host == "localhost" or host.endswith(".localhost"):
            return True
        allowed = {_host_name(urlsplit(self.endpoint_url).netloc)}
        for advertised in (self.advertised_url, self.config.advertised_url):
            if advertised:
                allowed.add(_host_name(urlsplit(advertised).netloc))
        if host in allowed:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.is_loopback:
            return True
        bound = _host_name(urlsplit(self.endpoint_url).netloc) or ""
        return bound in ("0.0.0.0", "::")

    def check_host(self, request: web.Request) -> None:
        if not self.host_allowed(request):
            raise AccessDeniedError(
                f"Host {(request.host or '')[:100]!r} is not a name of this emulator."
            )

    async def resolve_stream(self, body: Mapping[str, Any]) -> StreamRecord:
        """The stream named by ``StreamName`` or ``StreamARN`` (one is required)."""
        name = optional_str(body, "StreamName")
        arn = optional_str(body, "StreamARN")
        if name is None and arn is None:
            raise InvalidArgumentError("Either StreamName or StreamARN must be specified.")
        if name is not None:
            validate_stream_name(name)
        if arn is None:
            assert name is not None
            return await self.store.get_stream(name)
        parse_stream_arn(arn)
        stream = await self.store.get_stream_by_arn(arn)
        if name is not None and name != stream.name:
            raise InvalidArgumentError("StreamName and StreamARN do not refer to the same stream.")
        return stream


EMULATOR = web.AppKey("kvs_emulator", EmulatorContext)


def _host_name(netloc: str) -> str | None:
    """The lowercase host of a ``host[:port]`` (brackets of IPv6 literals removed)."""
    try:
        host = urlsplit(f"//{netloc}").hostname
    except ValueError:
        return None
    return host.lower() if host else None


def reachable_url(endpoint_url: str) -> str:
    """``endpoint_url`` with an any-interface address (0.0.0.0, ::) replaced by loopback."""
    parts = urlsplit(endpoint_url)
    host = parts.hostname
    if host in ("0.0.0.0", "::") and parts.port is not None:
        loopback = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"{parts.scheme}://{loopback}:{parts.port}"
    return endpoint_url


# JSON numbers: an integer of more digits than any field takes, NaN or an infinity is a
# SerializationException, not a 500 later (json.loads accepts all of them).
_MAX_JSON_INT_DIGITS: Final = 40


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_JSON_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _json_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


async def read_body(request: web.Request) -> bytes:
    """The whole request body, refused when it stalls (a half-sent request holds no
    handler for ever)."""
    timeout = request.app[EMULATOR].config.idle_timeout_s
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError as exc:
        raise RequestTimeoutError(f"The request body did not arrive within {timeout:g} s.") from exc


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body counts as ``{}``)."""
    raw = await read_body(request)
    if not raw.strip():
        return {}
    try:
        body = json.loads(
            raw, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise SerializationError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise SerializationError("The request body must be a JSON object.")
    return body


def json_response(data: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def error_response(error: ServiceError) -> web.Response:
    """The service's error shape: JSON message plus ``x-amzn-ErrorType``, botocore-readable."""
    response = json_response({error.message_key: error.message}, status=error.status)
    response.headers["x-amzn-ErrorType"] = error.code
    return response
