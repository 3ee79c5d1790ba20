"""Consumer fleets: live streams per core (threads and processes), and failover time.

Everything runs as separate processes on this machine: the emulator (``kvs emulator``),
one producer process, and the consumers being measured, one at a time against the
same live streams.

* **Producers.** One process sends N streams with the load generator of
  :mod:`benchmarks.emulator_load` (``produce``: real-time pacing, ABSOLUTE wall-clock
  timecodes, start phases spread evenly over one fragment period, as independent
  cameras are): each fragment is the same real 1080p30 H.264 GOP of 2 s at about
  2 Mbit/s (x264, encoded here once), so a 40-stream run costs one encode, not 40.
* **Cores.** On a machine with 2 cores or more the consumer being measured is pinned
  to core 0 (``os.sched_setaffinity``; its decode processes inherit it) and the
  emulator and producers to the other cores: "streams per core" is measured on one
  core, not extrapolated. The machine is shared, so others' work can land on core 0
  too; the notes give each consumer's CPU.
* **Streams per core** (``--keyframes-only --model motion``, the issue's goal): ours,
  a :class:`~kvs_toolkit.consumer.fleet.FleetWorker` on the N streams decoding key
  frames to BGR and running one :class:`~kvs_toolkit.analysis.motion.MotionDetector`
  per stream (what ``kvs fleet run --keyframes-only --model motion`` does), once with
  each decode pool (threads, processes; pool size = cores). Reference: a plain script
  that reads each stream with boto3 GetMedia in one thread per stream, cuts the
  payload into its per-fragment MKV documents at the EBML magic, decodes each with
  PyAV (``skip_frame = "NONKEY"``) and runs the same motion detector. Each consumer
  reports its CPU (its process and its children, /proc) over the same window after a
  warm-up, and the delay from each fragment's arrival (its last byte parsed; the
  emulator sends a fragment once it is complete, so that is also its key frame's
  arrival) to its key frame having been analysed: p50, p99, max, and the count later
  than 1 s. Goal: N >= 40 streams on the one core with none late.
* **720p --fps 1**: the same at 720p with every frame decoded and one a second kept
  (report only).
* **Failover.** Two ``kvs fleet run`` workers share 4 of the live streams through
  leases in a moto DynamoDB server (its own process); the one holding the most
  streams is SIGKILLed, and the time from the kill to the first frame its successor
  wrote for one of its streams is measured (goal: lease timeout + 2 s).

``KVS_BENCH_FLEET_STREAMS`` sets N (default 40; 6 with ``--quick``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import boto3
import numpy as np

from benchmarks.common import Options, Result, fmt_ratio
from benchmarks.emulator_load import StreamLog, cpu_seconds, produce, server_process

if TYPE_CHECKING:
    from kvs_toolkit.consumer.frames import DecodedFrame
    from kvs_toolkit.mkv import TrackInfo

ACCESS_KEY: Final = "AKIDBENCH"
SECRET: Final = "bench-secret"
REGION: Final = "us-east-1"
FPS, GOP_S = 30, 2
BITRATE: Final = 2_000_000
LEASE_S: Final = 6.0
LATE_MS: Final = 1000.0
CONSUMER_CORE: Final = 0


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_ENDPOINT_URL") and k not in ("AWS_PROFILE",)
    }
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION=REGION,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), *sys.path]),
    )
    return env


def _other_cores() -> set[int] | None:
    """The cores the emulator and producers run on (None: too few cores to split)."""
    cores = os.sched_getaffinity(0)
    others = cores - {CONSUMER_CORE}
    return others if CONSUMER_CORE in cores and others else None


def encode_sample(path: Path, seconds: float, width: int, height: int) -> Path:
    """H.264 at 30 fps and about 2 Mbit/s, a key frame every 2 s: moving noise over a
    gradient, which keeps x264 at its bitrate as camera detail would."""
    import av

    rng = np.random.default_rng(7)
    noise = rng.integers(0, 255, (height // 4, width // 4), dtype=np.uint8)
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = BITRATE
        stream.options = {"preset": "ultrafast", "g": str(FPS * GOP_S), "keyint_min": "1"}
        for n in range(int(seconds * FPS)):
            luma = ramp.copy()
            block = np.roll(noise, n * 7, axis=1)
            luma[: block.shape[0] * 4 : 4, : block.shape[1] * 4 : 4] = block
            frame = av.VideoFrame.from_ndarray(
                np.stack([luma, luma, luma], axis=-1), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def load_gop(path: Path) -> tuple[TrackInfo, list[bytes]]:
    """The track (avcC from the file) and the AVCC payloads of the file's first GOP."""
    import av

    from kvs_toolkit.mkv import TrackInfo

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        track = TrackInfo(
            1,
            "V_MPEG4/ISO/AVC",
            bytes(video.codec_context.extradata or b""),
            width=video.codec_context.width,
            height=video.codec_context.height,
        )
        frames: list[bytes] = []
        for packet in container.demux(video):
            if packet.size == 0:
                continue
            if packet.is_keyframe and frames:
                break
            frames.append(bytes(packet))
    return track, frames


def producers_main(url: str, sample: str, names: Sequence[str]) -> None:
    """The producer process: every stream sends the sample's GOP as one 2 s fragment
    after another, in real time, phases spread over the fragment period (until it is
    terminated)."""
    track, frames = load_gop(Path(sample))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.5
        await asyncio.gather(
            *(
                produce(url, StreamLog(name), frames, start + i * GOP_S / len(names), 100_000,
                        track=track, fps=FPS)
                for i, name in enumerate(names)
            )
        )  # fmt: skip

    asyncio.run(main())


def _start_producers(url: str, sample: Path, names: list[str], root: Path) -> Any:
    with open(root / "producers.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fleet_streams", "--produce", url, str(sample),
             *names],
            env=_env(), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    cores = _other_cores()
    if cores is not None:
        os.sched_setaffinity(process.pid, cores)
    return process


# --- the consumers ----------------------------------------------------------------------
def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants alive now (/proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo += children.get(current, [])
    return total


@dataclass(frozen=True)
class MotionRecords:
    """Per stream, what ``kvs fleet run --model motion`` does with a frame: a motion
    detector, and the frame's JSON record with its detections (the small result that
    comes back from a decode process). The detector's warm-up is 0 (the CLI's is 25
    frames, 50 s of key frames): every key frame of the window goes through detection."""

    def __call__(self, stream: str) -> Callable[[DecodedFrame], str]:
        from kvs_toolkit.analysis.motion import MotionDetector
        from kvs_toolkit.consumer.pipeline import frame_record

        detector = MotionDetector(warmup=0)

        def handle(frame: DecodedFrame) -> str:
            detections = detector.detect([frame])[0]
            record = {**frame_record(frame), "stream_name": stream,
                      "detections": [d.to_json() for d in detections]}  # fmt: skip
            return json.dumps(record, separators=(",", ":"))

        return handle


def _delays(lags_ms: Sequence[float]) -> dict[str, Any]:
    if not lags_ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "late": 0, "analysed": 0}
    p50, p99 = np.percentile(np.asarray(lags_ms), [50, 99])
    return {
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "max_ms": max(lags_ms),
        "late": sum(1 for lag in lags_ms if lag > LATE_MS),
        "analysed": len(lags_ms),
    }


def _warm_up(started: float, warmup: float, delivered: Callable[[int], bool]) -> float | None:
    """Wait until every stream delivered 2 fragments and caught up (steady state:
    connections made, processes up, decoders and detectors built, no backlog from the
    start), and ``warmup`` seconds at least.
    Returns how long it took until every stream had delivered its first."""
    first: float | None = None
    deadline = started + warmup + 60
    while time.monotonic() < deadline:
        if first is None and delivered(1):
            first = time.monotonic() - started
        if delivered(2) and time.monotonic() - started >= warmup:
            break
        time.sleep(0.05)
    return first


def consume_ours(
    url: str, names: Sequence[str], *, warmup: float, window: float, mode: str, pool: str
) -> dict[str, Any]:
    from kvs_toolkit.aws import AwsAccess
    from kvs_toolkit.consumer.fleet import FleetWorker, LagHistogram

    records = [0]

    def on_result(line: str, stream: str) -> None:
        records[0] += 1

    sampling: dict[str, Any] = {"keyframes_only": True} if mode == "key" else {"fps": 1.0}
    worker = FleetWorker(
        names, handler_factory=MotionRecords(), on_result=on_result,
        aws=AwsAccess(endpoint_url=url), start_at="now", decode_pool=pool, **sampling,
    )  # fmt: skip
    started = time.monotonic()
    worker.start()

    def delivered(least: int) -> bool:
        stats = worker.stats()
        if not all(name in stats and stats[name].fragments >= least for name in names):
            return False
        # Caught up: a key frame is the first frame of its 2 s fragment, so it is about
        # GOP_S old when its fragment is complete; more means a backlog is draining.
        lags = [stats[name].producer_lag_ms for name in names]
        return least < 2 or all(lag is not None and lag < GOP_S * 1000 + 500 for lag in lags)

    startup = _warm_up(started, warmup, delivered)
    worker.lags = LagHistogram()  # the window's fragments only
    cpu0, wall0, first = tree_cpu_seconds(os.getpid()), time.monotonic(), records[0]
    time.sleep(window)
    cpu, wall = tree_cpu_seconds(os.getpid()) - cpu0, time.monotonic() - wall0
    lags, frames = worker.lags, records[0] - first
    worker.stop()
    late = sum(lags.counts[int(LATE_MS / lags.BIN_MS) :])
    return {
        "cores": cpu / wall,
        "startup_s": startup,
        "frames": frames,
        "analysed": lags.count,
        "p50_ms": lags.percentile(50),
        "p99_ms": lags.percentile(99),
        "max_ms": lags.max_ms,
        "late": late,
    }


def consume_reference(
    url: str, names: Sequence[str], *, warmup: float, window: float, mode: str, pool: str
) -> dict[str, Any]:
    """One thread per stream: boto3 GetMedia, the payload cut at each EBML header
    (FFmpeg's Matroska demuxer stops at the end of the first document), PyAV, the same
    motion detector."""
    import io

    import av

    from kvs_toolkit.analysis.motion import MotionDetector

    magic = b"\x1a\x45\xdf\xa3"
    frames, lock = [0], threading.Lock()
    documents: dict[str, int] = {}
    lags: list[float] = []
    stop, measuring = threading.Event(), threading.Event()

    def decode(document: bytes, kept: set[int], detector: MotionDetector, arrived: float) -> None:
        with av.open(io.BytesIO(document), format="matroska") as container:
            stream = container.streams.video[0]
            if mode == "key":
                stream.codec_context.skip_frame = "NONKEY"
            for frame in container.decode(stream):
                second = int(frame.time or 0)
                if mode == "key" or second not in kept:  # --fps 1: the first of each second
                    kept.add(second)
                    detector.detect_image(frame.to_ndarray(format="bgr24"), "bgr24",
                                          timestamp_s=frame.time)  # fmt: skip
                    with lock:
                        frames[0] += 1
        with lock:
            if measuring.is_set():
                lags.append((time.monotonic() - arrived) * 1000)

    def read(name: str) -> None:
        control = boto3.client("kinesisvideo", endpoint_url=url, region_name=REGION)
        endpoint = control.get_data_endpoint(StreamName=name, APIName="GET_MEDIA")
        media = boto3.client(
            "kinesis-video-media", endpoint_url=endpoint["DataEndpoint"], region_name=REGION
        )
        body = media.get_media(StreamName=name, StartSelector={"StartSelectorType": "NOW"})
        payload = body["Payload"]
        buffer, detector = b"", MotionDetector(warmup=0)
        kept: set[int] = set()
        while not stop.is_set():
            chunk = payload.read(16384)
            if not chunk:
                return
            buffer += chunk
            start = buffer.find(magic)
            end = buffer.find(magic, start + 4)
            while start >= 0 and end > start:
                decode(buffer[start:end], kept, detector, time.monotonic())
                with lock:
                    documents[name] = documents.get(name, 0) + 1
                buffer = buffer[end:]
                start, end = 0, buffer.find(magic, 4)

    started = time.monotonic()
    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()

    def delivered(least: int) -> bool:
        with lock:
            return all(documents.get(name, 0) >= least for name in names)

    startup = _warm_up(started, warmup, delivered)
    measuring.set()
    cpu0, wall0, first = tree_cpu_seconds(os.getpid()), time.monotonic(), frames[0]
    time.sleep(window)
    cpu, wall = tree_cpu_seconds(os.getpid()) - cpu0, time.monotonic() - wall0
    stop.set()
    with lock:
        done = list(lags)
    return {"cores": cpu / wall, "startup_s": startup, "frames": frames[0] - first, **_delays(done)}


_CONSUMERS: Final = {"ours": consume_ours, "reference": consume_reference}


def _measure(
    which: str, url: str, mode: str, pool: str, names: list[str], *, warmup: float,
    window: float, root: Path,
) -> dict[str, Any]:  # fmt: skip
    """Run a consumer in its own process (pinned to the consumer core when the machine
    has cores to spare); it reports its CPU and delays over ``window`` after ``warmup``."""
    pinning = os.environ.get("KVS_BENCH_FLEET_PIN", "1") != "0"
    pin = "pin" if pinning and _other_cores() is not None else "nopin"
    with open(root / "consumer.log", "ab") as log:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.fleet_streams", "--consume", which, pin, url,
             str(warmup), str(window), mode, pool, *names],
            env=_env(), stdout=subprocess.PIPE, stderr=log, text=True,
            timeout=warmup + window + 120, check=False,
        )  # fmt: skip
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"consumer failed ({done.returncode}), see {root / 'consumer.log'}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["pinned"] = pin == "pin"
    return result


def _consumer_main(argv: Sequence[str]) -> None:
    which, pin, url, warmup, window, mode, pool, *names = argv
    if pin == "pin":
        os.sched_setaffinity(0, {CONSUMER_CORE})  # threads and decode processes inherit it
    result = _CONSUMERS[which](
        url, names, warmup=float(warmup), window=float(window), mode=mode, pool=pool
    )
    print(json.dumps(result), flush=True)
    # Not the interpreter's shutdown: daemon threads still reading (the reference's)
    # can abort it while they hold stdio locks.
    os._exit(0)


def _kvs(url: str) -> Any:
    return boto3.client(
        "kinesisvideo",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )


def _read_streams(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line)["stream_name"] for line in lines if line.endswith("\n")]


def _failover(url: str, names: list[str], root: Path) -> tuple[float, float]:
    """Seconds from SIGKILL of a worker to its successor's first frame of its streams."""
    from kvs_toolkit.consumer.checkpoint import DynamoDBCheckpointStore

    moto_code = textwrap.dedent("""
        import sys
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import run_simple
        run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
                   threaded=False)
    """)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dynamodb_url = f"http://127.0.0.1:{port}"
    moto_log = open(root / "moto.log", "wb")  # noqa: SIM115 - closed below
    moto = subprocess.Popen([sys.executable, "-c", moto_code, str(port)], stdout=moto_log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=dynamodb_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                DynamoDBCheckpointStore.create_table(client, "fleet-bench")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        outputs = {name: root / f"{name}.jsonl" for name in ("w1", "w2")}
        for name, output in outputs.items():
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "kvs_toolkit.cli", "fleet", "run", "--streams", *names,
                 "--endpoint-url", url, "--lease-table", "dynamodb:fleet-bench",
                 "--dynamodb-endpoint-url", dynamodb_url, "--worker-id", name,
                 "--lease-duration", str(LEASE_S), "--keyframes-only", "--format", "gray",
                 "--out", str(output), "--no-progress"],
                env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        store = DynamoDBCheckpointStore("fleet-bench", client=client)

        def held() -> dict[str, list[str]]:
            now = time.time()
            by_owner: dict[str, list[str]] = {"w1": [], "w2": []}
            for lease in store.table_state().leases.values():
                if lease.owner and lease.held_at(now):
                    by_owner.setdefault(lease.owner, []).append(lease.stream)
            return by_owner

        deadline = time.monotonic() + 60
        while True:
            split = held()
            flowing = all(_read_streams(outputs[n]) for n in outputs)
            if all(split.values()) and sum(map(len, split.values())) == len(names) and flowing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not share the streams: {split}")
            time.sleep(0.1)
        victim = max(split, key=lambda n: len(split[n]))
        successor = "w2" if victim == "w1" else "w1"
        orphans = set(split[victim])
        seen = len(_read_streams(outputs[successor]))
        workers[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        workers[victim].wait(10)
        deadline = killed + LEASE_S * 4
        while not orphans & set(_read_streams(outputs[successor])[seen:]):
            if time.monotonic() > deadline:
                raise RuntimeError("the successor delivered nothing of the dead worker's streams")
            time.sleep(0.02)
        return time.monotonic() - killed, LEASE_S
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        moto.terminate()
        moto.wait(10)
        moto_log.close()


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _delay_text(run: dict[str, Any]) -> str:
    return (
        f"arrival-to-analysis p50 {_fmt_ms(run['p50_ms'])} / p99 {_fmt_ms(run['p99_ms'])} / "
        f"max {_fmt_ms(run['max_ms'])} ms over {run['analysed']} fragments, "
        f"{run['late']} later than 1 s"
    )


def _where(run: dict[str, Any]) -> str:
    if run["pinned"]:
        return f"pinned to core {CONSUMER_CORE} (emulator and producers on the other cores)"
    if _other_cores() is None:
        return "not pinned (too few cores to split)"
    return "on every core (KVS_BENCH_FLEET_PIN=0; emulator and producers on the others)"


def _key_rows(
    count: int, window: float, threads: dict[str, Any], processes: dict[str, Any],
    reference: dict[str, Any],
) -> list[Result]:  # fmt: skip
    due = count * window / GOP_S
    rows = []
    ratio = processes["cores"] / max(threads["cores"], 1e-6)
    if abs(ratio - 1) < 0.05:  # CPU seconds over a 10 s window move more than that
        verdict = f"no winner: the same CPU within 5% (processes/threads {ratio:.2f}x)"
    else:
        winner = "threads" if ratio > 1 else "processes"
        verdict = (
            f"{winner} win: {min(ratio, 1 / ratio):.2f}x the other's CPU for the same key "
            f"frames (processes/threads {ratio:.2f}x)"
        )
    for pool, run in (("threads", threads), ("processes", processes)):
        per_core = count / max(run["cores"], 1e-6)
        in_time = run["late"] == 0 and run["analysed"] >= 0.8 * due
        other = processes if pool == "threads" else threads
        rows.append(
            Result(
                benchmark=f"fleet: {count} x 1080p30{' on one core' if run['pinned'] else ''}"
                f", --keyframes-only --model motion, {pool} pool",
                ours=f"{per_core:.0f} streams/core ({run['cores']:.2f} cores)",
                reference=f"{count / reference['cores']:.0f} ({reference['cores']:.2f} cores, "
                "thread/stream PyAV)",
                ratio=fmt_ratio(reference["cores"] / max(run["cores"], 1e-6)),
                goal=">= 40 streams on 1 core, key frames within 1 s",
                met=count >= 40 and in_time and run["cores"] <= 1.0,
                notes=(
                    f"fleet 1080p {pool}: {count} live 1080p30 ~2 Mbit/s streams (GOP {GOP_S} "
                    f"s, phases spread) from the emulator; consumer {_where(run)}; FleetWorker "
                    f"decode_pool={pool!r}, key frames to BGR, a motion detector per stream, "
                    f"JSON record per frame; CPU of the consumer process and its children "
                    f"over {window:.0f} s after a warm-up: {run['cores']:.2f} cores (the "
                    f"{'processes' if pool == 'threads' else 'threads'} pool "
                    f"{other['cores']:.2f}; {verdict}); "
                    f"{run['frames']} key frames analysed (about {due:.0f} due); "
                    f"{_delay_text(run)}; startup: every stream's first key frame analysed "
                    f"{_fmt_s(run['startup_s'])} after the worker started (the window starts "
                    "once every stream delivered 2 fragments with no backlog). Reference "
                    "(thread per stream, GetMedia + PyAV + "
                    f"the same detector, same pinning): {reference['frames']} key frames, "
                    f"{_delay_text(reference)} (from the document being cut, which waits for "
                    "the next fragment's first bytes); ratio = reference CPU / ours",
                ),
            )
        )
    return rows


def _fps_row(count: int, window: float, ours: dict[str, Any], reference: dict[str, Any]) -> Result:
    per_core = count / max(ours["cores"], 1e-6)
    return Result(
        benchmark=f"fleet: {count} x 720p30 --fps 1 --model motion",
        ours=f"{per_core:.0f} streams/core ({ours['cores']:.2f} cores)",
        reference=f"{count / reference['cores']:.0f} ({reference['cores']:.2f} cores, "
        "thread/stream PyAV)",
        ratio=fmt_ratio(reference["cores"] / max(ours["cores"], 1e-6)),
        goal="report",
        notes=(
            f"fleet 720p --fps 1: {count} live 720p30 ~2 Mbit/s streams, every frame decoded, "
            f"one a second converted to BGR and given to the motion detector; consumer "
            f"{_where(ours)}, default pool; CPU over {window:.0f} s: ours {ours['cores']:.2f}, "
            f"reference {reference['cores']:.2f} cores; ours {ours['frames']} frames "
            f"(reference {reference['frames']}); {_delay_text(ours)}",
        ),
    )


def run(options: Options | None = None) -> list[Result]:
    from kvs_toolkit.consumer.fleet import DEFAULT_DECODE_POOL

    options = options or Options()
    count = int(os.environ.get("KVS_BENCH_FLEET_STREAMS", "6" if options.quick else "40"))
    count_720 = max(1, count // 4)
    warmup, window = (4.0, 6.0) if options.quick else (5.0, 10.0)
    names = [f"bench-{n:02d}" for n in range(count)]
    names_720 = [f"small-{n:02d}" for n in range(count_720)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as folder:
        root = Path(folder)
        argv = [sys.executable, "-m", "kvs_toolkit.cli", "emulator", "--port", "0"]
        with server_process(argv, root / "emulator.log") as emulator:
            cores = _other_cores()
            if cores is not None:
                os.sched_setaffinity(emulator.pid, cores)
            control = _kvs(emulator.url)
            for name in names + names_720:
                control.create_stream(StreamName=name, DataRetentionInHours=1)
            sample = encode_sample(root / "1080p.mkv", GOP_S, 1920, 1080)
            producers = _start_producers(emulator.url, sample, names, root)
            try:
                time.sleep(GOP_S + 1)
                measured = {
                    key: _measure(which, emulator.url, "key", pool, names, warmup=warmup,
                                  window=window, root=root)
                    for key, which, pool in (("threads", "ours", "threads"),
                                             ("processes", "ours", "processes"),
                                             ("reference", "reference", "threads"))
                }  # fmt: skip
                results += _key_rows(
                    count, window, measured["threads"], measured["processes"],
                    measured["reference"],
                )  # fmt: skip
                failover, lease = _failover(emulator.url, names[:4], root)
            finally:
                producers.terminate()
                producers.wait(20)
            sample = encode_sample(root / "720p.mkv", GOP_S, 1280, 720)
            producers = _start_producers(emulator.url, sample, names_720, root)
            try:
                time.sleep(GOP_S + 1)
                ours, reference = (
                    _measure(which, emulator.url, "fps1", DEFAULT_DECODE_POOL, names_720,
                             warmup=warmup, window=window, root=root)
                    for which in ("ours", "reference")
                )  # fmt: skip
                results.append(_fps_row(count_720, window, ours, reference))
            finally:
                producers.terminate()
                producers.wait(20)
    results.append(
        Result(
            benchmark="fleet: failover, SIGKILL to successor's first frame",
            ours=f"{failover:.1f} s",
            reference=f"lease {lease:.0f} s",
            ratio=fmt_ratio(failover / lease),
            goal="<= lease + 2 s",
            met=failover <= lease + 2,
            notes=(
                "fleet failover: 2 `kvs fleet run` workers, 4 live streams, leases in moto "
                f"(own process, one thread), --lease-duration {lease:.0f}; time from SIGKILL "
                "to the first line the successor wrote for a stream of the dead worker",
            ),
        )
    )
    return results


if __name__ == "__main__":
    if sys.argv[1] == "--produce":
        producers_main(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "--consume":
        _consumer_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m benchmarks.fleet_streams --produce|--consume ...")
