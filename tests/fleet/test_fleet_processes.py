"""Three ``kvs fleet run`` processes share nine live streams through leases in a real
DynamoDB-compatible server (moto, its own process); one is SIGKILLed, one SIGTERMed.

Checked from the outside, as an operator would: the JSON lines each worker wrote, the
lease items in the table, and the emulator's own list of fragments.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from kvs_toolkit.consumer.checkpoint import DynamoDBCheckpointStore
from kvs_toolkit.emulator import Emulator

from .conftest import (
    FPS,
    TABLE,
    LiveProducers,
    MotoServer,
    fragment_numbers,
    kvs_client,
    sample_file,
    wait_until,
)

STREAMS = [f"door-{n}" for n in range(9)]
LEASE_S = 5.0
SECONDS = 24.0


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    # A line cut by SIGKILL is not a delivered frame.
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def owners(moto: MotoServer) -> dict[str, str]:
    """stream -> owner of every lease held now, as the table says."""
    store = DynamoDBCheckpointStore(TABLE, client=moto.client())
    state = store.table_state()
    now = store.clock()
    return {
        s: lease.owner for s, lease in state.leases.items() if lease.held_at(now) and lease.owner
    }


def balanced(moto: MotoServer, workers: list[str]) -> bool:
    held = owners(moto)
    if sorted(held) != STREAMS or set(held.values()) != set(workers):
        return False
    bound = math.floor(len(STREAMS) / len(workers)) + 1  # fair share + 1
    return max(Counter(held.values()).values()) <= bound


def test_three_workers_share_nine_streams_through_kill_and_term(
    tmp_path: Path, moto_server: MotoServer, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    url = emulator.endpoint_url
    control = kvs_client(url)
    for stream in STREAMS:
        control.create_stream(StreamName=stream, DataRetentionInHours=1)
    producers = LiveProducers(url, STREAMS, sample_file(tmp_path, SECONDS)).start()

    names = ["a", "b", "c"]
    outputs = {name: tmp_path / f"{name}.jsonl" for name in names}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in names}  # noqa: SIM115
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name in names:
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "kvs_toolkit.cli", "fleet", "run",
             "--streams", "door-*", "--endpoint-url", url,
             "--lease-table", f"dynamodb:{TABLE}", "--dynamodb-endpoint-url", moto_server.url,
             "--worker-id", name, "--lease-duration", str(LEASE_S), "--start", "earliest",
             "--decode-threads", "1", "--out", str(outputs[name]), "--no-progress", "-v"],
            env=aws_env, stdout=subprocess.DEVNULL, stderr=logs[name],
        )  # fmt: skip
    try:
        # All three share the nine streams, at most fair share + 1 each, and deliver.
        wait_until(lambda: balanced(moto_server, names), 40, "3 workers balanced")
        wait_until(
            lambda: all(
                len({r["stream_name"] for r in read_lines(outputs[n])}) >= 2 for n in names
            ),
            20,
            "every worker delivering",
        )
        # a dies: its leases expire and move to b and c, from a's checkpoints.
        held_by_a = {s for s, o in owners(moto_server).items() if o == "a"}
        processes["a"].send_signal(signal.SIGKILL)
        processes["a"].wait(10)
        wait_until(lambda: balanced(moto_server, ["b", "c"]), LEASE_S * 4, "b and c balanced")
        taken = {s: o for s, o in owners(moto_server).items() if s in held_by_a}

        def successors_delivering() -> bool:
            lines = read_lines(outputs["b"]) + read_lines(outputs["c"])
            return held_by_a <= {r["stream_name"] for r in lines}

        wait_until(successors_delivering, 15, "a's streams delivered by b and c")
        # b stops: it hands every lease back at once, and c takes them all.
        processes["b"].send_signal(signal.SIGTERM)
        assert processes["b"].wait(20) == 0
        held_now = owners(moto_server)
        assert "b" not in held_now.values()  # released, not left to expire
        wait_until(lambda: balanced(moto_server, ["c"]), LEASE_S * 2, "c holds all")
        results = producers.join(SECONDS + 30)
        assert all(results[s] == SECONDS * 1000 / 500 for s in STREAMS), results
        expected = {s: fragment_numbers(url, s) for s in STREAMS}

        def everything_delivered() -> bool:
            done = {(r["stream_name"], r["fragment_number"]) for r in read_lines(outputs["c"])}
            return all((s, expected[s][-1]) in done for s in STREAMS)

        wait_until(everything_delivered, 30, "c delivered the last fragments")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            logs[name].close()
    assert processes["c"].returncode == 0
    assert taken and set(taken.values()) <= {"b", "c"}

    lines = {name: read_lines(outputs[name]) for name in names}
    frames_per_stream = int(SECONDS * FPS)
    for stream in STREAMS:
        by_worker = {n: [r for r in lines[n] if r["stream_name"] == stream] for n in names}
        everything = [r for n in names for r in by_worker[n]]
        # Every frame of every stream was delivered...
        timestamps = Counter(r["timestamp"] for r in everything)
        assert len(timestamps) == frames_per_stream, (stream, len(timestamps))
        assert {r["fragment_number"] for r in everything} == set(expected[stream])
        # ...and frames were repeated only within the fragment a was delivering when it
        # was killed (its last one on that stream); graceful hand-overs repeat nothing.
        repeated = {r["fragment_number"] for r in everything if timestamps[r["timestamp"]] > 1}
        last_of_a = by_worker["a"][-1]["fragment_number"] if by_worker["a"] else None
        assert repeated <= {last_of_a}, (stream, repeated, last_of_a)
        assert all(count <= 2 for count in timestamps.values())
        for name in names:  # no worker delivered a frame twice
            own = Counter(r["timestamp"] for r in by_worker[name])
            assert max(own.values(), default=1) == 1, (stream, name)
    per_worker = defaultdict(set)
    for name in names:
        per_worker[name] = {r["stream_name"] for r in lines[name]}
    assert per_worker["c"] == set(STREAMS)
