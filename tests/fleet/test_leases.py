"""Lease balancing between workers on a real DynamoDB-compatible server (moto, its own
process), driven by an injected clock, and ``kvs fleet status`` reading the table."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from kvs_toolkit.cli import main
from kvs_toolkit.consumer.checkpoint import (
    Checkpoint,
    DynamoDBCheckpointStore,
    LeaseCoordinator,
)

from .conftest import TABLE, MotoServer

STREAMS = [f"cam-{n}" for n in range(9)]
LEASE_S = 10.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def coordinator(moto: MotoServer, owner: str, clock: Clock) -> LeaseCoordinator:
    store = DynamoDBCheckpointStore(
        TABLE, client=moto.client(), owner_id=owner, lease_duration_s=LEASE_S, clock=clock
    )
    return LeaseCoordinator(store, status=lambda: {"streams": {}, "owner": owner})


def owners(moto: MotoServer, now: float) -> dict[str, str | None]:
    state = DynamoDBCheckpointStore(TABLE, client=moto.client()).table_state()
    return {s: lease.owner if lease.held_at(now) else None for s, lease in state.leases.items()}


def settle(workers: list[LeaseCoordinator], rounds: int = 3) -> None:
    for _round in range(rounds):
        for worker in workers:
            worker.balance(STREAMS)


def assert_shared(moto: MotoServer, workers: list[LeaseCoordinator], now: float) -> None:
    held = owners(moto, now)
    names = {w.owner_id for w in workers}
    assert sorted(held) == STREAMS and set(held.values()) == names  # every stream, once
    for worker in workers:  # the workers' own view agrees with the table
        assert worker.owned == {s for s, o in held.items() if o == worker.owner_id}
    bound = math.floor(len(STREAMS) / len(workers)) + 1  # fair share + 1
    assert max(Counter(held.values()).values()) <= bound


def test_workers_balance_within_fair_share_plus_one(moto_server: MotoServer) -> None:
    clock = Clock(1_800_000_000.0)
    a, b, c = (coordinator(moto_server, name, clock) for name in "abc")
    assert a.balance(STREAMS) == set(STREAMS)  # alone: everything
    assert a.deadline("cam-0") == clock.now + LEASE_S
    assert b.deadline("cam-0") is None
    settle([a, b])
    assert_shared(moto_server, [a, b], clock.now)
    settle([a, b, c])
    assert_shared(moto_server, [a, b, c], clock.now)
    assert {len(w.owned) for w in (a, b, c)} == {3}
    counters = {s: lease.counter for s, lease in a.store.table_state().leases.items()}

    # Renewals move the deadlines on and leave the split alone.
    clock.now += 4
    settle([a, b, c], rounds=1)
    assert a.deadline(sorted(a.owned)[0]) == clock.now + LEASE_S
    assert {s: lease.counter for s, lease in a.store.table_state().leases.items()} == counters

    # c stops: it hands its leases back at once (no waiting for expiry)...
    c_streams = set(c.owned)
    c.store.save(sorted(c_streams)[0], Checkpoint("0042", "token-42"))
    c.release_all()
    assert all(owners(moto_server, clock.now)[s] is None for s in c_streams)
    # ...and a and b take them on their next rounds, with the clock standing still.
    settle([a, b], rounds=2)
    assert_shared(moto_server, [a, b], clock.now)
    assert c_streams <= a.owned | b.owned
    saved = a.store.load(sorted(c_streams)[0])  # and go on from c's checkpoints
    assert saved is not None and saved.fragment_number == "0042"
    assert saved.continuation_token == "token-42"

    # b dies (stops renewing): nothing moves before its leases expire, all after.
    b_streams = set(b.owned)
    clock.now += LEASE_S - 1
    a.balance(STREAMS)
    assert not a.owned & b_streams
    clock.now += 2
    assert a.balance(STREAMS) == set(STREAMS)
    assert_shared(moto_server, [a], clock.now)
    # b comes back: its renewals fail, it learns it lost them, and takes its share back
    # only as a releases it (never while a holds it).
    lost: list[str] = []
    b._on_lost = lost.append
    b.balance(STREAMS)
    assert set(lost) == b_streams and not b.owned
    settle([a, b])
    assert_shared(moto_server, [a, b], clock.now)


def test_fleet_status_shows_workers_streams_lags_and_lease_ages(
    moto_server: MotoServer, aws_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    store = DynamoDBCheckpointStore(
        TABLE, client=moto_server.client(), owner_id="worker-1", lease_duration_s=30
    )
    worker = LeaseCoordinator(
        store,
        status=lambda: {"streams": {s: {"lag_ms": 120 + n} for n, s in enumerate(STREAMS[:2])}},
    )
    worker.balance(STREAMS[:2])
    store.save("cam-0", Checkpoint("0007"))
    time.sleep(0.05)
    worker.balance(STREAMS[:2])  # the heartbeat now carries the status
    common = ["--lease-table", f"dynamodb:{TABLE}", "--dynamodb-endpoint-url", moto_server.url]
    assert main(["fleet", "status", *common]) == 0
    out = capsys.readouterr().out
    assert "worker-1" in out and "yes" in out
    row = next(line for line in out.splitlines() if line.startswith("cam-0 "))
    assert row.split()[1] == "worker-1" and row.split()[-2:] == ["120ms", "0007"]
    assert main(["fleet", "status", "--json", *common]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["workers"]["worker-1"]["alive"] is True
    assert document["workers"]["worker-1"]["status"]["streams"]["cam-1"] == {"lag_ms": 121}
    cam0 = document["streams"]["cam-0"]
    assert cam0["owner"] == "worker-1" and cam0["checkpoint"] == "0007"
    assert 0 <= cam0["held_for_s"] < 30 and 0 <= cam0["lease_renewed_age_s"] <= cam0["held_for_s"]
    assert 0 < cam0["lease_expires_in_s"] <= 30
    worker.release_all()
    assert main(["fleet", "status", "--json", *common]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["workers"] == {} and document["streams"]["cam-0"]["owner"] is None
