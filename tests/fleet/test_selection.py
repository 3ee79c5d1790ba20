"""Stream selection: names, PREFIX* and @FILE, ListStreams with pagination against the
real emulator, and a worker picking up new streams and dropping deleted ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.checkpoint import JsonFileCheckpointStore
from kvs_toolkit.consumer.fleet import FleetWorker, StreamSelection, list_matching_streams
from kvs_toolkit.emulator import Emulator

from .conftest import kvs_client, wait_until


def test_selection_parses_names_prefixes_and_files(tmp_path: Path) -> None:
    listing = tmp_path / "cameras.txt"
    listing.write_text("# the lobby\nlobby-1\n\n  garage-*   # every garage camera\nlobby-2\n")
    selection = StreamSelection.parse(["door", "cam-*", f"@{listing}", "door", "cam-*"])
    assert selection.names == {"door"} and selection.prefixes == ("cam-",)
    expanded = selection.expand()
    assert expanded.names == {"door", "lobby-1", "lobby-2"}
    assert expanded.prefixes == ("cam-", "garage-")
    assert expanded.matches("garage-7") and expanded.matches("door")
    assert not expanded.matches("doors") and not expanded.matches("lobby-3")
    assert StreamSelection.parse(["*"]).matches("anything")

    with pytest.raises(ValueError, match=r"'bad name' is not a stream name or PREFIX\*"):
        StreamSelection.parse(["bad name"])
    with pytest.raises(ValueError, match="'@' needs a file name"):
        StreamSelection.parse(["@"])
    with pytest.raises(ValueError, match=r"cannot read stream list .*missing\.txt"):
        StreamSelection.parse([f"@{tmp_path / 'missing.txt'}"]).expand()
    nested = tmp_path / "nested.txt"
    nested.write_text(f"@{listing}\n")
    with pytest.raises(ValueError, match="a stream list cannot name another list"):
        StreamSelection.parse([f"@{nested}"]).expand()
    with pytest.raises(ValueError, match="no streams selected"):
        FleetWorker([" "], on_frame=lambda frame, stream: None, aws=AwsAccess())


class CountingClient:
    """The real boto3 client, counting the ListStreams pages it fetched."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests: list[dict[str, Any]] = []

    def list_streams(self, **request: Any) -> Any:
        self.requests.append(request)
        return self.client.list_streams(**request)


def test_listing_pages_through_every_stream(emulator: Emulator, aws_env: dict[str, str]) -> None:
    control = kvs_client(emulator.endpoint_url)
    for name in ["cam-1", "cam-2", "cam-3", "cam-4", "cam-5", "other-1", "other-2"]:
        control.create_stream(StreamName=name, DataRetentionInHours=1)
    client = CountingClient(control)
    found = list_matching_streams(client, StreamSelection.parse(["cam-*"]), page_size=2)
    assert found == {"cam-1", "cam-2", "cam-3", "cam-4", "cam-5"}
    assert len(client.requests) == 3  # 2 + 2 + 1, following NextToken
    assert client.requests[0]["StreamNameCondition"] == {
        "ComparisonOperator": "BEGINS_WITH",
        "ComparisonValue": "cam-",
    }
    # Exact names: one listing of everything, filtered (no DescribeStream per name).
    client.requests.clear()
    selection = StreamSelection.parse(["other-2", "cam-5", "no-such-stream"])
    assert list_matching_streams(client, selection, page_size=3) == {"other-2", "cam-5"}
    assert len(client.requests) == 3 and "StreamNameCondition" not in client.requests[0]


def test_worker_picks_up_new_streams_and_drops_deleted_ones(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    url = emulator.endpoint_url
    control = kvs_client(url)
    for name in ["porch-1", "porch-2", "attic-1"]:
        control.create_stream(StreamName=name, DataRetentionInHours=1)
    listing = tmp_path / "streams.txt"
    listing.write_text("porch-*\n")
    checkpoints = JsonFileCheckpointStore(tmp_path / "checkpoints.json")
    frames: list[str] = []

    def on_frame(frame: Any, stream: str) -> None:
        frames.append(stream)

    worker = FleetWorker(
        [f"@{listing}"],
        on_frame=on_frame,
        aws=AwsAccess(endpoint_url=url),
        checkpoint_store=checkpoints,
        relist_interval_s=0.3,
        list_page_size=1,
    )
    with worker:
        wait_until(lambda: worker.held == {"porch-1", "porch-2"}, 10, "porch streams read")
        control.create_stream(StreamName="porch-3", DataRetentionInHours=1)
        wait_until(lambda: "porch-3" in worker.held, 10, "new stream picked up")
        control.delete_stream(StreamARN=control.describe_stream(StreamName="porch-1")[
            "StreamInfo"]["StreamARN"])  # fmt: skip
        wait_until(lambda: worker.held == {"porch-2", "porch-3"}, 10, "deleted stream dropped")
        listing.write_text("porch-*\nattic-1\n")  # the list file is read again
        wait_until(lambda: "attic-1" in worker.held, 10, "list file change picked up")
    assert worker.held == set()
    assert set(worker.stats()) == {"porch-1", "porch-2", "porch-3", "attic-1"}
    assert not frames  # nothing was produced


def test_run_fleet_with_a_partial_namespace_and_a_local_checkpoint(
    tmp_path: Path, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    """``run_fleet`` as ``kvs consume --streams`` will call it: a namespace with only some
    of the options; SIGTERM ends it with status 0 after the last checkpoint."""
    import argparse
    import json
    import os
    import signal
    import threading
    import time

    from kvs_toolkit.cli.fleet import run_fleet

    from .conftest import LiveProducers, fragment_numbers, sample_file

    url = emulator.endpoint_url
    kvs_client(url).create_stream(StreamName="shed", DataRetentionInHours=1)
    LiveProducers(url, ["shed"], sample_file(tmp_path, 2.0)).start().join(30)
    numbers = fragment_numbers(url, "shed")
    out, checkpoint = tmp_path / "frames.jsonl", tmp_path / "checkpoints.json"

    def lines() -> list[dict[str, Any]]:
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    default = signal.getsignal(signal.SIGTERM)

    def terminate_when(condition: Any) -> threading.Thread:
        def watch() -> None:
            # Only once run_fleet's own handler is in place (else SIGTERM ends pytest).
            wait_until(lambda: signal.getsignal(signal.SIGTERM) != default, 30, "handler")
            wait_until(condition, 30, "frames written")
            os.kill(os.getpid(), signal.SIGTERM)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread

    args = argparse.Namespace(
        streams=["shed"], endpoint_url=url, out=str(out), checkpoint=str(checkpoint),
        start="earliest", progress=False,
    )  # fmt: skip
    # the first run through `kvs consume --streams` itself
    from kvs_toolkit.cli import build_parser
    from kvs_toolkit.cli.consume import run as consume

    consume_args = build_parser("consume").parse_args(
        ["consume", "--streams", "shed", "--endpoint-url", url, "--out", str(out),
         "--checkpoint", str(checkpoint), "--start", "earliest", "--no-progress"]
    )  # fmt: skip
    watcher = terminate_when(lambda: len(lines()) == 20)
    assert consume(consume_args) == 0
    watcher.join(5)
    assert [r["stream_name"] for r in lines()] == ["shed"] * 20
    assert {r["fragment_number"] for r in lines()} == set(numbers)
    saved = JsonFileCheckpointStore(checkpoint).load("shed")
    assert saved is not None and saved.fragment_number == numbers[-1]
    # Again: it resumes after the checkpoint, so nothing is delivered twice (watched for
    # 2 s: the first run delivered everything within that).
    first_asked: list[float] = []

    def two_seconds_later() -> bool:
        first_asked.append(time.monotonic())
        return first_asked[-1] - first_asked[0] > 2

    watcher = terminate_when(two_seconds_later)
    assert run_fleet(args) == 0
    watcher.join(5)
    assert len(lines()) == 20
