"""Checkpoints and leases: the JSON file store, DynamoDB (moto) with leases, and resuming
live readers from them against the real emulator."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from kvs_toolkit.consumer.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    DynamoDBCheckpointStore,
    JsonFileCheckpointStore,
    LeaseCoordinator,
    LeaseLostError,
)
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.mkv import Fragment

from .test_readers import Collector, Producer, create_stream, live_reader, numbers

TABLE = "kvs-consumer-checkpoints"
STREAMS = ["cam-1", "cam-2", "cam-3", "cam-4"]


class Clock:
    """Epoch seconds that only move when told to (leases expire without waiting)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # moto stands in for DynamoDB, which the emulator does not emulate. Requests to the
    # emulator's own endpoint URL pass through moto untouched.
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        DynamoDBCheckpointStore.create_table(client, TABLE)
        yield client


def saved_number(checkpoints: CheckpointStore, stream: str) -> str:
    checkpoint = checkpoints.load(stream)
    assert checkpoint is not None, f"no checkpoint for {stream}"
    return checkpoint.fragment_number


def store(client: Any, owner: str | None = None, clock: Clock | None = None) -> Any:
    return DynamoDBCheckpointStore(
        TABLE, client=client, owner_id=owner, lease_duration_s=10, clock=clock or Clock()
    )


# --- the JSON file ------------------------------------------------------------------------
def test_json_file_store_round_trip_and_atomic_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "state" / "checkpoints.json"
    first = JsonFileCheckpointStore(path)
    assert isinstance(first, CheckpointStore)
    assert first.load("a") is None
    one = Checkpoint("0001", "0001", producer_timestamp=1.5, server_timestamp=2.25)
    first.save("a", one)
    first.save("b", Checkpoint("0009"))
    first.save("a", Checkpoint("0002", "token-2"))
    again = JsonFileCheckpointStore(path)  # a new process reads what the last one wrote
    assert again.load("a") == first.load("a")
    loaded = again.load("a")
    assert loaded is not None and loaded.continuation_token == "token-2"
    assert saved_number(again, "b") == "0009"
    assert os.listdir(path.parent) == ["checkpoints.json"]  # no temp file left behind
    document = json.loads(path.read_text())
    assert document["version"] == 1 and set(document["streams"]) == {"a", "b"}


def test_json_file_store_reports_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoints\.json is not valid"):
        JsonFileCheckpointStore(path).load("a")
    path.write_text(json.dumps({"streams": {"a": {"continuation_token": "x"}}}))
    with pytest.raises(CheckpointError, match="without a fragment_number"):
        JsonFileCheckpointStore(path).load("a")


def test_json_file_store_errors_leave_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint file .*Not a directory"):
        JsonFileCheckpointStore(blocker / "checkpoints.json").save("a", Checkpoint("1"))
    path = tmp_path / "checkpoints.json"
    good = JsonFileCheckpointStore(path)
    good.save("a", Checkpoint("1"))

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint file .*No space left"):
        good.save("a", Checkpoint("2"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints.json", "file"]  # temp file removed
    assert saved_number(JsonFileCheckpointStore(path), "a") == "1"


def test_checkpoint_of_a_fragment_without_number_is_refused() -> None:
    with pytest.raises(CheckpointError, match="without a fragment number"):
        Checkpoint.of(Fragment(tags=(), tracks=(), cluster_timecode=0, frames=()))


# --- resuming a live reader after a crash ----------------------------------------------------
def _crash_after(reader: Any, processed: list[Fragment], count: int) -> None:
    """Process fragments until the ``count``-th one, which "crashes" while handled."""
    with pytest.raises(RuntimeError, match="crash"):
        for fragment in reader:
            if len(processed) == count - 1:
                raise RuntimeError("crash")
            processed.append(fragment)


@pytest.mark.parametrize("every", [1, 3])
def test_checkpoint_file_resume_after_a_crash(tmp_path: Path, every: int) -> None:
    with Emulator(credentials={"AKIDCONSUMER": "consumer-secret"}) as emulator:
        url = emulator.endpoint_url
        create_stream(url, "door")
        producer = Producer(url, "door")
        producer.send(8)
        path = tmp_path / "checkpoints.json"
        processed: list[Fragment] = []
        first = live_reader(
            url,
            "door",
            start="earliest",
            checkpoint_store=JsonFileCheckpointStore(path),
            checkpoint_every=every,
        )
        _crash_after(first, processed, 5)  # fragments 1-4 processed, 5 crashed
        first.stop()  # what dies with the process: no close(), no final save
        saved = JsonFileCheckpointStore(path).load("door")
        assert saved is not None
        # A fragment is saved once processed: with every=3 only fragment 3 made it.
        expected_saved = 4 if every == 1 else 3
        assert saved.fragment_number == producer.numbers[expected_saved - 1]

        # A new process: the start selector is ignored, the checkpoint wins.
        second = live_reader(
            url, "door", start="now", checkpoint_store=JsonFileCheckpointStore(path)
        )
        rest = Collector(second, until=8 - expected_saved).finish()
        second.close()
        assert numbers(rest) == producer.numbers[expected_saved:]
        if every == 1:  # exactly the rest: no loss, no repeat
            assert numbers(processed) + numbers(rest) == producer.numbers
        assert saved_number(JsonFileCheckpointStore(path), "door") == producer.numbers[-2]


def test_commit_and_close_save_the_processed_position(tmp_path: Path) -> None:
    with Emulator(credentials={"AKIDCONSUMER": "consumer-secret"}) as emulator:
        url = emulator.endpoint_url
        create_stream(url, "porch")
        producer = Producer(url, "porch")
        producer.send(4)
        path = tmp_path / "checkpoints.json"
        reader = live_reader(
            url,
            "porch",
            start="earliest",
            checkpoint_store=JsonFileCheckpointStore(path),
            checkpoint_every=None,
            checkpoint_interval_s=3600,
        )
        got = Collector(reader, until=3).finish()
        assert JsonFileCheckpointStore(path).load("porch") is None  # not due yet
        reader.close()  # saves what was processed: fragments 1 and 2 (3 was not committed)
        assert saved_number(JsonFileCheckpointStore(path), "porch") == numbers(got)[1]
        reader.commit()  # the caller says fragment 3 is done too
        assert saved_number(JsonFileCheckpointStore(path), "porch") == numbers(got)[2]
        assert reader.stats.checkpoints_saved == 2


# --- DynamoDB -----------------------------------------------------------------------------------
def test_dynamodb_store_round_trip(dynamodb: Any) -> None:
    plain = store(dynamodb)
    assert isinstance(plain, CheckpointStore)
    assert plain.load("cam-1") is None
    checkpoint = Checkpoint("0042", "tok", producer_timestamp=1.5, server_timestamp=2.5)
    plain.save("cam-1", checkpoint)
    assert plain.load("cam-1") == checkpoint
    plain.save("cam-1", Checkpoint("0043", updated_at=3.0))  # optional fields removed
    assert plain.load("cam-1") == Checkpoint("0043", updated_at=3.0)
    DynamoDBCheckpointStore.create_table(dynamodb, TABLE)  # exists already: no-op


def test_two_consumers_share_four_streams_with_leases(dynamodb: Any) -> None:
    clock = Clock()
    a = LeaseCoordinator(store(dynamodb, "worker-a", clock))
    b = LeaseCoordinator(store(dynamodb, "worker-b", clock))
    # A alone takes everything.
    assert a.balance(STREAMS) == set(STREAMS)
    # B joins: nothing is free yet, but A sees two workers and releases its surplus...
    assert b.balance(STREAMS) == set()
    held_by_a = a.balance(STREAMS)
    assert len(held_by_a) == 2
    # ...which B takes on its next round.
    held_by_b = b.balance(STREAMS)
    assert held_by_a | held_by_b == set(STREAMS) and not held_by_a & held_by_b
    for stream in STREAMS:  # each stream owned by exactly one, as stored
        owner = a.store.lease(stream).owner
        assert owner == ("worker-a" if stream in held_by_a else "worker-b")
    # Renewals keep the split stable.
    clock.advance(5)
    assert a.balance(STREAMS) == held_by_a and b.balance(STREAMS) == held_by_b

    # B saves checkpoints for its streams, then dies (stops renewing).
    stream_of_b = sorted(held_by_b)[0]
    b.store.save(stream_of_b, Checkpoint("0007", "0007"))
    clock.advance(5)
    assert a.balance(STREAMS) == held_by_a  # B's lease (10 s) has not expired yet
    clock.advance(6)
    assert a.balance(STREAMS) == set(STREAMS)  # expired: A takes over
    assert a.store.load(stream_of_b) == b.store.load(stream_of_b)  # and resumes from it
    # B comes back: its save is refused, and its next round notices the loss.
    with pytest.raises(
        LeaseLostError, match=f"worker-b no longer holds the lease of stream '{stream_of_b}'"
    ):
        b.store.save(stream_of_b, Checkpoint("0008"))
    lost: list[str] = []
    b._on_lost = lost.append
    assert b.balance(STREAMS) == set()
    assert sorted(lost) == sorted(held_by_b)
    assert saved_number(a.store, stream_of_b) == "0007"


def test_lease_is_taken_by_exactly_one_of_two_racers(dynamodb: Any) -> None:
    clock = Clock()
    a, b = store(dynamodb, "a", clock), store(dynamodb, "b", clock)
    assert a.acquire_lease("cam-1") is True
    assert b.acquire_lease("cam-1") is False  # conditional put: a holds it
    assert b.renew_lease("cam-1") is False
    assert b.release_lease("cam-1") is False
    assert a.renew_lease("cam-1") is True
    assert a.lease("cam-1").counter == 1
    assert a.release_lease("cam-1") is True
    assert b.acquire_lease("cam-1") is True
    assert b.lease("cam-1").owner == "b" and b.lease("cam-1").counter == 2


def test_leases_need_an_owner(dynamodb: Any) -> None:
    with pytest.raises(CheckpointError, match="owner_id"):
        store(dynamodb).acquire_lease("cam-1")


def test_dynamodb_errors_are_checkpoint_errors(dynamodb: Any) -> None:
    missing = DynamoDBCheckpointStore("no-such-table", client=dynamodb)
    with pytest.raises(CheckpointError, match="GetItem 'cam-1' failed"):
        missing.load("cam-1")
    with pytest.raises(CheckpointError, match="UpdateItem 'cam-1' failed"):
        missing.save("cam-1", Checkpoint("1"))


def test_leased_consumers_read_their_streams_and_take_over_after_expiry(dynamodb: Any) -> None:
    """Two consumers, four emulated streams: each stream read by exactly one consumer; a
    crashed consumer's streams continue, from its checkpoints, on the other one."""
    clock = Clock()
    with Emulator(credentials={"AKIDCONSUMER": "consumer-secret"}) as emulator:
        url = emulator.endpoint_url
        producers = {}
        for stream in STREAMS:
            create_stream(url, stream)
            producers[stream] = Producer(url, stream)
            producers[stream].send(3)
        workers = {name: LeaseCoordinator(store(dynamodb, name, clock)) for name in ("a", "b")}
        for _round in range(2):
            for worker in workers.values():
                worker.balance(STREAMS)
        read: dict[str, list[str | None]] = {}

        def consume(worker: LeaseCoordinator, stream: str, count: int) -> None:
            reader = live_reader(url, stream, start="earliest", checkpoint_store=worker.store)
            got = Collector(reader, until=count).finish()
            reader.commit()
            reader.close()
            read.setdefault(stream, []).extend(numbers(got))

        for worker in workers.values():
            for stream in sorted(worker.owned):
                consume(worker, stream, 2)  # 2 of the 3 fragments so far
        owners = {s: w for w in workers for s in workers[w].owned}
        assert sorted(owners) == STREAMS and set(owners.values()) == {"a", "b"}

        # b crashes. Its leases expire; a takes them over and goes on from b's checkpoints.
        for stream in STREAMS:
            producers[stream].send(1)
        clock.advance(11)
        assert workers["a"].balance(STREAMS) == set(STREAMS)
        for stream in STREAMS:
            consume(workers["a"], stream, 2)
        for stream in STREAMS:  # every fragment exactly once across both consumers
            assert read[stream] == producers[stream].numbers
