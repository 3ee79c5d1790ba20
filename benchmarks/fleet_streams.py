"""Consumer fleets: live streams per core, and failover time.

Everything runs as separate processes on this machine: the emulator (``kvs emulator``),
one producer process uploading a 1080p30 H.264 file at about 2 Mbit/s to N streams in
real time (pass-through, looped), and the consumers being measured, one at a time
against the same live streams.

* **Streams per core.** Ours: a :class:`~kvs_toolkit.consumer.fleet.FleetWorker` on
  all N streams with ``keyframes_only=True``, ``format="gray"`` and a callback that
  does nothing with the frame (model-free), decode pool of one thread per core.
  Reference: a plain script that reads each stream with boto3 GetMedia in one thread
  per stream, cuts the payload into its per-fragment MKV documents at the EBML magic,
  and decodes each with PyAV (``skip_frame = "NONKEY"``): FFmpeg's Matroska demuxer
  stops at the end of the first document, so it cannot read a GetMedia payload
  whole. Each side's CPU (its process, /proc) over the same window gives
  ``N / cores used`` streams per core; the ratio is ours over the reference. Ours
  also reports the largest delay from a fragment's arrival to its key frame having
  been handed to the callback (the goal: within 1 s).
* **Failover.** Two ``kvs fleet run`` workers share 4 of the live streams through
  leases in a moto DynamoDB server (its own process); the one holding the most
  streams is SIGKILLed, and the time from the kill to the first frame its successor
  wrote for one of its streams is measured (goal: lease timeout + 2 s).

``KVS_BENCH_FLEET_STREAMS`` sets N (default 8; 4 with ``--quick``): the issue's 40
streams at 1080p need about 80 Mbit/s through the emulator, which a shared 2-core
machine cannot carry next to the consumers being measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Final

import boto3
import numpy as np

from benchmarks.common import Options, Result, fmt_ratio
from benchmarks.emulator_load import server_process

ACCESS_KEY: Final = "AKIDBENCH"
SECRET: Final = "bench-secret"
REGION: Final = "us-east-1"
FPS, GOP_S = 30, 2
BITRATE: Final = 2_000_000
LEASE_S: Final = 6.0


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


_PRODUCERS: Final = """
import asyncio, sys
from botocore.credentials import Credentials
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source

url, sample, names = sys.argv[1], sys.argv[2], sys.argv[3:]

async def one(name):
    source = open_source(sample, SourceOptions(realtime=True, loop=True, audio=False))
    await produce(source, url, name, credentials=Credentials({key!r}, {secret!r}),
                  fragment_duration_ms=2000)

async def main():
    await asyncio.gather(*(one(n) for n in names))

asyncio.run(main())
"""

_OURS: Final = """
import json, sys, threading, time
from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.fleet import FleetWorker

url, seconds, mode, names = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
keyframes = [0]

def on_frame(frame, stream):
    keyframes[0] += 1

sampling = dict(keyframes_only=True) if mode == "key" else dict(fps=1.0)
worker = FleetWorker(names, on_frame=on_frame, aws=AwsAccess(endpoint_url=url),
                     format="gray", start_at="now", **sampling)
worker.start()
time.sleep(seconds)
cpu0, wall0, first = time.process_time(), time.monotonic(), keyframes[0]
time.sleep(seconds)
cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
stats = worker.stats()
worker.stop()
print(json.dumps({{
    "cores": cpu / wall,
    "keyframes": keyframes[0] - first,
    "late": sum(s.late_fragments for s in stats.values()),
    "max_lag_ms": max((s.max_delivery_lag_ms for s in stats.values()), default=0.0),
    "fragments": sum(s.fragments for s in stats.values()),
}}), flush=True)
"""

_REFERENCE: Final = """
import io, json, sys, threading, time
import av, boto3

url, seconds, mode, names = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
MAGIC = b"\\x1a\\x45\\xdf\\xa3"  # EBML header: every GetMedia fragment is one document
keyframes = [0]
lock = threading.Lock()
stop = threading.Event()

def decode(document, kept):
    with av.open(io.BytesIO(document), format="matroska") as container:
        stream = container.streams.video[0]
        if mode == "key":
            stream.codec_context.skip_frame = "NONKEY"
        for frame in container.decode(stream):
            second = int(frame.time)
            if mode == "key" or second not in kept:  # --fps 1: the first of each second
                kept.add(second)
                frame.to_ndarray(format="gray")
                with lock:
                    keyframes[0] += 1

def read(name):
    control = boto3.client("kinesisvideo", endpoint_url=url, region_name="us-east-1")
    endpoint = control.get_data_endpoint(StreamName=name, APIName="GET_MEDIA")["DataEndpoint"]
    media = boto3.client("kinesis-video-media", endpoint_url=endpoint, region_name="us-east-1")
    payload = media.get_media(StreamName=name, StartSelector={{"StartSelectorType": "NOW"}})
    body = payload["Payload"]
    buffer = b""
    kept = set()
    while not stop.is_set():
        chunk = body.read(16384)
        if not chunk:
            return
        buffer += chunk
        start = buffer.find(MAGIC)
        end = buffer.find(MAGIC, start + 4)
        while start >= 0 and end > start:
            decode(buffer[start:end], kept)
            buffer = buffer[end:]
            start, end = 0, buffer.find(MAGIC, 4)

threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in names]
for thread in threads:
    thread.start()
time.sleep(seconds)
cpu0, wall0, first = time.process_time(), time.monotonic(), keyframes[0]
time.sleep(seconds)
cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
stop.set()
print(json.dumps({{"cores": cpu / wall, "keyframes": keyframes[0] - first}}), flush=True)
"""


def _measure(
    script: str, url: str, mode: str, names: list[str], *, seconds: float, root: Path
) -> dict[str, Any]:
    """Run a consumer: it reports its own CPU (all its threads) over its second
    ``seconds`` (the first warms up: connections, decoders, imports)."""
    with open(root / "consumer.log", "ab") as log:
        done = subprocess.run(
            [sys.executable, "-c", script, url, str(seconds), mode, *names],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=seconds * 2 + 120,
            check=False,
        )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"consumer failed ({done.returncode}), see {root / 'consumer.log'}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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


def _streams_per_core(
    url: str, mode: str, names: list[str], window: float, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = _measure(_OURS.format(), url, mode, names, seconds=window, root=root)
    reference = _measure(_REFERENCE.format(), url, mode, names, seconds=window, root=root)
    return ours, reference


def _row(
    label: str,
    mode: str,
    count: int,
    *,
    window: float,
    ours: dict[str, Any],
    reference: dict[str, Any],
) -> Result:
    ours_per_core = count / ours["cores"]
    reference_per_core = count / reference["cores"]
    per_stream_s = 1 / GOP_S if mode == "key" else 1.0
    expected = count * window * per_stream_s
    in_time = ours["late"] == 0 and ours["keyframes"] >= 0.8 * expected
    what = "key frames only" if mode == "key" else "--fps 1 (every frame decoded, 1/s kept)"
    return Result(
        benchmark=f"fleet: streams per core ({count} x {label}, {mode})",
        ours=f"{ours_per_core:.1f} ({ours['cores']:.2f} cores)",
        reference=f"{reference_per_core:.1f} ({reference['cores']:.2f} cores, thread/stream)",
        ratio=fmt_ratio(ours_per_core / reference_per_core),
        goal=">= 40 streams/core, frames within 1 s" if mode == "key" else "report",
        met=(ours_per_core >= 40 and in_time) if mode == "key" else None,
        notes=(
            f"fleet {label} {mode}: {count} live {label} ~2 Mbit/s streams (GOP {GOP_S} s) from "
            f"the emulator, {what}, gray, model-free callback; CPU of each consumer process over "
            f"{window:.0f} s after {window:.0f} s of warm-up; ours delivered "
            f"{ours['keyframes']} frames (reference {reference['keyframes']}, about "
            f"{expected:.0f} due), largest arrival-to-callback delay "
            f"{ours['max_lag_ms']:.0f} ms, {ours['late']} fragments later than 1 s",
        ),
    )


def run(options: Options | None = None) -> list[Result]:
    options = options or Options()
    count = int(os.environ.get("KVS_BENCH_FLEET_STREAMS", "4" if options.quick else "8"))
    count_720 = max(1, count // 2)
    window = 8.0 if options.quick else 20.0
    seconds = 6.0 if options.quick else 10.0
    names = [f"bench-{n:02d}" for n in range(count)]
    names_720 = [f"small-{n:02d}" for n in range(count_720)]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as folder:
        root = Path(folder)
        argv = [sys.executable, "-m", "kvs_toolkit.cli", "emulator", "--port", "0"]
        with server_process(argv, root / "emulator.log") as emulator:
            control = _kvs(emulator.url)
            for name in names + names_720:
                control.create_stream(StreamName=name, DataRetentionInHours=1)
            for label, size, streams, mode in (
                ("1080p30", (1920, 1080), names, "key"),
                ("720p30", (1280, 720), names_720, "fps1"),
            ):
                sample = encode_sample(root / f"{label}.mkv", seconds, *size)
                producers = _start_producers(emulator.url, sample, streams, root)
                try:
                    time.sleep(3)
                    ours, reference = _streams_per_core(emulator.url, mode, streams, window, root)
                    results.append(
                        _row(
                            label,
                            mode,
                            len(streams),
                            window=window,
                            ours=ours,
                            reference=reference,
                        )
                    )
                    if mode == "key":
                        failover, lease = _failover(emulator.url, streams[:4], root)
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


def _start_producers(url: str, sample: Path, names: list[str], root: Path) -> Any:
    code = _PRODUCERS.format(key=ACCESS_KEY, secret=SECRET)
    with open(root / "producers.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", code, url, str(sample), *names],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
