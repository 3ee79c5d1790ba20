"""The media data plane: PutMedia, GetMedia and GetMediaForFragmentList.

PutMedia (``/putMedia``) parses the body as it arrives with the sans-I/O
:class:`~kvs_toolkit.emulator.ingest.IngestSession` and streams acknowledgements back on
the same connection while the upload goes on: BUFFERING when a fragment starts,
RECEIVED when it is complete, PERSISTED once the store has fsynced it and indexed it
(only for streams with retention), IDLE every few seconds without data, ERROR with the
service's ErrorId/ErrorCode. Acks are written by one sender task in fragment order, so
persisting never holds up reading the body. A connection that drops mid-fragment loses
only that partial fragment: every fragment already handed to the store is kept.

GetMedia (``/getMedia``) streams one EBML document per fragment (see
:mod:`kvs_toolkit.emulator.media`), from the StartSelector's position, then follows the
stream live until the client disconnects.

BUFFERING, RECEIVED and PERSISTED carry the FragmentNumber, as the service's do: it is
reserved when the fragment's first byte arrives (its server timestamp is that moment).

Streaming-token rotation: the C producer SDK opens the next PutMedia on a stream while
the previous one still waits for its last acks. The newest connection wins (the
service's limits page: one PutMedia per stream, a new one replaces the old); an older
one keeps reading and acknowledging for :attr:`DataPlaneConfig.rotation_grace_s`, and
only then is ended.

Nothing an upload sends can fail another upload: a fragment the store cannot keep is
an ERROR ack on its own connection, and the ack stream stays JSON objects to the end.
Parsing yields to the event loop after every chunk, so one upload's parsing work per
loop turn is bounded by the chunk size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.emulator.context import EMULATOR, EmulatorContext, error_response, read_json
from kvs_toolkit.emulator.errors import (
    ClientLimitExceededError,
    InvalidArgumentError,
    ResourceNotFoundError,
    ServiceError,
)
from kvs_toolkit.emulator.ingest import (
    FragmentComplete,
    FragmentRejected,
    FragmentStarted,
    IngestLimits,
    IngestSession,
)
from kvs_toolkit.emulator.media import fragment_list_error, getmedia_fragment, stored_payload
from kvs_toolkit.emulator.store import (
    FragmentMeta,
    FragmentRecord,
    StreamRecord,
    fragment_number_key,
)
from kvs_toolkit.emulator.validation import (
    MAX_TIMESTAMP_MS,
    optional_str,
    require_object,
    timestamp_ms,
)
from kvs_toolkit.errors import KvsError

log = logging.getLogger(__name__)

# Service limits (docs/kvs-wire.md "Limits").
MAX_PUTMEDIA_CONNECTIONS: Final = 1  # the newest wins; older ones get a grace period
MAX_GETMEDIA_CONNECTIONS: Final = 3
MAX_FRAGMENT_LIST: Final = 1000
# IDLE acks while no data arrives; the service closes the request after ~30 s idle.
IDLE_ACK_INTERVAL_S: Final = 3.0
IDLE_TIMEOUT_S: Final = 30.0
# The service ends a PutMedia connection after about 45 minutes (ErrorId 4003).
MAX_CONNECTION_S: Final = 45 * 60
# How long a PutMedia replaced by a newer one on its stream may go on acknowledging
# (the C producer SDK waits a few seconds for the last PERSISTED acks on rotation).
ROTATION_GRACE_S: Final = 10.0
# Replaced connections still in their grace period, per stream, at most.
MAX_GRACE_CONNECTIONS: Final = 2
# A GetMedia reader whose socket accepts nothing for this long loses its slot.
GETMEDIA_STALL_TIMEOUT_S: Final = 30.0
# How long a caught-up GetMedia waits for a new fragment before checking that the
# stream still exists. (A client that leaves cancels its handler at once: the server
# runs with handler_cancellation, so no polling is needed for that.)
_LIVE_POLL_S: Final = 2.0
_READ_CHUNK: Final = 256 * 1024


class ConnectionLimitExceededError(ServiceError):
    code = "ConnectionLimitExceededException"
    status = 400


@dataclass
class DataPlaneConfig:
    limits: IngestLimits = field(default_factory=IngestLimits)
    idle_ack_interval_s: float = IDLE_ACK_INTERVAL_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connection_s: float = MAX_CONNECTION_S
    rotation_grace_s: float = ROTATION_GRACE_S
    getmedia_stall_timeout_s: float = GETMEDIA_STALL_TIMEOUT_S


class RefusalLimiter:
    """Per stream, PutMedia uploads refused with a fatal error: a burst of
    :data:`REFUSAL_BURST`, then :data:`REFUSAL_RATE` per second (the service's PutMedia
    limit of 5 per second per stream); over that, new PutMedia calls on the stream are
    ClientLimitExceededException before any parsing. Well-behaved producers never see
    it; a client that floods a stream with bad uploads costs bounded work per second.
    """

    def __init__(self, rate: float = 5.0, burst: float = 10.0, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def _current(self, key: str, now: float) -> float:
        tokens, updated = self._tokens.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - updated) * self.rate)

    def check(self, key: str, now: float) -> None:
        if key in self._tokens and self._current(key, now) < 1:
            raise ClientLimitExceededError(
                f"Too many refused PutMedia calls on stream {key[:256]}; retry later."
            )

    def count(self, key: str, now: float) -> None:
        if len(self._tokens) >= self.max_keys:
            # Forget the streams that are back to a full bucket (bounded memory).
            self._tokens = {
                k: v for k, v in self._tokens.items() if self._current(k, now) < self.burst
            }
        self._tokens[key] = (max(0.0, self._current(key, now) - 1), now)


@dataclass
class DataPlaneState:
    """Open connections per stream id, for the service's per-stream limits."""

    config: DataPlaneConfig = field(default_factory=DataPlaneConfig)
    refusals: RefusalLimiter = field(default_factory=RefusalLimiter)
    putmedia: dict[int, list[_Upload]] = field(default_factory=dict)
    getmedia: dict[int, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def upload(self, stream: StreamRecord, upload: _Upload) -> Any:
        """Register ``upload`` as the stream's newest PutMedia; older ones get a grace."""
        uploads = self.putmedia.setdefault(stream.stream_id, [])
        deadline = time.monotonic() + self.config.rotation_grace_s
        for older in uploads:
            older.supersede(deadline)
        # A client that opens connection after connection gets no more than a few.
        for older in uploads[: max(0, len(uploads) - MAX_GRACE_CONNECTIONS)]:
            older.supersede(time.monotonic())
        uploads.append(upload)
        try:
            yield
        finally:
            uploads.remove(upload)
            if not uploads:
                del self.putmedia[stream.stream_id]

    @contextlib.contextmanager
    def connection(self, table: dict[int, int], stream: StreamRecord, limit: int) -> Any:
        if table.get(stream.stream_id, 0) >= limit:
            raise ConnectionLimitExceededError(
                f"Stream {stream.name} already has {limit} open connection(s) of this kind."
            )
        table[stream.stream_id] = table.get(stream.stream_id, 0) + 1
        try:
            yield
        finally:
            table[stream.stream_id] -= 1


DATAPLANE = web.AppKey("kvs_dataplane", DataPlaneState)


def install(app: web.Application, config: DataPlaneConfig | None = None) -> None:
    app[DATAPLANE] = DataPlaneState(config or DataPlaneConfig())
    app.router.add_post("/putMedia", put_media)
    app.router.add_post("/getMedia", get_media)
    app.router.add_post("/getMediaForFragmentList", get_media_for_fragment_list)


# --- PutMedia -----------------------------------------------------------------------------
def _producer_start_ms(request: web.Request) -> int:
    raw = request.headers.get("x-amzn-producer-start-timestamp")
    if raw is None:
        return int(time.time() * 1000)
    try:
        value = float(raw)
    except ValueError as exc:
        raise InvalidArgumentError(
            f"x-amzn-producer-start-timestamp {raw[:40]!r} is not a number."
        ) from exc
    if not math.isfinite(value) or not 0 <= value * 1000 <= MAX_TIMESTAMP_MS:
        raise InvalidArgumentError(f"x-amzn-producer-start-timestamp {raw[:40]!r} is out of range.")
    return round(value * 1000)


async def _stream_from_headers(ctx: EmulatorContext, request: web.Request) -> StreamRecord:
    name = request.headers.get("x-amzn-stream-name")
    arn = request.headers.get("x-amzn-stream-arn")
    if (name is None) == (arn is None):
        raise InvalidArgumentError(
            "Specify exactly one of x-amzn-stream-name and x-amzn-stream-arn."
        )
    return await ctx.resolve_stream({"StreamName": name} if name else {"StreamARN": arn})


class _AckSender:
    """Writes acks in order; a pending persist is awaited in its place in the queue."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.queue: asyncio.Queue[Ack | Awaitable[Ack | None] | None] = asyncio.Queue()
        self.last_write = time.monotonic()
        self.failed = False

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, Ack):
                ack: Ack | None = item
            else:
                try:
                    ack = await item
                except Exception:  # the ack stream keeps its shape whatever failed
                    log.exception("PutMedia: persisting a fragment failed")
                    ack = Ack.error(5000)
            if ack is None or self.failed:
                continue
            try:
                await self.response.write(bytes(ack))
            except (ConnectionResetError, RuntimeError):
                self.failed = True  # the producer went away; persisting goes on
            self.last_write = time.monotonic()


async def put_media(request: web.Request) -> web.StreamResponse:
    ctx = request.app[EMULATOR]
    state = request.app[DATAPLANE]
    # Checked first, before any work: a stream whose uploads keep being refused.
    refusal_key = (
        request.headers.get("x-amzn-stream-name") or request.headers.get("x-amzn-stream-arn") or ""
    )
    try:
        state.refusals.check(refusal_key, time.monotonic())
    except ClientLimitExceededError as exc:
        # Answered and closed at once: no reading (and discarding) of the body.
        refused = error_response(exc)
        await refused.prepare(request)
        await refused.write_eof()
        request.protocol.force_close()
        return refused
    stream = await _stream_from_headers(ctx, request)
    ctx.check_rate(stream, "PutMedia")
    timecode_type = request.headers.get("x-amzn-fragment-timecode-type", "ABSOLUTE")
    if timecode_type not in ("ABSOLUTE", "RELATIVE"):
        raise InvalidArgumentError(f"Invalid x-amzn-fragment-timecode-type {timecode_type!r}.")
    start_ms = _producer_start_ms(request)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    sender = _AckSender(response)
    upload = _Upload(
        ctx,
        config=state.config,
        stream=stream,
        sender=sender,
        timecode_type=timecode_type,
        start_ms=start_ms,
    )
    with state.upload(stream, upload):
        await response.prepare(request)
        sender_task = asyncio.create_task(sender.run())
        try:
            await upload.run(request)
        finally:
            if upload.session.failed:
                state.refusals.count(refusal_key, time.monotonic())
            sender.queue.put_nowait(None)
            await sender_task
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        if not request.content.at_eof():
            # The upload was refused or ended early: close now rather than read and
            # discard the rest of its body (aiohttp's lingering close would keep a
            # flooding client's bytes coming for seconds).
            request.protocol.force_close()
        return response


class _Upload:
    def __init__(
        self,
        ctx: EmulatorContext,
        *,
        config: DataPlaneConfig,
        stream: StreamRecord,
        sender: _AckSender,
        timecode_type: str,
        start_ms: int,
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.stream = stream
        self.sender = sender
        self.session = IngestSession(
            relative=timecode_type == "RELATIVE", producer_start_ms=start_ms, limits=config.limits
        )
        self.persists: set[asyncio.Future[Ack | None]] = set()
        self.stop = False
        # Set when a newer PutMedia on the stream replaced this one: the monotonic
        # time after which this one stops.
        self.grace_deadline: float | None = None
        self._wake = asyncio.Event()
        # fragment index in this upload -> (fragment number, server timestamp ms)
        self._numbers: dict[int, tuple[str, int]] = {}

    def supersede(self, deadline: float) -> None:
        if self.grace_deadline is None or deadline < self.grace_deadline:
            self.grace_deadline = deadline
            self._wake.set()

    def _read_timeout(self) -> float:
        timeout = self.config.idle_ack_interval_s
        if self.grace_deadline is not None:
            timeout = min(timeout, max(0.0, self.grace_deadline - time.monotonic()))
        return timeout

    async def run(self, request: web.Request) -> None:
        if self.stream.status != "ACTIVE":
            self.sender.queue.put_nowait(Ack.error(4008))
            return
        opened = time.monotonic()
        last_data = time.monotonic()
        content = request.content
        try:
            while not self.stop:
                if self.grace_deadline is not None and time.monotonic() >= self.grace_deadline:
                    log.info(
                        "PutMedia %s: replaced by a newer connection, grace over",
                        self.stream.name,
                    )
                    break
                try:
                    chunk = await asyncio.wait_for(content.readany(), self._read_timeout())
                except asyncio.TimeoutError:
                    if self.grace_deadline is not None and time.monotonic() >= self.grace_deadline:
                        continue
                    idle = time.monotonic() - last_data
                    if idle >= self.config.idle_timeout_s:
                        log.info("PutMedia %s: no data for %.0f s, closing", self.stream.name, idle)
                        break
                    self.sender.queue.put_nowait(Ack(AckEventType.IDLE))
                    continue
                if not chunk:
                    log.debug("PutMedia %s: end of body", self.stream.name)
                    self._handle(self.session.close())
                    break
                last_data = time.monotonic()
                self._handle(self.session.feed(chunk))
                # Let other connections run between chunks: parsing work per loop turn
                # is bounded by one chunk.
                await asyncio.sleep(0)
                if last_data - opened > self.config.max_connection_s:
                    self.sender.queue.put_nowait(Ack.error(4003))
                    break
        except (ConnectionResetError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("PutMedia %s: connection lost (%r)", self.stream.name, exc)
        except Exception as exc:  # aiohttp raises its own payload errors on a cut body
            if type(exc).__module__.startswith("aiohttp"):
                log.info("PutMedia %s: connection lost (%r)", self.stream.name, exc)
            else:
                raise
        finally:
            # A partial fragment is discarded by the session; what reached the store
            # is waited for, so nothing acknowledged is lost when the producer drops.
            if self.persists:
                # shielded: a cancelled handler (the client left) still finishes storing
                # every complete fragment it received.
                await asyncio.shield(asyncio.gather(*self.persists, return_exceptions=True))

    def _handle(self, events: list[FragmentStarted | FragmentComplete | FragmentRejected]) -> None:
        for event in events:
            if isinstance(event, FragmentStarted):
                number, server_ms = self.ctx.store.sync.reserve_fragment_number(
                    self.stream.stream_id, time.time_ns() // 1_000_000
                )
                self._numbers[event.index] = (number, server_ms)
                self.sender.queue.put_nowait(Ack(AckEventType.BUFFERING, event.timecode, number))
            elif isinstance(event, FragmentComplete):
                reserved = self._numbers.get(event.index)
                self.sender.queue.put_nowait(
                    Ack(AckEventType.RECEIVED, event.timecode, reserved[0] if reserved else None)
                )
                future = asyncio.ensure_future(self._persist(event))
                self.persists.add(future)
                future.add_done_callback(self.persists.discard)
                self.sender.queue.put_nowait(future)
            else:
                if event.index is not None:
                    self._numbers.pop(event.index, None)
                self.sender.queue.put_nowait(Ack.error(event.error_id, event.timecode))
                log.info(
                    "PutMedia %s: ERROR %d at timecode %s: %s",
                    self.stream.name,
                    event.error_id,
                    event.timecode,
                    event.reason,
                )
                if event.fatal:
                    self.stop = True

    async def _persist(self, fragment: FragmentComplete) -> Ack | None:
        reserved = self._numbers.pop(fragment.index, None)
        number = reserved[0] if reserved else None
        server_ms = reserved[1] if reserved else None
        meta = FragmentMeta(
            producer_timestamp_ms=fragment.producer_timestamp_ms,
            duration_ms=fragment.duration_ms,
            tags=tuple((t.name, t.value) for t in fragment.tags),
            server_timestamp_ms=server_ms,
            fragment_number=number,
        )
        try:
            payload = stored_payload(fragment.tracks, fragment.cluster_bytes)
            record = await self.ctx.store.append_fragment(self.stream.name, payload, meta)
        except ResourceNotFoundError:
            self.stop = True
            return Ack.error(4008, fragment.timecode)
        except (OSError, sqlite3.Error, KvsError, ValueError, OverflowError) as exc:
            # A full disk, a row SQLite refuses: this fragment fails, on this upload.
            log.error("PutMedia %s: archiving a fragment failed: %s", self.stream.name, exc)
            return Ack.error(5001, fragment.timecode)
        if self.stream.retention_hours == 0:
            return None  # no archive: the service sends no PERSISTED
        return Ack(AckEventType.PERSISTED, fragment.timecode, record.fragment_number)


# --- GetMedia -----------------------------------------------------------------------------
def _render(record: FragmentRecord, payload: bytes, *, now_ms: int) -> bytes:
    return getmedia_fragment(
        payload,
        fragment_number=record.fragment_number,
        server_timestamp_ms=record.server_timestamp_ms,
        producer_timestamp_ms=record.producer_timestamp_ms,
        producer_tags=record.tags,
        millis_behind_now=max(0, now_ms - record.server_timestamp_ms),
        continuation_token=record.fragment_number,
    )


def _timestamp_ms(value: Any) -> int:
    return timestamp_ms(value, "StartTimestamp")


async def _start_after(
    ctx: EmulatorContext, stream: StreamRecord, selector: dict[str, Any]
) -> str | None:
    """Where GetMedia starts: fragments after this number (from the earliest if None)."""
    kind = selector.get("StartSelectorType")
    store = ctx.store
    if kind == "NOW":
        latest = await store.latest_fragment(stream.name)
        return latest.fragment_number if latest else None
    if kind == "EARLIEST":
        return None
    if kind == "FRAGMENT_NUMBER":
        number = optional_str(selector, "AfterFragmentNumber")
        if number is None:
            raise InvalidArgumentError("AfterFragmentNumber is required for FRAGMENT_NUMBER.")
        fragment_number_key(number)  # checked before the 200 goes out
        return number
    if kind == "CONTINUATION_TOKEN":
        token = optional_str(selector, "ContinuationToken")
        if token is None:
            raise InvalidArgumentError("ContinuationToken is required for CONTINUATION_TOKEN.")
        fragment_number_key(token)  # checked before the 200 goes out
        return token
    if kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
        start_ms = _timestamp_ms(selector.get("StartTimestamp"))
        first = await store.first_fragment_at_or_after(stream.name, kind, start_ms)
        if first is None:  # nothing at or after it yet: continue live from the newest
            latest = await store.latest_fragment(stream.name)
            return latest.fragment_number if latest else None
        return _just_before(first.fragment_number)
    raise InvalidArgumentError(f"Invalid StartSelectorType {kind!r}.")


def _just_before(fragment_number: str) -> str:
    """A number that sorts right before ``fragment_number`` (fixed-width decimal)."""
    value = int(fragment_number) - 1
    return str(value).zfill(len(fragment_number))


async def get_media(request: web.Request) -> web.StreamResponse:
    ctx = request.app[EMULATOR]
    state = request.app[DATAPLANE]
    body = await read_json(request)
    stream = await ctx.resolve_stream(body)
    ctx.check_rate(stream, "GetMedia")
    selector = require_object(body.get("StartSelector"), "StartSelector")
    after = await _start_after(ctx, stream, selector)
    with state.connection(state.getmedia, stream, MAX_GETMEDIA_CONNECTIONS):
        response = web.StreamResponse(status=200, headers={"Content-Type": "video/webm"})
        await response.prepare(request)
        try:
            await _follow(ctx, stream.name, after, response, state.config.getmedia_stall_timeout_s)
        except (ConnectionResetError, RuntimeError) as exc:
            log.debug("GetMedia %s: client went away (%r)", stream.name, exc)
        except asyncio.TimeoutError:
            # The reader stopped reading: free its slot (the service allows 3 per
            # stream) instead of letting stalled readers lock the stream's readers out.
            log.info("GetMedia %s: reader stalled, closing", stream.name)
            if request.transport is not None:
                request.transport.abort()
        return response


async def _follow(
    ctx: EmulatorContext,
    stream_name: str,
    after: str | None,
    response: web.StreamResponse,
    stall_timeout_s: float = GETMEDIA_STALL_TIMEOUT_S,
) -> None:
    store = ctx.store
    while True:
        records = await store.fragments_after(stream_name, after, 50)
        for record in records:
            payload = await store.read_payload(record)
            rendered = _render(record, payload, now_ms=int(time.time() * 1000))
            await asyncio.wait_for(response.write(rendered), stall_timeout_s)
            after = record.fragment_number
        if len(records) == 50:
            continue  # more may be waiting: read on before waiting
        # Caught up: the store is asked again only once a newer fragment exists.
        while (
            await ctx.events.wait_for_fragment(stream_name, after=after, timeout=_LIVE_POLL_S)
            is None
        ):
            try:
                await store.get_stream(stream_name)
            except ResourceNotFoundError:
                return  # the stream was deleted: end the response


async def get_media_for_fragment_list(request: web.Request) -> web.StreamResponse:
    ctx = request.app[EMULATOR]
    body = await read_json(request)
    stream = await ctx.resolve_stream(body)
    numbers = body.get("Fragments")
    if (
        not isinstance(numbers, list)
        or not 1 <= len(numbers) <= MAX_FRAGMENT_LIST
        or not all(isinstance(n, str) for n in numbers)
    ):
        raise InvalidArgumentError(
            f"Fragments must be a list of 1 to {MAX_FRAGMENT_LIST} fragment numbers."
        )
    records = {r.fragment_number: r for r in await ctx.store.get_fragments(stream.name, numbers)}
    response = web.StreamResponse(status=200, headers={"Content-Type": "video/webm"})
    await response.prepare(request)
    now_ms = int(time.time() * 1000)
    for number in numbers:
        record = records.get(number)
        if record is None:
            await response.write(
                fragment_list_error(number, 4000, "Requested fragment is not found")
            )
            continue
        payload = await ctx.store.read_payload(record)
        await response.write(_render(record, payload, now_ms=now_ms))
    await response.write_eof()
    return response
