"""A worker whose DynamoDB server stops answering for a while (the moto process is
stopped with SIGSTOP and continued with SIGCONT: its state survives, the worker's calls
time out meanwhile).

Its calls are given a timeout longer than the outage, so they hang meanwhile (the worst
case: an endpoint that accepts connections but does not answer).

Short outage: the worker renews in time and keeps every stream, reading on without a
restart. Long outage: it stops delivering each stream before that stream's lease could
expire (so no successor could ever overlap with it), and once DynamoDB answers again it
takes the leases back and resumes from the checkpoints: every frame delivered, repeats
only within the fragment in progress.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.fleet import FleetWorker
from kvs_toolkit.consumer.frames import DecodedFrame
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

STREAMS = ["yard-0", "yard-1", "yard-2"]
LEASE_S = 6.0
SECONDS = 20.0


def test_worker_keeps_streams_through_a_short_outage_and_gives_them_up_in_a_long_one(
    tmp_path: Path, moto_server: MotoServer, emulator: Emulator, aws_env: dict[str, str]
) -> None:
    url = emulator.endpoint_url
    control = kvs_client(url)
    for stream in STREAMS:
        control.create_stream(StreamName=stream, DataRetentionInHours=1)
    producers = LiveProducers(url, STREAMS, sample_file(tmp_path, SECONDS)).start()
    delivered: list[tuple[str, str | None, int, float]] = []
    lock = threading.Lock()

    def on_frame(frame: DecodedFrame, stream: str) -> None:
        with lock:
            delivered.append((stream, frame.fragment_number, frame.timestamp_ns, time.time()))

    worker = FleetWorker(
        ["yard-*"],
        on_frame=on_frame,
        aws=AwsAccess(endpoint_url=url),
        lease_table=TABLE,
        dynamodb_endpoint_url=moto_server.url,
        owner_id="w",
        lease_duration_s=LEASE_S,
        # Calls to the stopped server hang for the whole outage: only the watchdog can
        # give the streams up in time (the control thread waits in its call).
        dynamodb_timeout_s=30.0,
        start_at="earliest",
        decode_threads=1,
    )
    coordinator = worker.coordinator
    assert coordinator is not None
    worker.start()
    try:
        wait_until(lambda: worker.held == set(STREAMS), 20, "all streams held")
        wait_until(lambda: {d[0] for d in delivered} == set(STREAMS), 20, "frames flowing")

        # Short outage (well inside the lease): nothing is given up, nothing restarts.
        moto_server.pause()
        paused = time.monotonic()
        time.sleep(0.3)  # a renewal sent just before the pause may still land
        stalled = {s: coordinator.deadline(s) for s in STREAMS}
        held_during: list[set[str]] = []
        while time.monotonic() - paused < 2.0:
            held_during.append(worker.held)
            time.sleep(0.05)
        # No renewal got through while the server was stopped...
        assert {s: coordinator.deadline(s) for s in STREAMS} == stalled
        moto_server.resume()
        frames_before = len(delivered)
        wait_until(lambda: len(delivered) > frames_before + 3 * FPS, 15, "reading on")
        # ...but the worker renewed in time once it was back, and never let go.
        assert all(held == set(STREAMS) for held in held_during)
        assert all((coordinator.deadline(s) or 0) > (stalled[s] or 0) for s in STREAMS)
        assert all(s.restarts == 0 for s in worker.stats().values())

        # Long outage (longer than the lease): each stream is given up before its lease
        # could expire, while DynamoDB is still unreachable.
        moto_server.pause()
        deadlines = {s: coordinator.deadline(s) for s in STREAMS}
        assert all(d is not None for d in deadlines.values())
        wait_until(lambda: worker.held == set(), LEASE_S + 2, "streams given up")
        gave_up_at = time.time()
        assert all(gave_up_at < d for d in deadlines.values() if d is not None)
        last_delivery = {s: max(t for (x, _n, _ts, t) in delivered if x == s) for s in STREAMS}
        for stream, deadline in deadlines.items():
            assert deadline is not None and last_delivery[stream] < deadline
        # Wait past the leases' expiry with DynamoDB still stopped: still nothing delivered.
        count = len(delivered)
        wait_until(
            lambda: time.time() > max(d for d in deadlines.values() if d is not None) + 0.5,
            LEASE_S + 2,
            "leases expired",
        )
        assert len(delivered) == count
        moto_server.resume()

        # DynamoDB is back: the leases are taken again and reading resumes from the
        # checkpoints.
        wait_until(lambda: worker.held == set(STREAMS), LEASE_S * 3, "streams taken back")
        results = producers.join(SECONDS + 30)
        assert all(results[s] == SECONDS * 1000 / 500 for s in STREAMS), results
        expected = {s: fragment_numbers(url, s) for s in STREAMS}

        def everything_delivered() -> bool:
            done = {(s, n) for (s, n, _ts, _t) in delivered}
            return all((s, expected[s][-1]) in done for s in STREAMS)

        wait_until(everything_delivered, 30, "last fragments delivered")
    finally:
        moto_server.resume()
        worker.stop()
    for stream in STREAMS:
        frames = [(n, ts) for (s, n, ts, _t) in delivered if s == stream]
        timestamps = Counter(ts for _n, ts in frames)
        assert len(timestamps) == int(SECONDS * FPS)  # every frame
        assert {n for n, _ts in frames} == set(expected[stream])
        repeated = {n for n, ts in frames if timestamps[ts] > 1}
        assert len(repeated) <= 1, (stream, repeated)  # only the fragment in progress
        assert worker.stats()[stream].restarts == 1  # given up once, taken back once
