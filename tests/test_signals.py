"""SIGINT and SIGTERM in the middle of `kvs produce` and `kvs consume` (real processes,
the emulator as a process of its own): the first signal says what the command waits for
and the command ends with its summary and its normal exit code; a second signal exits
at once (130 for SIGINT, 143 for SIGTERM), while the first delivered twice back to back
(as GNU timeout does) is one request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs_toolkit.cli.common import REPEAT_SIGNAL_WINDOW_S
from kvs_toolkit.samples import SampleSpec, write_sample

KVS = [sys.executable, "-m", "kvs_toolkit.cli"]
SPEC = SampleSpec(width=320, height=240, fps=10, seconds=2.0, gop_seconds=1.0)


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    return env


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [*KVS, "emulator", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url, process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()
        process.stdout.close()


def wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def start(argv: list[str], tmp_path: Path, log: Path) -> subprocess.Popen[str]:
    """``kvs ARGV`` with stderr to ``log`` and no AWS configuration."""
    with log.open("w") as stderr:
        return subprocess.Popen(
            [*KVS, *argv],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env=clean_env(tmp_path),
        )


def start_produce(url: str, sample: Path, tmp_path: Path, log: Path) -> subprocess.Popen[str]:
    return start(
        ["produce", str(sample), "--stream", "sig", "--endpoint-url", url,
         "--create-stream", "--loop", "--fragment-duration", "1"],
        tmp_path, log,
    )  # fmt: skip


@pytest.mark.parametrize(("signum", "deliveries"), [
    (signal.SIGINT, 1),
    (signal.SIGTERM, 1),
    (signal.SIGTERM, 2),  # GNU timeout signals the command and its group: one request
])  # fmt: skip
def test_produce_first_signal_flushes_and_prints_its_summary(
    emulator: tuple[str, subprocess.Popen[str]],
    tmp_path: Path,
    signum: signal.Signals,
    deliveries: int,
) -> None:
    url, _ = emulator
    sample = write_sample(tmp_path / "sample.mkv", SPEC)
    log = tmp_path / "produce.log"
    producer = start_produce(url, sample, tmp_path, log)
    wait_for(lambda: "fragments 2/" in log.read_text() or producer.poll() is not None)
    for _ in range(deliveries):
        producer.send_signal(signum)
    assert producer.wait(30) == 0  # everything acknowledged
    err = log.read_text()
    assert f"{signum.name}: flushing the last fragment and waiting up to 30 s" in err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    acked, sent = last.split("fragments ")[1].split(" acked")[0].split("/")
    assert acked == sent and int(acked) >= 2  # the summary: everything acknowledged


def test_produce_second_signal_exits_at_once(
    emulator: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, server = emulator
    sample = write_sample(tmp_path / "sample.mkv", SPEC)
    log = tmp_path / "produce.log"
    producer = start_produce(url, sample, tmp_path, log)
    wait_for(lambda: "fragments 1/" in log.read_text() or producer.poll() is not None)
    server.send_signal(signal.SIGSTOP)  # no more acks: the graceful stop would wait 30 s
    producer.send_signal(signal.SIGINT)
    wait_for(lambda: "waiting up to 30 s" in log.read_text(), timeout=10)
    # A person's second Ctrl-C, not the first delivered twice (REPEAT_SIGNAL_WINDOW_S).
    time.sleep(2 * REPEAT_SIGNAL_WINDOW_S)
    sent = time.monotonic()
    producer.send_signal(signal.SIGINT)
    assert producer.wait(5) == 130
    assert time.monotonic() - sent < 1.0
    assert "SIGINT again: exiting now" in log.read_text()


@pytest.mark.parametrize("deliveries", [1, 2])
def test_consume_signal_prints_the_summary(
    emulator: tuple[str, subprocess.Popen[str]], tmp_path: Path, deliveries: int
) -> None:
    url, _ = emulator
    sample = write_sample(tmp_path / "sample.mkv", SPEC)
    produced = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [*KVS, "produce", str(sample), "--stream", "sig", "--endpoint-url", url,
         "--create-stream", "--fast"],
        capture_output=True, text=True, env=clean_env(tmp_path), timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    out = tmp_path / "frames.jsonl"
    log = tmp_path / "consume.log"
    consumer = start(
        ["consume", "--stream", "sig", "--endpoint-url", url, "--start", "earliest",
         "--model", "motion", "--queue-size", "4", "--out", str(out)],
        tmp_path, log,
    )  # fmt: skip
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= SPEC.frame_count)
    for _ in range(deliveries):  # live: it would wait for new fragments forever
        consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(20) == 0
    err = log.read_text()
    assert "SIGTERM: finishing the fragment in progress" in err
    assert f": {SPEC.frame_count} frames analysed" in err, err  # the model's summary
    assert "queue: block, size 4" in err  # and the queue's
    assert "Traceback" not in err


def test_the_first_signal_delivered_twice_is_one_request() -> None:
    from kvs_toolkit.cli.common import is_second_request

    now = time.monotonic()
    assert is_second_request(None, 0.0, signal.SIGTERM) is None  # the first request
    # GNU timeout's second delivery, microseconds later: the same request
    assert is_second_request(signal.SIGTERM, now, signal.SIGTERM) is False
    # a second request: after the window, or another signal
    assert is_second_request(signal.SIGTERM, now - 2 * REPEAT_SIGNAL_WINDOW_S, signal.SIGTERM)
    assert is_second_request(signal.SIGTERM, now, signal.SIGINT)
