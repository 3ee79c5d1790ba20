"""The KVS emulator under load, run as its own process (``kvs emulator``).

The issue's numbers: "On this 2-core machine, one emulator process: 20 producers at
2 Mbps each and 20 live GetMedia readers at once with zero lost or reordered fragments,
ack latency (RECEIVED to PERSISTED) p99 under 50 ms, and ingest of a single stream from
loopback at 100 MB/s or more."

The emulator runs in a subprocess (``python -m kvs_toolkit.cli emulator --port 0``, a
fresh temporary data directory), so the load generator here does not share its GIL; it
is stopped with SIGTERM (then SIGKILL) whatever happens.

* Load: 20 streams, each with a live GetMedia reader (StartSelector NOW, connected
  before any producer starts) and a PutMedia producer (one aiohttp session each) that
  sends H.264-shaped frames in real time: 25 fps, 2 Mbps (a 50 kB key frame and 49
  frames of ~9.2 kB: 500 kB per 2 s fragment), ABSOLUTE timecodes from the wall clock,
  the END_OF_FRAGMENT tag after each fragment's last frame. Producers start at phases
  spread evenly over one fragment period, as independent cameras would. Counted per
  stream: fragments sent, acks (client arrival times of RECEIVED and PERSISTED) and the
  fragments the reader got, in order. Reference for the ack latency: the latency of
  ``write(200 kB) + fsync`` on the same disk, measured in the same run before and after
  the load.
* Ingest: one producer sends 10.8 MB fragments (a 1 MB key frame and 49 frames of
  200 kB, 2 s each) back to back, unpaced; timed from the first byte to the last
  PERSISTED ack. Reference: the same client code (:class:`PutMediaSession`, the same
  writes) uploading the same bytes to a trivial aiohttp server in its own process that
  discards the body, timed from the first byte to its answer after the last byte. For
  scale, the notes also give the disk's own rate for the same appends with an fsync each.

* Hostile client: the load test runs a second time, on fresh streams, while one more
  client floods another stream with Tags before any Cluster (small SimpleTags as fast
  as the emulator takes them, a new PutMedia as soon as one is refused) and now and
  then a Tags element claiming 45 MB or 5,000 nested SimpleTags. The row compares the
  ack p99 of the two runs (goal: no more than 2x) and checks the second run loses
  nothing either.

CPU use of the emulator, of this process and of everything else on the machine is
measured over each phase and given in the notes: on a shared machine, other people's
work (fsync-heavy work above all) shows up in the latency tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import boto3
import numpy as np

from benchmarks.common import MB, Options, Result, fmt_rate, fmt_ratio, fmt_size
from kvs_toolkit.acks import AckEventType
from kvs_toolkit.mkv import FragmentReader, FrameData, MkvWriter, Tag, TrackInfo, ids, tags_element
from kvs_toolkit.mkv.ebml import element, encode_id, encode_size, string_element
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import cluster, simple_block
from kvs_toolkit.putmedia import PutMediaSession

# --- the numbers ---------------------------------------------------------------
STREAMS: Final = 20
BITRATE_BPS: Final = 2_000_000
FPS: Final = 25
FRAMES_PER_FRAGMENT: Final = 50  # a key frame every 2 s, as KVS producers do
FRAGMENT_S: Final = FRAMES_PER_FRAGMENT / FPS
GOAL_ACK_P99_MS: Final = 50.0
GOAL_INGEST_MB_S: Final = 100.0

FRAGMENT_BYTES: Final = BITRATE_BPS // 8 * FRAMES_PER_FRAGMENT // FPS  # 500 kB
KEY_FRAME_BYTES: Final = 50_000
DELTA_FRAME_BYTES: Final = (FRAGMENT_BYTES - KEY_FRAME_BYTES) // (FRAMES_PER_FRAGMENT - 1)
INGEST_KEY_FRAME_BYTES: Final = 1_000_000
INGEST_DELTA_FRAME_BYTES: Final = 200_000
FSYNC_PROBE_BYTES: Final = 200_000
FSYNC_PROBES: Final = 100
CATCH_UP_S: Final = 5.0  # how long readers may trail the last PERSISTED ack
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
STALL_TIMEOUT_S: Final = 120.0  # a phase that overruns its plan by this much has hung
SEED: Final = 20240917

# Plausible High-profile 720p parameter sets; the emulator does not decode them.
_SPS: Final = bytes.fromhex("6764001facd9405005bb011000000300100000030300f1831960")
_PPS: Final = bytes.fromhex("68ebe3cb22c0")
_AVCC: Final = (
    bytes((1, _SPS[1], _SPS[2], _SPS[3], 0xFF, 0xE1))
    + len(_SPS).to_bytes(2, "big")
    + _SPS
    + b"\x01"
    + len(_PPS).to_bytes(2, "big")
    + _PPS
)
VIDEO: Final = TrackInfo(1, "V_MPEG4/ISO/AVC", _AVCC, width=1280, height=720)
END_OF_FRAGMENT: Final = tags_element([Tag(TAG_END_OF_FRAGMENT, "")])
NO_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_read=None)

# The reference server: reads a POST body to the end, discards it, answers with the
# byte count. Headers go out first, as the emulator's PutMedia sends them.
_RAW_SERVER: Final = """
import asyncio
from aiohttp import web

async def sink(request):
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await response.prepare(request)
    total = 0
    while chunk := await request.content.readany():
        total += len(chunk)
    await response.write(b'{"bytes":%d}' % total)
    await response.write_eof()
    return response

async def main():
    app = web.Application()
    app.router.add_post("/putMedia", sink)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass(frozen=True, slots=True)
class Plan:
    fragments_per_stream: int  # load test length: fragments of 2 s per producer
    ingest_fragments: int

    @classmethod
    def for_options(cls, options: Options) -> Plan:
        # Ingest fragments are ~10.8 MB: 6 are ~65 MB, 28 are ~300 MB.
        return cls(3, 6) if options.quick else cls(10, 28)


# --- subprocesses ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def server_process(argv: Sequence[str], log_path: Path) -> Iterator[Server]:
    """Run a server that prints its URL as its first line; stop it on the way out."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
        )
    try:
        yield Server(_read_url(process, log_path), process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    line = bytearray()
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in line:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise RuntimeError(f"{process.args!r} printed no URL in {START_TIMEOUT_S:g} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{process.args!r} exited before printing its URL:\n{tail}")
            line += chunk
    return line.split(b"\n", 1)[0].decode().strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot (/proc/stat)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Cores used over a wall-clock window by the server, this process and the rest."""

    server: float
    client: float
    others: float  # other processes on the machine: other people's work adds noise
    stolen: float  # taken by the hypervisor

    def describe(self, server: str) -> str:
        return (
            f"{server} {self.server:.2f}, load generator {self.client:.2f}, other processes "
            f"{max(self.others, 0.0):.2f}, stolen {self.stolen:.2f} (of {os.cpu_count()})"
        )


class CpuMeter:
    """CPU use of a server process, this process and the whole machine from now on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        busy, stolen = machine_cpu_seconds()
        return time.monotonic(), cpu_seconds(self.pid), time.process_time(), busy, stolen

    def stop(self) -> CpuUse:
        wall, server, client, busy, stolen = (
            b - a for a, b in zip(self._start, self._sample(), strict=True)
        )
        return CpuUse(server / wall, client / wall, (busy - server - client) / wall, stolen / wall)


# --- media ------------------------------------------------------------------------------
def _nal(kind: int, body: bytes | memoryview) -> bytes:
    return (len(body) + 1).to_bytes(4, "big") + bytes((kind,)) + body


def make_frames(
    rng: np.random.Generator, pool: bytes, key_bytes: int, delta_bytes: int
) -> list[bytes]:
    """One fragment's AVCC frame payloads (IDR first), cut from a random pool."""
    view = memoryview(pool)
    sizes = [key_bytes] + [delta_bytes] * (FRAMES_PER_FRAGMENT - 1)
    frames = []
    for i, size in enumerate(sizes):
        start = int(rng.integers(0, len(pool) - size))
        frames.append(_nal(0x65 if i == 0 else 0x41, view[start : start + size - 5]))
    return frames


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
    if not seconds:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


# --- the fsync reference ----------------------------------------------------------------
def measure_fsync(directory: Path) -> list[float]:
    """Seconds of each ``write(200 kB) + fsync`` appended to one file in ``directory``."""
    path = directory / "fsync-probe.bin"
    data = os.urandom(FSYNC_PROBE_BYTES)
    seconds = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(FSYNC_PROBES):
            start = time.perf_counter()
            os.write(fd, data)
            os.fsync(fd)
            seconds.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return seconds


# --- the load test ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadFragment:
    fragment_number: str | None
    timecode: int | None
    at: float  # time.monotonic() when the chunk completing it arrived
    frames: int
    payload_bytes: int


@dataclass
class StreamLog:
    name: str
    sent: list[int] = field(default_factory=list)  # fragment timecodes, in order
    sent_at: dict[int, float] = field(default_factory=dict)  # END_OF_FRAGMENT queued
    received_at: dict[int, float] = field(default_factory=dict)  # RECEIVED ack arrived
    persisted_at: dict[int, float] = field(default_factory=dict)  # PERSISTED ack arrived
    numbers: dict[int, str] = field(default_factory=dict)  # timecode -> fragment number
    errors: list[str] = field(default_factory=list)
    read: list[ReadFragment] = field(default_factory=list)
    max_lateness: float = 0.0  # worst delay of a frame behind its schedule
    reader_error: str | None = None

    def caught_up(self) -> bool:
        read = {f.fragment_number for f in self.read}
        return all(number in read for number in self.numbers.values())


async def collect_acks(session: PutMediaSession, log: StreamLog) -> None:
    async for ack in session.acks():
        now = time.monotonic()
        timecode = ack.fragment_timecode
        if ack.event_type == AckEventType.ERROR:
            log.errors.append(f"{ack.error_id} {ack.error_code} at {timecode}")
        elif timecode is None:
            continue
        elif ack.event_type == AckEventType.RECEIVED:
            log.received_at[timecode] = now
        elif ack.event_type == AckEventType.PERSISTED:
            log.persisted_at[timecode] = now
            log.numbers[timecode] = str(ack.fragment_number)


async def produce(
    url: str,
    log: StreamLog,
    frames: Sequence[bytes],
    start: float,
    fragments: int,
    *,
    track: TrackInfo = VIDEO,
    fps: float = FPS,
) -> None:
    """Send ``fragments`` fragments in real time from ``start`` (a loop time): each
    fragment is ``frames`` (a key frame first) at ``fps``, on ``track``.

    (Shared with benchmarks/fleet_streams.py, which sends real H.264 this way.)"""
    loop = asyncio.get_running_loop()
    per_fragment = len(frames)
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
        PutMediaSession(http, url, log.name) as session,
    ):
        acks = asyncio.create_task(collect_acks(session, log))
        writer = MkvWriter([track])
        await session.write(writer.header())
        # ABSOLUTE timecodes: the wall clock at each frame's scheduled time.
        wall0_ms = round((time.time() + start - loop.time()) * 1000)
        fragment_tc = wall0_ms
        for k in range(fragments * per_fragment):
            due = start + k / fps
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                log.max_lateness = max(log.max_lateness, -delay)
            i = k % per_fragment
            timecode = wall0_ms + round(k * 1000 / fps)
            if i == 0:
                fragment_tc = timecode
                data = writer.fragment(timecode, [FrameData(1, timecode, frames[0], keyframe=True)])
            else:
                data = simple_block(FrameData(1, timecode, frames[i]), fragment_tc)
            await session.write(data)
            if i == per_fragment - 1:
                await session.write(END_OF_FRAGMENT)
                log.sent.append(fragment_tc)
                log.sent_at[fragment_tc] = time.monotonic()
        await session.finish()
        await acks


async def follow(url: str, log: StreamLog, ready: asyncio.Event) -> None:
    """A live GetMedia reader (StartSelector NOW) that records what it gets, in order."""
    body = {"StreamName": log.name, "StartSelector": {"StartSelectorType": "NOW"}}
    try:
        async with (
            aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
            http.post(f"{url}/getMedia", json=body) as response,
        ):
            if response.status != 200:
                log.reader_error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            ready.set()  # the headers come after the service has resolved NOW
            reader = FragmentReader()
            async for chunk in response.content.iter_any():
                now = time.monotonic()
                for fragment in reader.feed(chunk):
                    log.read.append(
                        ReadFragment(
                            fragment.fragment_number,
                            fragment.cluster_timecode,
                            now,
                            len(fragment.frames),
                            sum(len(frame.data) for frame in fragment.frames),
                        )
                    )
    except Exception as exc:  # reported in the result, not fatal to the other streams
        log.reader_error = repr(exc)
    finally:
        ready.set()


@dataclass(frozen=True, slots=True)
class LoadRun:
    logs: tuple[StreamLog, ...]
    seconds: float  # first producer start to last producer done
    cpu: CpuUse
    catch_up_s: float
    expected_payload_bytes: int
    flood: FloodStats | None = None


# --- the hostile client ------------------------------------------------------------------
@dataclass
class FloodStats:
    connections: int = 0
    bytes_sent: int = 0
    refused: int = 0  # connections the emulator answered with an ERROR ack
    throttled: int = 0  # connections refused at once (ClientLimitExceededException)
    other: int = 0  # connections that ended otherwise


def _flood_bodies() -> list[bytes]:
    """What the hostile client sends after the MKV header, one list per connection kind."""
    small = tags_element([Tag(f"flood{i}", "x" * 40) for i in range(100)])
    claim = encode_id(ids.TAGS) + encode_size(45_000_000) + b"\x00" * 65536
    simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, "deep"))
    for _ in range(4999):
        simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, "d") + simple)
    deep = element(ids.TAGS, element(ids.TAG, simple))
    return [small * 64, claim, deep]


async def _read_until_error(reader: asyncio.StreamReader, answer: bytearray) -> None:
    # An ERROR ack, or an HTTP error (ClientLimitExceededException: refused at once).
    while b"ERROR" not in answer and b"Exception" not in answer:
        data = await reader.read(65536)
        if not data:
            return
        answer.extend(data)


def _flood_main(url: str, stream: str) -> None:
    """The hostile client's process: flood until SIGTERM, then print its counts as JSON."""
    stats = FloodStats()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await tag_flood(url, stream, stop, stats)

    asyncio.run(main())
    sys.stdout.write(json.dumps(dataclasses.asdict(stats)) + "\n")


async def tag_flood(url: str, stream: str, stop: asyncio.Event, stats: FloodStats) -> None:
    """PutMedia connections that send Tags and never a Cluster, one after the other."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    header = MkvWriter([VIDEO]).header()
    small, claim, deep = _flood_bodies()
    n = 0
    while not stop.is_set():
        n += 1
        # Mostly the small-tag flood; every 10th connection a 45 MB claim or deep nesting.
        body = claim if n % 20 == 10 else deep if n % 20 == 0 else small
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.01)
            continue
        stats.connections += 1
        head = (
            f"POST /putMedia HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"x-amzn-stream-name: {stream}\r\nx-amzn-fragment-timecode-type: ABSOLUTE\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        answer = bytearray()

        reading = asyncio.create_task(_read_until_error(reader, answer))
        try:
            writer.write(head)
            for piece in (header, body, body, body):
                if reading.done() or stop.is_set():
                    break
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                stats.bytes_sent += len(piece)
                draining = asyncio.ensure_future(writer.drain())
                await asyncio.wait({draining, reading}, return_when=asyncio.FIRST_COMPLETED)
                draining.cancel()
            await asyncio.wait_for(reading, 5)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            reading.cancel()
            writer.transport.abort()  # no waiting for unsent bytes to drain
        if b"ERROR" in answer:
            stats.refused += 1
        elif b"ClientLimitExceeded" in answer:
            stats.throttled += 1
        else:
            stats.other += 1


async def load_test(
    url: str, pid: int, plan: Plan, *, prefix: str = "load", hostile: str | None = None
) -> LoadRun:
    rng = np.random.default_rng(SEED)
    pool = rng.bytes(2 * MB)
    logs = tuple(StreamLog(f"{prefix}-{i:02d}") for i in range(STREAMS))
    # The hostile client runs in its own process, so it takes nothing from this loop,
    # which timestamps the acks.
    flood = FloodStats()
    flooder = (
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.emulator_load", "--flood", url, hostile],
            stdout=subprocess.PIPE,
        )
        if hostile
        else None
    )
    frames = [make_frames(rng, pool, KEY_FRAME_BYTES, DELTA_FRAME_BYTES) for _ in logs]
    expected_payload = sum(len(f) for f in frames[0])
    readies = [asyncio.Event() for _ in logs]
    readers = [
        asyncio.create_task(follow(url, log, ready))
        for log, ready in zip(logs, readies, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), START_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        meter, t0 = CpuMeter(pid), loop.time()
        start = t0 + 0.2
        producers = asyncio.gather(
            *(
                produce(
                    url, log, frames[i], start + i * FRAGMENT_S / STREAMS, plan.fragments_per_stream
                )
                for i, log in enumerate(logs)
            )
        )
        planned = plan.fragments_per_stream * FRAGMENT_S + FRAGMENT_S
        await asyncio.wait_for(producers, planned + STALL_TIMEOUT_S)
        cpu, t1 = meter.stop(), loop.time()
        while loop.time() - t1 < CATCH_UP_S and not all(log.caught_up() for log in logs):
            await asyncio.sleep(0.02)
        catch_up = loop.time() - t1
    finally:
        if flooder is not None:
            flooder.terminate()
            try:
                out, _ = flooder.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                flooder.kill()
                out, _ = flooder.communicate()
            with contextlib.suppress(ValueError):
                flood = FloodStats(**json.loads(out.decode().strip().splitlines()[-1]))
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return LoadRun(logs, t1 - t0, cpu, catch_up, expected_payload, flood if hostile else None)


# --- single-stream ingest ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IngestBody:
    header: bytes
    timecodes: tuple[int, ...]
    blocks: bytes  # every fragment's SimpleBlocks, relative to its Cluster's timecode
    payload_bytes: int  # frame payload bytes per fragment

    @classmethod
    def build(cls, fragments: int) -> IngestBody:
        """The blocks are relative to their Cluster's timecode, so one copy serves every
        fragment: only the Cluster start and Timecode change from one to the next."""
        rng = np.random.default_rng(SEED + 1)
        pool = rng.bytes(4 * MB)
        frames = make_frames(rng, pool, INGEST_KEY_FRAME_BYTES, INGEST_DELTA_FRAME_BYTES)
        blocks = b"".join(
            simple_block(FrameData(1, i * 1000 // FPS, frame, keyframe=i == 0), 0)
            for i, frame in enumerate(frames)
        )
        base = round(time.time() * 1000)
        step = round(FRAGMENT_S * 1000)
        return cls(
            MkvWriter([VIDEO]).header(),
            tuple(base + n * step for n in range(fragments)),
            blocks,
            sum(len(f) for f in frames),
        )


@dataclass(frozen=True, slots=True)
class Upload:
    bytes_sent: int
    seconds: float
    cpu: CpuUse
    persisted: int = 0
    errors: tuple[str, ...] = ()
    ack_latencies: tuple[float, ...] = ()
    last_fragment_number: str | None = None

    @property
    def rate(self) -> float:
        return self.bytes_sent / MB / self.seconds


def run_upload(url: str, stream: str, body: IngestBody, *, pid: int, to_emulator: bool) -> Upload:
    coroutine = upload(url, stream, body, pid=pid, to_emulator=to_emulator)
    return asyncio.run(asyncio.wait_for(coroutine, STALL_TIMEOUT_S))


async def upload(url: str, stream: str, body: IngestBody, *, pid: int, to_emulator: bool) -> Upload:
    """Send the body's fragments back to back; time from the first byte to the end.

    The end is the last PERSISTED ack (emulator) or the server's answer after the last
    byte (reference).
    """
    log = StreamLog(stream)
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
        PutMediaSession(http, url, stream) as session,
    ):
        acks = asyncio.create_task(collect_acks(session, log)) if to_emulator else None
        meter = CpuMeter(pid)
        start = time.monotonic()
        await session.write(body.header)
        for timecode in body.timecodes:
            await session.write(cluster(timecode, []))
            await session.write(body.blocks)
            await session.write(END_OF_FRAGMENT)
        await session.finish()
        if acks is not None:
            await acks
            end = max(log.persisted_at.values(), default=time.monotonic())
        else:
            answer = await (await session.response()).json()
            end = time.monotonic()
            if answer.get("bytes") != session.bytes_sent:
                raise RuntimeError(f"reference server got {answer}, sent {session.bytes_sent}")
        cpu = meter.stop()
    return Upload(
        bytes_sent=session.bytes_sent,
        seconds=end - start,
        cpu=cpu,
        persisted=len(log.persisted_at),
        errors=tuple(log.errors),
        ack_latencies=tuple(
            log.persisted_at[tc] - log.received_at[tc]
            for tc in log.persisted_at
            if tc in log.received_at
        ),
        last_fragment_number=log.numbers.get(body.timecodes[-1]),
    )


async def read_back(url: str, stream: str, fragment_number: str) -> tuple[int, int]:
    """(frames, payload bytes) of one stored fragment, via GetMediaForFragmentList."""
    body = {"StreamName": stream, "Fragments": [fragment_number]}
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
        http.post(f"{url}/getMediaForFragmentList", json=body) as response,
    ):
        data = await response.read()
    reader = FragmentReader()
    fragments = reader.feed(data) + reader.close()
    frames = [frame for fragment in fragments for frame in fragment.frames]
    return len(frames), sum(len(frame.data) for frame in frames)


def measure_disk_write(directory: Path, body: IngestBody) -> float:
    """MB/s of appending the ingest's fragments to one file with an fsync after each:
    what durable storage of this upload costs the disk alone."""
    path = directory / "write-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = time.perf_counter()
        for _ in body.timecodes:
            view = memoryview(body.blocks)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return len(body.blocks) * len(body.timecodes) / MB / seconds


# --- the benchmark ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class IngestRun:
    ours: Upload
    raw: tuple[Upload, ...]
    disk_rate: float
    read_back: tuple[int, int] | None  # (frames, payload bytes) of the last fragment
    body: IngestBody


def run(options: Options) -> list[Result]:
    plan = Plan.for_options(options)
    with tempfile.TemporaryDirectory(prefix="kvs-bench-load-") as root:
        data_dir = Path(root) / "data"
        data_dir.mkdir()
        fsync_seconds = measure_fsync(data_dir)
        emulator_argv = [sys.executable, "-m", "kvs_toolkit.cli", "emulator"]
        emulator_argv += ["--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
        with server_process(emulator_argv, Path(root) / "emulator.log") as emulator:
            kv = boto3.client(
                "kinesisvideo",
                endpoint_url=emulator.url,
                region_name="us-east-1",
                aws_access_key_id="x",
                aws_secret_access_key="y",
            )
            # Retention > 0: the service sends PERSISTED only for archived streams.
            for i in range(STREAMS):
                kv.create_stream(StreamName=f"load-{i:02d}", DataRetentionInHours=1)
                kv.create_stream(StreamName=f"hostile-load-{i:02d}", DataRetentionInHours=1)
            kv.create_stream(StreamName="ingest", DataRetentionInHours=1)
            kv.create_stream(StreamName="flooded", DataRetentionInHours=1)
            load = asyncio.run(load_test(emulator.url, emulator.pid, plan))
            under_attack = asyncio.run(
                load_test(
                    emulator.url, emulator.pid, plan, prefix="hostile-load", hostile="flooded"
                )
            )
            fsync_seconds += measure_fsync(data_dir)
            ingest = _ingest(emulator, data_dir, Path(root), plan)
    rows = _load_rows(load, fsync_seconds, plan)
    attacked = _load_rows(under_attack, fsync_seconds, plan)
    return [*rows, _hostile_row(load, under_attack, attacked[0]), _ingest_row(ingest, plan)]


def _ack_latencies(load: LoadRun) -> list[float]:
    return [
        log.persisted_at[tc] - log.received_at[tc]
        for log in load.logs
        for tc in log.persisted_at
        if tc in log.received_at
    ]


def _hostile_row(base: LoadRun, attacked: LoadRun, integrity: Result) -> Result:
    _, base_p99 = percentiles_ms(_ack_latencies(base))
    p50, p99 = percentiles_ms(_ack_latencies(attacked))
    flood = attacked.flood or FloodStats()
    ratio = p99 / base_p99 if base_p99 > 0 else float("nan")
    return Result(
        benchmark="emulator: ack p99 with a hostile tag-flooding client on another stream",
        ours=f"p50 {p50:.1f} / p99 {p99:.1f} ms; {integrity.ours}",
        reference=f"p99 {base_p99:.1f} ms without it",
        ratio=fmt_ratio(ratio) + " (p99)",
        goal="p99 <= 2x, 0 lost",
        met=bool(integrity.met) and ratio <= 2.0 and p99 < GOAL_ACK_P99_MS,
        notes=(
            f"Hostile client: {flood.connections} PutMedia connections on one more stream "
            f"during the second load run, {fmt_size(flood.bytes_sent)} of Tags (before any "
            "Cluster) written to its sockets, most never read: refused connections are closed "
            f"at once; {flood.refused} answered with an ERROR ack (4009, 4006), "
            f"{flood.throttled} refused at once with ClientLimitExceededException (the "
            f"emulator's limit on refused uploads per stream), {flood.other} ended otherwise. "
            "Integrity of the second run: " + integrity.notes[1],
        ),
    )


def _ingest(emulator: Server, data_dir: Path, root: Path, plan: Plan) -> IngestRun:
    body = IngestBody.build(plan.ingest_fragments)
    with server_process([sys.executable, "-c", _RAW_SERVER], root / "raw.log") as raw:
        # The reference runs before and after ours; the best counts, on a noisy VM.
        raw_runs = [run_upload(raw.url, "raw", body, pid=raw.pid, to_emulator=False)]
        ours = run_upload(emulator.url, "ingest", body, pid=emulator.pid, to_emulator=True)
        raw_runs.append(run_upload(raw.url, "raw", body, pid=raw.pid, to_emulator=False))
    check = None
    if ours.last_fragment_number is not None:
        check = asyncio.run(read_back(emulator.url, "ingest", ours.last_fragment_number))
    return IngestRun(ours, tuple(raw_runs), measure_disk_write(data_dir, body), check, body)


def _load_rows(load: LoadRun, fsync_seconds: Sequence[float], plan: Plan) -> list[Result]:
    sent = persisted = read = lost = reordered = unexpected = corrupt = 0
    errors: list[str] = []
    reader_errors: list[str] = []
    ack_latency: list[float] = []
    to_reader: list[float] = []  # PERSISTED ack -> reader
    sent_to_reader: list[float] = []  # END_OF_FRAGMENT queued -> reader
    for log in load.logs:
        sent += len(log.sent)
        persisted += len(log.numbers)
        read += len(log.read)
        errors += [f"{log.name}: {e}" for e in log.errors]
        if log.reader_error:
            reader_errors.append(f"{log.name}: {log.reader_error}")
        position = {tc: n for n, tc in enumerate(log.sent)}
        got = {f.fragment_number for f in log.read}
        lost += sum(1 for number in log.numbers.values() if number not in got)
        previous = -1
        for fragment in log.read:
            tc = fragment.timecode
            if tc is None or tc not in position or log.numbers.get(tc) != fragment.fragment_number:
                unexpected += 1
                continue
            if position[tc] <= previous:
                reordered += 1
            previous = max(previous, position[tc])
            if (
                fragment.frames != FRAMES_PER_FRAGMENT
                or fragment.payload_bytes != load.expected_payload_bytes
            ):
                corrupt += 1
            to_reader.append(fragment.at - log.persisted_at[tc])
            sent_to_reader.append(fragment.at - log.sent_at[tc])
        ack_latency += [
            log.persisted_at[tc] - log.received_at[tc]
            for tc in log.persisted_at
            if tc in log.received_at
        ]

    lateness = max(log.max_lateness for log in load.logs)
    setup = (
        f"Load: {STREAMS} streams for {load.seconds:.1f} s ({plan.fragments_per_stream} "
        f"fragments of {FRAGMENT_S:g} s each), each with a real-time producer ({FPS} fps, "
        f"{BITRATE_BPS / 1e6:g} Mbps: a {KEY_FRAME_BYTES // 1000} kB key frame + "
        f"{FRAMES_PER_FRAGMENT - 1} x {DELTA_FRAME_BYTES / 1000:.1f} kB, ABSOLUTE wall-clock "
        "timecodes, END_OF_FRAGMENT after each fragment, phases spread over one fragment "
        "period) and a live GetMedia reader (NOW, connected first). CPU in cores over the "
        "load (/proc/PID/stat utime+stime; /proc/stat for the machine): "
        f"{load.cpu.describe('emulator')}. Worst producer frame lateness "
        f"{lateness * 1000:.0f} ms."
    )
    integrity_ok = (
        sent > 0
        and lost == reordered == unexpected == corrupt == 0
        and not errors
        and not reader_errors
        and persisted == sent
    )
    integrity_note = (
        f"Integrity: {sent} fragments sent, {persisted} PERSISTED, {read} read live "
        f"(readers had caught up {load.catch_up_s:.2f} s after the last producer finished, "
        f"allowed {CATCH_UP_S:g} s; every fragment counts, none is excluded as in flight). "
        "Lost = PERSISTED but never read; reordered = read after a later-sent fragment; "
        f"{unexpected} unexpected (unknown or mismatched number), {corrupt} with a wrong "
        f"frame count or payload size, {len(errors)} ERROR acks"
        + (f" ({'; '.join(errors[:3])})" if errors else "")
        + (f"; reader errors: {'; '.join(reader_errors[:3])}" if reader_errors else "")
        + "."
    )
    ack_p50, ack_p99 = percentiles_ms(ack_latency)
    fs_p50, fs_p99 = percentiles_ms(fsync_seconds)
    e2e_p50, e2e_p99 = percentiles_ms(to_reader)
    s2r_p50, s2r_p99 = percentiles_ms(sent_to_reader)
    worst = max(ack_latency, default=float("nan")) * 1000
    over = sum(1 for s in ack_latency if s * 1000 >= GOAL_ACK_P99_MS)
    return [
        Result(
            benchmark=f"emulator: {STREAMS} producers x 2 Mbps + {STREAMS} live GetMedia",
            ours=f"{lost} lost, {reordered} reordered, {len(errors)} ERROR",
            reference=f"{persisted} of {sent} fragments PERSISTED",
            ratio=f"{read - unexpected}/{persisted} read",
            goal="0 lost, 0 reordered",
            met=integrity_ok,
            notes=(setup, integrity_note),
        ),
        Result(
            benchmark="emulator: ack RECEIVED -> PERSISTED under that load",
            ours=f"p50 {ack_p50:.1f} / p99 {ack_p99:.1f} ms",
            reference=f"fsync p50 {fs_p50:.2f} / p99 {fs_p99:.2f} ms",
            ratio=fmt_ratio(ack_p99 / fs_p99) + " (p99)",
            goal=f"p99 < {GOAL_ACK_P99_MS:g} ms",
            met=bool(ack_latency) and ack_p99 < GOAL_ACK_P99_MS,
            notes=(
                "Ack latency: arrival at the producer of RECEIVED to arrival of PERSISTED for "
                f"the same fragment, {len(ack_latency)} fragments, {over} of them at "
                f"{GOAL_ACK_P99_MS:g} ms or more, max {worst:.1f} ms. Reference: "
                f"{2 * FSYNC_PROBES} x (append {FSYNC_PROBE_BYTES // 1000} kB + os.fsync) to "
                "a file in the emulator's data directory, half before the emulator started and "
                "half right after the load. The emulator makes a fragment durable with two "
                "syncs in a row (its segment file, then the SQLite WAL commit).",
            ),
        ),
        Result(
            benchmark="emulator: PERSISTED ack -> live GetMedia reader",
            ours=f"p50 {e2e_p50:.1f} / p99 {e2e_p99:.1f} ms",
            reference=f"producer end -> reader p50 {s2r_p50:.0f} / p99 {s2r_p99:.0f} ms",
            ratio="-",
            goal="info (no goal set)",
            notes=(
                "End-to-end: arrival of the PERSISTED ack at the producer to the reader "
                "having the whole fragment (same process, same monotonic clock; negative "
                "when the reader wins the race). The reference column is from the producer "
                "queuing the fragment's last bytes (END_OF_FRAGMENT) to the reader having it.",
            ),
        ),
    ]


def _ingest_row(ingest: IngestRun, plan: Plan) -> Result:
    ours, body = ingest.ours, ingest.body
    raw_rate = max(r.rate for r in ingest.raw)
    intact = ingest.read_back == (FRAMES_PER_FRAGMENT, body.payload_bytes)
    complete = ours.persisted == plan.ingest_fragments and not ours.errors and intact
    p50, p99 = percentiles_ms(ours.ack_latencies)
    notes = (
        f"Ingest: {plan.ingest_fragments} fragments of "
        f"{fmt_size(ours.bytes_sent / plan.ingest_fragments)} ({FRAMES_PER_FRAGMENT} frames: "
        f"{INGEST_KEY_FRAME_BYTES // 1000} kB key + {INGEST_DELTA_FRAME_BYTES // 1000} kB), "
        f"{fmt_size(ours.bytes_sent)} in one PutMedia, unpaced, in {ours.seconds:.2f} s from "
        f"the first byte to the last PERSISTED ack; {ours.persisted} PERSISTED, "
        f"{len(ours.errors)} ERROR; the last fragment read back with GetMediaForFragmentList: "
        f"{'intact' if intact else f'MISMATCH {ingest.read_back}'}. RECEIVED -> PERSISTED "
        f"p50 {p50:.0f} / p99 {p99:.0f} ms (the emulator sends acks in order, so a "
        "fragment's RECEIVED waits for the previous PERSISTED). CPU in cores: "
        f"{ours.cpu.describe('emulator')}. The disk alone appends the same fragments with "
        f"an fsync after each at {fmt_rate(ingest.disk_rate)} (same run, same directory; "
        "the emulator may beat that by syncing several fragments at once).",
        "Ingest reference: the same PutMediaSession writes to a trivial aiohttp server "
        "(own process, reads the body to the end and discards it), timed from the first "
        "byte to its answer; best of the runs before and after ours "
        f"({' / '.join(fmt_rate(r.rate) for r in ingest.raw)}); CPU in cores (first run): "
        f"{ingest.raw[0].cpu.describe('server')}.",
    )
    return Result(
        benchmark="emulator: single-stream PutMedia ingest, loopback",
        ours=fmt_rate(ours.rate),
        reference=fmt_rate(raw_rate) + " (raw aiohttp)",
        ratio=fmt_ratio(ours.rate / raw_rate),
        goal=f">= {GOAL_INGEST_MB_S:g} MB/s",
        met=complete and ours.rate >= GOAL_INGEST_MB_S,
        notes=notes,
    )


if __name__ == "__main__" and sys.argv[1:2] == ["--flood"]:
    _flood_main(sys.argv[2], sys.argv[3])
