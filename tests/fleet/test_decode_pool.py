"""The worker's decode pool as processes (``decode_pool="processes"``) against the
real emulator: real H.264 decoded in real spawned processes.

* every frame comes out of the process pool exactly as out of the thread pool;
* a decode process killed mid-fragment is started again, and every frame is still
  delivered exactly once;
* processes that keep dying stop the worker with a clear error, without hanging;
* ``kvs fleet run --decode-pool processes --model motion`` stops its pool cleanly on
  Ctrl-C (SIGINT to the whole process group) and leaves no process behind.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.fleet import FleetWorker
from kvs_toolkit.emulator import Emulator

from .conftest import FPS, LiveProducers, kvs_client, sample_file, wait_until
from .pool_handlers import AlwaysExit, DieOnce, FrameIds

SECONDS = 2.0
FRAMES = int(SECONDS * FPS)


def produced(url: str, streams: list[str], tmp_path: Path) -> None:
    control = kvs_client(url)
    for stream in streams:
        control.create_stream(StreamName=stream, DataRetentionInHours=1)
    results = LiveProducers(url, streams, sample_file(tmp_path, SECONDS)).start().join(30)
    assert all(results[s] == SECONDS * 1000 / 500 for s in streams), results


def run_worker(
    url: str, streams: list[str], factory: Any, pool: str, *, threads: int, expected: int
) -> tuple[list[Any], FleetWorker]:
    results: list[Any] = []
    lock = threading.Lock()

    def on_result(result: Any, stream: str) -> None:
        assert result[0] == stream
        with lock:
            results.append(result)

    worker = FleetWorker(
        streams,
        handler_factory=factory,
        on_result=on_result,
        aws=AwsAccess(endpoint_url=url),
        start_at="earliest",
        decode_pool=pool,
        decode_threads=threads,
    )
    with worker:
        wait_until(lambda: len(results) >= expected, 60, f"{expected} frames ({pool})")
        time.sleep(0.3)  # a repeat would come now
    return list(results), worker


def test_process_pool_delivers_every_frame_as_the_thread_pool_does(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    url = emulator.endpoint_url
    streams = ["pool-0", "pool-1", "pool-2"]
    produced(url, streams, tmp_path)
    expected = FRAMES * len(streams)
    by_threads, _ = run_worker(url, streams, FrameIds(), "threads", threads=2, expected=expected)
    by_processes, worker = run_worker(
        url, streams, FrameIds(), "processes", threads=2, expected=expected
    )
    assert multiprocessing.active_children() == []  # stop() ended the pool
    frames = [r[:4] for r in by_processes]
    assert len(frames) == expected and len(set(frames)) == expected
    assert sorted(frames) == sorted(r[:4] for r in by_threads)
    for stream in streams:  # in stream order, in full size
        stamps = [r[1] for r in by_processes if r[0] == stream]
        assert stamps == sorted(stamps) and len(stamps) == FRAMES
    assert {r[2] for r in by_processes} == {(96, 160, 3)}
    # Decoded elsewhere: in two processes (3 streams, least loaded first), each stream
    # in one of them only.
    pids = {s: {r[4] for r in by_processes if r[0] == s} for s in streams}
    assert os.getpid() not in {r[4] for r in by_processes}
    assert len({r[4] for r in by_processes}) == 2
    assert all(len(p) == 1 for p in pids.values())
    assert {r[4] for r in by_threads} == {os.getpid()}
    stats = worker.stats()
    assert all(stats[s].frames == FRAMES and stats[s].fragments == 4 for s in streams)
    assert worker.lags.count == 4 * len(streams) and worker.lags.percentile(99) is not None


def test_a_decode_process_killed_mid_fragment_is_started_again_and_loses_nothing(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url = emulator.endpoint_url
    streams = ["crash-0", "crash-1"]
    produced(url, streams, tmp_path)
    marker = tmp_path / "died"
    # The 7th frame of crash-1 is the 2nd of its 2nd fragment (5 frames a fragment): the
    # fragment's first frame was delivered when the process died, and is not again.
    factory = DieOnce("crash-1", 7, marker)
    with caplog.at_level(logging.ERROR, logger="kvs_toolkit.consumer.fleet"):
        results, worker = run_worker(
            url, streams, factory, "processes", threads=1, expected=FRAMES * 2
        )
    assert marker.exists()
    frames = [r[:2] for r in results]
    assert len(frames) == FRAMES * 2 and len(set(frames)) == len(frames)  # none twice
    first = int(marker.read_text())
    assert first not in {r[4] for r in results[-FRAMES:]}  # the rest came from a new one
    assert any(
        "killed by SIGKILL" in r.getMessage() and "started again" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    assert worker.failure is None
    assert multiprocessing.active_children() == []


def test_decode_processes_that_keep_dying_stop_the_worker_without_hanging(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    url = emulator.endpoint_url
    produced(url, ["doomed"], tmp_path)
    worker = FleetWorker(
        ["doomed"],
        handler_factory=AlwaysExit(),
        aws=AwsAccess(endpoint_url=url),
        start_at="earliest",
        decode_pool="processes",
        decode_threads=1,
    )
    worker.start()
    try:
        assert worker.failed.wait(60), "the worker did not give up"
    finally:
        started = time.monotonic()
        worker.stop()
    assert time.monotonic() - started < 10
    assert worker.failure is not None
    assert "exit status 3" in worker.failure and "died too often" in worker.failure
    assert worker.held == set()
    assert multiprocessing.active_children() == []


def _processes_marked(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"KVS_POOL_TEST={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_cli_process_pool_with_motion_stops_cleanly_on_ctrl_c(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    from kvs_toolkit.cli import build_parser
    from kvs_toolkit.cli.consume import run as consume

    for command in (["fleet", "run", "--streams", "a"], ["consume", "--streams", "a"]):
        parsed = build_parser(command[0]).parse_args([*command, "--decode-pool", "processes"])
        assert parsed.decode_pool == "processes"
    single = build_parser("consume").parse_args(
        ["consume", "--stream", "a", "--decode-pool", "threads"]
    )
    assert consume(single) == 2  # --decode-pool applies to --streams
    url = emulator.endpoint_url
    streams = ["gate-0", "gate-1"]
    produced(url, streams, tmp_path)
    out = tmp_path / "frames.jsonl"
    marker = uuid.uuid4().hex
    log = open(tmp_path / "fleet.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "kvs_toolkit.cli", "consume", "--streams", "gate-*",
         "--endpoint-url", url, "--start", "earliest", "--model", "motion",
         "--decode-pool", "processes", "--out", str(out),
         "--no-progress"],
        env={**aws_env, "KVS_POOL_TEST": marker}, stdout=subprocess.DEVNULL, stderr=log,
        start_new_session=True,
    )  # fmt: skip
    try:

        def lines() -> list[dict[str, Any]]:
            assert process.poll() is None, (tmp_path / "fleet.log").read_text()
            text = out.read_text() if out.exists() else ""
            return [
                json.loads(line) for line in text.splitlines(keepends=True) if line[-1:] == "\n"
            ]

        wait_until(lambda: len(lines()) >= FRAMES * 2, 60, "every frame written")
        # the command, its decode processes (one per core), multiprocessing's tracker
        assert len(_processes_marked(marker)) == 2 + (os.cpu_count() or 1)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole process group
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    wait_until(lambda: not _processes_marked(marker), 10, "no decode process left")
    text = out.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == FRAMES * 2
    assert {r["stream_name"] for r in records} == set(streams)
    assert all(isinstance(r["detections"], list) for r in records)
    assert "Traceback" not in (tmp_path / "fleet.log").read_text()
