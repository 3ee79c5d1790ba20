"""The emulator's web page: a list of streams, a player and a fragment timeline.

Open the emulator's endpoint URL in a browser (``http://127.0.0.1:4567/``). The page
lists the streams (status, retention, fragment count, last fragment, data rate), plays
one LIVE or ON_DEMAND through its own HLS session URL with the vendored hls.js, and
draws its latest fragments with the producer's fragment tags, polling the JSON API
below every 1.5 s. Plain HTML, CSS and JavaScript in ``static/``; no build step and no
internet access needed.

Routes:

* ``GET /``: the page.
* ``GET /_emulator/static/<file>``: its script, style sheet, ``vendor/hls.js/`` and
  ``vendor/kvs-webrtc/`` (the official KVS WebRTC JS SDK).
* ``GET /_emulator/api/streams``: every stream (at most :data:`MAX_LISTED_STREAMS`)
  with the fields above; timestamps in epoch milliseconds, ``now_ms`` the server clock.
* ``GET /_emulator/api/fragments?stream=NAME&limit=N``: the stream's latest ``N``
  fragments (default :data:`DEFAULT_FRAGMENTS`, at most :data:`MAX_FRAGMENTS`), oldest
  first, with producer and server timestamps, duration, size and tags.
* ``POST /_emulator/api/hls-session``: a GetHLSStreamingSessionURL request body,
  answered by that operation's own handler (:func:`.hls.get_hls_streaming_session_url`).
* ``GET /_emulator/api/channels``: the signaling channels (at most
  :data:`MAX_LISTED_CHANNELS`) with their ARN, media storage, whether a master is
  connected and how many viewers are.
* ``POST /_emulator/api/signaling-endpoint``: a GetSignalingChannelEndpoint request
  body, answered by that operation's own handler
  (:func:`.channels.get_signaling_channel_endpoint`); the page's WebRTC panel connects
  the JS SDK to the ``wss://`` endpoint it names.

These routes are a local developer page: they answer without SigV4 even when the
emulator verifies signatures (:func:`is_page_request`, used by the server's SigV4
middleware). They only read, apart from creating HLS sessions and answering signaling
endpoints, which must be JSON POSTs: a browser lets another web site send those only
after a CORS preflight, which the emulator does not grant, so other sites cannot use the
page's API.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kvs_toolkit.emulator import channels, hls
from kvs_toolkit.emulator.context import EMULATOR, EmulatorContext, json_response
from kvs_toolkit.emulator.errors import InvalidArgumentError, ResourceNotFoundError, ServiceError
from kvs_toolkit.emulator.store import FragmentRecord, StreamRecord
from kvs_toolkit.emulator.validation import query_int, validate_stream_name
from kvs_toolkit.timestamps import now_ms

__all__ = [
    "API_PREFIX",
    "DATA_RATE_WINDOW_MS",
    "DEFAULT_FRAGMENTS",
    "MAX_FRAGMENTS",
    "MAX_LISTED_CHANNELS",
    "MAX_LISTED_STREAMS",
    "PAGE_PREFIX",
    "STATIC_DIR",
    "STATIC_PREFIX",
    "install",
    "is_page_request",
    "latest_fragments",
    "page_url",
]

log = logging.getLogger(__name__)

PAGE_PREFIX: Final = "/_emulator/"
STATIC_PREFIX: Final = "/_emulator/static/"
API_PREFIX: Final = "/_emulator/api/"
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

#: The data rate is the bytes of the fragments the server received in this window.
DATA_RATE_WINDOW_MS: Final = 10_000
#: Streams listed at most, so one poll of the page costs a bounded number of queries.
MAX_LISTED_STREAMS: Final = 100
#: Signaling channels listed at most.
MAX_LISTED_CHANNELS: Final = 100
DEFAULT_FRAGMENTS: Final = 60
MAX_FRAGMENTS: Final = 500
_PAGE_SIZE: Final = 1000
# The first server-time window latest_fragments looks in.
_FIRST_LOOKBACK_MS: Final = 30_000

_CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# hls.js runs its transmuxer in a blob: worker and feeds the video element through a
# blob: MediaSource URL; session URLs may be on the advertised endpoint (another origin).
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src *; media-src 'self' blob:; "
        "worker-src 'self' blob:; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_page_request(request: web.Request) -> bool:
    """Whether ``request`` is for the web page or its API (answered without SigV4)."""
    return request.path == "/" or request.path.startswith(PAGE_PREFIX)


def page_url(endpoint_url: str) -> str:
    """The web page's URL for an emulator at ``endpoint_url``."""
    return endpoint_url.rstrip("/") + "/"


_STATIC_FILES = web.AppKey("kvs_web_static_files", dict[str, Path])


# --- JSON shapes ----------------------------------------------------------------------------


def _fragment_json(record: FragmentRecord) -> dict[str, Any]:
    return {
        "fragment_number": record.fragment_number,
        "producer_timestamp_ms": record.producer_timestamp_ms,
        "server_timestamp_ms": record.server_timestamp_ms,
        "duration_ms": record.duration_ms,
        "size": record.size,
        "tags": [{"name": name, "value": value} for name, value in record.tags],
    }


async def _data_rate_bps(ctx: EmulatorContext, name: str, now_ms: int) -> int:
    """Bits per second the stream received over the last :data:`DATA_RATE_WINDOW_MS`."""
    records = await hls.list_all_fragments(
        ctx, name, timestamp_type="SERVER_TIMESTAMP", start_ms=now_ms - DATA_RATE_WINDOW_MS
    )
    received = sum(r.size for r in records if r.server_timestamp_ms <= now_ms)
    return received * 8 * 1000 // DATA_RATE_WINDOW_MS


async def _stream_json(ctx: EmulatorContext, stream: StreamRecord, now_ms: int) -> dict[str, Any]:
    first = await ctx.store.earliest_fragment(stream.name)
    last = await ctx.store.latest_fragment(stream.name)
    return {
        "name": stream.name,
        "arn": stream.arn,
        "status": stream.status,
        "media_type": stream.media_type,
        "device_name": stream.device_name,
        "retention_hours": stream.retention_hours,
        "creation_time_ms": stream.creation_time_ms,
        "fragment_count": await ctx.store.count_fragments(stream.name),
        "first_fragment": None if first is None else _fragment_json(first),
        "last_fragment": None if last is None else _fragment_json(last),
        "data_rate_bps": await _data_rate_bps(ctx, stream.name, now_ms),
    }


async def latest_fragments(ctx: EmulatorContext, name: str, limit: int) -> list[FragmentRecord]:
    """The stream's newest ``limit`` fragments, oldest first.

    Fragment-number order is server-timestamp order, so they are looked for in
    server-time windows going back from the newest fragment, each 4x wider than the one
    before, until enough are found or the earliest fragment is reached: a few queries
    whatever the gaps, and at most ``limit`` plus one page of records held.
    """
    latest = await ctx.store.latest_fragment(name)
    earliest = await ctx.store.earliest_fragment(name)
    if latest is None or earliest is None:
        return []
    found: list[FragmentRecord] = []
    end_ms = latest.server_timestamp_ms
    lookback = _FIRST_LOOKBACK_MS
    while True:
        start_ms = end_ms - lookback
        window: deque[FragmentRecord] = deque(maxlen=limit - len(found))
        after: str | None = None
        while True:
            page = await ctx.store.list_fragments(
                name,
                timestamp_type="SERVER_TIMESTAMP",
                start_ms=start_ms,
                end_ms=end_ms,
                after_fragment_number=after,
                limit=_PAGE_SIZE,
            )
            window.extend(page.fragments)
            if page.next_token is None or not page.fragments:
                break
            after = page.fragments[-1].fragment_number
        found = [*window, *found]
        if len(found) >= limit or start_ms <= earliest.server_timestamp_ms:
            return found
        end_ms = start_ms - 1  # the windows are inclusive: the next one ends just before
        lookback *= 4


# --- handlers -------------------------------------------------------------------------------


def _file_response(request: web.Request, relative: str) -> web.FileResponse:
    path = request.app[_STATIC_FILES].get(relative)
    if path is None:
        if relative == "index.html":
            raise ResourceNotFoundError(
                f"The web page is not installed: {STATIC_DIR / relative} is missing "
                "(reinstall kvs-toolkit with its package data)."
            )
        raise ResourceNotFoundError(f"No file {relative!r} in the web page's static files.")
    headers = dict(_PAGE_HEADERS)
    headers["Content-Type"] = _CONTENT_TYPES[path.suffix]
    return web.FileResponse(path, headers=headers)


async def get_page(request: web.Request) -> web.StreamResponse:
    return _file_response(request, "index.html")


async def get_static(request: web.Request) -> web.StreamResponse:
    return _file_response(request, request.match_info["path"])


async def get_streams(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    now = now_ms()
    streams, more = await ctx.store.list_streams(limit=MAX_LISTED_STREAMS)
    listed = []
    for stream in streams:
        try:
            listed.append(await _stream_json(ctx, stream, now))
        except ResourceNotFoundError:  # deleted while we looked
            continue
    return json_response(
        {
            "now_ms": now,
            "data_rate_window_ms": DATA_RATE_WINDOW_MS,
            "streams": listed,
            "truncated": more,
        }
    )


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_FRAGMENTS
    return query_int(text, "limit", 1, MAX_FRAGMENTS)


async def get_fragments(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    name = request.query.get("stream")
    if name is None:
        raise InvalidArgumentError("The query parameter 'stream' (a stream name) is required.")
    validate_stream_name(name)
    limit = _limit(request)
    stream = await ctx.store.get_stream(name)
    records = await latest_fragments(ctx, stream.name, limit)
    return json_response(
        {
            "stream": stream.name,
            "now_ms": now_ms(),
            "fragments": [_fragment_json(r) for r in records],
        }
    )


def _require_json(request: web.Request, operation: str) -> None:
    # A JSON POST from another origin needs a CORS preflight, which is not granted:
    # other web sites cannot use the page's unsigned POST routes.
    if request.content_type != "application/json":
        raise InvalidArgumentError(
            f"Send the {operation} request as JSON "
            f"(Content-Type: application/json, not {request.content_type!r})."
        )


async def create_hls_session(request: web.Request) -> web.Response:
    _require_json(request, "GetHLSStreamingSessionURL")
    if hls.PLAYBACK not in request.app:
        raise ServiceError("HLS playback is not installed in this emulator.")
    return await hls.get_hls_streaming_session_url(request)


async def get_channels(request: web.Request) -> web.Response:
    registry = request.app.get(channels.CHANNELS)
    if registry is None:
        raise ServiceError("WebRTC signaling is not installed in this emulator.")
    from kvs_toolkit.emulator.signaling import HUB  # it imports this package's modules

    hub = request.app.get(HUB)
    records = sorted(registry, key=lambda record: record.name)
    listed = []
    for record in records[:MAX_LISTED_CHANNELS]:
        listed.append(
            {
                "name": record.name,
                "arn": record.arn,
                "status": record.status,
                "creation_time_ms": record.creation_time_ms,
                "message_ttl_seconds": record.message_ttl_seconds,
                "storage_status": record.storage_status,
                "storage_stream_arn": record.storage_stream_arn,
                "master_connected": hub is not None and hub.master(record.name) is not None,
                "viewers": 0 if hub is None else len(hub.viewer_ids(record.name)),
            }
        )
    return json_response(
        {
            "now_ms": now_ms(),
            "channels": listed,
            "truncated": len(records) > MAX_LISTED_CHANNELS,
        }
    )


async def get_signaling_endpoint(request: web.Request) -> web.Response:
    _require_json(request, "GetSignalingChannelEndpoint")
    if channels.CHANNELS not in request.app:
        raise ServiceError("WebRTC signaling is not installed in this emulator.")
    return await channels.get_signaling_channel_endpoint(request)


# --- installation ---------------------------------------------------------------------------


def _static_files(folder: Path) -> dict[str, Path]:
    """Every servable file under ``folder`` by its relative URL path (a fixed list, so
    no request path is ever joined to the file system)."""
    if not folder.is_dir():
        log.error("the web page's files are missing: %s is not a directory", folder)
        return {}
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in _CONTENT_TYPES
    }


def install(app: web.Application) -> None:
    """Add the web page, its static files and its JSON API (after :func:`.hls.install`)."""
    app[_STATIC_FILES] = _static_files(STATIC_DIR)
    app.router.add_get("/", get_page)
    app.router.add_get(STATIC_PREFIX + "{path:.+}", get_static)
    app.router.add_get(API_PREFIX + "streams", get_streams)
    app.router.add_get(API_PREFIX + "fragments", get_fragments)
    app.router.add_post(API_PREFIX + "hls-session", create_hls_session)
    app.router.add_get(API_PREFIX + "channels", get_channels)
    app.router.add_post(API_PREFIX + "signaling-endpoint", get_signaling_endpoint)
