"""Every program in producers/ and consumers/ on a fresh machine: run as a subprocess with
no AWS variables, no ~/.aws and no config files, against the emulator on loopback.

* they work: the placeholder credentials of :mod:`kvs_toolkit.aws` sign for the local
  endpoint, with one notice line;
* against AWS they cannot reach (no region, no credentials, a profile that does not
  exist) and against a dead endpoint they exit 2 with one error line, never a traceback.

The one AWS variable set is ``AWS_EC2_METADATA_DISABLED``: without credentials
botocore's chain would otherwise ask the instance metadata service on a link-local
address, and tests send traffic to loopback only. It carries no credential, region or
configuration. Rekognition and Kinesis Data Streams are moto's server on 127.0.0.1,
reached the way the AWS SDKs name a service's endpoint (``AWS_ENDPOINT_URL_<SERVICE>``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from kvs_toolkit import AwsAccess, Producer
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.getmedia import iter_fragments
from kvs_toolkit.samples import SampleSpec, write_sample
from tests.analysis.test_processors import frame_record
from tests.analysis.test_yolo import ROWS, tiny_model, yolov8_output

ROOT = Path(__file__).resolve().parents[1]
PRODUCERS = ("replay_file.py", "webcam.py", "rtsp_relay.py", "numpy_frames.py")
CONSUMERS = (
    "print_frames.py",
    "motion_alerts.py",
    "save_snapshots.py",
    "onnx_detector.py",
    "rekognition_labels.py",
    "face_search_alerts.py",
)
STREAM = "yard"  # 3 s of moving boxes, uploaded once for the consumers
SPEC = SampleSpec(width=320, height=180, fps=25, seconds=3.0, gop_seconds=1.0)
PLACEHOLDER_NOTICE = "kvs: no AWS credentials found: signing requests to the local endpoint"
TIMEOUT_S = 120  # generous: the machine is shared


def program_path(name: str) -> Path:
    return ROOT / ("producers" if name in PRODUCERS else "consumers") / name


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without a trace of AWS (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-such-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-such-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(program_path(name)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=env["HOME"],
    )


def run(name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with start(name, args, env) as process:
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    emulator: Emulator
    moto_url: str
    clip: Path  # a video file (the producers' input)
    model: Path  # a tiny YOLO-shaped ONNX model
    home: Path  # empty: no ~/.aws

    @property
    def url(self) -> str:
        return self.emulator.endpoint_url

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, **extra)

    def client(self, service: str) -> Any:
        url = self.url if service.startswith("kinesis-video") or service == "kinesisvideo" else None
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=url or self.moto_url,
            region_name="us-east-1",
            aws_access_key_id="AKIDTEST",
            aws_secret_access_key="secret",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pytest.importorskip("onnxruntime")
    moto_server = pytest.importorskip("moto.server")
    folder = tmp_path_factory.mktemp("clean")
    home = folder / "home"
    home.mkdir()
    clip = write_sample(folder / "yard.mp4", SPEC)
    model = tiny_model(folder / "tiny.onnx", yolov8_output(ROWS))
    server = moto_server.ThreadedMotoServer(
        ip_address="127.0.0.1", port=closed_port(), verbose=False
    )
    server.start()
    host, port = server.get_host_and_port()
    try:
        with Emulator() as emulator:
            # the consumers' stream, put with the public API
            aws = AwsAccess(endpoint_url=emulator.endpoint_url)
            with Producer(STREAM, aws=aws, create_stream=True, fragment_duration_ms=1000) as p:
                stats = p.upload(str(clip))
            assert stats.all_acknowledged and stats.frames == 75
            yield World(emulator, f"http://{host}:{port}", clip, model, home)
    finally:
        server.stop()


# --- they work --------------------------------------------------------------------------


def assert_clean(done: subprocess.CompletedProcess[str]) -> list[str]:
    """Exit 0 and the placeholder notice once; the other stderr lines."""
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sum(line.startswith(PLACEHOLDER_NOTICE) for line in lines) == 1, done.stderr
    return [line for line in lines if not line.startswith(PLACEHOLDER_NOTICE)]


def stored_frames(world: World, stream: str) -> int:
    """Video frames stored in ``stream``, read back with GetMediaForFragmentList."""
    archived = world.client("kinesis-video-archived-media")
    numbers = [f["FragmentNumber"] for f in archived.list_fragments(StreamName=stream)["Fragments"]]
    payload = archived.get_media_for_fragment_list(StreamName=stream, Fragments=numbers)["Payload"]
    fragments = iter_fragments(payload)
    return sum(1 for f in fragments for frame in f.frames if frame.track_number == 1)


@pytest.mark.parametrize(
    ("name", "args", "summary"),
    [
        ("replay_file.py", ["CLIP", "--fast"], "kvs replay_file: 75 frames in 2 fragments"),
        ("webcam.py", ["--device", "CLIP", "--fps", "25", "--clock", "fps"],
         "kvs webcam: 75 frames in 2 fragments"),
        # a feed in real time, stopped after 1.5 s: flushed and acknowledged
        ("rtsp_relay.py", ["file:CLIP", "--duration", "1.5"],
         "kvs rtsp_relay: 1 sessions (1 attempts), "),
        ("numpy_frames.py", ["--seconds", "1", "--fps", "25"],
         "kvs numpy_frames: 25 frames in 1 fragments, 1 acknowledged"),
    ],
)  # fmt: skip
def test_producers_work_without_aws_configuration(
    world: World, name: str, args: list[str], summary: str
) -> None:
    stream = f"clean-{name.removesuffix('.py').replace('_', '-')}"
    done = run(
        name,
        [a.replace("CLIP", str(world.clip)) for a in args]
        + ["--stream", stream, "--endpoint-url", world.url, "--create-stream"],
        world.env(),
    )
    lines = assert_clean(done)
    found = [line for line in lines if line.startswith(summary)]
    assert len(found) == 1, done.stderr
    sent = int(found[0].split(" frames in ")[0].rsplit(" ", 1)[1])
    assert found[0].endswith(" acknowledged") and "not everything" not in done.stderr
    assert stored_frames(world, stream) == sent
    if name == "rtsp_relay.py":
        assert 25 <= sent < 75  # stopped part-way through the 3 s feed


def test_print_frames(world: World) -> None:
    done = run(
        "print_frames.py",
        ["--stream", STREAM, "--endpoint-url", world.url, "--start", "earliest",
         "--max-frames", "75"],
        world.env(),
    )  # fmt: skip
    assert assert_clean(done) == ["kvs print_frames: 75 frames"]
    lines = done.stdout.splitlines()
    assert len(lines) == 75 and all("  320x180" in line for line in lines)
    assert sum("  key  " in line for line in lines) == 3  # a key frame a second


def test_motion_alerts(world: World, tmp_path: Path) -> None:
    out = tmp_path / "motion.jsonl"
    done = run(
        "motion_alerts.py",
        ["--stream", STREAM, "--endpoint-url", world.url, "--start", "earliest",
         "--fps", "25", "--min-area", "50", "--max-fragments", "3", "--out", str(out)],
        world.env(),
    )  # fmt: skip
    rest = assert_clean(done)
    assert rest[-1].startswith("kvs motion_alerts: 75 frames in 3 fragments, "), done.stderr
    # the boxes move in every frame: motion starts once the background is learnt
    assert "motion started" in done.stdout.splitlines()[0], done.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 75 and records[0]["model"].startswith("motion")
    assert any(record["detections"] for record in records[25:])


def test_save_snapshots_resumes_from_its_checkpoint(world: World, tmp_path: Path) -> None:
    args = ["--stream", STREAM, "--endpoint-url", world.url, "--start", "earliest",
            "--every", "1", "--out", str(tmp_path / "snaps"), "--idle-exit", "3",
            "--checkpoint", str(tmp_path / "checkpoints.sqlite3")]  # fmt: skip
    first = run("save_snapshots.py", args, world.env())
    assert assert_clean(first)[-1] == f"kvs save_snapshots: 3 snapshots in {tmp_path / 'snaps'}"
    saved = sorted((tmp_path / "snaps").glob(f"{STREAM}-*.jpg"))
    assert [str(p) for p in saved] == first.stdout.splitlines() and len(saved) == 3
    second = run("save_snapshots.py", args, world.env())
    assert assert_clean(second)[-1] == f"kvs save_snapshots: 0 snapshots in {tmp_path / 'snaps'}"


def test_onnx_detector(world: World) -> None:
    done = run(
        "onnx_detector.py",
        ["--stream", STREAM, "--endpoint-url", world.url, "--start", "earliest",
         "--model", str(world.model), "--fps", "2", "--min-confidence", "0.65",
         "--max-fragments", "3"],
        world.env(),
    )  # fmt: skip
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 6  # 2 a second of 3 s
    # the tiny model's boxes above 0.65: class 1 twice (0.9 and, far away, 0.6: dropped)
    # and class 0 at 0.7; 0.25 would also keep the 0.6 one
    assert all(sorted(d["confidence"] for d in r["detections"]) == pytest.approx([0.7, 0.9])
               for r in records)  # fmt: skip
    assert assert_clean(done)[-1].startswith("kvs onnx_detector: 6 frames, latency p95 ")


def test_rekognition_labels_confidence_is_a_fraction(world: World) -> None:
    env = world.env(AWS_ENDPOINT_URL_REKOGNITION=world.moto_url)
    base = ["--stream", STREAM, "--endpoint-url", world.url, "--start", "earliest",
            "--fps", "1", "--max-fragments", "3"]  # fmt: skip
    # moto's DetectLabels answers "Mobile Phone" at 99.94 %
    kept = run("rekognition_labels.py", [*base, "--min-confidence", "0.99"], env)
    records = [json.loads(line) for line in kept.stdout.splitlines()]
    assert len(records) == 3
    assert all([d["label"] for d in r["detections"]] == ["Mobile Phone"] for r in records)
    assert assert_clean(kept)[-1] == (
        "kvs rekognition_labels: 3 frames, 3 Rekognition calls (about $0.003); "
        "labels: Mobile Phone 3"
    )
    # 0.9995 is above it (as a percentage, the old unit, it would keep everything)
    dropped = run("rekognition_labels.py", [*base, "--min-confidence", "0.9995"], env)
    assert all(json.loads(line)["detections"] == [] for line in dropped.stdout.splitlines())
    # the old percentages are refused, not taken as 8000 %
    refused = run("rekognition_labels.py", [*base, "--min-confidence", "80"], env)
    assert refused.returncode == 2
    assert "--min-confidence: must be between 0 and 1, not 80" in refused.stderr


def test_face_search_alerts(world: World) -> None:
    kinesis = world.client("kinesis")
    kinesis.create_stream(StreamName="door-results", ShardCount=1)
    kinesis.get_waiter("stream_exists").wait(StreamName="door-results")
    control = world.client("kinesisvideo")
    arn = control.describe_stream(StreamName=STREAM)["StreamInfo"]["StreamARN"]
    fragments = world.client("kinesis-video-archived-media").list_fragments(StreamName=STREAM)
    first = min(fragments["Fragments"], key=lambda f: f["ProducerTimestamp"])
    server = first["ServerTimestamp"].timestamp()
    # no ProducerTimestamp in the record: the program joins it with ListFragments
    data = frame_record(first["FragmentNumber"], None, server, 0.5, stream_arn=arn)
    kinesis.put_record(StreamName="door-results", Data=data, PartitionKey="k")
    env = world.env(AWS_ENDPOINT_URL_KINESIS=world.moto_url)
    args = ["--data-stream", "door-results", "--endpoint-url", world.url,
            "--from", "trim-horizon", "--once"]  # fmt: skip
    done = run("face_search_alerts.py", [*args, "--min-similarity", "0.8"], env)
    moment = dt.datetime.fromtimestamp(
        first["ProducerTimestamp"].timestamp() + 0.5, dt.timezone.utc
    )
    assert done.stdout.splitlines() == [
        f"{moment.isoformat(timespec='milliseconds')}  {STREAM} fragment "
        f"{first['FragmentNumber']}  alice (88%)"
    ]
    assert assert_clean(done) == ["kvs face_search_alerts: 1 faces"]
    # the match is 88 %: under 0.9 it is an unknown face (0.9 % in the old unit)
    unknown = run("face_search_alerts.py", [*args, "--min-similarity", "0.9"], env)
    assert unknown.stdout.splitlines()[0].endswith("  unknown face")


def test_version(world: World) -> None:
    running = [
        start(name, ["--version"], world.env()) for name in (*PRODUCERS, *CONSUMERS)
    ]  # all at once: each start costs about a second of imports
    for process in running:
        with process:
            out, err = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0 and err == ""
        assert out.startswith("kvs-toolkit ")


# --- they fail in one line --------------------------------------------------------------

# What each program needs besides the AWS options (CLIP, MODEL, DIR: the world's). No
# --idle-exit: a consumer must end on the error itself, however slow the machine.
PROGRAM_ARGS: dict[str, list[str]] = {
    "replay_file.py": ["CLIP", "--stream", "s", "--fast"],
    "webcam.py": ["--device", "CLIP", "--stream", "s", "--fps", "25", "--clock", "fps"],
    "rtsp_relay.py": ["file:CLIP", "--stream", "s", "--give-up-after", "1"],
    "numpy_frames.py": ["--stream", "s", "--seconds", "1"],
    "print_frames.py": ["--stream", "s"],
    "motion_alerts.py": ["--stream", "s"],
    "save_snapshots.py": ["--stream", "s", "--out", "DIR"],
    "onnx_detector.py": ["--stream", "s", "--model", "MODEL"],
    "rekognition_labels.py": ["--stream", "s"],
    "face_search_alerts.py": ["--data-stream", "door", "--once"],
}
# case -> (extra arguments, what the error line says); URL: a closed port on loopback
CASES: dict[str, tuple[list[str], str]] = {
    "missing region": ([], "no AWS region: pass --region"),
    "missing credentials": (["--region", "us-east-1"], "no AWS credentials found: "),
    "unreachable endpoint": (["--endpoint-url", "URL", "--max-attempts", "2"], "URL"),
    "wrong profile": (["--profile", "nobody"], "profile 'nobody' is not in the AWS config"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_program_fails_in_one_line(world: World, case: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    extra, message = CASES[case]
    message = message.replace("URL", url)
    # the Rekognition and Kinesis clients too: nothing may go to AWS from a test
    env = world.env(AWS_ENDPOINT_URL=url) if case == "unreachable endpoint" else world.env()
    names = (*PRODUCERS, *CONSUMERS)
    replace = {"CLIP": str(world.clip), "MODEL": str(world.model), "DIR": str(tmp_path)}
    running = {
        name: start(
            name,
            [replace.get(a, a.replace("CLIP", str(world.clip))) for a in PROGRAM_ARGS[name]]
            + [a.replace("URL", url) for a in extra],
            env,
        )
        for name in names
    }  # all at once: each start costs about a second of imports
    failures = []
    for name, process in running.items():
        with process:
            _out, err = process.communicate(timeout=TIMEOUT_S)
        program = name.removesuffix(".py")
        lines = err.splitlines()
        # log lines ("kvs: " notices: placeholder credentials, a retry) are allowed only
        # on the way to a dead endpoint; the error itself is one line, the last
        logged = [line for line in lines[:-1] if line.startswith("kvs: ")]
        ok = (
            process.returncode == 2
            and "Traceback" not in err
            and bool(lines)
            and lines[-1].startswith(f"kvs {program}: ")
            and message in lines[-1]
            and len(logged) == len(lines) - 1
            and (case == "unreachable endpoint" or len(lines) == 1)
            and len(lines) <= 3
        )
        if not ok:
            failures.append(f"{name}: exit {process.returncode}\n{err}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("name", "signum", "summary"),
    [
        ("print_frames.py", signal.SIGINT, "kvs print_frames: 0 frames"),
        ("motion_alerts.py", signal.SIGTERM, "kvs motion_alerts: 0 frames in 0 fragments, "),
    ],
)
def test_a_signal_stops_a_consumer_with_its_summary(
    world: World, name: str, signum: signal.Signals, summary: str
) -> None:
    stream = f"quiet-{name.removesuffix('.py').replace('_', '-')}"
    world.client("kinesisvideo").create_stream(StreamName=stream, DataRetentionInHours=1)
    args = ["--stream", stream, "--endpoint-url", world.url, "-v"]  # -v: "connected"
    with start(name, args, world.env()) as process:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:  # until the live read waits for fragments
            lines.append(line)
            if ": connected, start " in line:
                break
        process.send_signal(signum)
        rest = process.stderr.read()
        assert process.wait(TIMEOUT_S) == 0, "".join(lines) + rest
    assert f"kvs {name.removesuffix('.py')}: {signum.name}: stopping after the " in rest
    assert rest.splitlines()[-1].startswith(summary), rest
    assert "Traceback" not in rest
