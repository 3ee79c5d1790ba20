"""The resilient uploader against the real emulator, through a proxy that can cut the network."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import boto3
import pytest

from kvs_toolkit.consumer import DuplicateFilter
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import PutMediaError
from kvs_toolkit.mkv import Fragment, TrackInfo
from kvs_toolkit.producer import EncodedFrame, Uploader
from tests.media import read_fragments

VIDEO = TrackInfo(
    1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e\xff\xe1\x00\x00\x01\x00\x00", width=64, height=48
)
START_MS = 1_790_000_000_000


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 whose open connections can be cut, like a network loss."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.connections.update((writer, up_writer))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.connections:
            writer.transport.abort()
        self.connections.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_to(emulator: Emulator) -> AsyncIterator[CuttableProxy]:
    port = int(emulator.endpoint_url.rsplit(":", 1)[1])
    proxy = CuttableProxy(port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def kv(emulator: Emulator, service: str = "kinesisvideo") -> Any:
    return boto3.client(
        service,
        endpoint_url=emulator.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


def read_all(emulator: Emulator, stream: str, count: int) -> list[Fragment]:
    return read_fragments(kv(emulator, "kinesis-video-media"), stream, count)


def frame(i: int, fps: int = 10) -> EncodedFrame:
    return EncodedFrame(b"payload-%d" % i, START_MS + i * 1000 // fps, keyframe=i % fps == 0)


@pytest.fixture
def emulator() -> Any:
    with Emulator() as emu:
        yield emu


def test_uploads_and_every_fragment_is_acknowledged(emulator: Emulator) -> None:
    kv(emulator).create_stream(StreamName="cam", DataRetentionInHours=1)

    async def run() -> Any:
        uploader = Uploader(emulator.endpoint_url, "cam", [VIDEO], fragment_duration_ms=1000)
        uploader.put_fragment_metadata("site", "porch")
        await uploader.start()
        for i in range(50):
            uploader.put_frame(frame(i))
            await asyncio.sleep(0)
        return await uploader.close()

    stats = asyncio.run(run())
    assert (stats.fragments, stats.acked, stats.frames, stats.errors) == (5, 5, 50, {})
    back = read_all(emulator, "cam", 5)
    assert [bytes(f.data) for fr in back for f in fr.frames] == [
        b"payload-%d" % i for i in range(50)
    ]
    assert all(fr.producer_tags[0].name == "site" for fr in back)


def test_network_loss_resends_what_was_not_acknowledged(emulator: Emulator) -> None:
    kv(emulator).create_stream(StreamName="flaky", DataRetentionInHours=1)

    async def run() -> Any:
        async with proxy_to(emulator) as proxy:
            uploader = Uploader(
                f"http://127.0.0.1:{proxy.port}", "flaky", [VIDEO], fragment_duration_ms=1000
            )
            await uploader.start()
            for i in range(100):
                uploader.put_frame(frame(i))
                await asyncio.sleep(0.01)
                if i in (25, 75):
                    proxy.cut()  # mid-fragment
            return await uploader.close(timeout=30)

    stats = asyncio.run(run())
    assert stats.connections >= 3
    assert stats.acked == 10
    assert len(stats.ack_latency_ms) == 10
    back = read_all(emulator, "flaky", 10)
    # everything arrived, in order, each fragment once
    assert [fr.cluster_timecode for fr in back] == [START_MS + n * 1000 for n in range(10)]
    assert [bytes(f.data) for fr in back for f in fr.frames] == [
        b"payload-%d" % i for i in range(100)
    ]


def test_unknown_stream_fails_for_good_with_a_clear_error(emulator: Emulator) -> None:
    async def run() -> None:
        uploader = Uploader(emulator.endpoint_url, "missing", [VIDEO])
        await uploader.start()
        for i in range(15):
            with contextlib.suppress(PutMediaError):
                uploader.put_frame(frame(i))
            await asyncio.sleep(0.01)
        await uploader.close(timeout=5)

    with pytest.raises(PutMediaError, match="404 ResourceNotFoundException"):
        asyncio.run(run())


def test_buffer_bound_drops_oldest_while_offline() -> None:
    """No service at all: the buffer keeps only the newest fragments, within its bound."""

    async def run() -> Any:
        uploader = Uploader(
            "http://127.0.0.1:9", "offline", [VIDEO], fragment_duration_ms=1000, buffer_bytes=600
        )
        await uploader.start()
        for i in range(60):
            uploader.put_frame(frame(i))
        assert uploader.buffer.bytes <= 600 + 200  # the fragment being built may overshoot
        oldest = uploader.buffer.pending()[0].timecode
        await uploader.close(timeout=0.5)
        return uploader.stats, oldest

    stats, oldest = asyncio.run(run())
    assert stats.dropped_fragments >= 3
    assert oldest > START_MS


def test_wrong_credentials_fail_once_with_a_clear_error_not_a_retry_storm() -> None:
    from botocore.credentials import Credentials

    with Emulator(credentials={"AKIDGOOD": "right-secret"}) as emu:
        boto3.client(
            "kinesisvideo",
            endpoint_url=emu.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="AKIDGOOD",
            aws_secret_access_key="right-secret",
        ).create_stream(StreamName="guarded", DataRetentionInHours=1)

        async def run() -> Uploader:
            uploader = Uploader(
                emu.endpoint_url,
                "guarded",
                [VIDEO],
                credentials=Credentials("AKIDGOOD", "wrong-secret"),
            )
            await uploader.start()
            for i in range(12):
                with contextlib.suppress(PutMediaError):
                    uploader.put_frame(frame(i))
                await asyncio.sleep(0.02)
            with contextlib.suppress(PutMediaError):
                await uploader.close(timeout=5)
            return uploader

        uploader = asyncio.run(run())
    assert uploader.stats.connections == 1  # refused once, not retried
    with pytest.raises(PutMediaError, match="403 InvalidSignatureException"):
        uploader.put_frame(frame(99))


def test_emulator_restart_mid_upload_loses_no_frame(tmp_path: Any) -> None:
    """Stop the service mid-upload and start it again on the same port and data: the
    producer reconnects and re-sends what was not acknowledged. Delivery is at least
    once (a fragment persisted just before the stop may come twice); every frame is
    there, and repeats are whole fragments that a consumer drops by producer timestamp."""
    first = Emulator(data_dir=tmp_path)
    first.__enter__()
    port = int(first.endpoint_url.rsplit(":", 1)[1])
    kv(first).create_stream(StreamName="restart", DataRetentionInHours=1)

    async def run() -> Any:
        uploader = Uploader(first.endpoint_url, "restart", [VIDEO], fragment_duration_ms=1000)
        await uploader.start()
        second: Emulator | None = None
        for i in range(80):
            uploader.put_frame(frame(i))
            await asyncio.sleep(0.01)
            if i == 33:
                await asyncio.to_thread(first.close)
            if i == 45:
                second = Emulator(data_dir=tmp_path, port=port)
                await asyncio.to_thread(second.__enter__)
        stats = await uploader.close(timeout=30)
        return stats, second

    stats, second = asyncio.run(run())
    assert second is not None
    try:
        assert stats.acked == 8 and stats.connections >= 2
        stored = len(second.store.sync.list_fragments("restart").fragments)
        assert 8 <= stored <= 9  # at most the one fragment in flight at the stop, twice
        fragments = read_all(second, "restart", stored)
        repeats = DuplicateFilter()  # what the consumer's decoders drop
        unique = [fr for fr in fragments if not repeats.seen(fr)]
        assert [fr.cluster_timecode for fr in unique] == [START_MS + n * 1000 for n in range(8)]
        payloads = [bytes(f.data) for fr in unique for f in fr.frames]
        assert payloads == [b"payload-%d" % i for i in range(80)]
    finally:
        second.close()


def test_rotated_connections_lose_no_frame(emulator: Emulator) -> None:
    """The service ends a connection after ~45 minutes; the uploader rotates before that
    (here every 0.3 s) at a fragment boundary, and nothing is lost or repeated."""
    kv(emulator).create_stream(StreamName="rotate", DataRetentionInHours=1)

    async def run() -> Any:
        uploader = Uploader(
            emulator.endpoint_url, "rotate", [VIDEO], fragment_duration_ms=1000,
            rotate_after_s=0.3,
        )  # fmt: skip
        await uploader.start()
        for i in range(60):
            uploader.put_frame(frame(i))
            await asyncio.sleep(0.02)
        return await uploader.close(timeout=30)

    stats = asyncio.run(run())
    assert stats.acked == 6 and stats.connections >= 3
    assert stats.connection_failures == 0  # a rotation is a normal end, not an error
    back = read_all(emulator, "rotate", 6)
    assert [fr.cluster_timecode for fr in back] == [START_MS + n * 1000 for n in range(6)]
    assert [bytes(f.data) for fr in back for f in fr.frames] == [
        b"payload-%d" % i for i in range(60)
    ]


def test_wait_for_room_returns_when_acks_free_the_buffer(emulator: Emulator) -> None:
    kv(emulator).create_stream(StreamName="room", DataRetentionInHours=1)

    async def run() -> tuple[int, int, int]:
        uploader = Uploader(emulator.endpoint_url, "room", [VIDEO], fragment_duration_ms=1000)
        await uploader.start()
        for i in range(31):  # three whole fragments and the first frame of a fourth
            uploader.put_frame(frame(i))
        before = uploader.buffer.bytes
        await asyncio.wait_for(uploader.wait_for_room(before // 2), 10)
        left, acked = uploader.buffer.bytes, uploader.stats.acked
        await uploader.close()
        return before, left, acked

    before, left, acked = asyncio.run(run())
    assert left <= before // 2 and acked >= 2  # it returned once acks freed the room


def test_an_upload_task_that_fails_unexpectedly_releases_waiters(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the connection task (not a network error: those are retried) ends the
    upload with an error instead of leaving a recording's producer waiting forever."""

    async def broken(self: Uploader, http: object) -> None:
        raise RuntimeError("bug in the connection task")

    monkeypatch.setattr(Uploader, "_connection", broken)

    async def run() -> None:
        uploader = Uploader(emulator.endpoint_url, "any", [VIDEO], fragment_duration_ms=1000)
        await uploader.start()
        for i in range(25):
            uploader.put_frame(frame(i))
        await asyncio.wait_for(uploader.wait_for_room(0), 5)
        with pytest.raises(PutMediaError, match=r"^the upload stopped: RuntimeError\('bug in"):
            uploader.put_frame(frame(25))
        with pytest.raises(PutMediaError, match="the upload stopped"):
            await asyncio.wait_for(uploader.close(), 5)

    asyncio.run(run())
