"""The producer: pass-through speed, packaging CPU cost, memory, and ack latency.

The clip is what a camera's hardware encoder gives (``benchmarks.common.encoded_clip``):
H.264 1920x1080 at 30 fps, 4 Mbit/s, a key frame every 2 s with SPS/PPS in band, no
B-frames, 30 s; made once with libx264 and cached in the temp folder as an Annex-B
stream and as an MKV file. The emulator always runs in a child process
(``kvs emulator --port 0``), so neither its CPU nor its memory counts as ours.

Rows:

* **pass-through** of the clip to the emulator on loopback, as fast as it goes, as x
  real time (clip seconds per wall second), from the MKV file (:class:`FileSource`,
  ``realtime=False``) and from a pipe (:class:`AnnexBSource` on a real ``os.pipe``
  written by a thread, timestamps at 30 fps as ``kvs produce - --fps 30`` does), both
  through :func:`kvs_toolkit.producer.run.produce` in this process, timed from the call
  to the last fragment acknowledged PERSISTED (GetDataEndpoint included). Reference:
  ``ffmpeg -c copy`` of the same stream to a local MKV file, in the same run.
* **CPU cost of packaging and upload** against libx264 encoding the same 720p30 frames
  with the producer's own :class:`~kvs_toolkit.producer.encoder.Encoder` settings:
  ``time.process_time`` (all threads of this process) of the encode alone, then of
  fragmenting and uploading the encoded frames (:class:`Uploader`, until PERSISTED).
* **memory**: ``/usr/bin/time -v`` maximum RSS of the whole ``kvs produce`` process, for
  ``kvs produce -`` passing the 1080p30 stream through from stdin, and for ``kvs produce
  FILE`` encoding an MJPEG 720p30 file with libx264.
* **memory flat over time**: ``kvs produce - --fps 30`` fed the clip in a loop at 30
  frames/s (a camera), its RSS sampled from ``/proc/PID/status``; 10 min with
  ``--long``, 30 s in a plain run, 6 s with ``--quick``; ``KVS_BENCH_LONG_S`` sets any
  length.
* **latency** from the wall time a fragment's first frame enters the producer (its
  arrival timestamp: the pipe is written at 30 frames/s) to the PERSISTED ack for that
  fragment, p50 and p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from benchmarks.common import (
    EmulatorProcess,
    EncodedClip,
    Options,
    Result,
    RssGrowth,
    RssSampler,
    cache_dir,
    camera_frame,
    camera_texture,
    encoded_clip,
    fmt_mib,
    fmt_ratio,
    gc_paused,
    kvs_command,
    max_rss_of,
    rss_growth,
    soak_seconds,
)
from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.producer.fragmenter import EncodedFrame

if TYPE_CHECKING:
    from botocore.credentials import Credentials

    from kvs_toolkit.acks import Ack
    from kvs_toolkit.mkv import TrackInfo
    from kvs_toolkit.producer.sources import FrameSource
    from kvs_toolkit.producer.uploader import UploadStats

STREAM_FPS: Final = 30


def child_environment() -> dict[str, str]:
    """Fixed credentials for child processes: no credential chain lookups (no instance
    metadata requests leave this machine); the emulator accepts any signature."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHMARK",
        AWS_SECRET_ACCESS_KEY="benchmark-secret",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.pop("AWS_PROFILE", None)
    return env


def feed_paced(
    sink: IO[bytes], units: Sequence[bytes], fps: float, seconds: float, stop: threading.Event
) -> int:
    """Write access units to ``sink`` at ``fps`` (looping) for ``seconds``, as a camera
    does; returns how many were written. Closes ``sink`` at the end."""
    started = time.monotonic()
    count = 0
    try:
        while not stop.is_set():
            due = started + count / fps
            if due - started >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sink.write(units[count % len(units)])
            sink.flush()
            count += 1
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()
    return count


def stdin_soak(
    clip: EncodedClip, emulator_url: str, seconds: float, interval_s: float
) -> tuple[RssGrowth, int]:
    """``kvs produce -`` fed at 30 frames/s for ``seconds``: its RSS growth after warm-up."""
    process = subprocess.Popen(
        [*kvs_command(), "produce", "-", "--stream", "soak", "--endpoint-url", emulator_url,
         "--create-stream", "--fps", str(clip.fps)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_environment(),
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    stderr_tail: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(process.stderr, stderr_tail), daemon=True)
    drain.start()
    sampler = RssSampler(process.pid, interval_s).start()
    stop = threading.Event()
    try:
        frames = feed_paced(process.stdin, clip.units(), clip.fps, seconds, stop)
        status = process.wait(60)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    samples = sampler.stop()
    drain.join(5)
    if status != 0:
        tail = b"".join(stderr_tail)[-2000:].decode(errors="replace")
        raise RuntimeError(f"kvs produce - exited with {status}: {tail}")
    warmup = min(30.0, seconds / 4)
    return rss_growth(samples, warmup), frames


def _drain(stream: IO[bytes], tail: list[bytes]) -> None:
    """Read a child's stderr so it never blocks on a full pipe; keep its last lines."""
    for line in stream:
        tail.append(line)
        del tail[:-20]


def soak_row(options: Options, clip: EncodedClip, emulator_url: str) -> Result:
    seconds = soak_seconds(options, short=30.0, quick=6.0, long=600.0)
    interval = 5.0 if seconds >= 120 else 1.0 if seconds >= 20 else 0.5
    growth, frames = stdin_soak(clip, emulator_url, seconds, interval)
    met = growth.growth_bytes < 5 * 2**20
    length = f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"
    return Result(
        benchmark=f"producer memory over {length}: kvs produce - at 30 frames/s",
        ours=f"{growth.growth_bytes / 2**20:+.1f} MB RSS",
        reference=f"{fmt_mib(growth.warm_bytes)} after warm-up, peak {fmt_mib(growth.peak_bytes)}",
        ratio="-",
        goal="growth < 5 MB over 10 min",
        met=met,
        notes=(
            f"producer memory over time: {frames} frames written to `kvs produce - --fps 30` "
            f"at 30 frames/s over {seconds:g} s (the clip looped); RSS from /proc/PID/status "
            f"every {interval:g} s, {growth.samples} samples after a {min(30.0, seconds / 4):g}"
            " s warm-up; growth = median of the last tenth minus median of the first tenth. "
            "The goal is over 10 minutes: `python -m benchmarks --long` (or "
            "KVS_BENCH_LONG_S=600) runs that; a plain run is shorter and only a smoke check.",
        ),
    )


# ---------------------------------------------------------------------------------------
# Pass-through speed


CREDENTIALS_PAIR: Final = ("AKIDBENCHMARK", "benchmark-secret")


def _credentials() -> Credentials:
    from botocore.credentials import Credentials

    return Credentials(*CREDENTIALS_PAIR)


def _write_all(path: Path, fd: int) -> None:
    with path.open("rb") as source, os.fdopen(fd, "wb") as sink:
        while chunk := source.read(1 << 20):
            try:
                sink.write(chunk)
            except BrokenPipeError:
                return


def _produce(source: FrameSource, emulator_url: str, stream: str) -> tuple[float, UploadStats]:
    """``produce()`` to a new stream; wall seconds from the call to the last PERSISTED ack.

    The stream is created and its PutMedia endpoint found before the clock starts: that
    is a one-time cost per process (boto3 builds its client), not pass-through speed."""
    from kvs_toolkit.producer.run import produce, resolve_data_endpoint

    data_endpoint, _ = resolve_data_endpoint(
        stream,
        aws=AwsAccess(endpoint_url=emulator_url, credentials_override=_credentials()),
        create_stream=True,
    )

    async def main() -> UploadStats:
        return await produce(
            source,
            emulator_url,
            stream,
            credentials=_credentials(),
            data_endpoint=data_endpoint,
            ack_level="PERSISTED",
        )

    started = time.perf_counter()
    stats = asyncio.run(main())
    elapsed = time.perf_counter() - started
    if not stats.all_acknowledged or stats.acked != stats.fragments:
        raise RuntimeError(f"{stream}: {stats.acked} of {stats.fragments} fragments acked")
    return elapsed, stats


def pass_through_file(clip: EncodedClip, emulator_url: str, stream: str) -> float:
    from kvs_toolkit.producer.sources import FileSource, SourceOptions

    source = FileSource(clip.mkv, SourceOptions(realtime=False, audio=False))
    elapsed, stats = _produce(source, emulator_url, stream)
    if stats.frames != clip.frames:
        raise RuntimeError(f"file pass-through sent {stats.frames} of {clip.frames} frames")
    return elapsed


def pass_through_pipe(clip: EncodedClip, emulator_url: str, stream: str) -> float:
    """The clip through a real pipe into :class:`AnnexBSource`, stamped at 30 fps (what
    ``kvs produce - --fps 30`` builds)."""
    from kvs_toolkit.producer.sources import AnnexBSource, FixedRateClock

    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=_write_all, args=(clip.annexb, write_fd), daemon=True)
    with os.fdopen(read_fd, "rb") as pipe:
        source = AnnexBSource(pipe, clock=FixedRateClock(clip.fps))
        writer.start()
        elapsed, stats = _produce(source, emulator_url, stream)
    writer.join()
    if stats.frames != clip.frames:
        raise RuntimeError(f"pipe pass-through sent {stats.frames} of {clip.frames} frames")
    return elapsed


def ffmpeg_copy(clip: EncodedClip, folder: Path) -> float | None:
    """``ffmpeg -c copy`` of the Annex-B stream to an MKV file: wall seconds."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    target = folder / "copy.mkv"
    started = time.perf_counter()
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-framerate", str(clip.fps), "-f", "h264", "-i",
         str(clip.annexb), "-c", "copy", str(target)],
        check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def pass_through_rows(
    options: Options, clip: EncodedClip, emulator_url: str, folder: Path
) -> list[Result]:
    rounds = 1 if options.quick else 3
    file_s: list[float] = []
    pipe_s: list[float] = []
    copy_s: list[float] = []
    pass_through_file(clip, emulator_url, "warm-up")  # page cache, imports, first stream
    for n in range(rounds):
        file_s.append(pass_through_file(clip, emulator_url, f"file-{n}"))
        pipe_s.append(pass_through_pipe(clip, emulator_url, f"pipe-{n}"))
        copied = ffmpeg_copy(clip, folder)
        if copied is not None:
            copy_s.append(copied)
    what = (
        f"H.264 {clip.width}x{clip.height}p{clip.fps}, {clip.bitrate / 1e6:g} Mbit/s, "
        f"{clip.seconds:g} s"
    )
    reference_x = clip.seconds / min(copy_s) if copy_s else None
    reference = f"{reference_x:,.0f}x (ffmpeg -c copy to MKV)" if reference_x else "no ffmpeg"
    note = (
        f"pass-through: the {what} clip ({clip.annexb.stat().st_size / 1e6:.1f} MB, key frame "
        "every 2 s, no B-frames), best of "
        f"{rounds} after a warm-up; x real time = clip seconds / wall seconds from calling "
        "produce() to the last fragment acknowledged PERSISTED by the emulator (a child "
        "process, data on disk); the stream is created and its data endpoint found before "
        "(once per process, not per frame). The pipe "
        "row writes the Annex-B stream into an os.pipe from a thread. Reference: `ffmpeg "
        "-framerate 30 -f h264 -i clip.h264 -c copy out.mkv`, process start included. "
        f"All runs (x real time): file {', '.join(f'{clip.seconds / t:.0f}' for t in file_s)}; "
        f"pipe {', '.join(f'{clip.seconds / t:.0f}' for t in pipe_s)}; ffmpeg "
        f"{', '.join(f'{clip.seconds / t:.0f}' for t in copy_s)}."
    )
    rows = []
    for label, seconds in (("file", file_s), ("pipe (stdin path)", pipe_s)):
        speed = clip.seconds / min(seconds)
        rows.append(
            Result(
                benchmark=f"producer pass-through from a {label} to the emulator, {what}",
                ours=f"{speed:,.0f}x real time",
                reference=reference,
                ratio=fmt_ratio(speed / reference_x) if reference_x else "-",
                goal=">= 200x real time",
                met=speed >= 200,
                notes=(note,),
            )
        )
    return rows


# ---------------------------------------------------------------------------------------
# CPU: packaging and upload against libx264


def encode_720p(seconds: float) -> tuple[float, list[EncodedFrame], TrackInfo]:
    """libx264 (the producer's Encoder settings) on ``seconds`` of 720p30 frames: the
    process CPU seconds of encoding alone, the frames and their track."""
    import av
    import numpy as np

    from kvs_toolkit.producer.encoder import Encoder
    from kvs_toolkit.samples import SampleSpec

    spec = SampleSpec(width=1280, height=720, fps=STREAM_FPS, seconds=seconds)
    distinct = 2 * STREAM_FPS  # one GOP of distinct pictures, then again
    texture = camera_texture(spec.width, spec.height, spec.fps)
    pictures = [
        av.VideoFrame.from_ndarray(camera_frame(spec, n, texture), format="bgr24").reformat(
            format="yuv420p"
        )
        for n in range(distinct)
    ]
    del texture
    encoder = Encoder(spec.width, spec.height, spec.fps, encoder="libx264")
    start_ms = int(time.time() * 1000)
    frames: list[EncodedFrame] = []
    with gc_paused():
        started = time.process_time()
        for n in range(spec.frame_count):
            picture = pictures[n % distinct]
            frames += encoder.encode_frame(picture, start_ms + round(n * 1000 / spec.fps))
        frames += encoder.flush()
        cpu = time.process_time() - started
    if len(frames) != spec.frame_count or not np.any([f.keyframe for f in frames]):
        raise RuntimeError(f"libx264 gave {len(frames)} of {spec.frame_count} frames")
    return cpu, frames, encoder.track()


def upload_cpu(frames: Sequence[EncodedFrame], track: TrackInfo, data_endpoint: str) -> float:
    """Process CPU seconds of fragmenting and uploading ``frames`` until all PERSISTED."""
    from kvs_toolkit.producer.uploader import Uploader

    async def main() -> UploadStats:
        uploader = Uploader(data_endpoint, "cpu", [track], credentials=_credentials())
        await uploader.start()
        for frame in frames:
            uploader.put_frame(frame)
            await asyncio.sleep(0)  # let the writer task stream as frames come
        return await uploader.close(60)

    with gc_paused():
        started = time.process_time()
        stats = asyncio.run(main())
        cpu = time.process_time() - started
    if not stats.all_acknowledged or stats.frames != len(frames):
        raise RuntimeError(f"upload: {stats.acked} of {stats.fragments} fragments acked")
    return cpu


def cpu_row(options: Options, emulator_url: str) -> Result:
    from kvs_toolkit.producer.run import resolve_data_endpoint

    seconds = 5.0 if options.quick else 10.0
    encode_s, frames, track = encode_720p(seconds)
    data_endpoint, _ = resolve_data_endpoint(
        "cpu",
        aws=AwsAccess(endpoint_url=emulator_url, credentials_override=_credentials()),
        create_stream=True,
    )
    upload_cpu(frames[: STREAM_FPS * 2], track, data_endpoint)  # warm-up: imports, connection
    shifted = [
        EncodedFrame(f.data, f.timestamp_ms + 60_000, f.keyframe, f.track_number) for f in frames
    ]
    upload_s = upload_cpu(shifted, track, data_endpoint)
    ratio = upload_s / encode_s
    payload = sum(len(f.data) for f in frames)
    return Result(
        benchmark=f"producer CPU: packaging + upload vs libx264 encoding, 720p30, {seconds:g} s",
        ours=f"{upload_s * 1000:,.0f} ms CPU",
        reference=f"{encode_s * 1000:,.0f} ms CPU (libx264)",
        ratio=f"{ratio:.1%}",
        goal="<= 5% of the encode",
        met=ratio <= 0.05,
        notes=(
            f"producer CPU: {len(frames)} frames of 1280x720 at 30 fps (moving boxes over a "
            "drifting noise texture, 60 distinct pictures repeated) encoded by the producer's "
            "Encoder (libx264, its low-latency settings, key frame every 2 s) from yuv420p "
            f"frames, {payload / 1e6:.1f} MB; then the same frames fragmented and uploaded by "
            "Uploader to the emulator (a child process) until every fragment is PERSISTED. "
            "Both are time.process_time() of this process (all its threads), after a warm-up "
            "upload.",
        ),
    )


# ---------------------------------------------------------------------------------------
# Memory of the whole `kvs produce` process


def _time_v(command: Sequence[str], stdin: Path | None, *, through_pipe: bool = False) -> int:
    """Max RSS (bytes) of ``command`` as ``/usr/bin/time -v`` reports it; ``stdin`` is
    redirected from the file, or written into a pipe as fast as it is read."""
    with contextlib.ExitStack() as stack:
        source: Any = subprocess.DEVNULL
        if stdin is not None:
            source = subprocess.PIPE if through_pipe else stack.enter_context(stdin.open("rb"))
        errors = stack.enter_context(tempfile.TemporaryFile("w+"))  # never a full pipe
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", *command],
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=child_environment(),
        )
        if process.stdin is not None and stdin is not None:
            with stdin.open("rb") as clip, contextlib.suppress(BrokenPipeError):
                shutil.copyfileobj(clip, process.stdin, 1 << 20)
                process.stdin.close()
        process.wait()
        errors.seek(0)
        stderr = errors.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {stderr}")
    return max_rss_of(stderr)


def mjpeg_720p_file() -> Path:
    """An MJPEG 720p30 file (10 s), so ``kvs produce FILE`` must encode it with libx264."""
    from kvs_toolkit.samples import SampleSpec, write_sample

    path = cache_dir() / "sample-mjpeg-1280x720p30-10s.mkv"
    if not path.exists():
        partial = path.with_suffix(".partial.mkv")
        write_sample(partial, SampleSpec(width=1280, height=720, fps=30, seconds=10, codec="mjpeg"))
        partial.replace(path)
    return path


# What each import costs in RSS, measured in a fresh interpreter each.
IMPORTS: Final = (
    ("numpy", "import numpy"),
    ("aiohttp + botocore", "import aiohttp, botocore.auth, botocore.credentials"),
    ("boto3", "import boto3"),
    ("av (PyAV)", "import av"),
    ("cv2 (OpenCV)", "import cv2"),
    ("boto3 + av + numpy", "import boto3, av, numpy"),
    (
        "`kvs produce -` parser (kvs_toolkit.cli)",
        "import kvs_toolkit.cli as c; c.build_parser('produce')",
    ),
)
_RSS_PROBE: Final = (
    "\nimport re, sys\n"
    "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "print(' '.join(m for m in ('av', 'cv2', 'numpy', 'boto3', 'aiohttp') if m in sys.modules))"
)


def import_costs() -> tuple[int, list[tuple[str, int, str]]]:
    """RSS of a bare interpreter, and per import: RSS added and heavy modules loaded."""

    def probe(statement: str) -> tuple[int, str]:
        out = subprocess.run(
            [sys.executable, "-c", statement + _RSS_PROBE],
            capture_output=True,
            text=True,
            check=True,
            env=child_environment(),
        ).stdout.splitlines()
        return int(out[0]) * 1024, out[1] if len(out) > 1 else ""

    bare, _ = probe("pass")
    return bare, [(label, *probe(statement)) for label, statement in IMPORTS]


def memory_rows(clip: EncodedClip, emulator_url: str) -> list[Result]:
    kvs = kvs_command()
    common_args = ["--endpoint-url", emulator_url, "--create-stream"]
    stdin_command = [*kvs, "produce", "-", *common_args, "--fps", str(clip.fps)]
    stdin_rss = _time_v([*stdin_command, "--stream", "rss-stdin"], clip.annexb)
    # the same bytes through a pipe: taken for a camera, read as fast as they come, so
    # everything not yet acknowledged waits in the buffer (the worst case, for reference)
    pipe_rss = _time_v([*stdin_command, "--stream", "rss-pipe"], clip.annexb, through_pipe=True)
    encode_rss = _time_v(
        [*kvs, "produce", str(mjpeg_720p_file()), "--stream", "rss-encode", *common_args,
         "--no-realtime", "--no-audio", "--encoder", "libx264"],
        None,
    )  # fmt: skip
    bare, costs = import_costs()
    cost_text = "; ".join(
        f"{label} +{fmt_mib(rss - bare)}" + (f" (loads {mods})" if mods else "")
        for label, rss, mods in costs
    )
    note = (
        "producer memory: maximum RSS of the whole `kvs produce` process from `/usr/bin/time "
        "-v`: the 1080p30 clip on stdin (`--fps 30`, redirected from the file, which makes it "
        "a recording read at the upload's pace; a camera's pipe is read at the camera's "
        "rate, see the soak row's peak), the same bytes written into a pipe as fast as "
        "they are read (taken for a camera: the backlog waits in the buffer), and a 10 s "
        "MJPEG 720p30 file re-encoded with libx264 (`--no-realtime --encoder libx264`). "
        f"What imports cost (RSS over a bare interpreter's {fmt_mib(bare)}, each in a fresh "
        f"process): {cost_text}."
    )
    return [
        Result(
            benchmark=f"producer memory: kvs produce - ({clip.width}x{clip.height}p{clip.fps} "
            "pass-through)",
            ours=f"{fmt_mib(stdin_rss)} max RSS",
            reference="-",
            ratio="-",
            goal="< 80 MB",
            met=stdin_rss < 80 * 2**20,
            notes=(note,),
        ),
        Result(
            benchmark=f"producer memory: kvs produce - from a pipe at full speed ({clip.width}x"
            f"{clip.height}p{clip.fps} taken for a live camera)",
            ours=f"{fmt_mib(pipe_rss)} max RSS",
            reference=f"{fmt_mib(stdin_rss)} (from the file)",
            ratio=fmt_ratio(pipe_rss / stdin_rss),
            goal="info (a camera cannot send 200x real time)",
            met=None,
            notes=(note,),
        ),
        Result(
            benchmark="producer memory: kvs produce FILE (encoding 720p30 with libx264)",
            ours=f"{fmt_mib(encode_rss)} max RSS",
            reference="-",
            ratio="-",
            goal="< 150 MB",
            met=encode_rss < 150 * 2**20,
            notes=(note,),
        ),
    ]


# ---------------------------------------------------------------------------------------
# Frame-in to PERSISTED latency


def latency_row(options: Options, clip: EncodedClip, data_endpoint: str) -> Result:
    """A camera-paced pipe into AnnexBSource (arrival clock) and the Uploader; for each
    fragment, its first frame's write into the pipe to its PERSISTED ack."""
    from kvs_toolkit.producer.sources import AnnexBSource
    from kvs_toolkit.producer.uploader import Uploader

    seconds = 6.0 if options.quick else 20.0
    units = clip.units()
    keyframe_writes: list[float] = []  # wall time each key frame went into the pipe
    gop = 2 * clip.fps

    class _Recording(io.RawIOBase):
        """The pipe's write end, noting when each key frame goes in."""

        def __init__(self, fd: int) -> None:
            self.sink = os.fdopen(fd, "wb", buffering=0)
            self.count = 0

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            if self.count % gop == 0:
                keyframe_writes.append(time.time())
            self.count += 1
            self.sink.write(data)
            return len(data)

        def close(self) -> None:
            self.sink.close()
            super().close()

    persisted: list[tuple[int, float]] = []

    def on_ack(ack: Ack) -> None:
        if ack.event_type.value == "PERSISTED" and ack.fragment_timecode is not None:
            persisted.append((ack.fragment_timecode, time.time()))

    read_fd, write_fd = os.pipe()
    stop = threading.Event()
    feeder = threading.Thread(
        target=feed_paced,
        args=(_Recording(write_fd), units, clip.fps, seconds, stop),
        daemon=True,
    )

    async def main() -> UploadStats:
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[EncodedFrame | None] = asyncio.Queue(128)
        with os.fdopen(read_fd, "rb") as pipe:
            source = AnnexBSource(pipe)

            def read() -> None:
                for frame in source:
                    asyncio.run_coroutine_threadsafe(frames.put(frame), loop).result()
                asyncio.run_coroutine_threadsafe(frames.put(None), loop).result()

            reader = loop.run_in_executor(None, read)
            feeder.start()
            first = await frames.get()
            assert first is not None
            uploader = Uploader(
                data_endpoint, "latency", source.tracks, credentials=_credentials(), on_ack=on_ack
            )
            await uploader.start()
            item: EncodedFrame | None = first
            while item is not None:
                uploader.put_frame(item)
                item = await frames.get()
            await reader
            return await uploader.close(30)

    try:
        stats = asyncio.run(main())
    finally:
        stop.set()
        feeder.join(5)
    if not stats.all_acknowledged or len(persisted) != stats.fragments:
        raise RuntimeError(f"latency: {len(persisted)} PERSISTED of {stats.fragments} fragments")
    latencies = []
    for (_, acked_at), written_at in zip(sorted(persisted), keyframe_writes, strict=False):
        latencies.append((acked_at - written_at) * 1000)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    fragment_ms = 2000
    return Result(
        benchmark=f"producer latency: frame in to PERSISTED ack, 2 s fragments, {seconds:g} s",
        ours=f"p50 {p50:,.0f} ms, p99 {p99:,.0f} ms",
        reference=f"{fragment_ms:,} ms (fragment duration)",
        ratio=f"+{p99 - fragment_ms:,.0f} ms (p99)",
        goal=f"< {fragment_ms + 100:,} ms",
        met=p99 < fragment_ms + 100,
        notes=(
            f"producer latency: the 1080p30 clip written into a pipe at 30 frames/s for "
            f"{seconds:g} s, read by AnnexBSource (arrival clock) and sent by the Uploader "
            "(the source in a thread, as produce() runs it) to the emulator; per fragment, "
            "from the wall time its key frame was written into the pipe to the PERSISTED ack "
            f"for it; {len(latencies)} fragments (with this few, p99 is the worst one). A "
            "fragment cannot be PERSISTED before its last frame arrives, 2 s after its first.",
        ),
    )


def run(options: Options | None = None) -> list[Result]:
    options = options or Options()
    clip = encoded_clip()
    mjpeg_720p_file()
    with (
        tempfile.TemporaryDirectory() as folder,
        EmulatorProcess(Path(folder) / "data") as emulator,
    ):
        from kvs_toolkit.producer.run import resolve_data_endpoint

        url = emulator.endpoint_url
        rows = pass_through_rows(options, clip, url, Path(folder))
        rows.append(cpu_row(options, url))
        rows += memory_rows(clip, url)
        latency_endpoint, _ = resolve_data_endpoint(
            "latency",
            aws=AwsAccess(endpoint_url=url, credentials_override=_credentials()),
            create_stream=True,
        )
        rows.append(latency_row(options, clip, latency_endpoint))
        rows.append(soak_row(options, clip, url))
    return rows
