"""The emulator's WebSocket signaling endpoint, with the library's signaling client."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kvs_toolkit.emulator import Emulator, server
from kvs_toolkit.emulator.signaling import HUB, SignalingLimits, installer
from kvs_toolkit.errors import SignalingError
from kvs_toolkit.retry import RetryPolicy
from kvs_toolkit.webrtc.client import SignalingClient, presign_url
from kvs_toolkit.webrtc.messages import (
    IncomingMessage,
    OutgoingMessage,
    SessionDescription,
)
from tests.webrtc.conftest import ACCESS_KEY, SECRET, aws_for, client

FAST_RETRY = RetryPolicy(max_attempts=3, base_s=0.05, max_s=0.2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _installers(**kwargs: Any) -> list[Callable[..., None]]:
    others = [i for i in server.DEFAULT_ROUTE_INSTALLERS if i.__module__ != installer.__module__]
    return [*others, installer(**kwargs)]


def _run(body: Callable[[Emulator, Path], Awaitable[None]], **installer_kwargs: Any) -> None:
    async def main() -> None:
        emulator = Emulator(
            credentials={ACCESS_KEY: SECRET}, route_installers=_installers(**installer_kwargs)
        )
        async with emulator:
            kv = client("kinesisvideo", emulator)
            await asyncio.to_thread(kv.create_signaling_channel, ChannelName="chan")
            kv.close()
            await asyncio.wait_for(
                body(emulator, emulator.data_dir / "signaling" / "tls" / "ca.pem"), 60
            )

    asyncio.run(main())


def _client(
    emulator: Emulator, ca: Path, client_id: str | None = None, **kw: Any
) -> SignalingClient:
    return SignalingClient(
        aws_for(emulator),
        "chan",
        role="MASTER" if client_id is None else "VIEWER",
        client_id=client_id,
        ca_file=ca,
        retry=FAST_RETRY,
        **kw,
    )


async def _next(messages: AsyncIterator[IncomingMessage], timeout: float = 10) -> IncomingMessage:
    return await asyncio.wait_for(anext(messages), timeout)


def _offer(text: str, **kw: Any) -> OutgoingMessage:
    return OutgoingMessage.offer(SessionDescription("offer", text), **kw)


def _answer(text: str, **kw: Any) -> OutgoingMessage:
    return OutgoingMessage.answer(SessionDescription("answer", text), **kw)


def test_routing_between_master_and_viewers() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        async with (
            _client(emulator, ca) as master,
            _client(emulator, ca, "v1") as v1,
            _client(emulator, ca, "v2") as v2,
        ):
            from_master = aiter(master)
            await v1.send(_offer("from v1"))
            await v2.send(_offer("from v2"))
            got = {(await _next(from_master)).sender_client_id for _ in range(2)}
            assert got == {"v1", "v2"}
            await master.send(_answer("to v2", recipient_client_id="v2"))
            message = await _next(aiter(v2))
            assert message.message_type == "SDP_ANSWER"
            assert message.description() == SessionDescription("answer", "to v2")
            # a message the service refuses comes back as STATUS_RESPONSE
            await master.send(_answer("nobody", correlation_id="c-1"))
            refused = await _next(from_master)
            assert refused.message_type == "STATUS_RESPONSE"
            assert refused.status is not None
            assert refused.status.correlation_id == "c-1"
            assert refused.status.error_type == "InvalidArgumentException"

    _run(body)


def test_new_master_wins_and_old_one_gets_go_away() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        old = _client(emulator, ca)
        await old.open()
        old_messages = aiter(old)
        async with _client(emulator, ca) as new, _client(emulator, ca, "v1") as viewer:
            first = await _next(old_messages)
            assert first.message_type == "GO_AWAY"
            await viewer.send(_offer("hello"))
            message = await _next(aiter(new))
            assert (message.sender_client_id, message.description().sdp) == ("v1", "hello")
        await old.close()

    _run(body)


def test_viewer_limit() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        viewers = [_client(emulator, ca, f"v{i}") for i in range(3)]
        for viewer in viewers[:2]:
            await viewer.open()
        with pytest.raises(SignalingError, match="HTTP 400"):
            await viewers[2].open()
        # the same client id reconnecting replaces its connection: not a new viewer
        again = _client(emulator, ca, "v0")
        await again.open()
        assert _hub(emulator).viewer_ids("chan") == ["v0", "v1"]
        for viewer in [*viewers[:2], again]:
            await viewer.close()

    _run(body, limits=SignalingLimits(max_viewers=2, connects_per_second=100))


def test_message_for_an_absent_viewer_waits_at_most_the_ttl() -> None:
    clock = FakeClock()

    async def body(emulator: Emulator, ca: Path) -> None:
        kv = client("kinesisvideo", emulator)
        info = await asyncio.to_thread(kv.describe_signaling_channel, ChannelName="chan")
        await asyncio.to_thread(
            kv.update_signaling_channel,
            ChannelARN=info["ChannelInfo"]["ChannelARN"],
            CurrentVersion=info["ChannelInfo"]["Version"],
            SingleMasterConfiguration={"MessageTtlSeconds": 5},
        )
        kv.close()
        async with _client(emulator, ca) as master:
            hub = _hub(emulator)
            await master.send(_answer("expires", recipient_client_id="late"))
            await master.send(_answer("expires too", recipient_client_id="later"))
            await _until(lambda: hub.pending("chan", "later") == 1)
            clock.now += 6  # past the TTL
            await master.send(_answer("fresh", recipient_client_id="later"))
            # one connection's messages are handled in order: once the marker waits,
            # "fresh" was queued (and the expired message before it dropped)
            await master.send(_answer("marker", recipient_client_id="marker"))
            await _until(lambda: hub.pending("chan", "marker") == 1)
            async with (
                _client(emulator, ca, "late") as late,
                _client(emulator, ca, "later") as later,
            ):
                got = await _next(aiter(later))
                assert got.description().sdp == "fresh"
                with pytest.raises(asyncio.TimeoutError):
                    await _next(aiter(late), timeout=0.5)

    _run(body, clock=clock)


def test_message_limits() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        async with _client(emulator, ca) as master, _client(emulator, ca, "v1") as viewer:
            messages = aiter(viewer)
            from_master = aiter(master)
            for i in range(3):
                await viewer.send(_offer(f"n{i}", correlation_id=f"c{i}"))
            assert (await _next(from_master)).description().sdp == "n0"
            assert (await _next(from_master)).description().sdp == "n1"
            refused = await _next(messages)
            assert refused.status is not None
            assert (refused.status.correlation_id, refused.status.error_type) == (
                "c2",
                "ClientLimitExceededException",
            )
            big = OutgoingMessage("ICE_CANDIDATE", "QUFB" * 30, correlation_id="big")
            await viewer.send(big)
            refused = await _next(messages)
            assert refused.status is not None
            assert refused.status.correlation_id == "big"
            assert "over the limit" in refused.status.description

    _run(
        body,
        limits=SignalingLimits(
            max_payload_chars=100, messages_per_second={"SDP_OFFER": 2.0, "ICE_CANDIDATE": 20.0}
        ),
        clock=FakeClock(),
    )


def test_dropped_connection_reconnects() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        async with _client(emulator, ca) as master, _client(emulator, ca, "v1") as viewer:
            from_master = aiter(master)
            # drop the master's connection from the server side
            hub = _hub(emulator)
            peer = hub.master("chan")
            assert peer is not None
            await peer.ws.close()
            await viewer.send(_offer("after the drop"))
            message = await _next(from_master)
            assert message.description().sdp == "after the drop"
            assert master.connections == 2

    _run(body)


def test_connection_length_limit_sends_go_away() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        async with _client(emulator, ca, "v1") as viewer:
            messages = aiter(viewer)
            assert (await _next(messages)).message_type == "GO_AWAY"
            # reading on reconnects with a fresh URL
            reading = asyncio.ensure_future(anext(messages))
            await _until(lambda: viewer.connections == 2)
            reading.cancel()

    _run(body, limits=SignalingLimits(max_connection_seconds=0.5))


def test_expired_or_unsigned_url_is_refused_and_skew_is_corrected() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        skewed = _client(emulator, ca, "v1", clock=lambda: time.time() - 3600)
        await skewed.open()  # refused once as expired, then signed with the server's time
        assert skewed.connections == 1
        await skewed.close()
        aws = aws_for(emulator)
        endpoint = skewed.endpoint
        assert endpoint is not None
        context = ssl.create_default_context(cafile=str(ca))
        expired = presign_url(
            endpoint.wss_url,
            {"X-Amz-ChannelARN": endpoint.arn, "X-Amz-ClientId": "v2"},
            aws.credentials,
            aws.region,
            expires=60,
            signing_time=time.time() - 120,
        )
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await session.ws_connect(expired, ssl=context)
            assert exc.value.status == 403
            unsigned = f"{endpoint.wss_url}/?X-Amz-ChannelARN={endpoint.arn}&X-Amz-ClientId=v3"
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await session.ws_connect(unsigned, ssl=context)
            assert exc.value.status == 403
            async with session.get(expired.replace("wss:", "https:"), ssl=context) as response:
                assert response.status == 403
                assert (await response.json())["message"] == "Request has expired"

    _run(body)


async def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _hub(emulator: Emulator) -> Any:
    # The control-plane application holds the hub; reach it through the runner.
    runner = emulator._runner
    assert runner is not None
    return runner.app[HUB]


def test_messages_for_absent_clients_are_bounded() -> None:
    clock = FakeClock()

    async def body(emulator: Emulator, ca: Path) -> None:
        async with _client(emulator, ca) as master:
            messages = aiter(master)
            hub = _hub(emulator)
            for name in ("a", "b"):
                await master.send(_answer("x", recipient_client_id=name))
            await master.send(_answer("x", recipient_client_id="c", correlation_id="third"))
            refused = await _next(messages)
            assert refused.status is not None
            assert refused.status.correlation_id == "third"
            assert refused.status.error_type == "ClientLimitExceededException"
            clock.now += 61  # the waiting messages expire: room again
            await master.send(_answer("x", recipient_client_id="c"))
            await _until(lambda: hub.pending("chan", "c") == 1)
            assert hub.pending("chan", "a") == 0

    _run(body, limits=SignalingLimits(max_pending_recipients=2), clock=clock)


def test_plain_ws_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without 'cryptography' the emulator answers (and serves) a ws:// endpoint."""
    from kvs_toolkit.emulator import signaling

    def no_cryptography(directory: Path) -> Any:
        raise ImportError("No module named 'cryptography'")

    monkeypatch.setattr(signaling, "ensure_local_ca", no_cryptography)

    async def body(emulator: Emulator, ca: Path) -> None:
        assert not ca.exists()
        async with (
            SignalingClient(aws_for(emulator), "chan", role="MASTER") as master,
            SignalingClient(aws_for(emulator), "chan", role="VIEWER", client_id="v") as viewer,
        ):
            assert master.endpoint is not None
            assert master.endpoint.wss_url.startswith("ws://127.0.0.1:")
            await viewer.send(_offer("plain"))
            assert (await _next(aiter(master))).description().sdp == "plain"

    _run(body)


def test_send_alexa_offer_to_master() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        signaling = client("kinesis-video-signaling", emulator)
        kv = client("kinesisvideo", emulator)
        info = await asyncio.to_thread(kv.describe_signaling_channel, ChannelName="chan")
        arn = info["ChannelInfo"]["ChannelARN"]
        kv.close()
        offer = SessionDescription("offer", "v=0 alexa").to_payload()
        with pytest.raises(signaling.exceptions.ResourceNotFoundException):  # no master yet
            await asyncio.to_thread(
                signaling.send_alexa_offer_to_master,
                ChannelARN=arn,
                SenderClientId="alexa-1",
                MessagePayload=offer,
            )
        async with _client(emulator, ca) as master:
            asking = asyncio.ensure_future(
                asyncio.to_thread(
                    signaling.send_alexa_offer_to_master,
                    ChannelARN=arn,
                    SenderClientId="alexa-1",
                    MessagePayload=offer,
                )
            )
            message = await _next(aiter(master))
            assert (message.message_type, message.sender_client_id) == ("SDP_OFFER", "alexa-1")
            assert message.description().sdp == "v=0 alexa"
            answer = SessionDescription("answer", "v=0 master")
            await master.send(OutgoingMessage.answer(answer, recipient_client_id="alexa-1"))
            result = await asking
            assert SessionDescription.from_payload(result["Answer"]) == answer
        signaling.close()

    _run(body)


def test_deleted_channel_sends_go_away_and_system_messages() -> None:
    async def body(emulator: Emulator, ca: Path) -> None:
        viewer = _client(emulator, ca, "v1", reconnect_on_go_away=False)
        await viewer.open()
        messages = aiter(viewer)
        assert await _hub(emulator).notify("chan", "RECONNECT_ICE_SERVER") == 1
        assert (await _next(messages)).message_type == "RECONNECT_ICE_SERVER"
        kv = client("kinesisvideo", emulator)
        info = await asyncio.to_thread(kv.describe_signaling_channel, ChannelName="chan")
        await asyncio.to_thread(
            kv.delete_signaling_channel, ChannelARN=info["ChannelInfo"]["ChannelARN"]
        )
        kv.close()
        assert (await _next(messages)).message_type == "GO_AWAY"
        with pytest.raises(StopAsyncIteration):
            await _next(messages)
        await viewer.close()

    _run(body)
