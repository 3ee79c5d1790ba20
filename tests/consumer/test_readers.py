"""The fragment readers against the real emulator: live GetMedia, archive, files.

Fragments go in through PutMedia (the emulator's real ingest path) and come out through
boto3's GetMedia / ListFragments / GetMediaForFragmentList. Network losses are made by a
TCP proxy on 127.0.0.1 whose connections can be cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.acks import AckEventType
from kvs_toolkit.consumer.readers import (
    ArchiveReader,
    Backoff,
    FileReader,
    FragmentSource,
    LiveReader,
    StartSelector,
    parse_timestamp,
)
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import GetMediaError, MkvError
from kvs_toolkit.mkv import Fragment, FrameData, MkvWriter, Tag, TrackInfo
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import tags_element
from kvs_toolkit.putmedia import PutMediaSession

ACCESS_KEY = "AKIDCONSUMER"
SECRET = "consumer-secret"
REGION = "us-east-1"
VIDEO = TrackInfo(
    1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e\xff\xe1\x00\x00\x01\x00\x00", width=64, height=48
)
END = tags_element([Tag(TAG_END_OF_FRAGMENT, "")])
FAST = Backoff(base_s=0.05, max_s=0.2)


# --- helpers shared by the consumer tests ---------------------------------------------------
def aws_session(secret: str = SECRET) -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret, region_name=REGION
    )


def control(url: str) -> Any:
    return aws_session().client("kinesisvideo", endpoint_url=url)


def create_stream(url: str, name: str) -> None:
    control(url).create_stream(StreamName=name, DataRetentionInHours=24)


class Producer:
    """Fragments into one stream through PutMedia; each fragment is 5 frames over 200 ms.

    ``start_ms=None`` stamps fragments with the wall clock (for lag), else from
    ``start_ms`` in ``step_ms`` steps.
    """

    def __init__(
        self, url: str, stream: str, *, start_ms: int | None = None, step_ms: int = 200
    ) -> None:
        self.url = url
        self.stream = stream
        self.writer = MkvWriter([VIDEO])
        self.next_ms = start_ms
        self.step_ms = step_ms
        self.numbers: list[str] = []
        self.timestamps_ms: list[int] = []

    def send(self, count: int, gap_s: float = 0.0) -> list[str]:
        """``count`` fragments over one connection, each after the previous one persisted."""
        numbers = asyncio.run(self._send(count, gap_s))
        self.numbers += numbers
        return numbers

    def _timecode(self) -> int:
        now = int(time.time() * 1000)
        if self.next_ms is None:
            timecode = now if not self.timestamps_ms else max(now, self.timestamps_ms[-1] + 200)
        else:
            timecode = self.next_ms
            self.next_ms += self.step_ms
        self.timestamps_ms.append(timecode)
        return timecode

    async def _send(self, count: int, gap_s: float) -> list[str]:
        numbers: list[str] = []
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(
                http, self.url, self.stream, credentials=Credentials(ACCESS_KEY, SECRET)
            ) as session,
        ):
            await session.write(self.writer.header())
            acks = session.acks()
            for n in range(count):
                if n and gap_s:
                    await asyncio.sleep(gap_s)
                timecode = self._timecode()
                frames = [
                    FrameData(1, timecode + 40 * i, bytes([n % 256, i]) * 100, keyframe=i == 0)
                    for i in range(5)
                ]
                await session.write(self.writer.fragment(timecode, frames) + END)
                async for ack in acks:
                    assert ack.event_type != AckEventType.ERROR, ack
                    if ack.event_type == AckEventType.PERSISTED:
                        assert ack.fragment_number is not None
                        numbers.append(ack.fragment_number)
                        break
            await session.finish()
            async for _ack in acks:
                pass
        return numbers


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 (threads) whose open connections can be cut at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.cut()
        self._thread.join(5)


class Collector:
    """Iterates a reader in a thread; fragments arrive on a queue as they are yielded."""

    def __init__(self, reader: FragmentSource, until: int | None = None) -> None:
        self.reader = reader
        self.until = until
        self.fragments: queue.Queue[Fragment] = queue.Queue()
        self.got: list[Fragment] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for fragment in self.reader:
                self.got.append(fragment)
                self.fragments.put(fragment)
                if self.until is not None and len(self.got) >= self.until:
                    return
        except BaseException as exc:
            self.error = exc

    def take(self, count: int, timeout: float = 10.0) -> list[Fragment]:
        return [self.fragments.get(timeout=timeout) for _ in range(count)]

    def finish(self, timeout: float = 15.0) -> list[Fragment]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the reader did not finish"
        if self.error is not None:
            raise self.error
        return self.got


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def numbers(fragments: list[Fragment]) -> list[str | None]:
    return [f.fragment_number for f in fragments]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator that verifies SigV4 against (ACCESS_KEY, SECRET)."""
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        yield emu


@pytest.fixture
def proxy(emulator: Emulator) -> Iterator[CuttableProxy]:
    port = int(emulator.endpoint_url.rsplit(":", 1)[1])
    cuttable = CuttableProxy(port)
    # GetDataEndpoint answers the emulator's own URL (not the Host header): point it at
    # the proxy, as --advertised-url does behind a real one
    emulator.advertised_url = cuttable.url
    yield cuttable
    emulator.advertised_url = None
    cuttable.close()


def live_reader(url: str, stream: str, **options: Any) -> LiveReader:
    options.setdefault("backoff", FAST)
    return LiveReader(stream, endpoint_url=url, session=aws_session(), **options)


# --- start selectors --------------------------------------------------------------------------
def test_start_selector_parse_and_api_shape() -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    assert StartSelector.parse("now").to_api() == {"StartSelectorType": "NOW"}
    assert StartSelector.parse("EARLIEST").to_api() == {"StartSelectorType": "EARLIEST"}
    assert StartSelector.parse("fragment:123").to_api() == {
        "StartSelectorType": "FRAGMENT_NUMBER",
        "AfterFragmentNumber": "123",
    }
    assert StartSelector.parse("producer:2024-05-01T12:00:00Z").to_api() == {
        "StartSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": when,
    }
    assert StartSelector.parse(f"server:{when.timestamp()}").timestamp == when
    assert StartSelector.parse("token:abc").value == "abc"
    assert parse_timestamp("2024-05-01T12:00:00") == when  # no zone: UTC
    with pytest.raises(ValueError, match="invalid start 'later'"):
        StartSelector.parse("later")
    with pytest.raises(ValueError, match="neither an ISO 8601 time nor epoch seconds"):
        StartSelector.parse("producer:yesterday")


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base_s=1.0, max_s=8.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)):
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


# --- live -----------------------------------------------------------------------------------
def test_live_reader_yields_fragments_produced_after_it_connected(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "live")
    producer = Producer(url, "live")
    before = producer.send(2)
    reader = live_reader(url, "live", start="now")
    collector = Collector(reader, until=5)
    wait_for(lambda: reader.stats.connections == 1)
    # Each fragment is handed out while the next one does not exist yet: no delay of one.
    for _ in range(5):
        sent = producer.send(1)
        assert numbers(collector.take(1, timeout=5)) == sent
    got = collector.finish()
    reader.close()
    assert numbers(got) == producer.numbers[2:]
    assert not set(numbers(got)) & set(before)
    stats = reader.stats
    assert (stats.fragments, stats.frames, stats.connections) == (5, 25, 1)
    assert stats.millis_behind_now is not None and 0 <= stats.millis_behind_now < 10_000
    # The producer stamps 200 ms fragments faster than real time: it may run ahead.
    assert stats.wall_lag_ms is not None and abs(stats.wall_lag_ms) < 5000
    assert stats.last_fragment_number == got[-1].fragment_number
    assert stats.bytes > 0


def test_live_reader_start_selectors(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "sel")
    producer = Producer(url, "sel", start_ms=1_790_000_000_000, step_ms=1000)
    sent = producer.send(4)
    cases = {
        "earliest": sent,
        f"fragment:{sent[1]}": sent[2:],
        "producer:1790000002.000": sent[2:],
        f"token:{sent[0]}": sent[1:],
    }
    for start, expected in cases.items():
        with live_reader(url, "sel", start=start) as reader:
            got = Collector(reader, until=len(expected)).finish()
        assert numbers(got) == expected, start


def test_cut_connection_resumes_from_the_continuation_token(
    emulator: Emulator, proxy: CuttableProxy
) -> None:
    create_stream(emulator.endpoint_url, "cut")
    producer = Producer(emulator.endpoint_url, "cut")
    reader = live_reader(proxy.url, "cut", start="earliest")
    collector = Collector(reader, until=12)
    producer.send(4)
    collector.take(4)
    proxy.cut()  # mid-stream: the reader waits for the next fragment on a dead connection
    producer.send(4, gap_s=0.05)
    collector.take(2)
    proxy.cut()  # and again while fragments are flowing
    producer.send(4, gap_s=0.05)
    got = collector.finish()
    reader.close()
    assert numbers(got) == producer.numbers  # nothing lost, nothing twice, in order
    assert reader.stats.reconnects >= 1
    assert reader.stats.failures >= 1
    assert proxy.accepted >= 2


def test_emulator_restart_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    """The server closes every connection and goes away, then comes back on the same port
    with the same data: the reader retries with back-off and resumes from its token."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    data = tmp_path / "data"
    first = Emulator(data, port=port, credentials={ACCESS_KEY: SECRET})
    first.__enter__()
    url = first.endpoint_url
    try:
        create_stream(url, "restart")
        producer = Producer(url, "restart")
        reader = live_reader(url, "restart", start="earliest")
        collector = Collector(reader, until=8)
        producer.send(3)
        collector.take(3)
    finally:
        first.close()  # closes the reader's GetMedia connection with it
    wait_for(lambda: reader.stats.failures >= 1)  # connection refused while it is down
    with Emulator(data, port=port, credentials={ACCESS_KEY: SECRET}) as second:
        assert second.endpoint_url == url
        producer.send(5, gap_s=0.02)
        got = collector.finish()
    reader.close()
    assert numbers(got) == producer.numbers  # nothing lost, nothing twice, in order
    assert reader.stats.duplicates == 0
    assert reader.stats.reconnects >= 1


def test_session_limit_reconnects_without_loss_or_duplicates(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "rotate")
    producer = Producer(url, "rotate")
    reader = live_reader(url, "rotate", start="earliest", session_max_s=0.3, endpoint_refresh_s=0)
    collector = Collector(reader, until=10)
    producer.send(10, gap_s=0.12)
    got = collector.finish()
    reader.close()
    assert numbers(got) == producer.numbers
    assert reader.stats.session_rotations >= 2
    assert reader.stats.reconnects >= 2
    assert reader.stats.duplicates == 0
    assert reader.stats.endpoint_refreshes >= 2  # endpoint_refresh_s=0: asked every time


def test_idle_stream_reconnects_after_the_read_timeout_and_stop_is_prompt(
    emulator: Emulator,
) -> None:
    url = emulator.endpoint_url
    create_stream(url, "idle")
    producer = Producer(url, "idle")
    reader = live_reader(url, "idle", start="now", read_timeout_s=0.3)
    collector = Collector(reader)
    wait_for(lambda: reader.stats.idle_reconnects >= 2)
    sent = producer.send(2)
    assert numbers(collector.take(2)) == sent  # NOW is kept across the idle reconnects
    started = time.monotonic()
    reader.stop()  # from another thread, while the reader waits for data
    collector.finish(timeout=5)
    assert time.monotonic() - started < 2
    assert reader.stats.failures == 0


def test_stop_interrupts_a_read_that_waits_for_data(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "wait")
    reader = live_reader(url, "wait", start="now", read_timeout_s=60)
    collector = Collector(reader)
    wait_for(lambda: reader.stats.connections == 1)
    time.sleep(0.2)  # the reader is now blocked in a read of the idle stream
    started = time.monotonic()
    reader.close()
    assert collector.finish(timeout=5) == []
    assert time.monotonic() - started < 2  # not the 60 s read timeout
    assert reader.stats.failures == 0 and reader.stats.idle_reconnects == 0


def test_connection_limit_is_retried_with_backoff(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "busy")
    media = aws_session().client("kinesis-video-media", endpoint_url=url)
    held = [
        media.get_media(StreamName="busy", StartSelector={"StartSelectorType": "NOW"})["Payload"]
        for _ in range(3)  # the service's limit: 3 GetMedia connections per stream
    ]
    reader = live_reader(url, "busy", start="earliest")
    collector = Collector(reader, until=1)
    wait_for(lambda: reader.stats.throttled >= 2)
    assert "ConnectionLimitExceeded" in (reader.stats.last_error or "")
    held.pop().close()
    sent = Producer(url, "busy").send(1)
    assert numbers(collector.finish()) == sent
    reader.close()
    for payload in held:
        payload.close()


def test_unknown_stream_is_a_clear_getmedia_error(emulator: Emulator) -> None:
    reader = live_reader(emulator.endpoint_url, "no-such-stream")
    with pytest.raises(GetMediaError, match="no-such-stream: the stream was not found"):
        next(iter(reader))
    assert reader.stats.failures == 0  # fatal at once, not retried
    reader.close()


def test_wrong_credentials_are_a_clear_getmedia_error(emulator: Emulator) -> None:
    create_stream(emulator.endpoint_url, "secure")
    reader = LiveReader(
        "secure", endpoint_url=emulator.endpoint_url, session=aws_session("wrong-secret")
    )
    with pytest.raises(GetMediaError, match=r"not authorized.*InvalidSignatureException"):
        next(iter(reader))
    reader.close()


def test_max_retries_gives_up_with_the_last_error(emulator: Emulator) -> None:
    # Nothing listens on the endpoint: every attempt fails to connect.
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    reader = LiveReader(
        "s",
        endpoint_url=f"http://127.0.0.1:{port}",
        session=aws_session(),
        backoff=FAST,
        max_retries=2,
        connect_timeout_s=1,
    )
    with pytest.raises(GetMediaError, match=r"cannot reach .*gave up after 3 attempts"):
        next(iter(reader))
    reader.close()


# --- archive --------------------------------------------------------------------------------
def test_archive_reader_time_range_with_pagination_in_order(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "archive")
    base = 1_790_000_000_000
    producer = Producer(url, "archive", start_ms=base, step_ms=1000)
    sent = producer.send(12)
    start = dt.datetime.fromtimestamp((base + 3000) / 1000, dt.timezone.utc)
    end = dt.datetime.fromtimestamp((base + 9000) / 1000, dt.timezone.utc)
    reader = ArchiveReader(
        "archive", start, end, endpoint_url=url, session=aws_session(), page_size=2, batch_size=3
    )
    listed = reader.list_fragments()
    assert [i.fragment_number for i in listed] == sent[3:10]
    got = list(reader)
    reader.close()
    assert numbers(got) == sent[3:10]
    assert [f.producer_timestamp.timestamp() for f in got if f.producer_timestamp] == [
        (base + 1000 * n) / 1000 for n in range(3, 10)
    ]
    assert reader.stats.listed == 7
    assert reader.stats.connections == 3  # batches of 3: 3 + 3 + 1

    # The same fragments by server timestamp: all of them.
    first, last = got[0].server_timestamp, got[-1].server_timestamp
    assert first is not None and last is not None
    by_server = ArchiveReader(
        "archive",
        first,
        last,
        timestamp_type="SERVER_TIMESTAMP",
        endpoint_url=url,
        session=aws_session(),
        page_size=5,
    )
    assert numbers(list(by_server)) == sent[3:10]
    by_server.close()


def test_archive_reader_skips_fragments_not_found(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    create_stream(url, "gone")
    sent = Producer(url, "gone").send(2)
    missing = str(int(sent[0]) + 1)
    now = dt.datetime.now(dt.timezone.utc)
    with ArchiveReader("gone", now, now, endpoint_url=url, session=aws_session()) as reader:
        got = list(reader.get_fragments([sent[0], missing, sent[1]]))
    assert numbers(got) == sent
    assert reader.stats.errors == {4000: 1}
    assert reader.stats.skipped == 1


def test_archive_reader_unknown_stream(emulator: Emulator) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    reader = ArchiveReader(
        "nothing-here", now, now, endpoint_url=emulator.endpoint_url, session=aws_session()
    )
    with pytest.raises(GetMediaError, match="ListFragments nothing-here: the stream was not found"):
        list(reader)
    reader.close()


# --- files ----------------------------------------------------------------------------------
def test_file_reader_on_a_real_getmedia_capture(captures: Path) -> None:
    path = captures / "output_get_media.mkv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with FileReader(path) as reader:
        fragments = list(reader)
    assert isinstance(reader, FragmentSource)
    assert len(fragments) > 1
    assert all(f.fragment_number for f in fragments)
    assert reader.stats.fragments == len(fragments)
    assert reader.stats.bytes == path.stat().st_size
    assert reader.stats.frames == sum(len(f.frames) for f in fragments)
    stamps = [f.producer_timestamp for f in fragments if f.producer_timestamp]
    assert stamps == sorted(stamps)
    # A binary stream works too, and gives the same fragments.
    again = list(FileReader(io.BytesIO(path.read_bytes())))
    assert numbers(again) == numbers(fragments)


def test_file_reader_corrupt_file_raises_mkverror_with_offset(tmp_path: Path) -> None:
    writer = MkvWriter([VIDEO])
    good = writer.header() + writer.fragment(0, [FrameData(1, 0, b"k" * 50, keyframe=True)])
    # A SimpleBlock that claims 2**32 bytes: over the limit, refused before allocating.
    bad = good + bytes.fromhex("a3") + bytes.fromhex("0100000100000000")
    path = tmp_path / "corrupt.mkv"
    path.write_bytes(bad)
    with pytest.raises(MkvError, match=r"corrupt\.mkv: .*at byte offset \d+") as caught:
        list(FileReader(path, max_element_size=1 << 20))
    assert caught.value.offset == len(good)
    missing = tmp_path / "missing.mkv"
    with pytest.raises(MkvError, match=r"cannot read .*missing\.mkv"):
        list(FileReader(missing))


def test_file_reader_keeps_or_refuses_a_truncated_end(tmp_path: Path) -> None:
    writer = MkvWriter([VIDEO])
    frames = [FrameData(1, 40 * i, bytes([i]) * 100, keyframe=i == 0) for i in range(5)]
    data = writer.header() + writer.fragment(0, frames) + writer.fragment(200, frames[:1])
    path = tmp_path / "cut.mkv"
    path.write_bytes(data[:-30])
    kept = list(FileReader(path))
    assert [len(f.frames) for f in kept] == [5, 0]
    assert kept[-1].truncated
    with pytest.raises(MkvError, match=r"cut\.mkv"):
        list(FileReader(path, keep_truncated=False))
