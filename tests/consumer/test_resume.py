"""The SQLite checkpoint store, and ``kvs consume --start checkpoint`` surviving SIGKILL.

The crash test runs the real command as a subprocess against the real emulator while a
real-time producer uploads real H.264, kills it with SIGKILL mid-stream, restarts it,
and checks the union of both runs' JSON lines: every fragment, and no fragment that was
completed and checkpointed is delivered again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from kvs_toolkit.consumer.checkpoint import (
    Checkpoint,
    CheckpointStore,
    DynamoDBCheckpointStore,
    JsonFileCheckpointStore,
    SqliteCheckpointStore,
    default_checkpoint_path,
    open_checkpoint_store,
)
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import CheckpointError
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample

from .test_readers import ACCESS_KEY, SECRET, create_stream

# 4 s at 10 fps, a key frame every 0.5 s: eight 500 ms fragments of 5 frames each.
SPEC = SampleSpec(width=160, height=120, fps=10, seconds=4.0, codec="h264", gop_seconds=0.5)
FRAGMENTS = 8
FRAMES_PER_FRAGMENT = 5


# --- the store ------------------------------------------------------------------------------
def test_sqlite_store_round_trip_groups_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoints.sqlite3"
    store = SqliteCheckpointStore(path)
    assert isinstance(store, CheckpointStore)
    assert store.load("cam-1") is None
    first = Checkpoint("0041", "token-41", producer_timestamp=1.5, server_timestamp=2.5)
    store.save("cam-1", first)
    store.save("cam-1", Checkpoint("0042", None, 3.5, None, updated_at=9.0))
    other_group = SqliteCheckpointStore(path, consumer_group="audit")
    other_group.save("cam-1", first)
    store.close()
    # Another process (a new connection) sees what was saved, one row per stream and group.
    reopened = SqliteCheckpointStore(path)
    assert reopened.load("cam-1") == Checkpoint("0042", None, 3.5, None, updated_at=9.0)
    assert other_group.load("cam-1") == first
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT stream, consumer_group, fragment_number FROM checkpoints")
        assert sorted(rows) == [("cam-1", "audit", "0041"), ("cam-1", "default", "0042")]
    reopened.close()
    other_group.close()


def test_sqlite_store_errors_are_clear(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 50)
    with pytest.raises(CheckpointError, match=r"checkpoint database .*junk\.sqlite3 is not usable"):
        SqliteCheckpointStore(junk)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=r"cannot open checkpoint database .*file"):
        SqliteCheckpointStore(blocker / "sub" / "c.sqlite3")
    with pytest.raises(ValueError, match="consumer_group must not be empty"):
        SqliteCheckpointStore(tmp_path / "c.sqlite3", consumer_group="")
    store = SqliteCheckpointStore(tmp_path / "c.sqlite3")
    store.close()
    with pytest.raises(CheckpointError, match="cannot save checkpoint of 'cam-1'"):
        store.save("cam-1", Checkpoint("1"))
    with pytest.raises(CheckpointError, match="cannot read checkpoint of 'cam-1'"):
        store.load("cam-1")


def test_open_checkpoint_store_picks_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_checkpoint_path() == tmp_path / "xdg" / "kvs-toolkit" / "checkpoints.sqlite3"
    default = open_checkpoint_store(None)
    assert isinstance(default, SqliteCheckpointStore) and default.path == default_checkpoint_path()
    default.close()
    assert isinstance(open_checkpoint_store(tmp_path / "c.json"), JsonFileCheckpointStore)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert isinstance(open_checkpoint_store("dynamodb:table"), DynamoDBCheckpointStore)
    with pytest.raises(CheckpointError, match="dynamodb:TABLE needs a table name"):
        open_checkpoint_store("dynamodb:")


# --- SIGKILL and resume ---------------------------------------------------------------------
def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # A line cut by the kill is not a delivered frame.
    return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n")]  # fmt: skip


def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize("queue", [[], ["--queue-size", "3"]], ids=["inline", "queued"])
def test_killed_consumer_resumes_from_the_checkpoint_with_no_gap(
    tmp_path: Path, queue: list[str]
) -> None:
    sample = write_sample(tmp_path / "sample.mkv", SPEC)
    checkpoint = tmp_path / "checkpoints.sqlite3"
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        url = emulator.endpoint_url

        def command(out: Path, *extra: str) -> list[str]:
            return [sys.executable, "-m", "kvs_toolkit.cli", "consume", "--stream", "crash",
                    "--endpoint-url", url, "--start", "checkpoint", "--checkpoint",
                    str(checkpoint), "--out", str(out), "--no-progress", *queue,
                    *extra]  # fmt: skip

        acked: list[object] = []

        def upload() -> None:
            try:
                stats = asyncio.run(
                    produce(
                        open_source(str(sample), SourceOptions(realtime=True, audio=False)),
                        url,
                        "crash",
                        credentials=Credentials(ACCESS_KEY, SECRET),
                        fragment_duration_ms=500,
                    )
                )
                acked.append(stats.acked)
            except Exception as exc:
                acked.append(exc)

        create_stream(url, "crash")
        producer = threading.Thread(target=upload, daemon=True)
        producer.start()
        consumer = subprocess.Popen(
            command(first), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            # Kill it mid-stream, once it delivered frames of at least two fragments.
            wait_until(lambda: len({r["fragment_number"] for r in read_lines(first)}) >= 2, 30)
            consumer.send_signal(signal.SIGKILL)
            consumer.wait(10)
        finally:
            if consumer.poll() is None:
                consumer.kill()
            assert consumer.stderr is not None
            consumer.stderr.close()
        with sqlite3.connect(checkpoint) as db:
            saved = db.execute("SELECT fragment_number FROM checkpoints").fetchone()[0]
        producer.join(30)
        assert acked == [FRAGMENTS]
        run1 = read_lines(first)
        fragments1 = list(dict.fromkeys(r["fragment_number"] for r in run1))
        # The restart must deliver exactly the fragments after the checkpoint: ask for
        # that many (more would wait forever for fragments that never come).
        remaining = FRAGMENTS - fragments1.index(saved) - 1
        done = subprocess.run(command(second, "--max-fragments", str(remaining)), env=env,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    run2 = read_lines(second)
    fragments2 = list(dict.fromkeys(r["fragment_number"] for r in run2))
    assert fragments1 and fragments2
    everything = fragments1 + [n for n in fragments2 if n not in fragments1]
    assert len(everything) == FRAGMENTS  # no gap: every fragment was delivered
    assert everything == sorted(everything, key=int)
    # The second run starts right after the checkpointed fragment: a fragment completed
    # and checkpointed is never delivered again...
    assert int(fragments2[0]) > int(saved)
    assert fragments1.index(saved) >= len(fragments1) - 2
    # ...and at most the one fragment in progress at the kill is delivered twice.
    repeated = set(fragments1) & set(fragments2)
    assert repeated <= {fragments1[-1]}
    per_fragment = Counter(r["fragment_number"] for r in run2)
    per_fragment.update(r["fragment_number"] for r in run1 if r["fragment_number"] not in repeated)
    assert set(per_fragment.values()) == {FRAMES_PER_FRAGMENT}
    timestamps = [r["timestamp"] for r in run1 if r["fragment_number"] not in repeated] + [
        r["timestamp"] for r in run2
    ]
    assert len(timestamps) == len(set(timestamps)) == FRAGMENTS * FRAMES_PER_FRAGMENT
