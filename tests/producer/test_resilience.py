"""Never lose a frame: the emulator killed and restarted mid-upload, and the network cut
at random points. Real H.264 frames go up; GetMedia reads them back; the consumer's
FragmentDecoder (which drops a repeated fragment, the at-least-once contract's other
half) must decode every frame exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.mkv import Fragment, TrackInfo
from kvs_toolkit.producer import EncodedFrame, Uploader
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import FrameSource, SourceOptions, open_source
from kvs_toolkit.producer.uploader import UploadStats
from tests.media import read_fragments
from tests.producer.conftest import ClipFactory
from tests.producer.media import Clip
from tests.test_uploader import proxy_to

FRAMES = 125  # 5 s at 25 fps, a key frame every second: 5 fragments of 1 s
START_MS = 1_790_000_000_000


def h264_frames(make_clip: ClipFactory) -> tuple[list[TrackInfo], list[EncodedFrame]]:
    """Real libx264 frames (AVCC) with absolute timestamps 40 ms apart."""
    path = make_clip("resilience.mkv", Clip(frames=FRAMES))
    source = open_source(str(path), SourceOptions(realtime=False, audio=False))
    try:
        frames = list(source)
        tracks = source.tracks
    finally:
        source.close()
    assert len(frames) == FRAMES
    return tracks, [
        EncodedFrame(bytes(f.data), START_MS + i * 40, f.keyframe) for i, f in enumerate(frames)
    ]


def client(endpoint_url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


def read_back(endpoint_url: str, stream: str) -> list[Fragment]:
    """Every stored fragment, oldest first, through GetMedia."""
    listed = client(endpoint_url, "kinesis-video-archived-media").list_fragments(StreamName=stream)
    count = len(listed["Fragments"])
    return read_fragments(client(endpoint_url, "kinesis-video-media"), stream, count)


def decoded_once(fragments: list[Fragment]) -> tuple[list[int], int]:
    """(decoded frame timestamps in ms, repeated fragments dropped) as a consumer sees them."""
    decoder = FragmentDecoder(format="gray")
    frames = [f for fragment in fragments for f in decoder.decode(fragment)] + decoder.flush()
    return [f.timestamp_ns // 1_000_000 for f in frames], decoder.stats.duplicate_fragments


EXPECTED_MS = [START_MS + i * 40 for i in range(FRAMES)]


# --- the emulator killed (SIGKILL) and restarted on the same port and data ---------------


class EmulatorProcess:
    """``kvs emulator`` in a subprocess: SIGKILL is a crash, not a clean stop."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvs_toolkit.cli", "emulator", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the emulator did not start: {self.url!r}")
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def processes() -> Iterator[list[EmulatorProcess]]:
    started: list[EmulatorProcess] = []
    yield started
    for process in started:
        process.stop()


def test_emulator_killed_and_restarted_mid_upload_every_frame_once(
    make_clip: ClipFactory, tmp_path: Path, processes: list[EmulatorProcess]
) -> None:
    tracks, frames = h264_frames(make_clip)
    processes.append(EmulatorProcess(tmp_path))
    first = processes[0]
    client(first.url, "kinesisvideo").create_stream(StreamName="crash", DataRetentionInHours=1)

    async def run() -> Any:
        uploader = Uploader(first.url, "crash", tracks, fragment_duration_ms=1000)
        await uploader.start()
        for i, frame in enumerate(frames):
            uploader.put_frame(frame)
            await asyncio.sleep(0.008)
            if i == 55:  # mid-fragment, with earlier fragments acked or in flight
                await asyncio.to_thread(first.kill)
            if i == 80:
                restarted = await asyncio.to_thread(EmulatorProcess, tmp_path, first.port)
                processes.append(restarted)
        return await uploader.close(timeout=30)

    stats = asyncio.run(run())
    assert stats.acked == 5 and stats.connections >= 2 and stats.dropped_fragments == 0
    fragments = read_back(processes[-1].url, "crash")
    timestamps, repeats = decoded_once(fragments)
    assert timestamps == EXPECTED_MS  # every frame exactly once, in order
    assert len(fragments) == 5 + repeats


# --- the TCP connection cut at random points ---------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_connection_cut_at_random_points_every_frame_once(
    make_clip: ClipFactory, seed: int
) -> None:
    tracks, frames = h264_frames(make_clip)
    rng = random.Random(seed)
    # cut while frames stream, between fragments, and while the last acks are awaited
    cut_after_s = sorted(rng.uniform(0.05, 1.6) for _ in range(4))

    with Emulator() as emulator:
        client(emulator.endpoint_url, "kinesisvideo").create_stream(
            StreamName="cut", DataRetentionInHours=1
        )

        async def run() -> Any:
            async with proxy_to(emulator) as proxy:

                async def cutter() -> None:
                    started = asyncio.get_running_loop().time()
                    for at in cut_after_s:
                        await asyncio.sleep(
                            max(0.0, started + at - asyncio.get_running_loop().time())
                        )
                        proxy.cut()

                cuts = asyncio.create_task(cutter())
                uploader = Uploader(
                    f"http://127.0.0.1:{proxy.port}", "cut", tracks, fragment_duration_ms=1000
                )
                await uploader.start()
                for frame in frames:
                    uploader.put_frame(frame)
                    await asyncio.sleep(rng.uniform(0, 0.016))
                await cuts
                return await uploader.close(timeout=30)

        stats = asyncio.run(run())
        fragments = read_back(emulator.endpoint_url, "cut")
    assert stats.acked == 5 and stats.dropped_fragments == 0
    timestamps, repeats = decoded_once(fragments)
    assert timestamps == EXPECTED_MS
    assert len(fragments) == 5 + repeats


# --- a recording waits for the service; a live source cannot ----------------------------


class _Frames(FrameSource):
    """Frames already in memory, handed over as fast as produce() takes them."""

    def __init__(self, tracks: list[TrackInfo], frames: list[EncodedFrame], *, live: bool) -> None:
        super().__init__("frames in memory")
        self.live = live
        self._track_list = tracks
        self._frame_list = frames

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        self._set_tracks(self._track_list)
        yield from self._frame_list


@pytest.mark.parametrize("live", [False, True])
def test_outage_with_a_small_buffer_drops_only_from_a_live_source(
    make_clip: ClipFactory, tmp_path: Path, processes: list[EmulatorProcess], live: bool
) -> None:
    tracks, frames = h264_frames(make_clip)
    fragment_sizes = [
        sum(len(f.data) for f in frames[start : start + 25]) for start in range(0, FRAMES, 25)
    ]
    processes.append(EmulatorProcess(tmp_path))
    first = processes[0]
    client(first.url, "kinesisvideo").create_stream(StreamName="outage", DataRetentionInHours=1)
    first.kill()  # the network is down when the upload starts

    async def run() -> UploadStats:
        async def restart() -> None:
            await asyncio.sleep(1.5)
            processes.append(await asyncio.to_thread(EmulatorProcess, tmp_path, first.port))

        restarting = asyncio.create_task(restart())
        stats = await produce(
            _Frames(tracks, frames, live=live),
            first.url,
            "outage",
            credentials=Credentials("x", "y"),
            data_endpoint=first.url,
            fragment_duration_ms=1000,
            # room for two of the five fragments: a source read ahead must lose three
            buffer_bytes=int(2.5 * max(fragment_sizes)),
        )
        await restarting
        return stats

    stats = asyncio.run(run())
    timestamps, _ = decoded_once(read_back(processes[-1].url, "outage"))
    if live:
        # a camera cannot wait: the oldest fragments went to make room, counted
        assert stats.dropped_fragments == 3 and not stats.all_acknowledged
        assert timestamps == EXPECTED_MS[75:]
    else:
        # a recording is read only as fast as the service acknowledges: nothing lost
        assert stats.dropped_fragments == 0 and stats.all_acknowledged
        assert timestamps == EXPECTED_MS


def test_a_recording_with_fragments_larger_than_the_read_ahead_still_flows(
    make_clip: ClipFactory,
) -> None:
    """The fragment being built is never waited on (it cannot be acknowledged before it
    is complete): a read-ahead window smaller than one fragment must not stall."""
    tracks, frames = h264_frames(make_clip)
    largest = max(sum(len(f.data) for f in frames[i : i + 25]) for i in range(0, FRAMES, 25))
    with Emulator() as emulator:
        client(emulator.endpoint_url, "kinesisvideo").create_stream(
            StreamName="big", DataRetentionInHours=1
        )

        async def run() -> UploadStats:
            return await asyncio.wait_for(
                produce(
                    _Frames(tracks, frames, live=False),
                    emulator.endpoint_url,
                    "big",
                    credentials=Credentials("x", "y"),
                    data_endpoint=emulator.endpoint_url,
                    fragment_duration_ms=1000,
                    buffer_bytes=int(1.5 * largest),  # read-ahead: 0.75 of a fragment
                ),
                timeout=30,
            )

        stats = asyncio.run(run())
        timestamps, _ = decoded_once(read_back(emulator.endpoint_url, "big"))
    assert stats.dropped_fragments == 0 and stats.all_acknowledged
    assert timestamps == EXPECTED_MS
