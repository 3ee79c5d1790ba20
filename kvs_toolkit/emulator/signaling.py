"""KVS WebRTC signaling: the WebSocket endpoint and ``kinesis-video-signaling``.

The WebSocket endpoint is the service's: ``GET /?X-Amz-ChannelARN=...`` connects as the
channel's master, ``...&X-Amz-ClientId=ID`` as a viewer, with SigV4 *query*
authentication checked when the emulator has credentials (``--verify-sigv4``). It is
served on its own listener (not the control plane's, whose middleware wants an
``Authorization`` header): ``wss://127.0.0.1:PORT`` with a certificate from the
emulator's local CA (:mod:`.signaling_tls`; the official JS SDK takes nothing but
``wss://``) and ``ws://127.0.0.1:PORT`` for local tools. GetSignalingChannelEndpoint
answers the ``wss://`` URL.

Routing (:class:`SignalingHub`, as the WebRTC developer guide describes the service; see
docs/kvs-wire.md): clients send ``{"action", "messagePayload", "recipientClientId"?,
"correlationId"?}`` (the capitalised keys some SDKs send are accepted too); a viewer's
message goes to the master, a master's to the viewer named by ``recipientClientId``.
Recipients get ``{"senderClientId", "messageType", "messagePayload"}`` (the master's
``senderClientId`` is empty). A message for a peer that is not connected waits for it at
most the channel's MessageTtlSeconds. One master per channel: a new master takes over
and the old one gets ``GO_AWAY`` and is closed after the grace period; a viewer
reconnecting with the same client id replaces its old connection; at most 10 viewers.
A refused message is answered with ``STATUS_RESPONSE`` carrying its ``correlationId``.
Limits (:class:`SignalingLimits`) are the documented quotas: 3 connects per second per
channel and role, 10,000 characters of payload, 5 offers or answers and 20 ICE
candidates per second per connection, one hour per connection, 10 minutes idle.

``kinesis-video-signaling`` on the HTTPS endpoint (the emulator's own URL):
GetIceServerConfig answers an **empty** ``IceServerList``: the emulator runs no TURN
server, and on one machine host candidates are all ICE needs. SendAlexaOfferToMaster
hands the offer to the connected master and answers with its SDP answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote

from aiohttp import WSMsgType, web

from kvs_toolkit.emulator import channels
from kvs_toolkit.emulator.channels import (
    CHANNEL_DELETE_LISTENERS,
    CHANNELS,
    SIGNALING_ENDPOINTS,
    ChannelRecord,
)
from kvs_toolkit.emulator.context import EMULATOR, error_response, json_response, read_json
from kvs_toolkit.emulator.errors import (
    ClientLimitExceededError,
    InvalidArgumentError,
    ResourceNotFoundError,
    ServiceError,
)
from kvs_toolkit.emulator.signaling_tls import ensure_local_ca
from kvs_toolkit.emulator.sigv4 import (
    EMPTY_SHA256,
    MAX_SKEW_SECONDS,
    UNSIGNED_PAYLOAD,
    IncompleteSignatureError,
    InvalidSignatureError,
    MissingAuthenticationTokenError,
    UnrecognizedClientError,
    canonical_request,
    signing_key,
    string_to_sign,
)
from kvs_toolkit.retry import TokenBucket

__all__ = [
    "HUB",
    "SignalingHub",
    "SignalingLimits",
    "install",
    "installer",
    "verify_presigned",
]

logger = logging.getLogger(__name__)

MASTER: Final = "MASTER"
VIEWER: Final = "VIEWER"
_CLIENT_ID = re.compile(r"[a-zA-Z0-9_.-]+")
_ACTIONS: Final = frozenset({"SDP_OFFER", "SDP_ANSWER", "ICE_CANDIDATE"})


@dataclass(frozen=True, slots=True)
class SignalingLimits:
    """The signaling quotas the emulator enforces (defaults: the documented ones)."""

    max_viewers: int = 10
    max_payload_chars: int = 10_000
    connects_per_second: float = 3.0
    messages_per_second: Mapping[str, float] = field(
        default_factory=lambda: {"SDP_OFFER": 5.0, "SDP_ANSWER": 5.0, "ICE_CANDIDATE": 20.0}
    )
    max_connection_seconds: float = 3600.0
    idle_timeout_seconds: float = 600.0
    go_away_grace_seconds: float = 60.0
    #: Not service figures: they bound what waits for absent peers.
    max_pending_per_recipient: int = 200
    max_pending_recipients: int = 100
    max_frame_bytes: int = 64 * 1024
    alexa_answer_timeout_seconds: float = 10.0


class _WsLimitError(ServiceError):
    code = "ClientLimitExceededException"
    status = 400


def _b64(data: Mapping[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return base64.b64encode(text.encode()).decode()


# -- SigV4 query authentication --------------------------------------------------------


def verify_presigned(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    credentials: Mapping[str, str],
    now: float | None = None,
    service: str = "kinesisvideo",
) -> None:
    """Check a presigned (SigV4 query) request; raise the front end's errors.

    The payload hash of a presigned GET is the empty body's hash (botocore's
    SigV4QueryAuth) or ``UNSIGNED-PAYLOAD`` (other signers): both are accepted.
    """
    params: dict[str, str] = {}
    kept: list[str] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params[unquote(name)] = unquote(value)
        if unquote(name) != "X-Amz-Signature":
            kept.append(part)
    if "X-Amz-Signature" not in params and "X-Amz-Credential" not in params:
        raise MissingAuthenticationTokenError("Missing Authentication Token")
    for required in (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ):
        if required not in params:
            raise IncompleteSignatureError(f"The query string is missing {required}.")
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise IncompleteSignatureError("X-Amz-Credential is not a SigV4 credential scope.")
    access_key, date, region, scope_service = scope[:4]
    amz_date = params["X-Amz-Date"]
    try:
        stamp = float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))
    except ValueError as exc:
        raise IncompleteSignatureError(
            f"X-Amz-Date {amz_date!r} is not YYYYMMDD'T'HHMMSS'Z'."
        ) from exc
    current = time.time() if now is None else now
    expires = params.get("X-Amz-Expires", "")
    if not expires.isdigit():
        raise IncompleteSignatureError("X-Amz-Expires must be a number of seconds.")
    if current > stamp + int(expires):
        raise InvalidSignatureError("Request has expired")
    if stamp > current + MAX_SKEW_SECONDS:
        raise InvalidSignatureError("Signature not yet current")
    if scope_service != service:
        raise InvalidSignatureError(f"Credential should be scoped to correct service: '{service}'.")
    secret = credentials.get(access_key)
    if secret is None:
        raise UnrecognizedClientError("The security token included in the request is invalid.")
    signed_headers = params["X-Amz-SignedHeaders"].split(";")
    derived = signing_key(secret, date, region, scope_service)
    scope_text = "/".join(scope[1:])
    for payload_hash in (EMPTY_SHA256, UNSIGNED_PAYLOAD):
        canonical = canonical_request(
            method=method,
            raw_path=raw_path,
            raw_query="&".join(kept),
            headers=headers,
            signed_headers=signed_headers,
            payload_hash=payload_hash,
        )
        expected = hmac.new(
            derived, string_to_sign(amz_date, scope_text, canonical).encode(), hashlib.sha256
        ).hexdigest()
        if hmac.compare_digest(expected, params["X-Amz-Signature"].lower()):
            return
    raise InvalidSignatureError(
        "The request signature we calculated does not match the signature you provided."
    )


# -- the hub ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Peer:
    """A connected client: a WebSocket, or (``sink``) a peer inside the emulator such
    as the WebRTC storage session, which gets its messages as calls."""

    ws: web.WebSocketResponse | None
    channel: str
    client_id: str | None  # None: the master
    connected_at: float
    buckets: dict[str, TokenBucket]
    retired: bool = False  # replaced by a newer connection; gets no more messages
    sink: Callable[[dict[str, Any]], Awaitable[None]] | None = None

    @property
    def key(self) -> str:
        return "" if self.client_id is None else self.client_id

    @property
    def closed(self) -> bool:
        return self.retired if self.ws is None else self.ws.closed

    async def send(self, message: dict[str, Any]) -> bool:
        if self.sink is not None:
            if self.retired:
                return False
            await self.sink(message)
            return True
        if self.ws is None or self.ws.closed:
            return False
        try:
            await self.ws.send_str(json.dumps(message, separators=(",", ":")))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def close(self) -> None:
        self.retired = True
        if self.ws is not None:
            await self.ws.close()


class SignalingHub:
    """Who is connected to which channel, and the messages waiting for them.

    Runs on the emulator's loop only. ``clock`` is injectable for the TTL and limits.
    """

    def __init__(
        self, limits: SignalingLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or SignalingLimits()
        self._clock = clock
        self._masters: dict[str, _Peer] = {}
        self._viewers: dict[str, dict[str, _Peer]] = {}
        self._pending: dict[tuple[str, str], deque[tuple[float, dict[str, Any]]]] = {}
        self._connects: dict[tuple[str, str], TokenBucket] = {}
        self._alexa: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._closers: set[asyncio.Task[None]] = set()

    # -- queries (tests and the web page) --

    def master(self, channel: str) -> _Peer | None:
        return self._masters.get(channel)

    def viewer_ids(self, channel: str) -> list[str]:
        return sorted(self._viewers.get(channel, {}))

    def pending(self, channel: str, client_id: str | None) -> int:
        """How many messages wait for ``client_id`` (None: the master), expired included."""
        return len(self._pending.get((channel, "" if client_id is None else client_id), ()))

    # -- connection life --

    def admit(self, channel: str, client_id: str | None) -> None:
        """Refuse a connect over the connect rate or the viewer limit."""
        role = MASTER if client_id is None else VIEWER
        bucket = self._connects.setdefault(
            (channel, role),
            TokenBucket(
                self.limits.connects_per_second,
                burst=self.limits.connects_per_second,
                clock=self._clock,
            ),
        )
        if not bucket.try_acquire():
            raise ClientLimitExceededError(
                f"ConnectAs{role.title()} on channel {channel} is over "
                f"{self.limits.connects_per_second:g} connections per second."
            )
        if client_id is not None:
            viewers = self._viewers.get(channel, {})
            if client_id not in viewers and len(viewers) >= self.limits.max_viewers:
                raise ClientLimitExceededError(
                    f"Channel {channel} already has {self.limits.max_viewers} viewers connected."
                )

    def new_peer(
        self,
        ws: web.WebSocketResponse | None,
        channel: str,
        client_id: str | None,
        sink: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> _Peer:
        rates = self.limits.messages_per_second
        return _Peer(
            ws=ws,
            channel=channel,
            client_id=client_id,
            connected_at=self._clock(),
            sink=sink,
            buckets={
                action: TokenBucket(rate, burst=rate, clock=self._clock)
                for action, rate in rates.items()
            },
        )

    async def attach(self, peer: _Peer) -> None:
        """Make ``peer`` the channel's master (or a viewer) and hand it what waits for it."""
        old: _Peer | None
        if peer.client_id is None:
            old = self._masters.get(peer.channel)
            self._masters[peer.channel] = peer
        else:
            viewers = self._viewers.setdefault(peer.channel, {})
            old = viewers.get(peer.client_id)
            viewers[peer.client_id] = peer
        if old is not None and old is not peer:
            old.retired = True
            await old.send(self._system("GO_AWAY"))
            self._close_later(old, self.limits.go_away_grace_seconds)
            logger.info(
                "channel %s: %s replaced by a new connection",
                peer.channel,
                "master" if peer.client_id is None else f"viewer {peer.client_id}",
            )
        queue = self._pending.pop((peer.channel, peer.key), None)
        now = self._clock()
        while queue:
            expires, message = queue.popleft()
            if expires > now:
                await peer.send(message)

    def detach(self, peer: _Peer) -> None:
        if peer.client_id is None:
            if self._masters.get(peer.channel) is peer:
                del self._masters[peer.channel]
        else:
            viewers = self._viewers.get(peer.channel, {})
            if viewers.get(peer.client_id) is peer:
                del viewers[peer.client_id]
                if not viewers:
                    self._viewers.pop(peer.channel, None)

    def _close_later(self, peer: _Peer, delay: float) -> None:
        async def close() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(_wait_closed(peer), delay)
            await peer.close()

        task = asyncio.get_running_loop().create_task(close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close_channel(self, channel: str, reason: str = "GO_AWAY") -> None:
        """Tell every peer of ``channel`` ``reason`` and close them (channel deleted)."""
        peers = list(self._viewers.pop(channel, {}).values())
        master = self._masters.pop(channel, None)
        if master is not None:
            peers.append(master)
        for peer in peers:
            await peer.send(self._system(reason))
            await peer.close()
        for key in [k for k in self._pending if k[0] == channel]:
            del self._pending[key]

    async def notify(self, channel: str, message_type: str) -> int:
        """Send a system message (``GO_AWAY``, ``RECONNECT_ICE_SERVER``) to every peer of
        ``channel``; returns how many got it."""
        peers = [*self._viewers.get(channel, {}).values()]
        master = self._masters.get(channel)
        if master is not None:
            peers.append(master)
        sent = 0
        for peer in peers:
            sent += await peer.send(self._system(message_type))
        return sent

    async def shutdown(self) -> None:
        for channel in list({*self._masters, *self._viewers}):
            await self.close_channel(channel)
        for task in list(self._closers):
            task.cancel()
        await asyncio.gather(*self._closers, return_exceptions=True)

    # -- messages --

    @staticmethod
    def _system(message_type: str) -> dict[str, Any]:
        return {"senderClientId": "", "messageType": message_type, "messagePayload": ""}

    @staticmethod
    def _status(correlation_id: str | None, error: ServiceError) -> dict[str, Any]:
        status: dict[str, Any] = {
            "errorType": error.code,
            "statusCode": str(error.status),
            "description": error.message,
        }
        if correlation_id is not None:
            status["correlationId"] = correlation_id
        return {
            "senderClientId": "",
            "messageType": "STATUS_RESPONSE",
            "messagePayload": "",
            "statusResponse": status,
        }

    async def receive(self, peer: _Peer, text: str, ttl_seconds: float) -> None:
        """Route one client message; a refused one is answered with STATUS_RESPONSE."""
        correlation_id: str | None = None
        try:
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise InvalidArgumentError("The message is not JSON.") from exc
            if not isinstance(body, dict):
                raise InvalidArgumentError("The message must be a JSON object.")
            # Some SDKs send capitalised keys (Action, MessagePayload, ...).
            lowered = {
                (k[:1].lower() + k[1:] if isinstance(k, str) else k): v for k, v in body.items()
            }
            correlation = lowered.get("correlationId")
            correlation_id = correlation if isinstance(correlation, str) else None
            await self._route(peer, lowered, ttl_seconds)
        except ServiceError as exc:
            await peer.send(self._status(correlation_id, exc))

    async def _route(self, peer: _Peer, body: dict[str, Any], ttl_seconds: float) -> None:
        action = body.get("action")
        if action not in _ACTIONS:
            raise InvalidArgumentError(f"action {action!r} is not one of {sorted(_ACTIONS)}.")
        payload = body.get("messagePayload")
        if not isinstance(payload, str) or not payload:
            raise InvalidArgumentError("messagePayload must be a non-empty base64 string.")
        if len(payload) > self.limits.max_payload_chars:
            raise InvalidArgumentError(
                f"messagePayload has {len(payload)} characters, over the limit of "
                f"{self.limits.max_payload_chars}."
            )
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgumentError("messagePayload is not valid base64.") from exc
        bucket = peer.buckets.get(action)
        if bucket is not None and not bucket.try_acquire():
            raise _WsLimitError(
                f"{action} messages are over {bucket.rate:g} per second on this connection."
            )
        if peer.retired:
            raise InvalidArgumentError("This connection was replaced and is going away.")
        recipient = body.get("recipientClientId")
        if peer.client_id is None:
            if not isinstance(recipient, str) or not recipient:
                raise InvalidArgumentError("A master's message needs a recipientClientId.")
            target_key = recipient
        else:
            target_key = ""  # a viewer talks to the master only
        message: dict[str, Any] = {
            "senderClientId": peer.key,
            "messageType": action,
            "messagePayload": payload,
        }
        waiter = self._alexa.get((peer.channel, target_key))
        if waiter is not None and peer.client_id is None and action == "SDP_ANSWER":
            if not waiter.done():
                waiter.set_result(payload)
            return
        target = (
            self._masters.get(peer.channel)
            if target_key == ""
            else self._viewers.get(peer.channel, {}).get(target_key)
        )
        if target is not None and not target.retired and await target.send(message):
            return
        key = (peer.channel, target_key)
        if key not in self._pending:
            waiting = sum(1 for k in self._pending if k[0] == peer.channel)
            if waiting >= self.limits.max_pending_recipients:
                self._drop_expired(peer.channel)
                waiting = sum(1 for k in self._pending if k[0] == peer.channel)
            if waiting >= self.limits.max_pending_recipients:
                raise _WsLimitError(
                    f"Messages already wait for {waiting} absent clients of this channel."
                )
        queue = self._pending.setdefault(key, deque())
        now = self._clock()
        while queue and queue[0][0] <= now:
            queue.popleft()
        if len(queue) >= self.limits.max_pending_per_recipient:
            raise _WsLimitError(f"Too many messages are waiting for client {target_key!r}.")
        queue.append((now + ttl_seconds, message))

    def _drop_expired(self, channel: str) -> None:
        now = self._clock()
        for key in [k for k in self._pending if k[0] == channel]:
            queue = self._pending[key]
            while queue and queue[0][0] <= now:
                queue.popleft()
            if not queue:
                del self._pending[key]

    async def alexa_offer(self, channel: ChannelRecord, sender: str, payload: str) -> str:
        """Give an offer to the master as from ``sender``; the master's answer (base64)."""
        master = self._masters.get(channel.name)
        if master is None or master.retired:
            raise ResourceNotFoundError(f"No master is connected to channel {channel.name}.")
        key = (channel.name, sender)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._alexa[key] = future
        try:
            await master.send(
                {"senderClientId": sender, "messageType": "SDP_OFFER", "messagePayload": payload}
            )
            return await asyncio.wait_for(future, self.limits.alexa_answer_timeout_seconds)
        except asyncio.TimeoutError as exc:
            raise ClientLimitExceededError(
                f"The master of channel {channel.name} did not answer in time."
            ) from exc
        finally:
            self._alexa.pop(key, None)


async def _wait_closed(peer: _Peer) -> None:
    while not peer.closed:
        await asyncio.sleep(0.05)


HUB = web.AppKey("kvs_signaling_hub", SignalingHub)
_CONTROL_APP = web.AppKey("kvs_signaling_control_app", web.Application)


# -- WebSocket handler -----------------------------------------------------------------


def _validate_client_id(client_id: str) -> str:
    if not 1 <= len(client_id) <= 256 or not _CLIENT_ID.fullmatch(client_id):
        raise InvalidArgumentError("X-Amz-ClientId must be 1..256 characters of [a-zA-Z0-9_.-].")
    if client_id.upper().startswith("AWS_"):
        raise InvalidArgumentError("X-Amz-ClientId can't start with AWS_.")
    return client_id


async def _connect(request: web.Request) -> web.StreamResponse:
    control = request.app[_CONTROL_APP]
    ctx = control[EMULATOR]
    hub = control[HUB]
    try:
        credentials = ctx.config.credentials
        if credentials is not None:
            raw_path, _, raw_query = request.raw_path.partition("?")
            verify_presigned(
                method=request.method,
                raw_path=raw_path,
                raw_query=raw_query,
                headers=list(request.headers.items()),
                credentials=credentials,
            )
        arn = request.query.get("X-Amz-ChannelARN")
        if arn is None:
            raise InvalidArgumentError("X-Amz-ChannelARN is required.")
        channel = control[CHANNELS].get_by_arn(arn)
        client_id = request.query.get("X-Amz-ClientId")
        if client_id is not None:
            _validate_client_id(client_id)
        hub.admit(channel.name, client_id)
    except ServiceError as exc:
        return error_response(exc)
    limits = hub.limits
    ws = web.WebSocketResponse(heartbeat=None, max_msg_size=limits.max_frame_bytes)
    await ws.prepare(request)
    peer = hub.new_peer(ws, channel.name, client_id)
    await hub.attach(peer)
    role = "master" if client_id is None else f"viewer {client_id}"
    logger.info("channel %s: %s connected", channel.name, role)
    deadline = time.monotonic() + limits.max_connection_seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # Connection duration quota: the service says GO_AWAY, then closes.
                await peer.send(SignalingHub._system("GO_AWAY"))
                break
            try:
                msg = await ws.receive(timeout=min(remaining, limits.idle_timeout_seconds))
            except asyncio.TimeoutError:
                if time.monotonic() < deadline:
                    logger.info("channel %s: %s idle, closing", channel.name, role)
                    break
                continue
            if msg.type == WSMsgType.TEXT:
                try:
                    ttl = control[CHANNELS].get(channel.name).message_ttl_seconds
                except ServiceError:
                    break  # the channel was deleted
                await hub.receive(peer, msg.data, ttl)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            elif msg.type == WSMsgType.ERROR:
                logger.info("channel %s: %s: %s", channel.name, role, ws.exception())
                break
            # BINARY and PING/PONG are ignored, as the service does.
    finally:
        hub.detach(peer)
        await ws.close()
        logger.info("channel %s: %s disconnected", channel.name, role)
    return ws


# -- kinesis-video-signaling -----------------------------------------------------------


async def get_ice_server_config(request: web.Request) -> web.Response:
    """GetIceServerConfig. The emulator runs no TURN server: the list is empty (allowed;
    on one machine host candidates are all ICE needs)."""
    body = await read_json(request)
    arn = body.get("ChannelARN")
    if not isinstance(arn, str):
        raise InvalidArgumentError("ChannelARN is required.")
    request.app[CHANNELS].get_by_arn(arn)
    client_id = body.get("ClientId")
    if client_id is not None:
        _validate_client_id(str(client_id))
    service = body.get("Service")
    if service is not None and service != "TURN":
        raise InvalidArgumentError(f"Service {service!r} is not TURN.")
    return json_response({"IceServerList": []})


async def send_alexa_offer_to_master(request: web.Request) -> web.Response:
    body = await read_json(request)
    arn, sender, payload = (
        body.get("ChannelARN"),
        body.get("SenderClientId"),
        body.get("MessagePayload"),
    )
    if not isinstance(arn, str) or not isinstance(sender, str) or not isinstance(payload, str):
        raise InvalidArgumentError("ChannelARN, SenderClientId and MessagePayload are required.")
    _validate_client_id(sender)
    if not 1 <= len(payload) <= 10_000:
        raise InvalidArgumentError("MessagePayload must be 1..10000 characters.")
    channel = request.app[CHANNELS].get_by_arn(arn)
    answer = await request.app[HUB].alexa_offer(channel, sender, payload)
    return json_response({"Answer": answer})


# -- installation ----------------------------------------------------------------------


def installer(
    limits: SignalingLimits | None = None,
    host: str = "127.0.0.1",
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[web.Application], None]:
    """A route installer for signaling with ``limits`` (tests shorten them) and
    ``clock`` (message TTL and rate limits; tests drive it)."""

    def install_signaling(app: web.Application) -> None:
        channels.install(app)
        hub = SignalingHub(limits, clock)
        app[HUB] = hub
        runners: list[web.AppRunner] = []

        def on_delete(record: ChannelRecord) -> None:
            app[EMULATOR].spawn(hub.close_channel(record.name), name=f"close {record.name}")

        app[CHANNEL_DELETE_LISTENERS].append(on_delete)

        async def start(app: web.Application) -> None:
            ws_app = web.Application()
            ws_app[_CONTROL_APP] = app
            ws_app.router.add_get("/", _connect)
            runner = web.AppRunner(ws_app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            data_dir = Path(app[EMULATOR].store.sync.data_dir)
            shown = f"[{host}]" if ":" in host else host
            endpoints = app[SIGNALING_ENDPOINTS]
            plain = web.TCPSite(runner, host, 0)
            await plain.start()
            endpoints.ws_url = f"ws://{shown}:{runner.addresses[-1][1]}"
            try:
                ca = await asyncio.to_thread(ensure_local_ca, data_dir / "signaling" / "tls")
            except ImportError:
                # The certificate is made with 'cryptography' (installed with aiortc, the
                # 'webrtc' extra); without it only ws:// is served, and answered.
                endpoints.wss_url = endpoints.ws_url
                logger.warning(
                    "WebRTC signaling at %s only: wss:// needs the 'cryptography' package",
                    endpoints.ws_url,
                )
                return
            secure = web.TCPSite(runner, host, 0, ssl_context=ca.server_context())
            await secure.start()
            endpoints.wss_url = f"wss://{shown}:{runner.addresses[-1][1]}"
            endpoints.ca_file = ca.ca_file
            logger.info(
                "WebRTC signaling at %s (CA certificate %s) and %s",
                endpoints.wss_url,
                quote(str(ca.ca_file), safe="/"),
                endpoints.ws_url,
            )

        async def stop(app: web.Application) -> None:
            await hub.shutdown()
            for runner in runners:
                await runner.cleanup()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
        from kvs_toolkit.emulator import webrtc_storage  # it imports this module

        webrtc_storage.install(app)
        app.router.add_routes(
            [
                web.post("/v1/get-ice-server-config", get_ice_server_config),
                web.post("/v1/send-alexa-offer-to-master", send_alexa_offer_to_master),
            ]
        )

    return install_signaling


#: The default installer (documented limits).
install = installer()
