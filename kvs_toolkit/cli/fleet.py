"""``kvs fleet``: many streams in one process, shared by processes on many machines.

* ``kvs fleet run --streams NAME|PREFIX*|@FILE ... [--lease-table dynamodb:TABLE]``
  reads every selected stream (:class:`~kvs_toolkit.consumer.fleet.FleetWorker`),
  writes one JSON line per frame to ``--out`` and a status line with per-stream lags
  to stderr. With ``--lease-table`` the streams are shared with every other worker on
  that table; checkpoints live in it too. The first SIGTERM/SIGINT hands every lease
  back at once (after the fragments being delivered are done and checkpointed).
* ``kvs fleet status --lease-table dynamodb:TABLE``: workers, their streams, lags and
  lease ages, as the table holds them.

:func:`run_fleet` is the runner behind ``kvs fleet run`` (and ``kvs consume --streams``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import IO, TYPE_CHECKING, Any

from kvs_toolkit.cli import options
from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_OK,
    GracefulStop,
    StatusLine,
    add_global_options,
    aws_from_args,
    fail,
)

if TYPE_CHECKING:
    from kvs_toolkit.consumer.frames import DecodedFrame

__all__ = [
    "add_arguments",
    "add_decode_pool_option",
    "add_run_arguments",
    "run",
    "run_fleet",
    "run_status",
]


def _table(text: str) -> str:
    kind, sep, table = text.partition(":")
    if kind != "dynamodb" or not sep or not table:
        raise argparse.ArgumentTypeError(f"expected dynamodb:TABLE, not {text!r}")
    return table


def _add_table_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--lease-table",
        type=_table,
        required=required,
        metavar="dynamodb:TABLE",
        help="DynamoDB table of the leases and checkpoints shared by the workers",
    )
    parser.add_argument(
        "--dynamodb-endpoint-url",
        metavar="URL",
        help="DynamoDB endpoint (AWS_ENDPOINT_URL_DYNAMODB; default AWS); --endpoint-url "
        "is the Kinesis Video one",
    )


def add_decode_pool_option(parser: argparse.ArgumentParser) -> None:
    """``--decode-pool`` and ``--decode-threads``, the same in ``kvs fleet run`` and
    ``kvs consume --streams``."""
    parser.add_argument(
        "--decode-pool",
        choices=("threads", "processes"),
        help="with --streams: decode and analyse in a pool of threads (the default) or of "
        "processes (each stream in one process; see docs/fleet.md for which is faster)",
    )
    parser.add_argument(
        "--decode-threads",
        type=options.positive_int,
        metavar="N",
        help="with --streams: the decoding pool's size, threads or processes (default: cores)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kvs fleet run`` (also for ``kvs consume --streams``)."""
    parser.add_argument(
        "--streams",
        nargs="+",
        required=True,
        metavar="NAME|PREFIX*|@FILE",
        help="streams to read: names, name prefixes ending in '*', @FILE with one a line",
    )
    _add_table_options(parser, required=False)
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="without --lease-table: a local checkpoint store (SQLite, or .json)",
    )
    parser.add_argument(
        "--start",
        default="now",
        help="where a stream without a checkpoint starts: now (default), earliest, ...",
    )
    parser.add_argument("--out", metavar="FILE.jsonl", help="one JSON line per frame")
    parser.add_argument("--keyframes-only", action="store_true", help="decode key frames only")
    parser.add_argument(
        "--fps", type=options.positive_float, help="keep at most N frames per second"
    )
    parser.add_argument(
        "--format", choices=("bgr24", "rgb24", "gray"), default="bgr24", help="pixel format"
    )
    parser.add_argument(
        "--model",
        choices=("none", "motion"),
        default="none",
        help="analysis per frame: none (default) or motion (OpenCV, one model per stream)",
    )
    add_decode_pool_option(parser)
    parser.add_argument(
        "--lease-duration",
        type=options.positive_float,
        default=30.0,
        metavar="S",
        help="lease timeout in seconds (default 30): a dead worker's streams move after it",
    )
    parser.add_argument(
        "--relist-interval",
        type=options.positive_float,
        default=60.0,
        metavar="S",
        help="list the streams again every S seconds (default 60)",
    )
    parser.add_argument("--worker-id", help="this worker's id (default host-pid-random)")
    parser.add_argument(
        "--create-table", action="store_true", help="create the lease table if it is missing"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no status line"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    run_parser = sub.add_parser("run", help="read many streams, shared with other workers")
    add_global_options(run_parser, suppress=True)
    add_run_arguments(run_parser)
    run_parser.set_defaults(fleet_handler=run_fleet)
    status = sub.add_parser("status", help="workers, their streams, lags and lease ages")
    add_global_options(status, suppress=True)
    _add_table_options(status, required=True)
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(fleet_handler=run_status)


def run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.fleet_handler
    return handler(args)


def _dynamodb_endpoint(args: argparse.Namespace) -> str | None:
    given: str | None = getattr(args, "dynamodb_endpoint_url", None)
    return given or os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or None


@dataclass(frozen=True)
class _RecordHandlers:
    """Per stream: the frame's JSON line (with ``detections`` under ``--model
    motion``, one detector per stream). A module-level class, so that a process pool
    can run it where the frames are decoded (only the line comes back)."""

    model: str = "none"

    def __call__(self, stream: str) -> Callable[[DecodedFrame], str]:
        if self.model != "motion":
            return lambda frame: _record(frame, stream)
        from kvs_toolkit.analysis.motion import MotionDetector

        detector = MotionDetector()
        return lambda frame: _record(frame, stream, detector.detect([frame])[0])


def _record(frame: DecodedFrame, stream: str, detections: Any = None) -> str:
    """The same JSON record as ``kvs consume``'s (one name per field, see
    docs/consumer.md), with the stream's name."""
    from kvs_toolkit.consumer.pipeline import frame_record

    record: dict[str, Any] = {**frame_record(frame), "stream_name": stream}
    if detections is not None:
        record["detections"] = [d.to_json() for d in detections]
    return json.dumps(record, separators=(",", ":")) + "\n"


class _Output:
    """JSON lines, one write and flush per frame, so a killed worker leaves whole lines
    (plus at most one cut line) behind."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._out: IO[str] | None = None
        if path == "-":
            self._out = sys.stdout
        elif path:
            self._out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, line: str) -> None:
        if self._out is None:
            return
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def close(self) -> None:
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()


@dataclass
class _RunOptions:
    """The options of ``kvs fleet run``, with its defaults for any a parser lacks."""

    streams: list[str] = field(default_factory=list)
    lease_table: str | None = None
    checkpoint: str | None = None
    start: str = "now"
    out: str | None = None
    keyframes_only: bool = False
    fps: float | None = None
    format: str = "bgr24"
    model: str = "none"
    decode_threads: int | None = None
    decode_pool: str | None = None
    lease_duration: float = 30.0
    relist_interval: float = 60.0
    worker_id: str | None = None
    create_table: bool = False
    progress: bool = True

    @classmethod
    def of(cls, args: argparse.Namespace) -> _RunOptions:
        names = [f.name for f in fields(cls)]
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def run_fleet(args: argparse.Namespace) -> int:
    """``kvs fleet run`` (and ``kvs consume --streams``): runs until SIGINT/SIGTERM.

    Reads the options :func:`add_run_arguments` defines; a parser that defines only
    some of them (plus ``--streams``) gets the defaults for the others."""
    opt = _RunOptions.of(args)
    from kvs_toolkit.consumer.checkpoint import open_checkpoint_store
    from kvs_toolkit.consumer.fleet import FleetWorker, StreamSelection, summarize
    from kvs_toolkit.consumer.readers import StartSelector

    try:
        selection = StreamSelection.parse(opt.streams)
        # Checkpoints are always used when there are any; "checkpoint" (kvs consume's
        # spelling of that) starts the others at NOW.
        start = StartSelector.parse("now" if opt.start == "checkpoint" else opt.start)
    except ValueError as exc:
        return fail("fleet", exc)
    if opt.lease_table and opt.checkpoint:
        return fail("fleet", "--checkpoint and --lease-table exclude each other")
    aws = aws_from_args(args)
    aws.check()
    # The first listing follows the shared dead-endpoint rule (retried up to
    # --max-attempts, then one line and exit 2); later listings keep the worker running
    # through outages of the control plane.
    from kvs_toolkit.aws import call_with_retry
    from kvs_toolkit.consumer.fleet import list_matching_streams

    control = aws.client("kinesisvideo")
    try:
        call_with_retry(aws, "ListStreams", lambda: list_matching_streams(control, selection))
    finally:
        control.close()
    out = _Output(opt.out)

    def write(line: str, _stream: str) -> None:
        out.write(line)

    pool: dict[str, Any] = {"decode_pool": opt.decode_pool} if opt.decode_pool else {}
    try:
        worker = FleetWorker(
            selection,
            handler_factory=_RecordHandlers(opt.model),
            on_result=write,
            aws=aws,
            lease_table=opt.lease_table,
            dynamodb_endpoint_url=_dynamodb_endpoint(args),
            owner_id=opt.worker_id,
            lease_duration_s=opt.lease_duration,
            checkpoint_store=open_checkpoint_store(opt.checkpoint) if opt.checkpoint else None,
            create_table=opt.create_table,
            start_at=start,
            relist_interval_s=opt.relist_interval,
            decode_threads=opt.decode_threads,
            **pool,
            keyframes_only=opt.keyframes_only,
            fps=opt.fps,
            format=opt.format,
        )
    except ValueError as exc:
        out.close()
        return fail("fleet", exc)
    stop = threading.Event()
    status = StatusLine() if opt.progress else None
    graceful = GracefulStop("fleet", stop.set, "handing the leases back (at most a few seconds)")
    with graceful.installed():
        worker.start()
        try:
            while not stop.wait(1.0) and not worker.failed.is_set():
                if status is not None:
                    held = sorted(worker.held)
                    status.show(f"{worker.owner_id}: {summarize(worker.stats(), held)}")
        finally:
            worker.stop()
            out.close()
    if status is not None:
        status.show(f"{worker.owner_id}: stopped; {summarize(worker.stats())}", final=True)
    if worker.failure is not None:
        return fail("fleet", worker.failure, EXIT_INCOMPLETE)
    return EXIT_OK


def _age(now: float, then: float | None) -> str:
    return "-" if then is None else f"{now - then:.1f}s"


def run_status(args: argparse.Namespace) -> int:
    """``kvs fleet status``: the table as it is now."""
    from kvs_toolkit.consumer.checkpoint import DynamoDBCheckpointStore
    from kvs_toolkit.errors import CheckpointError

    aws = aws_from_args(args)
    store = DynamoDBCheckpointStore.from_aws(
        aws, args.lease_table, endpoint_url=_dynamodb_endpoint(args), timeout_s=10.0
    )
    try:
        state = store.table_state()
    except CheckpointError as exc:
        return fail("fleet", exc)
    now = time.time()
    if args.json:
        document = {
            "now": now,
            "workers": {
                w.owner: {
                    "alive": w.alive_at(now),
                    "heartbeat_age_s": None if w.beat is None else now - w.beat,
                    "status": w.status,
                }
                for w in state.workers.values()
            },
            "streams": {
                lease.stream: {
                    "owner": lease.owner if lease.held_at(now) else None,
                    "lease_expires_in_s": None if lease.expires is None else lease.expires - now,
                    "lease_renewed_age_s": None if lease.renewed is None else now - lease.renewed,
                    "held_for_s": None if lease.acquired is None else now - lease.acquired,
                    "counter": lease.counter,
                    "checkpoint": None
                    if lease.checkpoint is None
                    else lease.checkpoint.fragment_number,
                }
                for lease in state.leases.values()
            },
        }
        print(json.dumps(document, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{'WORKER':<40} {'ALIVE':<5} {'BEAT':>7} {'STREAMS':>7}")
    for worker in sorted(state.workers.values(), key=lambda w: w.owner):
        streams = worker.status.get("streams", {})
        alive = "yes" if worker.alive_at(now) else "no"
        print(f"{worker.owner:<40} {alive:<5} {_age(now, worker.beat):>7} {len(streams):>7}")
    print()
    print(
        f"{'STREAM':<32} {'OWNER':<40} {'HELD':>8} {'RENEWED':>8} {'EXPIRES':>8} "
        f"{'LAG':>8} {'CHECKPOINT'}"
    )
    lags: dict[str, Any] = {}
    for worker in state.workers.values():
        for stream, info in worker.status.get("streams", {}).items():
            if isinstance(info, dict):
                lags[stream] = info.get("lag_ms")
    for lease in sorted(state.leases.values(), key=lambda item: item.stream):
        owner = lease.owner if lease.held_at(now) else "(free)"
        expires = "-" if lease.expires is None else f"{lease.expires - now:.1f}s"
        lag = lags.get(lease.stream) if lease.held_at(now) else None
        lag_text = "-" if lag is None else f"{lag}ms"
        checkpoint = lease.checkpoint.fragment_number if lease.checkpoint else "-"
        print(
            f"{lease.stream:<32} {owner or '(free)':<40} {_age(now, lease.acquired):>8} "
            f"{_age(now, lease.renewed):>8} {expires:>8} {lag_text:>8} {checkpoint}"
        )
    return EXIT_OK if state.leases or state.workers else EXIT_INVALID
