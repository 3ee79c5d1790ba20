"""Consumer fleets: many streams per process, many processes on many machines.

A :class:`FleetWorker` is what a service embeds to read tens to thousands of streams::

    worker = FleetWorker(
        ["lobby-*", "@cameras.txt"],
        on_frame=lambda frame, stream: ...,
        aws=AwsAccess(),
        lease_table="kvs-fleet",          # share the streams with other processes
        keyframes_only=True,
    )
    worker.start()
    ...
    worker.stop()                         # hands its leases back at once

How the work is laid out, and why:

* **Selection** (:class:`StreamSelection`): names, ``PREFIX*`` and ``@FILE`` (one spec
  a line) are resolved with ListStreams (all pages, ``BEGINS_WITH`` when only
  prefixes are asked for; only ACTIVE streams) every ``relist_interval_s``: new
  streams are picked up, deleted ones dropped.
* **Reading**: one :class:`~kvs_toolkit.consumer.readers.LiveReader` thread per stream
  held. The threads spend their time blocked in socket reads (no GIL held); parsing a
  fragment is cheap next to decoding it. Each stream buffers at most
  ``max_pending_fragments`` parsed fragments: a slow stream blocks only its own reader
  (TCP back-pressure), never the others, and memory stays bounded.
* **Decoding and the callback** run in a bounded pool of ``decode_threads`` workers:
  threads (``decode_pool="threads"``; FFmpeg releases the GIL while it decodes) or
  processes (``decode_pool="processes"``, see :mod:`.processes`: each stream is
  assigned to one process, which owns its decoder and handler; fragments go there,
  small results come back, frames never leave it). Each stream is a *strand*: at
  most one pool worker works on it at a time, one fragment per turn, so its own
  :class:`~kvs_toolkit.consumer.decode.FragmentDecoder` (not thread-safe) needs no
  lock and streams take turns fairly. Which pool wins on a 2-core machine, and why
  threads are the default: docs/fleet.md.
* **Checkpoints**: after the last frame of a fragment was handed to the callback, the
  strand saves the fragment's checkpoint before it starts the next fragment (retrying
  a failed save). A worker that dies therefore repeats at most the fragment in
  progress; a successor resumes right after the checkpoint.
* **Leases** (with ``lease_table``): a
  :class:`~kvs_toolkit.consumer.checkpoint.LeaseCoordinator` in the same DynamoDB
  table as the checkpoints, balanced every ``lease_duration_s / 4`` by a control
  thread: heartbeats (with this worker's per-stream lags, for ``kvs fleet status``),
  renewals, taking free or expired leases, releasing surplus above
  ``ceil(streams / workers)``. A watchdog thread stops delivering a stream
  ``safety_margin_s`` before its lease could expire unless it was renewed, so a
  worker cut off from DynamoDB gives its streams up before anyone else may take them,
  and takes them up again (from the checkpoint) if it renews in time after all.

Clocks are injected: ``clock`` (epoch seconds, compared across hosts for leases) and
``monotonic`` (local intervals).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.consumer.checkpoint import (
    DEFAULT_LEASE_DURATION_S,
    Checkpoint,
    CheckpointStore,
    DynamoDBCheckpointStore,
    LeaseCoordinator,
)
from kvs_toolkit.consumer.fleet.processes import (
    DecodeProcess,
    DecoderSpec,
    PerStreamCallback,
    ProcessDied,
)
from kvs_toolkit.consumer.readers import Backoff, LiveReader, StartSelector
from kvs_toolkit.errors import CheckpointError, DecodeError, KvsError, LeaseLostError
from kvs_toolkit.retry import RetryPolicy

if TYPE_CHECKING:
    from kvs_toolkit.consumer.decode import FragmentDecoder
    from kvs_toolkit.consumer.frames import DecodedFrame
    from kvs_toolkit.mkv import Fragment

__all__ = [
    "DECODE_POOLS",
    "FleetWorker",
    "FrameCallback",
    "LagHistogram",
    "ResultCallback",
    "StreamHandler",
    "StreamSelection",
    "StreamStats",
    "list_matching_streams",
]

log = logging.getLogger(__name__)

#: ListStreams takes MaxResults 1..10000 (docs/kvs-wire.md "Control plane").
MAX_LIST_PAGE: Final = 10000
DEFAULT_RELIST_INTERVAL_S: Final = 60.0
DEFAULT_PENDING_FRAGMENTS: Final = 2
DECODE_POOLS: Final = ("threads", "processes")
# Measured by benchmarks/fleet_streams.py (docs/fleet.md "Threads or processes").
DEFAULT_DECODE_POOL: Final = "threads"
# A fragment delivered later than this after it arrived counts as late (stats only).
DEFAULT_LATE_AFTER_S: Final = 1.0
# A stream whose reader failed (e.g. GetMedia refused) is tried again after this long.
_RESTART_DELAY_S: Final = 5.0
_STREAM_NAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)


# --- which streams ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamSelection:
    """Stream names, name prefixes (``PREFIX*``) and ``@FILE`` lists of either.

    A file holds one spec a line (blank lines and ``#`` comments are ignored); it is
    read again by :meth:`expand` at every re-listing, so editing it changes the set.
    """

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str], *, allow_files: bool = True) -> StreamSelection:
        names: set[str] = set()
        prefixes: list[str] = []
        files: list[Path] = []
        for raw in specs:
            spec = raw.strip()
            if not spec:
                continue
            if spec.startswith("@"):
                if not allow_files:
                    raise ValueError(f"{spec!r}: a stream list cannot name another list")
                if len(spec) == 1:
                    raise ValueError("'@' needs a file name: @FILE")
                files.append(Path(spec[1:]))
                continue
            body = spec[:-1] if spec.endswith("*") else spec
            bad = set(body) - _STREAM_NAME_CHARS
            if bad or len(body) > 256 or (not body and not spec.endswith("*")):
                raise ValueError(
                    f"{spec!r} is not a stream name or PREFIX*: names are 1-256 characters "
                    "of a-z, A-Z, 0-9, _ . -"
                )
            if spec.endswith("*"):
                if body not in prefixes:
                    prefixes.append(body)
            else:
                names.add(body)
        return cls(frozenset(names), tuple(prefixes), tuple(files))

    def expand(self) -> StreamSelection:
        """The selection with its files read (:class:`ValueError` for an unreadable one)."""
        if not self.files:
            return self
        names, prefixes = set(self.names), list(self.prefixes)
        for path in self.files:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read stream list {path}: {exc.strerror or exc}") from exc
            specs = [line.split("#", 1)[0] for line in lines]
            try:
                inner = StreamSelection.parse(specs, allow_files=False)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from exc
            names |= inner.names
            prefixes += [p for p in inner.prefixes if p not in prefixes]
        return StreamSelection(frozenset(names), tuple(prefixes))

    def matches(self, name: str) -> bool:
        return name in self.names or any(name.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.names or self.prefixes or self.files)


def list_matching_streams(
    client: Any, selection: StreamSelection, *, page_size: int = MAX_LIST_PAGE
) -> set[str]:
    """The ACTIVE streams ``selection`` names, through ListStreams (every page).

    Only prefixes: one ``BEGINS_WITH`` listing per prefix. With exact names (a camera
    list may hold thousands): one listing of all streams, filtered here, rather than a
    DescribeStream per name.
    """
    if not 1 <= page_size <= MAX_LIST_PAGE:
        raise ValueError(f"page_size must be 1..{MAX_LIST_PAGE}, not {page_size}")
    selection = selection.expand()
    conditions: list[dict[str, str] | None]
    if selection.names or "" in selection.prefixes:
        conditions = [None]
    else:
        conditions = [
            {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": p} for p in selection.prefixes
        ]
    found: set[str] = set()
    for condition in conditions:
        request: dict[str, Any] = {"MaxResults": page_size}
        if condition is not None:
            request["StreamNameCondition"] = condition
        while True:
            page = client.list_streams(**request)
            for info in page.get("StreamInfoList", ()):
                name = info.get("StreamName", "")
                if info.get("Status", "ACTIVE") == "ACTIVE" and selection.matches(name):
                    found.add(name)
            token = page.get("NextToken")
            if not token:
                break
            request["NextToken"] = token
    return found


# --- callbacks and stats --------------------------------------------------------------------
FrameCallback = Callable[["DecodedFrame", str], Any]
#: ``on_result(result, stream)``: what a handler returned for a frame (when not None).
ResultCallback = Callable[[Any, str], None]


class LagHistogram:
    """Delivery lags of every fragment, in 5 ms bins up to 10 s (and the exact
    largest): percentiles over any number of fragments in 16 kB."""

    BIN_MS: Final = 5.0
    BINS: Final = 2000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0] * (self.BINS + 1)  # the last bin: 10 s and more
        self.count = 0
        self.max_ms = 0.0

    def add(self, lag_ms: float) -> None:
        index = min(self.BINS, max(0, int(lag_ms / self.BIN_MS)))
        with self._lock:
            self.counts[index] += 1
            self.count += 1
            self.max_ms = max(self.max_ms, lag_ms)

    def percentile(self, q: float) -> float | None:
        """The upper edge of the bin holding the ``q``-th percentile (ms), capped by the
        largest lag seen; None before any fragment."""
        with self._lock:
            if not self.count:
                return None
            rank = q / 100 * self.count
            seen = 0
            for index, count in enumerate(self.counts):
                seen += count
                if seen >= rank and count:
                    return min(self.max_ms, (index + 1) * self.BIN_MS)
            return self.max_ms


class StreamHandler(Protocol):
    """What ``handler_factory(stream)`` returns: called with each frame of that stream;
    ``close()`` (if it has one) runs when the worker stops reading the stream."""

    def __call__(self, frame: DecodedFrame) -> None: ...


@dataclass
class StreamStats:
    """One stream's progress in this worker. Plain fields: read them from any thread.

    ``delivery_lag_ms``: from the moment the fragment's last byte arrived to the moment
    its last frame was handed to the callback (decoding and analysis included);
    ``millis_behind_now``: the service's figure for the last fragment read;
    ``producer_lag_ms``: local time minus the producer timestamp of the last frame
    delivered (includes clock skew between producer and consumer).
    """

    stream: str
    held_since: float = 0.0  # monotonic
    fragments: int = 0
    frames: int = 0
    checkpoints: int = 0
    late_fragments: int = 0
    restarts: int = 0
    pending: int = 0
    last_fragment_number: str | None = None
    checkpoint: str | None = None
    delivery_lag_ms: float | None = None
    max_delivery_lag_ms: float = 0.0
    millis_behind_now: int | None = None
    producer_lag_ms: float | None = None
    last_error: str | None = None

    def summary(self) -> dict[str, Any]:
        """A small JSON-able summary (the worker's heartbeat carries one per stream)."""
        return {
            "frames": self.frames,
            "fragments": self.fragments,
            "checkpoint": self.checkpoint,
            "lag_ms": None if self.delivery_lag_ms is None else round(self.delivery_lag_ms),
            "max_lag_ms": round(self.max_delivery_lag_ms),
            "behind_ms": self.millis_behind_now,
            "pending": self.pending,
        }


# --- one stream ---------------------------------------------------------------------------
class _Strand:
    """One held stream: its reader thread, its pending fragments, its decoder and handler.

    States: running -> stopping (no new fragment is started; the one being delivered
    finishes and is checkpointed) -> done. ``revoke()`` also stops delivery between
    two frames (the lease may be gone).
    """

    def __init__(self, worker: FleetWorker, stream: str) -> None:
        self.worker = worker
        self.stream = stream
        self.stats = StreamStats(stream, held_since=worker._monotonic())
        # With a process pool the decoder and handler live in the stream's process.
        self.process = worker._assign(stream)
        self.queue = worker._queue_of(self.process)
        if self.process is not None:
            # The process builds the handler (and imports what it needs) while the
            # reader connects, not when the first fragment is due.
            self.queue.put(_StreamItem(stream, opening=True))
        self.decoder = worker._decoder_factory() if self.process is None else None
        self.handler: Callable[[DecodedFrame], Any] | None = None
        self.reader: LiveReader | None = None
        self.pending: deque[tuple[Fragment, float]] = deque()
        self.cond = threading.Condition()
        self.scheduled = False  # in the pool's queue or being worked on
        self.busy = False  # a pool thread is delivering a fragment
        self.stopping = False
        self.revoked = False
        self.reader_done = False
        self.failed_at: float | None = None
        self.thread = threading.Thread(target=self._read, name=f"fleet-read-{stream}", daemon=True)

    # --- reader thread ----------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _read(self) -> None:
        worker = self.worker
        try:
            if self.process is None:
                self.handler = worker._handler_factory(self.stream)
            checkpoint = worker._checkpoints.load(self.stream) if worker._checkpoints else None
            start = StartSelector.from_checkpoint(checkpoint) if checkpoint else worker.start_at
            if checkpoint is not None:
                self.stats.checkpoint = checkpoint.fragment_number
            reader = worker._make_reader(self.stream, start)
            with self.cond:
                if self.stopping:
                    reader.close()
                    return
                self.reader = reader
            log.info("%s: reading from %s", self.stream, start)
            for fragment in self.reader:
                self.stats.millis_behind_now = self.reader.stats.millis_behind_now
                with self.cond:
                    while len(self.pending) >= worker.max_pending_fragments and not self.stopping:
                        self.cond.wait(0.5)
                    if self.stopping:
                        break
                    self.pending.append((fragment, worker._monotonic()))
                    self.stats.pending = len(self.pending)
                    schedule = not self.scheduled
                    self.scheduled = True
                if schedule:
                    self.queue.put(self)
        except KvsError as exc:
            self.stats.last_error = str(exc)
            self.failed_at = worker._monotonic()
            log.warning("%s: reading stopped: %s", self.stream, exc)
        except Exception as exc:  # a bug must not take the other streams down
            self.stats.last_error = repr(exc)
            self.failed_at = worker._monotonic()
            log.exception("%s: reader failed", self.stream)
        finally:
            with self.cond:
                self.reader_done = True
                self.cond.notify_all()

    # --- pool threads -------------------------------------------------------------------
    def work(self) -> None:
        """Deliver one pending fragment (called by a pool thread; one at a time)."""
        with self.cond:
            if self.stopping or not self.pending:
                self.scheduled = False
                self.cond.notify_all()
                return
            fragment, arrived = self.pending.popleft()
            self.stats.pending = len(self.pending)
            self.busy = True
            self.cond.notify_all()  # room for the reader
        try:
            self._deliver(fragment, arrived)
        except Exception as exc:
            self.stats.last_error = repr(exc)
            log.exception(
                "%s: delivering fragment %s failed", self.stream, fragment.fragment_number
            )
        finally:
            with self.cond:
                self.busy = False
                again = bool(self.pending) and not self.stopping
                self.scheduled = again
                self.cond.notify_all()
            if again:
                self.queue.put(self)

    def _deliver(self, fragment: Fragment, arrived: float) -> None:
        worker = self.worker
        stats = self.stats
        if self.process is not None:
            if not self._deliver_remote(fragment):
                return
        else:
            assert self.decoder is not None and self.handler is not None
            for frame in self.decoder.iter_decode(fragment):
                if self.revoked:
                    return  # the lease may be someone else's now: not one more frame
                self._handled(frame.timestamp_ns, self.handler(frame))
        if self.revoked:
            return
        lag_s = worker._monotonic() - arrived
        stats.fragments += 1
        stats.last_fragment_number = fragment.fragment_number
        stats.delivery_lag_ms = lag_s * 1000
        stats.max_delivery_lag_ms = max(stats.max_delivery_lag_ms, lag_s * 1000)
        worker.lags.add(lag_s * 1000)
        if lag_s > worker.late_after_s:
            stats.late_fragments += 1
        if worker._checkpoints is not None and fragment.fragment_number is not None:
            self._save(Checkpoint.of(fragment))

    def _handled(self, timestamp_ns: int, result: Any) -> None:
        worker = self.worker
        if result is not None and worker._on_result is not None:
            worker._on_result(result, self.stream)
        self.stats.frames += 1
        self.stats.producer_lag_ms = (worker._clock() - timestamp_ns / 1e9) * 1000

    def _deliver_remote(self, fragment: Fragment) -> bool:
        """Decode and analyse ``fragment`` in the stream's process; True when it was
        delivered whole (then it is checkpointed)."""
        process = self.process
        assert process is not None
        answered = 0  # frames the process answered for, this attempt
        delivered = 0  # frames handed over, over every attempt

        def on_frame(timestamp_ns: int, result: Any) -> None:
            nonlocal answered, delivered
            answered += 1
            if answered <= delivered or self.revoked:
                return  # delivered before the process died, or the lease is gone
            delivered += 1
            self._handled(timestamp_ns, result)

        for attempt in (1, 2):
            answered = 0
            try:
                error = process.deliver(self.stream, fragment, on_frame)
            except ProcessDied as exc:
                self.worker._process_died(process, exc, self.stream, fragment)
                if attempt == 1:
                    continue
                raise DecodeError(
                    f"{self.stream}: fragment {fragment.fragment_number} killed its decode "
                    "process twice: skipped"
                ) from exc
            if error is not None:
                self.stats.last_error = error
                log.error(
                    "%s: fragment %s failed in %s: %s",
                    self.stream,
                    fragment.fragment_number,
                    process.describe(),
                    error,
                )
                return False
            return not self.revoked
        return False

    def _save(self, checkpoint: Checkpoint) -> None:
        # The next fragment is not started before this one is checkpointed: a worker
        # that dies repeats at most the fragment in progress. A failed save is retried
        # until it succeeds, the lease is revoked, or (while the worker stops) a few
        # attempts failed.
        store = self.worker._checkpoints
        assert store is not None
        policy = self.worker.save_retry
        attempt = 0
        while True:
            try:
                store.save(self.stream, checkpoint)
            except LeaseLostError as exc:
                self.stats.last_error = str(exc)
                log.warning("%s: %s", self.stream, exc)
                self.revoke()
                return
            except CheckpointError as exc:
                attempt += 1
                self.stats.last_error = str(exc)
                if self.revoked or (self.worker._stopping.is_set() and attempt >= 3):
                    log.warning("%s: checkpoint not saved: %s", self.stream, exc)
                    return
                delay = policy.delay(attempt)
                log.warning(
                    "%s: checkpoint not saved (%s), retrying in %.1f s", self.stream, exc, delay
                )
                with self.cond:
                    self.cond.wait_for(lambda: self.revoked, delay)
                continue
            self.stats.checkpoint = checkpoint.fragment_number
            self.stats.checkpoints += 1
            return

    # --- stopping -----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading; pending fragments are dropped (the next holder reads them from
        the checkpoint); the fragment being delivered is finished."""
        with self.cond:
            self.stopping = True
            self.pending.clear()
            self.stats.pending = 0
            reader = self.reader
            self.cond.notify_all()
        if reader is not None:
            reader.stop()

    def revoke(self) -> None:
        """Stop at once, between two frames: the lease can no longer be trusted."""
        self.revoked = True
        self.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no fragment is being delivered and the reader ended."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.busy or (not self.reader_done and self.thread.is_alive()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.2))
        return True

    def close(self) -> None:
        reader = self.reader
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()
        if self.process is not None:
            self.process.release(self.stream)
            self.queue.put(_StreamItem(self.stream))  # sent by the process's own thread
        if self.decoder is not None:
            self.decoder.close()
        close = getattr(self.handler, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.exception("%s: the stream handler's close() failed", self.stream)

    @property
    def alive(self) -> bool:
        return not (self.stopping or self.reader_done)


@dataclass(frozen=True, slots=True)
class _StreamItem:
    """A process-pool queue item: build (``opening``) or drop this stream's decoder and
    handler in its process."""

    stream: str
    opening: bool = False


_PoolItem = _Strand | _StreamItem | None


@dataclass
class _SerialClients(AwsAccess):
    """The readers' access: one boto3 session for every stream, whose clients are made
    one at a time (a boto3 session must not create clients from several threads at
    once). A session per reader would parse the service models again for each stream:
    about 65 ms of Python holding the GIL per stream, seconds at the start of a worker
    taking up 40 streams, while key frames wait for the GIL; from one session a
    reader's clients cost about 3 ms."""

    _client_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def client(self, service: str, *, endpoint_url: str | None = None, config: Any = None) -> Any:
        with self._client_lock:
            return super().client(service, endpoint_url=endpoint_url, config=config)


# --- the worker ---------------------------------------------------------------------------
class FleetWorker:
    """Reads the streams ``streams`` selects (see :class:`StreamSelection`), alone or
    sharing them with other workers through leases in ``lease_table`` (DynamoDB).

    Exactly one of ``on_frame(frame, stream)`` and ``handler_factory(stream)`` (which
    returns a per-stream callable, e.g. a Pipeline) receives the frames; it runs on a
    pool worker, one call at a time per stream, in stream order. What it returns, when
    not None, goes to ``on_result(result, stream)`` (optional) in this process. Decoding:
    ``keyframes_only``, ``fps``, ``format`` as :class:`FragmentDecoder` takes them, or
    a ``decoder_factory``.

    ``decode_pool``: ``"threads"`` (the default: ``decode_threads`` threads, default
    one per core) or ``"processes"`` (``decode_threads`` processes; each stream is
    assigned to the least loaded one, which owns its decoder and handler: see
    :mod:`kvs_toolkit.consumer.fleet.processes`). With processes, the frame callback or
    handler factory and the decoder factory run in the processes and must be picklable
    (module-level functions or classes); only their results come back, to
    ``on_result``. If the processes cannot stay up the worker stops itself and
    :attr:`failure` says why.

    Checkpoints: with ``lease_table`` they live in the same table (and a save by a
    worker that lost the lease is refused); otherwise ``checkpoint_store`` (any
    :class:`CheckpointStore`) or none. A stream without a checkpoint starts at
    ``start_at`` (default NOW).

    Leases: ``lease_duration_s`` (balanced every quarter of it); a stream is stopped
    ``safety_margin_s`` (default a sixth of the lease) before its lease could run out
    unless renewed; DynamoDB calls time out after ``dynamodb_timeout_s`` (default the
    same sixth). A call that hangs longer does not delay giving streams up: a watchdog
    thread does that on its own.

    :meth:`start` returns at once; :meth:`stop` stops reading, finishes and checkpoints
    the fragments being delivered, and releases every lease (others take them on their
    next round). :meth:`stats` gives per-stream progress and lag.
    """

    def __init__(
        self,
        streams: StreamSelection | Iterable[str],
        *,
        on_frame: FrameCallback | None = None,
        handler_factory: Callable[[str], Callable[[DecodedFrame], Any]] | None = None,
        on_result: ResultCallback | None = None,
        aws: AwsAccess | None = None,
        lease_table: str | None = None,
        dynamodb_endpoint_url: str | None = None,
        dynamodb_timeout_s: float | None = None,
        owner_id: str | None = None,
        lease_duration_s: float = DEFAULT_LEASE_DURATION_S,
        safety_margin_s: float | None = None,
        checkpoint_store: CheckpointStore | None = None,
        create_table: bool = False,
        start_at: StartSelector | str = "now",
        relist_interval_s: float = DEFAULT_RELIST_INTERVAL_S,
        list_page_size: int = MAX_LIST_PAGE,
        decode_threads: int | None = None,
        decode_pool: str = DEFAULT_DECODE_POOL,
        max_pending_fragments: int = DEFAULT_PENDING_FRAGMENTS,
        keyframes_only: bool = False,
        fps: float | None = None,
        format: str = "bgr24",
        decoder_factory: Callable[[], FragmentDecoder] | None = None,
        late_after_s: float = DEFAULT_LATE_AFTER_S,
        read_timeout_s: float = 30.0,
        save_retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if (on_frame is None) == (handler_factory is None):
            raise ValueError("give exactly one of on_frame and handler_factory")
        if lease_table is not None and checkpoint_store is not None:
            raise ValueError("with lease_table the checkpoints live in that table")
        if max_pending_fragments < 1:
            raise ValueError("max_pending_fragments must be at least 1")
        if decode_pool not in DECODE_POOLS:
            raise ValueError(f"decode_pool must be one of {DECODE_POOLS}, not {decode_pool!r}")
        if decode_threads is not None and decode_threads < 1:
            raise ValueError("decode_threads must be at least 1")
        if lease_duration_s <= 0 or relist_interval_s <= 0:
            raise ValueError("lease_duration_s and relist_interval_s must be positive")
        self.aws = aws if aws is not None else AwsAccess()
        self.selection = (
            streams if isinstance(streams, StreamSelection) else StreamSelection.parse(streams)
        )
        if not self.selection:
            raise ValueError("no streams selected")
        self.selection.expand()  # an unreadable @FILE is an error now, not in a thread
        self.start_at = StartSelector.parse(start_at) if isinstance(start_at, str) else start_at
        self.lease_duration_s = lease_duration_s
        self.safety_margin_s = (
            safety_margin_s if safety_margin_s is not None else max(0.5, lease_duration_s / 6)
        )
        if self.safety_margin_s >= lease_duration_s / 2:
            raise ValueError("safety_margin_s must be less than half the lease duration")
        self.balance_interval_s = lease_duration_s / 4
        self.relist_interval_s = relist_interval_s
        self.list_page_size = list_page_size
        self.max_pending_fragments = max_pending_fragments
        self.late_after_s = late_after_s
        self.read_timeout_s = read_timeout_s
        self.save_retry = save_retry or RetryPolicy(max_attempts=None, base_s=0.2, max_s=2.0)
        if on_frame is not None:
            handler_factory = PerStreamCallback(on_frame)
        assert handler_factory is not None
        self._handler_factory = handler_factory
        self._on_result = on_result
        self._clock = clock
        self._monotonic = monotonic
        self._decoder_factory: Callable[[], FragmentDecoder] = decoder_factory or DecoderSpec(
            keyframes_only=keyframes_only, fps=fps, format=format
        )
        self.decode_pool = decode_pool
        self.decode_threads = decode_threads or max(1, os.cpu_count() or 1)
        if decode_pool == "processes":
            try:
                pickle.dumps((self._decoder_factory, self._handler_factory))
            except Exception as exc:
                raise ValueError(
                    "with decode_pool='processes' the frame callback (or handler factory) and "
                    "the decoder factory run in the decode processes and must be picklable "
                    f"(module-level functions or classes): {exc}"
                ) from exc
        self._processes: list[DecodeProcess] = []
        self._process_queues: dict[int, queue.SimpleQueue[_PoolItem]] = {}
        #: Delivery lags of every fragment delivered (for percentiles).
        self.lags = LagHistogram()
        #: Why the worker stopped itself (its decode processes kept dying), else None.
        self.failure: str | None = None
        self.failed = threading.Event()
        self.coordinator: LeaseCoordinator | None = None
        self._checkpoints: CheckpointStore | None = checkpoint_store
        if lease_table is not None:
            store = DynamoDBCheckpointStore.from_aws(
                self.aws,
                lease_table,
                endpoint_url=dynamodb_endpoint_url,
                timeout_s=dynamodb_timeout_s,
                owner_id=owner_id or LeaseCoordinator.new_owner_id(),
                lease_duration_s=lease_duration_s,
                clock=clock,
            )
            if create_table:
                DynamoDBCheckpointStore.create_table(store.client, lease_table)
            self.coordinator = LeaseCoordinator(
                store,
                before_release=self._drop,
                on_lost=self._drop_lost,
                status=self._status,
            )
            self._checkpoints = store
        self.owner_id = self.coordinator.owner_id if self.coordinator else (owner_id or "local")
        self._kvs: Any = None
        self._wanted: set[str] = set()
        self._listed_at: float | None = None
        self._strands: dict[str, _Strand] = {}
        self._retired: dict[str, StreamStats] = {}
        self._lock = threading.Lock()  # guards _strands
        self._readers_aws: _SerialClients | None = None
        self._readers_aws_lock = threading.Lock()
        self._ready: queue.SimpleQueue[_PoolItem] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.lease_errors = 0
        self._round_retry = RetryPolicy(max_attempts=None, base_s=0.2, max_s=2.0)

    # --- public -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the control, watchdog and decode threads; returns at once."""
        if self._threads:
            raise RuntimeError("FleetWorker.start() was called already")
        for n in range(self.decode_threads):
            if self.decode_pool == "processes":
                process = DecodeProcess(n, self._decoder_factory, self._handler_factory)
                self._processes.append(process)
                self._process_queues[n] = queue.SimpleQueue()
                target: Callable[..., None] = self._process_loop
                args: tuple[Any, ...] = (process,)
            else:
                target, args = self._decode_loop, ()
            self._threads.append(
                threading.Thread(target=target, args=args, name=f"fleet-decode-{n}", daemon=True)
            )
        self._threads.append(
            threading.Thread(target=self._control_loop, name="fleet-control", daemon=True)
        )
        if self.coordinator is not None:
            self._threads.append(
                threading.Thread(target=self._watchdog_loop, name="fleet-watchdog", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading every stream, finish and checkpoint the fragments being
        delivered (for at most ``timeout`` seconds), release every lease."""
        self._stopping.set()
        self._wake.set()
        control = next((t for t in self._threads if t.name == "fleet-control"), None)
        if control is not None:
            control.join(timeout)
        with self._lock:
            strands = list(self._strands.values())
        for strand in strands:
            strand.stop()
        deadline = time.monotonic() + timeout
        for strand in strands:
            strand.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.coordinator is not None:
            # Bounded by the timeout even when DynamoDB hangs: leases not released by
            # then simply expire.
            releasing = threading.Thread(
                target=self._release_all, name="fleet-release", daemon=True
            )
            releasing.start()
            releasing.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            for strand in self._strands.values():
                strand.close()
                self._retired[strand.stream] = strand.stats
            self._strands.clear()
        for _thread in range(self.decode_threads):
            self._ready.put(None)
        for pool_queue in self._process_queues.values():
            pool_queue.put(None)  # each process's thread stops its process, then ends
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.1, deadline - time.monotonic()))
        for process in self._processes:
            if process.process is not None and process.process.is_alive():
                log.warning("%s still busy at the stop timeout: killed", process.describe())
                process.process.kill()
        if self._kvs is not None:
            self._kvs.close()
            self._kvs = None

    def __enter__(self) -> FleetWorker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def held(self) -> set[str]:
        """The streams this worker is reading now."""
        with self._lock:
            return {s for s, strand in self._strands.items() if strand.alive}

    @property
    def wanted(self) -> set[str]:
        """The streams the selection matched at the last listing."""
        return set(self._wanted)

    def stats(self) -> dict[str, StreamStats]:
        """Per-stream progress and lag, of the streams held now and earlier."""
        with self._lock:
            result = dict(self._retired)
            result.update({s: strand.stats for s, strand in self._strands.items()})
        return result

    # --- threads ----------------------------------------------------------------------
    def _decode_loop(self) -> None:
        while True:
            strand = self._ready.get()
            if strand is None:
                return
            assert isinstance(strand, _Strand)
            strand.work()

    def _process_loop(self, process: DecodeProcess) -> None:
        """The one thread that talks to ``process``: its strands' fragments, the
        streams to drop, and at the end its stop."""
        items = self._process_queues[process.index]
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                if isinstance(item, _StreamItem):
                    if item.opening:
                        process.open_stream(item.stream)
                    else:
                        process.close_stream(item.stream)
                elif not self.failed.is_set():
                    item.work()
        finally:
            process.stop()

    def _assign(self, stream: str) -> DecodeProcess | None:
        """The process a newly held stream goes to: the one with the fewest streams."""
        if not self._processes:
            return None
        process = min(self._processes, key=lambda p: (p.load, p.index))
        process.assign(stream)
        return process

    def _queue_of(self, process: DecodeProcess | None) -> queue.SimpleQueue[_PoolItem]:
        return self._ready if process is None else self._process_queues[process.index]

    def _process_died(
        self, process: DecodeProcess, exc: ProcessDied, stream: str, fragment: Fragment
    ) -> None:
        """Called by the process's own thread: start it again, or fail the worker."""
        streams = len(process.streams)
        if self._stopping.is_set():
            log.error("%s died while the worker stops: %s", process.describe(), exc)
            raise exc
        if not process.died():
            message = (
                f"{exc} while decoding fragment {fragment.fragment_number} of {stream}: it "
                "died too often to be started again; the worker stops (a script that starts "
                "a process pool must be importable: main code under if __name__ == '__main__')"
            )
            self._error(message)
            self.failure = message
            self.failed.set()
            threading.Thread(target=self.stop, name="fleet-fail", daemon=True).start()
            raise exc
        log.error(
            "%s died while decoding fragment %s of %s: started again; its %d streams "
            "continue there with fresh decoders",
            exc,
            fragment.fragment_number,
            stream,
            streams,
        )
        process.restart()
        for held in sorted(process.streams):
            process.open_stream(held)

    def _control_loop(self) -> None:
        next_balance = self._monotonic()
        failures = 0
        while not self._stopping.is_set():
            now = self._monotonic()
            if self._listed_at is None or now - self._listed_at >= self.relist_interval_s:
                self._relist()
            if self.coordinator is None:
                held = set(self._wanted)
            elif now >= next_balance:
                try:
                    self.coordinator.balance(self._wanted)
                except CheckpointError as exc:
                    self.lease_errors += 1
                    failures += 1
                    # Soon again (renewals are due), but not in a tight loop.
                    delay = min(self.balance_interval_s, self._round_retry.delay(failures))
                    next_balance = self._monotonic() + delay
                    log.warning("lease round failed (the watchdog guards the leases): %s", exc)
                else:
                    failures = 0
                    next_balance = now + self.balance_interval_s
                held = self._trusted_leases()
            else:
                held = self._trusted_leases()
            self._reconcile(held)
            if self._wake.wait(min(0.25, self.balance_interval_s)):
                if self._stopping.is_set():
                    return
                self._wake.clear()

    def _watchdog_loop(self) -> None:
        # Independent of the control thread, which may be blocked in a DynamoDB call
        # that times out only after a while.
        while not self._stopping.wait(min(0.1, self.safety_margin_s / 4)):
            trusted = self._trusted_leases()
            with self._lock:
                doomed = [s for s in self._strands.values() if s.stream not in trusted]
            for strand in doomed:
                if not strand.revoked:
                    log.warning("%s: lease not renewed in time: stopped reading it", strand.stream)
                    strand.revoke()

    def _trusted_leases(self) -> set[str]:
        assert self.coordinator is not None
        coordinator = self.coordinator
        limit = self._clock() + self.safety_margin_s
        trusted = set()
        for stream in list(coordinator.owned):
            deadline = coordinator.deadline(stream)
            if deadline is not None and deadline > limit:
                trusted.add(stream)
        return trusted

    def _relist(self) -> None:
        self._listed_at = self._monotonic()
        try:
            if self._kvs is None:
                self._kvs = self.aws.client("kinesisvideo")
            found = list_matching_streams(self._kvs, self.selection, page_size=self.list_page_size)
        except (KvsError, ValueError) as exc:
            self._error(f"listing streams failed: {exc}")
            return
        except Exception as exc:  # botocore: the control plane is unreachable
            self._error(f"ListStreams failed: {exc}")
            return
        added, removed = found - self._wanted, self._wanted - found
        if added or removed:
            log.info("streams: %d selected (+%d, -%d)", len(found), len(added), len(removed))
        self._wanted = found

    def _error(self, message: str) -> None:
        log.warning("%s", message)
        self.errors = [*self.errors[-9:], message]

    def _reconcile(self, held: set[str]) -> None:
        now = self._monotonic()
        with self._lock:
            strands = dict(self._strands)
        for stream, strand in strands.items():
            if stream not in held and strand.alive:
                if self.coordinator is not None and stream in self.coordinator.owned:
                    strand.revoke()  # ours, but not renewed in time: not one more frame
                else:
                    strand.stop()  # no longer selected: finish the fragment in progress
            if not strand.alive and not strand.busy and not strand.scheduled:
                failed_at = strand.failed_at
                if stream in held and failed_at is not None and now - failed_at < _RESTART_DELAY_S:
                    continue
                strand.close()
                with self._lock:
                    self._strands.pop(stream, None)
                    self._retired[stream] = strand.stats
        with self._lock:
            running = set(self._strands)
        for stream in sorted(held - running):
            if self._stopping.is_set():
                return
            strand = _Strand(self, stream)
            previous = self._retired.pop(stream, None)
            if previous is not None:
                strand.stats.restarts = previous.restarts + 1
            with self._lock:
                self._strands[stream] = strand
            strand.start()

    def _release_all(self) -> None:
        assert self.coordinator is not None
        try:
            self.coordinator.release_all()
        except CheckpointError as exc:
            log.warning("leases not all released (they expire instead): %s", exc)

    def _drop(self, stream: str) -> None:
        """Before a voluntary release: stop the stream and let its fragment in progress
        be delivered and checkpointed, so the next holder repeats nothing."""
        with self._lock:
            strand = self._strands.get(stream)
        if strand is None:
            return
        strand.stop()
        if not strand.wait_idle(self.lease_duration_s / 4):
            strand.revoke()  # stuck: stop between frames instead

    def _drop_lost(self, stream: str) -> None:
        with self._lock:
            strand = self._strands.get(stream)
        if strand is not None:
            strand.revoke()

    def _make_reader(self, stream: str, start: StartSelector) -> LiveReader:
        with self._readers_aws_lock:
            if self._readers_aws is None:
                self._readers_aws = _SerialClients(
                    region_name=self.aws.region,
                    endpoint_url=self.aws.endpoint_url,
                    profile=self.aws.profile,
                    credentials_override=self.aws.credentials,
                    retry=self.aws.retry,
                )
            aws = self._readers_aws
        return LiveReader(
            stream,
            start=start,
            aws=aws,
            read_timeout_s=self.read_timeout_s,
            backoff=Backoff(base_s=0.25, max_s=5.0),
        )

    def _status(self) -> Mapping[str, Any]:
        with self._lock:
            strands = list(self._strands.values())
        return {
            "streams": {s.stream: s.stats.summary() for s in strands if s.alive},
            "wanted": len(self._wanted),
        }


def summarize(
    stats: Mapping[str, StreamStats], streams: Sequence[str] | None = None, *, each: int = 4
) -> str:
    """``9 streams, 1234 frames, lag max 180 ms (cam-3)`` for status lines; with at most
    ``each`` streams, every stream's lag: ``2 streams, 40 frames, lag cam-1 80 ms, cam-2 -``."""
    chosen = [stats[s] for s in streams if s in stats] if streams is not None else stats.values()
    items = sorted(chosen, key=lambda s: s.stream)
    frames = sum(s.frames for s in items)
    text = f"{len(items)} streams, {frames} frames"
    if items and len(items) <= each:
        lags = (
            f"{s.stream} {'-' if s.delivery_lag_ms is None else f'{s.delivery_lag_ms:.0f} ms'}"
            for s in items
        )
        return text + ", lag " + ", ".join(lags)
    lagging = [(s.delivery_lag_ms, s.stream) for s in items if s.delivery_lag_ms is not None]
    if lagging:
        worst = max(lagging)
        text += f", lag max {worst[0]:.0f} ms ({worst[1]})"
    return text
