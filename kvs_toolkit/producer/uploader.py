"""The resilient PutMedia uploader: frames in, fragments acknowledged out.

One task keeps a PutMedia connection open and streams the body; another reads the
acknowledgements on the same connection. Every fragment stays in a bounded
:class:`~kvs_toolkit.producer.fragmenter.FragmentBuffer` until the service acknowledges
it; after a dropped connection, an HTTP error or a retriable ERROR ack (4000, 4003,
5000, 5001, as the C producer SDK retries), a new connection sends again everything
not yet acknowledged, with exponential back-off between attempts. Connections are
rotated before the service's ~45 minute limit (ErrorId 4003).

With ``spool_dir`` every complete fragment is also written to an on-disk
:class:`~kvs_toolkit.producer.spool.FragmentSpool` (one fsynced file each, from a worker
thread so the event loop never waits on the disk) and deleted on its ack. The memory
buffer then works as a cache: a fragment it evicts stays on disk and is sent from there,
so an outage longer than memory holds loses nothing, and a restarted producer sends
what the spool holds first, in order, before new frames. A fragment is spooled as soon
as it is complete: its frames still stream live as they come (the latency goal), and
the service cannot acknowledge it before its end, which comes after it is spooled.
When the spool is full the *oldest* file goes (counted, with a warning), as in memory.
Delivery is at least once: a fragment persisted just as the connection died, its ack
lost, is sent again; consumers drop the repeat (``consumer.DuplicateFilter``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

import aiohttp
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.errors import CredentialsError, PutMediaError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.mkv.writer import FragmentMetadata
from kvs_toolkit.producer.fragmenter import (
    DEFAULT_BUFFER_BYTES,
    DEFAULT_FRAGMENT_DURATION_MS,
    EncodedFrame,
    FragmentBuffer,
    Fragmenter,
    PendingFragment,
)
from kvs_toolkit.producer.spool import (
    DEFAULT_SPOOL_MAX_BYTES,
    FILE_OVERHEAD,
    FragmentSpool,
    SpoolError,
)
from kvs_toolkit.putmedia import PutMediaSession

if TYPE_CHECKING:
    from kvs_toolkit.producer.metrics import MetricsPublisher

log = logging.getLogger(__name__)

# The service ends a PutMedia connection after about 45 minutes (ErrorId 4003).
DEFAULT_ROTATE_AFTER_S: Final = 40 * 60
_BACKOFF_MAX_S: Final = 30.0
# How long a rotated connection may take to deliver its last acks and close.
_ROTATION_GRACE_S: Final = 10.0
# Spool writes queued for the disk: a disk slower than the camera must not hold an
# ever-growing queue of fragments in memory; past this a fragment stays in memory only.
_MAX_PENDING_SPOOL_WRITES: Final = 16
# The most bytes of frames joined into one PutMediaSession.write: few writes, and no
# second copy of a large backlog (after a reconnection) in memory at once.
_COALESCE_BYTES: Final = 1024 * 1024


@dataclass
class UploadStats:
    """Counters of one :class:`Uploader` (read them from its event loop's thread).

    ``fragments`` counts fragments made from this run's frames; ``acked`` every fragment
    acknowledged, including ``recovered_fragments`` found in the spool at start.
    ``dropped_fragments`` were lost for good (a buffer full); ``unacknowledged`` is set
    by ``close()`` (still in the spool for the next run, if there is one).
    """

    frames: int = 0
    fragments: int = 0
    acked: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    dropped_fragments: int = 0
    connections: int = 0
    connection_failures: int = 0
    bytes_sent: int = 0
    fragments_sent: int = 0  # whole fragments written to a connection (re-sends too)
    # the latest acknowledgement latencies only: a producer runs for months
    ack_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    buffer_bytes: int = 0  # memory buffer use now
    buffer_fragments: int = 0
    spool_bytes: int = 0  # spool use now
    spool_fragments: int = 0
    spooled: int = 0  # fragments written to the spool
    spool_dropped: int = 0  # spool files deleted to stay under spool_max_bytes
    spool_errors: int = 0  # writes that failed (ENOSPC, EIO): kept in memory only
    spool_corrupt: int = 0  # unreadable spool files skipped
    recovered_fragments: int = 0
    unacknowledged: int = 0

    @property
    def reconnects(self) -> int:
        """Connections opened after the first (network loss, errors, rotation)."""
        return max(0, self.connections - 1)

    @property
    def all_acknowledged(self) -> bool:
        """Everything produced (and recovered) was acknowledged: nothing dropped, no
        error, nothing left (meaningful after ``close()``)."""
        return not (self.dropped_fragments or self.errors or self.unacknowledged)


@dataclass(eq=False, slots=True)
class _SpoolEntry:
    """A fragment in the spool. ``fragment`` is its memory copy, None once only on disk."""

    sequence: int
    timecode: int
    size: int
    fragment: PendingFragment | None
    released: bool = False  # acknowledged or dropped: a write not yet started is skipped


AckLevel = Literal["PERSISTED", "RECEIVED"]


class _CoalescedWrite:
    """Bytes for a PutMedia body, gathered to be sent in one ``write``."""

    def __init__(self, session: PutMediaSession) -> None:
        self.session = session
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    async def write(self) -> None:
        """Send what was gathered (nothing if nothing was)."""
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            self.size = 0
            await self.session.write(data)


class Uploader:
    """Upload encoded frames to one stream, surviving connection loss.

    ``ack_level`` is the event that releases a fragment from the buffer: PERSISTED by
    default; RECEIVED for a stream with no retention (the service sends no PERSISTED).
    ``on_ack`` is called with every acknowledgement (for progress display).
    ``spool_dir`` keeps unacknowledged fragments on disk too, bounded by
    ``spool_max_bytes`` (see the module's docstring); ``metrics`` publishes the stats
    every interval (e.g. :class:`~kvs_toolkit.producer.metrics.CloudWatchMetrics`).
    """

    def __init__(
        self,
        endpoint: str,
        stream_name: str,
        tracks: Sequence[TrackInfo],
        *,
        credentials: Credentials | None = None,
        region: str = "us-east-1",
        fragment_duration_ms: int = DEFAULT_FRAGMENT_DURATION_MS,
        cut_tolerance_ms: int | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        ack_level: AckLevel = "PERSISTED",
        rotate_after_s: float = DEFAULT_ROTATE_AFTER_S,
        metadata: FragmentMetadata | None = None,
        on_ack: Callable[[Ack], None] | None = None,
        endpoint_provider: Callable[[], str] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        metrics: MetricsPublisher | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stream_name = stream_name
        self.credentials = credentials
        self.region = region
        self.ack_level = AckEventType(ack_level)
        self.rotate_after_s = rotate_after_s
        self.fragmenter = Fragmenter(
            tracks,
            fragment_duration_ms=fragment_duration_ms,
            metadata=metadata,
            cut_tolerance_ms=cut_tolerance_ms,
        )
        self.buffer = FragmentBuffer(buffer_bytes)
        self.stats = UploadStats()
        self.metrics = metrics
        self._on_ack = on_ack
        self._endpoint_provider = endpoint_provider
        self._new_data = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._room = asyncio.Event()  # set when acks (or a fatal error) free the buffer
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._fatal: PutMediaError | None = None
        self._sent_at: dict[int, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # --- the spool (the files are touched only by the one worker thread, in order)
        if spool_max_bytes <= 0:
            raise ValueError(f"spool_max_bytes must be positive, not {spool_max_bytes}")
        self.spool_max_bytes = spool_max_bytes
        self._spool: FragmentSpool | None = None
        self._spool_worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._spool_entries: OrderedDict[int, _SpoolEntry] = OrderedDict()  # by sequence
        self._spool_by_timecode: dict[int, _SpoolEntry] = {}
        self._pending_spool_writes = 0
        self._next_sequence = 0
        if spool_dir is not None:
            self._open_spool(spool_dir)

    def _open_spool(self, directory: str | os.PathLike[str]) -> None:
        # SpoolError when the directory is unusable or another stream's
        spool = FragmentSpool(directory, owner=self.stream_name)
        recovered = spool.recover()
        self._spool = spool
        self._spool_worker = concurrent.futures.ThreadPoolExecutor(1, "kvs-spool")
        self.stats.spool_corrupt = spool.corrupt
        for found in recovered:
            self._add_entry(_SpoolEntry(found.sequence, found.timecode, found.size, None))
        self._next_sequence = recovered[-1].sequence + 1 if recovered else 0
        self.stats.recovered_fragments = len(recovered)
        if recovered:
            log.info(
                "spool: %d fragments (%d bytes) from an earlier run are sent first",
                len(recovered),
                self.stats.spool_bytes,
            )
            self._new_data.set()
        while self.stats.spool_bytes > self.spool_max_bytes and self._spool_entries:
            self._drop_oldest_spooled()

    # --- the producer side ----------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"putmedia-{self.stream_name}")
        self._task.add_done_callback(self._connection_task_ended)
        if self.metrics is not None:
            self.metrics.start()
            self._metrics_task = asyncio.create_task(
                self._sample_metrics(self.metrics), name=f"metrics-{self.stream_name}"
            )

    def _connection_task_ended(self, task: asyncio.Task[None]) -> None:
        # An unexpected failure (a bug, not a network error: those are retried) must not
        # leave a producer waiting for acks that will never come.
        if not task.cancelled() and (exc := task.exception()) is not None:
            if self._fatal is None:
                self._fatal = PutMediaError(f"the upload stopped: {exc!r}")
                self._fatal.__cause__ = exc
                log.error("the PutMedia task failed", exc_info=exc)
            self._all_acked.set()
        self._room.set()

    def put_fragment_metadata(self, name: str, value: str, *, persistent: bool = True) -> None:
        """Attach metadata to the next fragment (and every later one if persistent)."""
        self.fragmenter.metadata.put(name, value, persistent=persistent)

    def put_frame(self, frame: EncodedFrame) -> None:
        """Queue one encoded frame (never blocks: the buffer's bound applies)."""
        if self._fatal is not None:
            raise self._fatal
        fragment, completed = self.fragmenter.add(frame)
        for done in completed:
            self._fragment_done(done)
        if fragment is None:
            return
        self.stats.frames += 1
        if fragment.frames == 1:
            self.stats.fragments += 1
            self._evicted(self.buffer.add(fragment))
        else:
            self._evicted(self.buffer.grew(fragment, len(fragment.chunks[-1])))
        self._all_acked.clear()
        self._new_data.set()

    def _fragment_done(self, fragment: PendingFragment) -> None:
        # Ack latency counts from the moment the fragment is complete on our side: an
        # unknown-size Cluster cannot be acknowledged before its end is known.
        self._sent_at[fragment.timecode] = time.monotonic()
        if self._spool is not None and fragment in self.buffer:
            self._spool_fragment(fragment)
        self._new_data.set()

    def _evicted(self, dropped: list[PendingFragment]) -> None:
        """The memory buffer let these go: lost, unless the spool has them."""
        for fragment in dropped:
            entry = self._spool_by_timecode.get(fragment.timecode)
            if entry is not None and entry.fragment is fragment:
                entry.fragment = None  # now sent from the disk
                continue
            self._lost(fragment.timecode, f"buffer full ({self.buffer.max_bytes} bytes)")

    def _lost(self, timecode: int, why: str) -> None:
        self.stats.dropped_fragments += 1
        self._sent_at.pop(timecode, None)
        log.warning("%s: dropped unacknowledged fragment %d", why, timecode)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of complete fragments in memory waiting for their acks.

        The fragment still being built is not counted: it cannot be acknowledged before
        it is complete, so waiting on it would wait forever.
        """
        building = self.fragmenter.current
        if building is not None and building in self.buffer:
            return self.buffer.bytes - building.size
        return self.buffer.bytes

    async def wait_for_room(self, max_bytes: int) -> None:
        """Wait until at most ``max_bytes`` of complete fragments wait for acks.

        For a producer that may read its source more slowly (a recording): it then
        never outruns the service. Returns at once after a fatal error, which
        :meth:`put_frame` raises.
        """
        while self.waiting_bytes > max_bytes and self._fatal is None:
            self._room.clear()
            await self._room.wait()

    async def close(self, timeout: float = 30.0) -> UploadStats:
        """End the upload: flush the last fragment, wait for its ack, close.

        Fragments still unacknowledged after ``timeout`` are counted in
        ``stats.unacknowledged`` (and stay in the spool, if there is one).
        """
        last = self.fragmenter.flush()
        if last is not None:
            self._evicted(self.buffer.grew(last, len(last.chunks[-1])))
            self._fragment_done(last)
        self._closing = True
        self._check_all_acked()
        try:
            await asyncio.wait_for(self._all_acked.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning(
                "%d fragments still unacknowledged at close%s",
                self._unacknowledged(),
                " (kept in the spool for the next run)" if self._spool_entries else "",
            )
        finally:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            await self._close_spool()
            self.stats.unacknowledged = self._unacknowledged()
            self.update_use()
            if self._metrics_task is not None and self.metrics is not None:
                self._metrics_task.cancel()
                await asyncio.gather(self._metrics_task, return_exceptions=True)
                self.metrics.record(self.stats)
                await asyncio.to_thread(self.metrics.close)
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def pending_fragments(self) -> int:
        """Fragments not yet acknowledged, in memory or only in the spool."""
        return self._unacknowledged()

    def _unacknowledged(self) -> int:
        in_memory = {f.timecode for f in self.buffer.pending()}
        on_disk_only = sum(1 for e in self._spool_entries.values() if e.fragment is None)
        return len(in_memory) + on_disk_only

    async def _close_spool(self) -> None:
        worker = self._spool_worker
        if worker is None:
            return
        self._spool_worker = None
        # every queued write and delete reaches the disk before close() returns
        await asyncio.to_thread(worker.shutdown, wait=True)

    def update_use(self) -> None:
        """Refresh the buffer and spool use in :attr:`stats`."""
        self.stats.buffer_bytes = self.buffer.bytes
        self.stats.buffer_fragments = len(self.buffer)

    async def _sample_metrics(self, metrics: MetricsPublisher) -> None:
        while True:
            await asyncio.sleep(metrics.interval_s)
            self.update_use()
            metrics.record(self.stats)  # a snapshot handed to the publisher's thread

    # --- the spool (event loop side: bookkeeping; the worker thread does the files) ----
    def _add_entry(self, entry: _SpoolEntry) -> None:
        self._spool_entries[entry.sequence] = entry
        self._spool_by_timecode[entry.timecode] = entry
        self.stats.spool_bytes += entry.size
        self.stats.spool_fragments = len(self._spool_entries)

    def _remove_entry(self, entry: _SpoolEntry, *, delete_file: bool = True) -> bool:
        if self._spool_entries.pop(entry.sequence, None) is None:
            return False
        entry.released = True
        if self._spool_by_timecode.get(entry.timecode) is entry:
            del self._spool_by_timecode[entry.timecode]
        self.stats.spool_bytes -= entry.size
        self.stats.spool_fragments = len(self._spool_entries)
        if delete_file and self._spool is not None:
            self._submit(self._spool.remove, entry.sequence)
        return True

    def _submit(self, call: Callable[..., object], *args: object) -> None:
        if self._spool_worker is not None:  # else closed: the file stays for the next run
            self._spool_worker.submit(call, *args)

    def _spool_fragment(self, fragment: PendingFragment) -> None:
        assert self._spool is not None
        header = self.fragmenter.header
        size = FILE_OVERHEAD + len(header) + fragment.size
        if self._pending_spool_writes >= _MAX_PENDING_SPOOL_WRITES:
            self.stats.spool_errors += 1
            log.warning(
                "spool: %d writes still queued (the disk is slow): fragment %d kept in memory only",
                self._pending_spool_writes,
                fragment.timecode,
            )
            return
        if size > self.spool_max_bytes:
            self.stats.spool_errors += 1
            log.warning(
                "spool: fragment %d (%d bytes) is larger than the spool (%d bytes): "
                "kept in memory only",
                fragment.timecode,
                size,
                self.spool_max_bytes,
            )
            return
        while self.stats.spool_bytes + size > self.spool_max_bytes and self._spool_entries:
            self._drop_oldest_spooled()
        entry = _SpoolEntry(self._next_sequence, fragment.timecode, size, fragment)
        self._next_sequence += 1
        self._add_entry(entry)
        self.stats.spooled += 1
        loop = self._loop or asyncio.get_running_loop()
        spool = self._spool
        chunks = list(fragment.chunks)  # complete: no more chunks will come

        def write() -> None:
            error: OSError | None = None
            try:
                # acknowledged while waiting for the disk (a slow SD card, a fast link):
                # no need to write it at all
                if not entry.released:
                    spool.write(entry.sequence, entry.timecode, header, chunks)
            except OSError as exc:
                error = exc
            loop.call_soon_threadsafe(self._spool_written, entry, error)

        self._pending_spool_writes += 1
        self._submit(write)

    def _spool_written(self, entry: _SpoolEntry, error: OSError | None) -> None:
        self._pending_spool_writes -= 1
        if error is not None:
            self._spool_write_failed(entry, error)

    def _spool_write_failed(self, entry: _SpoolEntry, error: OSError) -> None:
        self.stats.spool_errors += 1
        if not self._remove_entry(entry, delete_file=False):
            return  # acknowledged meanwhile: nothing to keep
        if entry.fragment is None:  # memory let it go, trusting the disk
            self._lost(entry.timecode, f"spool write failed ({error})")
        else:
            log.warning(
                "spool: cannot write fragment %d (%s): kept in memory only",
                entry.timecode,
                error,
            )

    def _drop_oldest_spooled(self) -> None:
        _, oldest = next(iter(self._spool_entries.items()))
        self._remove_entry(oldest)
        self.stats.spool_dropped += 1
        if oldest.fragment is None:
            self._lost(oldest.timecode, f"spool full ({self.spool_max_bytes} bytes)")
        else:
            log.warning(
                "spool full (%d bytes): fragment %d kept in memory only",
                self.spool_max_bytes,
                oldest.timecode,
            )

    async def _read_spooled(self, entry: _SpoolEntry) -> tuple[bytes, bytes] | None:
        spool, worker = self._spool, self._spool_worker
        if spool is None or worker is None:
            return None
        try:
            # the same worker as the writes: a read waits for the file's write
            return await asyncio.get_running_loop().run_in_executor(
                worker, spool.read, entry.sequence
            )
        except SpoolError as exc:
            self.stats.spool_corrupt = spool.corrupt
            if self._remove_entry(entry, delete_file=False):
                self._lost(entry.timecode, str(exc))
            return None

    def _on_disk_only(self) -> list[_SpoolEntry]:
        return [e for e in self._spool_entries.values() if e.fragment is None]

    # --- the connection side --------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as http:
            while True:
                started = time.monotonic()
                acked_before = self.stats.acked
                try:
                    await self._connection(http)
                    if self._all_acked.is_set():
                        return  # close() ended the body and everything was acknowledged
                    if self.stats.acked > acked_before:
                        attempt = 0
                        continue  # ended on purpose, with progress: reconnect at once
                except CredentialsError as exc:
                    # e.g. the IoT credentials endpoint is unreachable in a network outage:
                    # the fragments wait in the buffer; try again after the back-off.
                    self.stats.connection_failures += 1
                    log.warning("PutMedia connection not opened: %s", exc)
                except PutMediaError as exc:
                    self.stats.connection_failures += 1
                    if exc.status in (400, 401, 403, 404) and exc.error_code not in (
                        "ConnectionLimitExceededException",
                        "ClientLimitExceededException",
                    ):
                        # A wrong stream or credential will not fix itself: stop and say so.
                        self._fatal = exc
                        self._all_acked.set()
                        self._room.set()
                        log.error("PutMedia failed for good: %s", exc)
                        return
                    log.warning("PutMedia connection failed: %s", exc)
                if time.monotonic() - started > 60:
                    attempt = 0
                attempt += 1
                delay = min(_BACKOFF_MAX_S, 0.2 * 2 ** min(attempt, 8)) * random.uniform(0.5, 1)
                await asyncio.sleep(delay)

    async def _connection(self, http: aiohttp.ClientSession) -> None:
        if self._endpoint_provider is not None:
            # a control-plane lookup (boto3, blocking): not on the event loop
            self.endpoint = await asyncio.to_thread(self._endpoint_provider)
        # A refresh may call a credentials endpoint (blocking HTTPS): not on the loop.
        frozen = (
            None
            if self.credentials is None
            else await asyncio.to_thread(self.credentials.get_frozen_credentials)
        )
        session = PutMediaSession(
            http,
            self.endpoint,
            self.stream_name,
            credentials=frozen,
            region=self.region,
        )
        ended = asyncio.Event()
        async with session:
            self.stats.connections += 1
            tasks = {
                asyncio.create_task(self._read_acks(session, ended)),
                asyncio.create_task(self._write(session, ended)),
            }
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # Both tasks end with the connection, also when this task is cancelled
                # (close()); gather, not suppress(CancelledError), so that cancellation
                # propagates instead of being swallowed here.
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                self.stats.bytes_sent += session.bytes_sent
            errors = [r for r in results if isinstance(r, Exception)]  # not CancelledError
            if errors:
                raise errors[0]

    async def _write(self, session: PutMediaSession, ended: asyncio.Event) -> None:
        opened = time.monotonic()
        header: bytes | None = None
        whole: set[int] = set()  # timecodes of fragments written whole on this connection
        partial: dict[int, int] = {}  # bytes written of a fragment still being built
        unsent = _CoalescedWrite(session)
        if not self._on_disk_only():
            header = self.fragmenter.header
            await session.write(header)

        async def end_connection(why: str) -> None:
            log.info("ending the PutMedia connection %s", why)
            ended.set()
            await session.finish()
            await asyncio.Event().wait()  # the ack reader ends the connection

        async def rotate_if_due() -> None:
            # Only between fragments: ending the body inside one would make the service
            # store (and acknowledge) its first frames as a fragment of their own.
            if partial or time.monotonic() - opened <= self.rotate_after_s:
                return
            # The service acknowledges what it got and closes; the ack reader then ends
            # the connection (a normal end: the next opens at once). New frames wait in
            # the buffer meanwhile.
            log.info("rotating the PutMedia connection after %g s", self.rotate_after_s)
            ended.set()
            await session.finish()
            await asyncio.sleep(_ROTATION_GRACE_S)
            raise PutMediaError("the service did not close the rotated connection")

        while True:
            self._new_data.clear()
            # 1. fragments only the spool still has (older than any in memory)
            for entry in self._on_disk_only():
                if entry.timecode in whole or entry.sequence not in self._spool_entries:
                    continue
                stored = await self._read_spooled(entry)
                if stored is None:
                    continue
                stored_header, data = stored
                if header is None:
                    header = stored_header
                    await session.write(header)
                elif stored_header != header:
                    # made by an earlier run (its own Tracks): a connection of its own
                    await end_connection("to send fragments made with another MKV header")
                await session.write(data[partial.pop(entry.timecode, 0) :])
                whole.add(entry.timecode)
                self.stats.fragments_sent += 1
            # 2. fragments in memory, oldest first: everything new goes out in one write
            # (a write per chunk cost more than making the chunks, at 200x real time),
            # cut at _COALESCE_BYTES so a long backlog is not copied into one block
            for fragment in self.buffer.pending():
                if fragment.timecode in whole:
                    continue
                if header is None:
                    header = self.fragmenter.header
                    unsent.add(header)
                elif header != self.fragmenter.header:
                    await unsent.write()  # before the body ends
                    await end_connection("to send this run's fragments")
                if fragment.timecode not in partial:
                    await unsent.write()  # before a rotation ends the body
                    await rotate_if_due()  # before this fragment's first byte
                done = partial.get(fragment.timecode, 0)
                offset = 0
                # no await until the next fragment: the chunks cannot change meanwhile
                for chunk in fragment.chunks:
                    if offset >= done:
                        unsent.add(chunk)
                    offset += len(chunk)
                if fragment.complete:
                    partial.pop(fragment.timecode, None)
                    whole.add(fragment.timecode)
                    self.stats.fragments_sent += 1
                else:
                    partial[fragment.timecode] = offset
                if unsent.size >= _COALESCE_BYTES:
                    await unsent.write()
            await unsent.write()
            if (
                self._closing
                and all(f.timecode in whole for f in self.buffer.pending())
                and all(e.timecode in whole for e in self._on_disk_only())
            ):
                ended.set()
                await session.finish()
                await asyncio.Event().wait()  # the ack reader ends the connection
            await rotate_if_due()
            await self._new_data.wait()

    async def _read_acks(self, session: PutMediaSession, ended: asyncio.Event) -> None:
        async for ack in session.acks():
            if self._on_ack is not None:
                self._on_ack(ack)
            if ack.event_type == AckEventType.ERROR:
                error_id = ack.error_id or 0
                self.stats.errors[error_id] = self.stats.errors.get(error_id, 0) + 1
                log.warning(
                    "fragment %s: ERROR %s %s", ack.fragment_timecode, error_id, ack.error_code
                )
                if ack.retriable:
                    raise PutMediaError(
                        f"retriable error {error_id}", error_id=error_id, error_code=ack.error_code
                    )
                if ack.fragment_timecode is not None:
                    # The service will never take this fragment: skip it, as the C SDK does.
                    self._release(ack.fragment_timecode)
                    self._sent_at.pop(ack.fragment_timecode, None)
                    self._check_all_acked()
                continue
            if ack.event_type == self.ack_level and ack.fragment_timecode is not None:
                if self._release(ack.fragment_timecode):
                    self.stats.acked += 1
                    sent = self._sent_at.pop(ack.fragment_timecode, None)
                    if sent is not None:
                        self.stats.ack_latency_ms.append((time.monotonic() - sent) * 1000)
                self._check_all_acked()
        if ended.is_set():
            return  # we ended the body: the service answered everything and closed
        raise PutMediaError("the service closed the PutMedia connection")

    def _release(self, timecode: int) -> bool:
        """Forget an acknowledged (or refused) fragment, in memory and on disk."""
        released = self.buffer.acknowledge(timecode) is not None
        if released:
            self._room.set()
        entry = self._spool_by_timecode.get(timecode)
        if entry is not None and self._remove_entry(entry):
            released = True
        return released

    def _check_all_acked(self) -> bool:
        done = self._closing and len(self.buffer) == 0 and not self._spool_entries
        if done:
            self._all_acked.set()
        return done
