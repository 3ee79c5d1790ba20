"""An asyncio KVS WebRTC signaling client (the I/O around :mod:`.messages`).

:class:`SignalingClient` finds the channel (DescribeSignalingChannel,
GetSignalingChannelEndpoint through :class:`~kvs_toolkit.aws.AwsAccess`), opens the
WebSocket with a URL presigned by botocore's SigV4 query signer, and yields the
service's messages. When the connection drops, or the service says ``GO_AWAY``, it
reconnects with a fresh URL after the :class:`~kvs_toolkit.retry.RetryPolicy`'s
back-off. A 403 whose ``Date`` header shows the local clock off by more than the
service allows is answered by signing with the server's time from then on
(clock-skew tolerance, as the AWS SDKs do).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from kvs_toolkit.errors import SignalingError
from kvs_toolkit.retry import RetryPolicy
from kvs_toolkit.webrtc.messages import IncomingMessage, OutgoingMessage, parse_incoming

if TYPE_CHECKING:
    import aiohttp
    from botocore.credentials import Credentials

    from kvs_toolkit.aws import AwsAccess

__all__ = [
    "ChannelEndpoint",
    "Role",
    "SignalingClient",
    "kvs_stun_uri",
    "presign_url",
    "resolve_channel",
    "service_ice_servers",
]

log = logging.getLogger(__name__)

Role = Literal["MASTER", "VIEWER"]
#: Seconds a presigned URL stays valid: it is used at once, and made again on reconnect.
DEFAULT_URL_EXPIRES: Final = 300
_SKEW_LIMIT_S: Final = 240  # re-sign with the server's clock past this difference
_SIGV4_TIMESTAMP: Final = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True, slots=True)
class ChannelEndpoint:
    """A channel and where to signal on it for one role."""

    name: str
    arn: str
    wss_url: str
    https_url: str | None
    storage_enabled: bool = False
    webrtc_url: str | None = None


def resolve_channel(aws: AwsAccess, channel_name: str, role: Role) -> ChannelEndpoint:
    """Look the channel up and get its endpoints (blocking: two or three AWS calls)."""
    import botocore.exceptions

    kv = aws.client("kinesisvideo")
    try:
        info = kv.describe_signaling_channel(ChannelName=channel_name)["ChannelInfo"]
        arn = info["ChannelARN"]
        storage = kv.describe_media_storage_configuration(ChannelARN=arn)[
            "MediaStorageConfiguration"
        ]
        enabled = storage.get("Status") == "ENABLED"
        protocols = ["WSS", "HTTPS"] + (["WEBRTC"] if enabled and role == "MASTER" else [])
        endpoints = kv.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": protocols, "Role": role},
        )["ResourceEndpointList"]
    except botocore.exceptions.ClientError as exc:
        raise SignalingError(f"channel {channel_name}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise SignalingError(f"channel {channel_name}: {exc}") from exc
    by_protocol = {e["Protocol"]: e["ResourceEndpoint"] for e in endpoints}
    if "WSS" not in by_protocol:
        raise SignalingError(f"channel {channel_name}: no WSS endpoint in the answer")
    return ChannelEndpoint(
        name=channel_name,
        arn=arn,
        wss_url=by_protocol["WSS"],
        https_url=by_protocol.get("HTTPS"),
        storage_enabled=enabled,
        webrtc_url=by_protocol.get("WEBRTC"),
    )


def kvs_stun_uri(region: str) -> str:
    """The region's KVS STUN server (as the official SDKs use it)."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"stun:stun.kinesisvideo.{region}.{suffix}:443"


def service_ice_servers(
    aws: AwsAccess, endpoint: ChannelEndpoint, client_id: str | None = None
) -> list[dict[str, Any]]:
    """The ICE servers for a peer of ``endpoint``'s channel (blocking), in
    GetIceServerConfig's shape: the region's STUN server (not for a local endpoint:
    the emulator's peers are on this machine) and GetIceServerConfig's TURN servers
    (an empty list from the emulator)."""
    import botocore.exceptions

    servers: list[dict[str, Any]] = [] if aws.local else [{"Uris": [kvs_stun_uri(aws.region)]}]
    if endpoint.https_url is None:
        return servers
    signaling = aws.client("kinesis-video-signaling", endpoint_url=endpoint.https_url)
    request: dict[str, str] = {"ChannelARN": endpoint.arn, "Service": "TURN"}
    if client_id is not None:
        request["ClientId"] = client_id
    try:
        servers += signaling.get_ice_server_config(**request)["IceServerList"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise SignalingError(f"channel {endpoint.name}: GetIceServerConfig: {exc}") from exc
    finally:
        signaling.close()
    return servers


def presign_url(
    wss_url: str,
    params: dict[str, str],
    credentials: Credentials,
    region: str,
    *,
    expires: int = DEFAULT_URL_EXPIRES,
    signing_time: float | None = None,
) -> str:
    """``wss_url`` with ``params`` and SigV4 query authentication (service
    ``kinesisvideo``), signed at ``signing_time`` (epoch seconds; default now)."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    base: Any = SigV4QueryAuth

    class _TimedQueryAuth(base):  # type: ignore[misc]
        def _modify_request_before_signing(self, request: Any) -> None:
            if signing_time is not None:
                request.context["timestamp"] = time.strftime(
                    _SIGV4_TIMESTAMP, time.gmtime(signing_time)
                )
            super()._modify_request_before_signing(request)

    parts = urlsplit(wss_url)
    # Signed as https (what the service's front end sees), sent as wss.
    https = urlunsplit(("https", parts.netloc, parts.path or "/", urlencode(params), ""))
    request = AWSRequest(method="GET", url=https)
    _TimedQueryAuth(credentials.get_frozen_credentials(), "kinesisvideo", region, expires).add_auth(
        request
    )
    signed = urlsplit(str(request.url))
    return urlunsplit((parts.scheme, signed.netloc, signed.path, signed.query, ""))


def _server_time(headers: Any) -> float | None:
    value = None if headers is None else headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class SignalingClient:
    """One master or viewer connection to a signaling channel, reconnecting as needed.

    Use as ``async with SignalingClient(aws, "cam", role="VIEWER", client_id="v1") as c``,
    then ``await c.send(OutgoingMessage...)`` and ``async for message in c``.
    ``ca_file`` is a CA to trust for ``wss://`` (the emulator's ``signaling/tls/ca.pem``;
    found by itself when the endpoint is the local emulator and ``data_dir`` is given).
    ``clock`` (epoch seconds) is injectable for tests of clock skew.

    ``GO_AWAY`` (the service ends the connection: its one-hour limit, or another master
    took the channel) is yielded, then the client reconnects; with
    ``reconnect_on_go_away=False`` the iteration ends there instead. Two masters that
    both reconnect take the channel from each other, as they would on the service.
    """

    def __init__(
        self,
        aws: AwsAccess,
        channel_name: str,
        *,
        role: Role,
        client_id: str | None = None,
        ca_file: str | Path | None = None,
        retry: RetryPolicy | None = None,
        url_expires: int = DEFAULT_URL_EXPIRES,
        clock: Callable[[], float] = time.time,
        endpoint: ChannelEndpoint | None = None,
        reconnect_on_go_away: bool = True,
    ) -> None:
        if (role == "VIEWER") != (client_id is not None):
            raise SignalingError("a viewer needs a client id, and a master has none")
        self.aws = aws
        self.channel_name = channel_name
        self.role: Role = role
        self.client_id = client_id
        self.retry = retry or aws.retry
        self.url_expires = url_expires
        self._clock = clock
        self._skew = 0.0
        self._ca_file = None if ca_file is None else Path(ca_file)
        self.endpoint = endpoint
        self.reconnect_on_go_away = reconnect_on_go_away
        self._session: aiohttp.ClientSession | None = None
        self._ws: Any = None  # aiohttp.ClientWebSocketResponse
        self._closing = False
        self._connected = asyncio.Event()
        #: How many times the connection was opened (1 after the first connect).
        self.connections = 0

    # -- life --

    async def __aenter__(self) -> SignalingClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Find the channel and connect (with the retry policy's attempts)."""
        import aiohttp

        if self.endpoint is None:
            self.endpoint = await asyncio.to_thread(
                resolve_channel, self.aws, self.channel_name, self.role
            )
        self._session = aiohttp.ClientSession()
        try:
            await self._connect()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        self._connected.clear()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ssl(self) -> ssl.SSLContext | bool:
        assert self.endpoint is not None
        if not self.endpoint.wss_url.startswith("wss:"):
            return False
        if self._ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self._ca_file))

    def signed_url(self) -> str:
        """A freshly presigned connect URL for this client's role."""
        assert self.endpoint is not None
        params = {"X-Amz-ChannelARN": self.endpoint.arn}
        if self.client_id is not None:
            params["X-Amz-ClientId"] = self.client_id
        return presign_url(
            self.endpoint.wss_url,
            params,
            self.aws.credentials,
            self.aws.region,
            expires=self.url_expires,
            signing_time=self._clock() + self._skew,
        )

    async def _connect(self) -> None:
        import aiohttp

        assert self._session is not None
        attempt = 0
        while True:
            attempt += 1
            try:
                self._ws = await self._session.ws_connect(
                    self.signed_url(),
                    ssl=self._ssl(),
                    heartbeat=None,
                    autoping=True,
                    max_msg_size=64 * 1024,
                )
            except aiohttp.WSServerHandshakeError as exc:
                server = _server_time(exc.headers)
                local = self._clock() + self._skew
                if exc.status == 403 and server is not None and abs(server - local) > _SKEW_LIMIT_S:
                    self._skew += server - local
                    log.warning(
                        "signaling: the local clock is %.0f s off the service's; signing with "
                        "the service's time",
                        server - local,
                    )
                    if attempt < 3:  # a skew fix gets its own retry, without back-off
                        continue
                retryable = exc.status in (400, 429) or exc.status >= 500
                if not retryable or self.retry.gives_up_after(attempt):
                    raise SignalingError(
                        f"channel {self.channel_name}: the signaling endpoint refused the "
                        f"connection (HTTP {exc.status} {exc.message})"
                    ) from exc
                reason = f"HTTP {exc.status}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                if self.retry.gives_up_after(attempt):
                    raise SignalingError(
                        f"channel {self.channel_name}: cannot reach the signaling endpoint "
                        f"after {attempt} attempts: {exc}"
                    ) from exc
                reason = str(exc) or type(exc).__name__
            else:
                self.connections += 1
                self._connected.set()
                log.info(
                    "signaling: connected to %s as %s",
                    self.channel_name,
                    "master" if self.client_id is None else f"viewer {self.client_id}",
                )
                return
            delay = self.retry.delay(attempt)
            log.warning(
                "signaling: %s (%s); retrying in %.2f s",
                reason,
                self.retry.describe(attempt),
                delay,
            )
            await asyncio.sleep(delay)

    # -- messages --

    async def send(self, message: OutgoingMessage, timeout: float = 10.0) -> None:
        """Send ``message``, waiting (up to ``timeout``) for a reconnect in progress."""
        text = message.encode()
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except asyncio.TimeoutError as exc:
                raise SignalingError("signaling: not connected") from exc
            assert self._ws is not None
            try:
                await self._ws.send_str(text)
                return
            except (ConnectionError, RuntimeError) as exc:
                if attempt == 2 or self._closing:
                    raise SignalingError(f"signaling: send failed: {exc}") from exc
                # The connection is going: the reader reconnects; send once more then.
                self._connected.clear()

    def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[IncomingMessage]:
        import aiohttp

        while not self._closing:
            ws = self._ws
            assert ws is not None
            go_away = False
            async for raw in ws:
                if raw.type == aiohttp.WSMsgType.TEXT:
                    try:
                        message = parse_incoming(raw.data)
                    except SignalingError as exc:
                        log.warning("signaling: ignoring a malformed message: %s", exc)
                        continue
                    if message is None:
                        continue
                    yield message
                    if message.message_type == "GO_AWAY":
                        go_away = True
                        break
                elif raw.type == aiohttp.WSMsgType.ERROR:
                    break
            self._connected.clear()
            await ws.close()
            if self._closing or (go_away and not self.reconnect_on_go_away):
                return
            log.info(
                "signaling: connection to %s %s; reconnecting",
                self.channel_name,
                "ended by GO_AWAY" if go_away else "dropped",
            )
            await asyncio.sleep(self.retry.delay(1))
            await self._connect()


def epoch_of_amz_date(text: str) -> float:
    """Epoch seconds of a SigV4 ``X-Amz-Date`` value (for tests and diagnostics)."""
    return float(calendar.timegm(time.strptime(text, _SIGV4_TIMESTAMP)))
