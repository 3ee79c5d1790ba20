"""HLS playback from the KVS emulator, run as its own process (``kvs emulator``).

The issue's numbers: "Segment remux under 5 ms per 2 s 1080p30 H.264 fragment
(uncached); time to first frame of a LIVE HLS session under 1.5 fragment durations;
10 concurrent HLS viewers of one live stream with 0 stalls."

Media: a real 4 s 1080p30 H.264 sample (``kvs_toolkit.samples``, libx264 veryfast, no
B-frames, a key frame every 2 s), demuxed once with PyAV; its two GOPs are sent again
and again through :class:`PutMediaSession` (the emulator_load producer: MkvWriter
cluster + SimpleBlocks + END_OF_FRAGMENT, ABSOLUTE wall-clock timecodes), so every
fragment is a 2 s, 60-frame 1080p30 GOP that FFmpeg can decode.

* Remux: N fragments uploaded unpaced to one stream, one ON_DEMAND HLS session over
  them; each ``getMP4MediaFragment.mp4`` is fetched twice in a row over one keep-alive
  connection: the first fetch is uncached (the emulator makes the segment: its fMP4
  writer, :mod:`kvs_toolkit.emulator.fmp4`), the second is served from its segment
  cache. The remux itself is timed in this process too (``fmp4_media_segment`` on the
  stored payload; ``mpegts_segment``, still PyAV, for comparison). Reference: PyAV in
  this process remuxing the same fragment (the same MKV bytes, in a BytesIO) into
  fragmented MP4, packets copied; the ratio compares the in-process timings.
* Time to first frame: a producer streams in real time; on the first PERSISTED ack a
  LIVE session is opened (boto3 GetHLSStreamingSessionURL, the data endpoint resolved
  beforehand) and master -> media playlist -> init -> first segment are fetched and the
  first frame decoded with PyAV.
* 10 viewers: while that producer goes on, 10 viewers (one LIVE session and one aiohttp
  session each) poll their media playlist every second, phases spread over the second,
  and fetch every new segment.
"""

from __future__ import annotations

import asyncio
import io
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import av
import boto3
import numpy as np

from benchmarks.common import Options, Result, fmt_ratio
from benchmarks.emulator_load import CpuMeter, CpuUse, server_process
from kvs_toolkit.acks import AckEventType
from kvs_toolkit.emulator.remux import fmp4_media_segment, mpegts_segment
from kvs_toolkit.mkv import FrameData, MkvWriter, Tag, TrackInfo, tags_element
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import cluster, simple_block
from kvs_toolkit.putmedia import PutMediaSession
from kvs_toolkit.samples import SampleSpec, write_sample

WIDTH: Final = 1920
HEIGHT: Final = 1080
FPS: Final = 30
FRAGMENT_S: Final = 2.0
SAMPLE_S: Final = 4.0
VIEWERS: Final = 10
POLL_S: Final = 1.0
PADDED_BPS: Final = 4_000_000  # a typical 1080p30 camera bitrate
PADDED_KEY_SHARE: Final = 0.1  # the key frame's share of a padded fragment
GOAL_REMUX_MS: Final = 5.0
GOAL_TTFF_S: Final = 1.5 * FRAGMENT_S
REFERENCE_REPEATS: Final = 5
END_OF_FRAGMENT: Final = tags_element([Tag(TAG_END_OF_FRAGMENT, "")])
NO_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_read=None)
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
FMP4_FLAGS: Final = "frag_keyframe+empty_moov+default_base_moof"
LEAN_PROBE: Final = {"probesize": "32", "analyzeduration": "0"}
_FRAGMENT_NUMBER: Final = re.compile(r"FragmentNumber=(\d+)")

# The static reference server: serves a directory, prints its URL first.
_STATIC_SERVER: Final = """
import asyncio, sys
from aiohttp import web

async def main():
    app = web.Application()
    app.router.add_static("/", sys.argv[1])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass(frozen=True, slots=True)
class Plan:
    remux_fragments: int
    viewer_s: float

    @classmethod
    def for_options(cls, options: Options) -> Plan:
        return cls(4, 8.0) if options.quick else cls(12, 20.0)


# --- media ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gop:
    """One 2 s fragment's frames: (offset in ms from the key frame, AVCC payload)."""

    frames: tuple[tuple[int, bytes], ...]

    def frame_data(self, timecode: int) -> list[FrameData]:
        return [
            FrameData(1, timecode + offset, data, keyframe=i == 0)
            for i, (offset, data) in enumerate(self.frames)
        ]


@dataclass(frozen=True, slots=True)
class Media:
    track: TrackInfo
    gops: tuple[Gop, ...]

    def gop(self, n: int) -> Gop:
        return self.gops[n % len(self.gops)]

    def document(self, n: int, timecode: int) -> bytes:
        """Fragment ``n`` as one MKV document (what PutMedia carries for it)."""
        writer = MkvWriter([self.track])
        return writer.header() + writer.fragment(timecode, self.gop(n).frame_data(timecode))

    def padded(self, bits_per_s: int) -> Media:
        """The same GOPs with an H.264 filler-data NAL unit (type 12, ignored by decoders)
        after each frame's slices, so a fragment carries ``bits_per_s`` of real-size data."""
        fragment_bytes = round(bits_per_s / 8 * FRAGMENT_S)
        gops = []
        for gop in self.gops:
            key = round(fragment_bytes * PADDED_KEY_SHARE)
            delta = (fragment_bytes - key) // max(1, len(gop.frames) - 1)
            frames = []
            for i, (offset, data) in enumerate(gop.frames):
                fill = max(0, (key if i == 0 else delta) - len(data) - 6)
                filler = (fill + 2).to_bytes(4, "big") + b"\x0c" + b"\xff" * fill + b"\x80"
                frames.append((offset, data + filler))
            gops.append(Gop(tuple(frames)))
        return Media(self.track, tuple(gops))

    def payload(self, n: int, timecode: int) -> bytes:
        """Fragment ``n`` as the emulator stores it: Info + Tracks + sized Cluster."""
        writer = MkvWriter([self.track])
        frames = self.gop(n).frame_data(timecode)
        return writer.info() + writer.tracks_element() + cluster(timecode, frames, sized=True)


def load_media(directory: Path) -> Media:
    path = write_sample(
        directory / "sample.mkv",
        SampleSpec(width=WIDTH, height=HEIGHT, fps=FPS, seconds=SAMPLE_S, gop_seconds=FRAGMENT_S),
    )
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        extradata = bytes(stream.codec_context.extradata or b"")
        packets = [(bool(p.is_keyframe), bytes(p)) for p in container.demux(stream) if p.size]
    gops: list[list[tuple[int, bytes]]] = []
    for key, data in packets:
        if key:
            gops.append([])
        gops[-1].append((round(len(gops[-1]) * 1000 / FPS), data))
    track = TrackInfo(1, "V_MPEG4/ISO/AVC", extradata, width=WIDTH, height=HEIGHT)
    return Media(track, tuple(Gop(tuple(g)) for g in gops))


def pyav_remux(document: bytes, probe: dict[str, str] | None = None) -> bytes:
    """The reference: PyAV copying a fragment's packets from MKV into fragmented MP4."""
    sink = io.BytesIO()
    with (
        av.open(io.BytesIO(document), "r", format="matroska", options=probe) as source,
        av.open(sink, "w", format="mp4", options={"movflags": FMP4_FLAGS}) as output,
    ):
        video = source.streams.video[0]
        out = output.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.size == 0 or packet.pts is None:
                continue
            packet.dts = packet.pts
            packet.stream = out
            output.mux(packet)
    return sink.getvalue()


def decode_first_frame(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            return frame.width, frame.height
    raise RuntimeError("the segment has no frame")


# --- producing ----------------------------------------------------------------------------
@dataclass
class AckLog:
    persisted_at: dict[str, float] = field(default_factory=dict)  # number -> monotonic
    timecode_of: dict[str, int] = field(default_factory=dict)  # number -> producer ms
    errors: list[str] = field(default_factory=list)
    first_persisted: asyncio.Event = field(default_factory=asyncio.Event)
    max_lateness: float = 0.0


async def _collect_acks(session: PutMediaSession, log: AckLog) -> None:
    async for ack in session.acks():
        if ack.event_type == AckEventType.ERROR:
            log.errors.append(f"{ack.error_id} {ack.error_code} at {ack.fragment_timecode}")
        elif ack.event_type == AckEventType.PERSISTED and ack.fragment_number is not None:
            number = str(ack.fragment_number)
            log.persisted_at[number] = time.monotonic()
            log.timecode_of[number] = ack.fragment_timecode or 0
            log.first_persisted.set()


async def put_fragments(
    url: str,
    stream: str,
    media: Media,
    log: AckLog,
    *,
    fragments: int | None,
    paced: bool,
    stop: asyncio.Event | None = None,
) -> None:
    """Send fragments (``fragments`` of them, or until ``stop``), in real time if paced."""
    loop = asyncio.get_running_loop()
    frames_per_fragment = len(media.gops[0].frames)
    async with (
        aiohttp.ClientSession(timeout=NO_TIMEOUT) as http,
        PutMediaSession(http, url, stream) as session,
    ):
        acks = asyncio.create_task(_collect_acks(session, log))
        writer = MkvWriter([media.track])
        await session.write(writer.header())
        if paced:
            start = loop.time() + 0.05
            wall0_ms = round((time.time() + 0.05) * 1000)
        else:  # in the past, so every timecode is
            start = loop.time()
            wall0_ms = round(time.time() * 1000) - (fragments or 0) * 2000 - 1000
        n = 0
        while (fragments is None or n < fragments) and not (stop and stop.is_set()):
            fragment_tc = wall0_ms + round(n * FRAGMENT_S * 1000)
            gop = media.gop(n)
            for i, frame in enumerate(gop.frame_data(fragment_tc)):
                if paced:
                    due = start + n * FRAGMENT_S + i / FPS
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        log.max_lateness = max(log.max_lateness, -delay)
                if i == 0:
                    data = writer.fragment(fragment_tc, [frame])
                else:
                    data = simple_block(frame, fragment_tc)
                await session.write(data)
                if i == frames_per_fragment - 1:
                    await session.write(END_OF_FRAGMENT)
            n += 1
        await session.finish()
        await acks


# --- HTTP helpers -------------------------------------------------------------------------
def _base(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[0] + "/"


def _uris(playlist: str) -> list[str]:
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


def _map_uri(playlist: str) -> str:
    match = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    if match is None:
        raise RuntimeError("the media playlist has no EXT-X-MAP")
    return match.group(1)


async def _get(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url, timeout=REQUEST_TIMEOUT) as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} for {url[:80]}: {body[:200]!r}")
        return body


async def _timed_get(http: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    body = await _get(http, url)
    return time.perf_counter() - start, body


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- 1. remux -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RemuxRun:
    uncached: tuple[float, ...]
    cached: tuple[float, ...]
    reference: tuple[float, ...]  # PyAV in-process, best of repeats, per fragment
    lean: tuple[float, ...]  # the same with LEAN_PROBE on the input
    in_process: tuple[float, ...]  # the emulator's own fmp4_media_segment, in-process
    ts_in_process: tuple[float, ...]  # its mpegts_segment (PyAV), in-process
    segment_bytes: int
    fragment_bytes: int
    errors: tuple[str, ...]


async def remux_phase(url: str, archived: Any, media: Media, stream: str, plan: Plan) -> RemuxRun:
    log = AckLog()
    await put_fragments(url, stream, media, log, fragments=plan.remux_fragments, paced=False)
    first, last = min(log.timecode_of.values()), max(log.timecode_of.values())
    response = await asyncio.to_thread(
        archived.get_hls_streaming_session_url,
        StreamName=stream,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": first / 1000 - 0.5,
                "EndTimestamp": last / 1000 + FRAGMENT_S + 0.5,
            },
        },
        MaxMediaPlaylistFragmentResults=plan.remux_fragments,
    )
    master_url = response["HLSStreamingSessionURL"]
    base = _base(master_url)
    uncached, cached, sizes = [], [], []
    async with aiohttp.ClientSession() as http:
        media_url = base + _uris((await _get(http, master_url)).decode())[0]
        playlist = (await _get(http, media_url)).decode()
        await _get(http, base + _map_uri(playlist))  # the init, as a player gets it first
        for uri in _uris(playlist):
            seconds, body = await _timed_get(http, base + uri)
            uncached.append(seconds)
            sizes.append(len(body))
            cached.append(min([(await _timed_get(http, base + uri))[0] for _ in range(3)]))
    reference, lean, in_process, ts_in_process = [], [], [], []
    for n, tc in enumerate(sorted(log.timecode_of.values())):
        document = media.document(n, tc)
        payload = media.payload(n, tc)
        pyav_remux(document)  # warm
        reference.append(min(_timed(lambda d=document: pyav_remux(d))))
        lean.append(min(_timed(lambda d=document: pyav_remux(d, LEAN_PROBE))))
        in_process.append(min(_timed(lambda p=payload: fmp4_media_segment(p, origin_ms=first))))
        ts_in_process.append(min(_timed(lambda p=payload: mpegts_segment(p, origin_ms=first))))
    return RemuxRun(
        tuple(uncached),
        tuple(cached),
        tuple(reference),
        tuple(lean),
        tuple(in_process),
        tuple(ts_in_process),
        int(statistics.mean(sizes)),
        len(media.document(0, first)),
        tuple(log.errors),
    )


def _timed(fn: Any) -> list[float]:
    out = []
    for _ in range(REFERENCE_REPEATS):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# --- 2. and 3. live -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FirstFrame:
    seconds: float  # first PERSISTED ack -> first frame decoded
    steps: tuple[tuple[str, float], ...]
    frame_age_s: float  # wall clock at decode minus the frame's producer timestamp
    size: tuple[int, int]


@dataclass
class Viewer:
    seen_at: dict[str, float] = field(default_factory=dict)  # number -> first in playlist
    initial: set[str] = field(default_factory=set)  # in the first playlist
    fetch_s: list[float] = field(default_factory=list)
    fetches: list[tuple[str, float, float]] = field(default_factory=list)  # number, start, s
    segments: dict[str, bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    polls: int = 0


@dataclass(frozen=True, slots=True)
class LiveRun:
    first_frame: FirstFrame | None
    first_frame_error: str | None
    viewers: tuple[Viewer, ...]
    persisted_at: dict[str, float]
    window: tuple[float, float]  # monotonic start and end of the viewing
    cpu: CpuUse
    acks: AckLog
    reference_fetch_s: tuple[float, ...]
    reference_errors: int


async def _new_session(archived: Any) -> str:
    response = await asyncio.to_thread(
        archived.get_hls_streaming_session_url, StreamName="live", PlaybackMode="LIVE"
    )
    return str(response["HLSStreamingSessionURL"])


async def first_frame(archived: Any, log: AckLog) -> FirstFrame:
    await log.first_persisted.wait()
    t0 = min(log.persisted_at.values())
    steps: list[tuple[str, float]] = []
    mark = t0

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps.append((name, now - mark))
        mark = now

    master_url = await _new_session(archived)
    step("session URL")
    base = _base(master_url)
    async with aiohttp.ClientSession() as http:
        media_url = base + _uris((await _get(http, master_url)).decode())[0]
        step("master")
        playlist = (await _get(http, media_url)).decode()
        step("media playlist")
        init = await _get(http, base + _map_uri(playlist))
        step("init")
        first_uri = _uris(playlist)[0]
        segment = await _get(http, base + first_uri)
        step("segment")
    size = await asyncio.to_thread(decode_first_frame, init + segment)
    step("decode")
    number = _FRAGMENT_NUMBER.search(first_uri)
    tc = log.timecode_of.get(number.group(1), 0) if number else 0
    return FirstFrame(time.monotonic() - t0, tuple(steps), time.time() - tc / 1000, size)


async def view(archived: Any, viewer: Viewer, phase: float, until: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        master_url = await _new_session(archived)
        base = _base(master_url)
        async with aiohttp.ClientSession() as http:
            media_url = base + _uris((await _get(http, master_url)).decode())[0]
            await asyncio.sleep(phase)
            while loop.time() < until:
                tick = loop.time()
                try:
                    playlist = (await _get(http, media_url)).decode()
                    viewer.polls += 1
                    now = time.monotonic()
                    for uri in _uris(playlist):
                        match = _FRAGMENT_NUMBER.search(uri)
                        if match is None or match.group(1) in viewer.seen_at:
                            continue
                        number = match.group(1)
                        viewer.seen_at[number] = now
                        if viewer.polls == 1:
                            viewer.initial.add(number)
                        began = time.monotonic()
                        seconds, body = await _timed_get(http, base + uri)
                        viewer.fetch_s.append(seconds)
                        viewer.fetches.append((number, began, seconds))
                        viewer.segments[number] = body
                except Exception as exc:  # a stall, counted; the viewer goes on
                    viewer.errors.append(repr(exc)[:200])
                await asyncio.sleep(max(0.0, tick + POLL_S - loop.time()))
    except Exception as exc:
        viewer.errors.append(repr(exc)[:200])


async def live_phase(url: str, pid: int, archived: Any, media: Media, plan: Plan) -> LiveRun:
    log = AckLog()
    stop = asyncio.Event()
    producer = asyncio.create_task(
        put_fragments(url, "live", media, log, fragments=None, paced=True, stop=stop)
    )
    viewers = tuple(Viewer() for _ in range(VIEWERS))
    ff: FirstFrame | None = None
    ff_error: str | None = None
    try:
        await asyncio.wait_for(log.first_persisted.wait(), 30)
        try:
            ff = await asyncio.wait_for(first_frame(archived, log), 30)
        except Exception as exc:
            ff_error = repr(exc)[:300]
        loop = asyncio.get_running_loop()
        meter = CpuMeter(pid)
        start = time.monotonic()
        until = loop.time() + plan.viewer_s
        await asyncio.gather(
            *(view(archived, v, i * POLL_S / VIEWERS, until) for i, v in enumerate(viewers))
        )
        end = time.monotonic()
        cpu = meter.stop()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(producer, 15)
        except Exception:
            producer.cancel()
    return LiveRun(ff, ff_error, viewers, dict(log.persisted_at), (start, end), cpu, log, (), 0)


async def reference_fetch(url: str, numbers: Sequence[str]) -> tuple[list[float], int]:
    """10 viewers fetch the same segments from the static server, a segment at a time,
    all 10 at once (as they would when a new fragment appears)."""
    latencies: list[float] = []
    errors = 0
    sessions = [aiohttp.ClientSession() for _ in range(VIEWERS)]
    try:
        # One untimed round first: the emulator's viewers had warm connections too.
        await asyncio.gather(*(_get(s, f"{url}/{numbers[0]}.mp4") for s in sessions))
        for number in numbers:
            results = await asyncio.gather(
                *(_timed_get(s, f"{url}/{number}.mp4") for s in sessions),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, BaseException):
                    errors += 1
                else:
                    latencies.append(r[0])
    finally:
        for s in sessions:
            await s.close()
    return latencies, errors


# --- the benchmark ----------------------------------------------------------------------
def run(options: Options) -> list[Result]:
    plan = Plan.for_options(options)
    with tempfile.TemporaryDirectory(prefix="kvs-bench-hls-") as root_name:
        root = Path(root_name)
        media = load_media(root)
        padded = media.padded(PADDED_BPS)
        data_dir = root / "data"
        data_dir.mkdir()
        argv = [sys.executable, "-m", "kvs_toolkit.cli", "emulator"]
        argv += ["--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
        with server_process(argv, root / "emulator.log") as emulator:
            kv = _client("kinesisvideo", emulator.url)
            for name in ("remux-sample", "remux-4mbps", "live"):
                kv.create_stream(StreamName=name, DataRetentionInHours=1)
            endpoint = kv.get_data_endpoint(
                StreamName="live", APIName="GET_HLS_STREAMING_SESSION_URL"
            )["DataEndpoint"]
            archived = _client("kinesis-video-archived-media", endpoint)
            remuxes = [
                asyncio.run(remux_phase(emulator.url, archived, m, name, plan))
                for m, name in ((media, "remux-sample"), (padded, "remux-4mbps"))
            ]
            live = asyncio.run(live_phase(emulator.url, emulator.pid, archived, padded, plan))
        # The reference: the segments viewer 0 got, from a static file server.
        segments = live.viewers[0].segments
        static = root / "static"
        static.mkdir()
        for number, body in segments.items():
            (static / f"{number}.mp4").write_bytes(body)
        ref_argv = [sys.executable, "-c", _STATIC_SERVER, str(static)]
        with server_process(ref_argv, root / "static.log") as server:
            ref_s, ref_errors = asyncio.run(reference_fetch(server.url, sorted(segments)))
    live = LiveRun(
        live.first_frame,
        live.first_frame_error,
        live.viewers,
        live.persisted_at,
        live.window,
        live.cpu,
        live.acks,
        tuple(ref_s),
        ref_errors,
    )
    return [
        _remux_row(remuxes[0], "sample"),
        _remux_row(remuxes[1], f"{PADDED_BPS / 1e6:g} Mbps"),
        _first_frame_row(live),
        _viewers_row(live),
    ]


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


def _ms(seconds: float) -> float:
    return seconds * 1000


def _remux_row(r: RemuxRun, label: str) -> Result:
    unc = statistics.median(r.uncached)
    cac = statistics.median(r.cached)
    ref = statistics.median(r.reference)
    lean = statistics.median(r.lean)
    proc = statistics.median(r.in_process)
    ts = statistics.median(r.ts_in_process)
    server = statistics.median(u - c for u, c in zip(r.uncached, r.cached, strict=True))
    over = sum(1 for u in r.uncached if _ms(u) >= GOAL_REMUX_MS)
    notes = [
        f"Remux ({label}): {len(r.uncached)} fragments of {FRAGMENT_S:g} s "
        f"{WIDTH}x{HEIGHT}p{FPS} H.264, ~{r.fragment_bytes / 1000:,.0f} kB of MKV each "
        f"(~{r.segment_bytes / 1000:,.0f} kB fMP4 out). In this process: the emulator's "
        f"fmp4_media_segment() (stored payload -> moof + mdat, its own box writer) p50 "
        f"{_ms(proc):.2f} ms; its mpegts_segment() (PyAV, for MPEG_TS sessions) p50 "
        f"{_ms(ts):.1f} ms; PyAV reference p50 {_ms(ref):.1f} ms, or {_ms(lean):.1f} ms "
        "with the input opened with probesize=32, analyzeduration=0 (no "
        "avformat_find_stream_info decode). Over HTTP: uncached round trip p50 "
        f"{_ms(unc):.1f} / max {_ms(max(r.uncached)):.1f} ms ({over} of {len(r.uncached)} "
        f"at {GOAL_REMUX_MS:g} ms or more); cached p50 {_ms(cac):.2f} ms; uncached minus "
        f"cached (the server-side work: session and fragment checks, store read, remux, "
        f"thread hand-off) p50 {_ms(server):.1f} ms."
        + (" ERROR acks: " + "; ".join(r.errors[:3]) if r.errors else ""),
    ]
    if label == "sample":
        notes += [
            "Remux method: the fragments are uploaded unpaced, one ON_DEMAND session "
            "(PRODUCER_TIMESTAMP range) covers them; the init segment is fetched first, as "
            "a player does. The goal (remux under 5 ms, cached thereafter) is judged on "
            "the remux: the in-process fmp4_media_segment() and the server-side work "
            "over HTTP (uncached minus cached round trip) must both be under it; 'ours' "
            "also shows the whole uncached HTTP round trip (aiohttp, loopback, "
            "keep-alive; for 1 MB segments the transfer alone is about the cached time), "
            "p50 over fragments; 'cached' is the best of 3 fetches of the same segment "
            "right after. 'sample' is the libx264 sample as encoded (simple synthetic "
            "picture: ~250 kbps, so its 60 packets rather than its bytes cost); "
            f"'{PADDED_BPS / 1e6:g} Mbps' is the same GOPs with an H.264 filler-data NAL "
            "unit after each frame (decodable, a camera-like size). 1080p30 throughout.",
            "Remux reference: PyAV in this process, the MKV of the fragment (the bytes "
            "PutMedia sent) in a BytesIO -> mp4 with movflags "
            f"{FMP4_FLAGS}, packets copied (no decoding), best of {REFERENCE_REPEATS} per "
            "fragment, p50 over fragments; the in-process timings are best of "
            f"{REFERENCE_REPEATS} too, and the ratio is in-process ours / reference.",
        ]
    return Result(
        benchmark=f"hls: fMP4 segment remux, 2 s 1080p30 fragment, {label} (uncached)",
        ours=(
            f"remux {_ms(proc):.2f} ms in-process; HTTP p50 {_ms(unc):.1f} ms "
            f"(server side {_ms(server):.1f}, cached {_ms(cac):.2f})"
        ),
        reference=f"PyAV remux {_ms(ref):.1f} ms",
        ratio=fmt_ratio(proc / ref),
        goal=f"< {GOAL_REMUX_MS:g} ms per fragment",
        met=not r.errors and _ms(proc) < GOAL_REMUX_MS and _ms(server) < GOAL_REMUX_MS,
        notes=tuple(notes),
    )


def _first_frame_row(live: LiveRun) -> Result:
    ff = live.first_frame
    if ff is None:
        return Result(
            benchmark="hls: LIVE time to first frame (from first PERSISTED ack)",
            ours="failed",
            reference=f"fragment {FRAGMENT_S:g} s",
            ratio="-",
            goal=f"< {GOAL_TTFF_S:g} s (1.5 fragments)",
            met=False,
            notes=(f"Time to first frame failed: {live.first_frame_error}",),
        )
    steps = ", ".join(f"{name} {_ms(s):.1f}" for name, s in ff.steps)
    return Result(
        benchmark="hls: LIVE time to first frame (from first PERSISTED ack)",
        ours=f"{_ms(ff.seconds):.0f} ms",
        reference=f"fragment {FRAGMENT_S:g} s",
        ratio=fmt_ratio(ff.seconds / FRAGMENT_S),
        goal=f"< {GOAL_TTFF_S:g} s (1.5 fragments)",
        met=ff.seconds < GOAL_TTFF_S,
        notes=(
            "Time to first frame: a real-time producer (the 1080p30 GOPs padded to "
            f"{PADDED_BPS / 1e6:g} Mbps, paced by the "
            f"loop clock, worst lateness {_ms(live.acks.max_lateness):.0f} ms); at the first "
            "PERSISTED ack (arrival at the producer, same process) a LIVE session is opened "
            "(boto3 GetHLSStreamingSessionURL in a thread, GetDataEndpoint done beforehand), "
            "then master, media playlist, init and the first segment are fetched (new "
            "aiohttp session) and PyAV decodes the first frame of init+segment "
            f"({ff.size[0]}x{ff.size[1]}). Steps in ms: {steps}. The frame decoded was "
            f"{ff.frame_age_s:.2f} s old by the wall clock (its producer timestamp): a "
            "fragment is playable only once complete, so that age includes the fragment "
            "duration.",
        ),
    )


def _viewers_row(live: LiveRun) -> Result:
    start, end = live.window
    persisted = live.persisted_at
    stalls_late = stalls_missed = 0
    worst_delay = 0.0
    delays: list[float] = []
    per_viewer = []
    errors: list[str] = []
    for v in live.viewers:
        per_viewer.append(len(v.segments))
        errors += v.errors
        for number, at in persisted.items():
            if number in v.initial or at < start:
                continue  # there before the viewer: not a live arrival
            seen = v.seen_at.get(number)
            if seen is None:
                if at < end - FRAGMENT_S:
                    stalls_missed += 1
                continue
            delay = seen - at
            delays.append(delay)
            worst_delay = max(worst_delay, delay)
            if delay > FRAGMENT_S:
                stalls_late += 1
    stalls = stalls_late + stalls_missed + len(errors)
    fetch = [s for v in live.viewers for s in v.fetch_s]
    first_fetch: dict[str, tuple[float, float]] = {}  # number -> (start, seconds)
    for v in live.viewers:
        for number, began, seconds in v.fetches:
            if number not in first_fetch or began < first_fetch[number][0]:
                first_fetch[number] = (began, seconds)
    firsts = [seconds for _began, seconds in first_fetch.values()]
    later = sorted(fetch)
    for seconds in firsts:
        later.remove(seconds)
    ref = live.reference_fetch_s
    p99, mx = _ms(_pct(fetch, 99)), _ms(max(fetch, default=float("nan")))
    rp99, rmx = _ms(_pct(ref, 99)), _ms(max(ref, default=float("nan")))
    notes = (
        f"Viewers: {VIEWERS} for {end - start:.1f} s, each with its own LIVE session and "
        f"aiohttp session, polling the media playlist every {POLL_S:g} s (phases spread over "
        "the second) and fetching each new segment once (sessions opened together share "
        "an origin, so the emulator remuxes each fragment once and its segment cache serves "
        "the rest); segments per viewer "
        f"{min(per_viewer)}-{max(per_viewer)} ({sum(per_viewer)} in all). A stall is a "
        f"fragment first listed more than {FRAGMENT_S:g} s after its PERSISTED ack arrived "
        f"({stalls_late}), one PERSISTED during the viewing and never listed ({stalls_missed}), "
        f"or a failed request ({len(errors)}"
        + (f": {'; '.join(errors[:2])}" if errors else "")
        + "). PERSISTED -> first listed: p50 "
        f"{_ms(_pct(delays, 50)):.0f} / max {_ms(worst_delay):.0f} ms (polling every second "
        "adds up to 1 s). Segment fetch p50 "
        f"{_ms(_pct(fetch, 50)):.1f} ms; the first fetch of each fragment (by any viewer: "
        f"most likely the uncached remux) p50 {_ms(_pct(firsts, 50)):.1f} / max "
        f"{_ms(max(firsts, default=float('nan'))):.1f} ms, the other fetches p50 "
        f"{_ms(_pct(later, 50)):.1f} / p99 {_ms(_pct(later, 99)):.1f} ms. Emulator CPU in "
        "cores over the viewing: "
        f"{live.cpu.describe('emulator')}.",
        f"Viewers reference: the {len(ref) // VIEWERS if ref else 0} segments viewer 0 got, "
        "written to files and served by a trivial aiohttp static server (own process); "
        f"{VIEWERS} clients fetch each segment all at once, one segment after another "
        f"(p50 {_ms(_pct(ref, 50)):.1f} ms, {live.reference_errors} errors).",
    )
    return Result(
        benchmark=f"hls: {VIEWERS} concurrent LIVE viewers, real-time producer",
        ours=f"{stalls} stalls; fetch p99 {p99:.1f} / max {mx:.1f} ms",
        reference=f"static p99 {rp99:.1f} / max {rmx:.1f} ms",
        ratio=fmt_ratio(p99 / rp99) + " (p99)" if ref and fetch else "-",
        goal="0 stalls",
        met=bool(fetch) and stalls == 0,
        notes=notes,
    )
