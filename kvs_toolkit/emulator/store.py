"""Durable storage of the emulator: streams, fragments and their payloads.

Layout of a data directory::

    DATA_DIR/index.sqlite3                 SQLite index (WAL, synchronous=FULL)
    DATA_DIR/.lock                         flock: one Store per data directory
    DATA_DIR/media/<stream id>/<YYYYMMDDHH>.seg

Fragment payloads go to append-only *segment files*, one per stream per UTC hour of
the fragment's server timestamp. A row in the ``fragments`` table points into a segment
by (path, offset, length). Streams are keyed by an integer id that is never reused
(AUTOINCREMENT), so directory names never depend on stream names (``..`` is a valid
stream name) and a stream re-created under the same name starts afresh.

Durability: :meth:`Store.append_fragment` writes the payload, ``os.fsync``\\ s the
segment file (and the directory when the file is new), then inserts the index rows in
one SQLite transaction whose commit is itself synced (WAL with ``synchronous=FULL``).
It returns only after both, so a fragment it returned survives a crash or restart.
A crash between the two leaves unreferenced bytes at the end of a segment; they are
harmless because readers only follow index rows.

Threads: every write runs on one writer thread, which takes whatever appends are
queued together and commits them with one fsync per file and one transaction (group
commit), so ack latency stays low with many streams writing at once. Reads run in the
calling thread on a per-thread read connection (WAL lets readers run beside the
writer). :class:`Store` is blocking and thread-safe; :class:`AsyncStore` is the same API
for an event loop, with reads on a small thread pool and writes on the writer thread.

Retention: :meth:`Store.purge_expired` deletes the rows of fragments older than their
stream's retention, and whole segment files once their hour has passed the cutoff
(deletion is file-granular for payloads and row-granular for the index).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import secrets
import shutil
import sqlite3
import string
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from kvs_toolkit import timestamps
from kvs_toolkit.emulator.async_store import AsyncStore
from kvs_toolkit.emulator.errors import (
    AccountStreamLimitExceededError,
    InvalidArgumentError,
    ResourceInUseError,
    ResourceNotFoundError,
    TagsPerResourceExceededLimitError,
    VersionMismatchError,
)
from kvs_toolkit.emulator.index import (
    FRAGMENT_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    STREAM_COLUMNS,
    select_stream,
    stream_from_row,
    with_tags,
)
from kvs_toolkit.emulator.records import (
    FRAGMENT_NUMBER_DIGITS,
    FragmentMeta,
    FragmentPage,
    FragmentRecord,
    StreamRecord,
    StreamStatus,
    TimestampType,
    decode_fragment_token,
    decode_token,
    encode_token,
    fragment_number_key,
)
from kvs_toolkit.emulator.segments import (
    HOUR_MS,
    fsync_dir,
    lock_data_dir,
    segment_hour_end_ms,
    segment_name,
    write_all,
)
from kvs_toolkit.emulator.validation import MAX_RETENTION_HOURS, MAX_TAGS_PER_STREAM
from kvs_toolkit.errors import EmulatorError

# The store is split along its seams: records (the values), index (SQLite schema and
# row mapping), segments (payload files), async_store (AsyncStore); this module holds
# the Store itself (the writer thread, group commit, reads). Their public names stay
# importable from here.
__all__ = [
    "FRAGMENT_NUMBER_DIGITS",
    "AsyncStore",
    "FragmentMeta",
    "FragmentPage",
    "FragmentRecord",
    "Store",
    "StreamRecord",
    "StreamStatus",
    "TimestampType",
    "decode_fragment_token",
    "decode_token",
    "encode_token",
    "fragment_number_key",
]

logger = logging.getLogger(__name__)

_SQLITE_FULL = 13  # SQLite's result code for "database or disk is full"

T = TypeVar("T")


# The service's fragment numbers are 47-digit decimals that grow with time, e.g.
# "91343852333181432392682062607743920146159169392". Ours: a constant 11-digit prefix,
# 16 digits of server time in microseconds (made strictly increasing per store), the
# stream id (10 digits) and a 10-digit checksum so they do not look sequential. Fixed
# width, so string order is numeric order, in SQLite as in Python.
_FRAGMENT_NUMBER_PREFIX = "91343852333"
_MAX_GROUP = 256  # appends committed together at most
_MAX_OPEN_SEGMENTS = 64
_VERSION_ALPHABET = string.ascii_letters + string.digits


def _new_version() -> str:
    return "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(20))


# --- writer-thread operations -----------------------------------------------------------


@dataclass(slots=True)
class _Append:
    stream_name: str
    payload: bytes
    meta: FragmentMeta
    future: concurrent.futures.Future[FragmentRecord]


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: concurrent.futures.Future[Any]
    # Runs on the writer thread after the commit, with fn's result: file deletions go
    # here so that rows never point at deleted files.
    after_commit: Callable[[Any], None] | None = None


_STOP = object()

FragmentListener = Callable[[FragmentRecord], object]


class Store:
    """The emulator's blocking, thread-safe storage. See the module docstring.

    ``no_retention_keep_ms``: fragments of streams with DataRetentionInHours 0 are not
    archived by the service but can still be read live; :meth:`purge_expired` keeps
    them this long.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_streams: int | None = None,
        no_retention_keep_ms: int = 300_000,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.media_dir = self.data_dir / "media"
        self.max_streams = max_streams
        self.no_retention_keep_ms = no_retention_keep_ms
        self._db_path = self.data_dir / "index.sqlite3"
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._listeners: list[FragmentListener] = []
        self._queue: queue.SimpleQueue[_Append | _Call | object] = queue.SimpleQueue()
        self._segments: OrderedDict[str, int] = OrderedDict()  # relative path -> fd
        self._fsync_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="kvs-store-fsync"
        )
        self._closed = False
        self._close_called = False
        self._number_lock = threading.Lock()
        conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self.media_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = lock_data_dir(self.data_dir)
            conn = self._conn = self._connect()
            # Written only when missing: the store must open (and serve reads) on a
            # full disk, where any write transaction fails.
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != SCHEMA_VERSION:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._last_us = self._load_last_us()
            self._remove_orphan_directories()
            self._drop_rows_past_segment_ends()
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            raise EmulatorError(
                f"cannot open the emulator data directory {self.data_dir}: {exc}"
            ) from exc
        self._writer = threading.Thread(
            target=self._writer_loop, name="kvs-store-writer", daemon=True
        )
        self._writer.start()

    # -- lifecycle --

    def close(self) -> None:
        """Finish queued writes, stop the writer thread and close files and connections."""
        if self._close_called:
            return
        self._close_called = True
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        self._fsync_pool.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_listener(self, listener: FragmentListener) -> None:
        """Call ``listener(record)`` on the writer thread after each fragment is committed.

        It must be quick and must not block (an event loop's ``call_soon_threadsafe`` is
        the intended use).
        """
        self._listeners.append(listener)

    # -- connections --

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() can close every connection; each is
        # used by one thread at a time.
        conn = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise EmulatorError("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._reader()
        # One read transaction, so multi-statement reads see one snapshot.
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- writer thread --

    def _submit_call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        after_commit: Callable[[T], None] | None = None,
    ) -> concurrent.futures.Future[T]:
        if self._closed:
            raise EmulatorError("the store is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Call(fn, future, after_commit))
        return future

    def submit_append(
        self, stream_name: str, payload: bytes, meta: FragmentMeta
    ) -> concurrent.futures.Future[FragmentRecord]:
        """Queue a fragment for the writer; the future resolves once it is durable."""
        if self._closed:
            raise EmulatorError("the store is closed")
        future: concurrent.futures.Future[FragmentRecord] = concurrent.futures.Future()
        self._queue.put(_Append(stream_name, bytes(payload), meta, future))
        return future

    def _writer_loop(self) -> None:
        try:
            while True:
                item = self._queue.get()
                batch: list[Any] = [item]
                while len(batch) < _MAX_GROUP:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                appends: list[_Append] = []
                stop = False
                for op in batch:
                    if isinstance(op, _Append):
                        appends.append(op)
                        continue
                    if appends:
                        self._commit_appends(appends)
                        appends = []
                    if op is _STOP:
                        stop = True
                    elif isinstance(op, _Call):
                        self._run_call(op)
                if appends:
                    self._commit_appends(appends)
                if stop:
                    break
        except BaseException:
            logger.exception("the store's writer thread failed")
            raise
        finally:
            self._closed = True
            self._close_segments()
            self._conn.close()
            self._fail_pending()

    def _fail_pending(self) -> None:
        # Nothing is written after the writer ends: fail whatever is still queued
        # instead of leaving its callers waiting forever.
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(op, (_Append, _Call)) and op.future.set_running_or_notify_cancel():
                op.future.set_exception(EmulatorError("the store is closed"))

    def _run_call(self, op: _Call) -> None:
        if not op.future.set_running_or_notify_cancel():
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = op.fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            if op.after_commit is not None:
                op.after_commit(result)
        except BaseException as exc:
            op.future.set_exception(exc)
        else:
            op.future.set_result(result)

    def reserve_fragment_number(self, stream_id: int, server_ts_ms: int) -> tuple[str, int]:
        """A new fragment number and its server timestamp in ms (thread-safe).

        Both grow strictly: the timestamp by at least 1 ms from the previous reservation,
        so fragments that arrive in one burst still have distinct server timestamps.
        Pass them back in :class:`FragmentMeta`; a number never used leaves a gap, which
        fragment numbers may have.
        """
        with self._number_lock:
            micros = max(server_ts_ms * 1000, (self._last_us // 1000 + 1) * 1000)
            self._last_us = micros
        return self._format_number(stream_id, micros), micros // 1000

    def _format_number(self, stream_id: int, micros: int) -> str:
        head = f"{_FRAGMENT_NUMBER_PREFIX}{micros:016d}{stream_id % 10**10:010d}"
        return f"{head}{zlib.crc32(head.encode()) % 10**10:010d}"

    def _next_fragment_number(self, stream_id: int, server_ts_ms: int) -> str:
        with self._number_lock:
            micros = max(server_ts_ms * 1000, self._last_us + 1)
            self._last_us = micros
        return self._format_number(stream_id, micros)

    def _load_last_us(self) -> int:
        row = self._conn.execute("SELECT MAX(fragment_number) FROM fragments").fetchone()
        if row is None or row[0] is None:
            return 0
        prefix = len(_FRAGMENT_NUMBER_PREFIX)
        return int(row[0][prefix : prefix + 16])

    def _segment_fd(self, rel_path: str) -> int:
        fd = self._segments.get(rel_path)
        if fd is not None:
            self._segments.move_to_end(rel_path)
            return fd
        path = self.data_dir / rel_path
        new_dir = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if new_dir or not existed:
            # Make the new directory entries durable too.
            fsync_dir(path.parent)
            if new_dir:
                fsync_dir(path.parent.parent)
        self._segments[rel_path] = fd
        while len(self._segments) > _MAX_OPEN_SEGMENTS:
            _, old_fd = self._segments.popitem(last=False)
            os.close(old_fd)
        return fd

    def _close_segments(self, stream_id: int | None = None) -> None:
        prefix = None if stream_id is None else f"media/{stream_id}/"
        for rel_path in list(self._segments):
            if prefix is None or rel_path.startswith(prefix):
                os.close(self._segments.pop(rel_path))

    def _commit_appends(self, ops: list[_Append]) -> None:
        ops = [op for op in ops if op.future.set_running_or_notify_cancel()]
        records: list[tuple[_Append, FragmentRecord, int]] = []
        dirty: dict[int, None] = {}
        for op in ops:
            try:
                row = self._conn.execute(
                    "SELECT stream_id, status FROM streams WHERE name = ?", (op.stream_name,)
                ).fetchone()
                if row is None or row[1] == "DELETING":
                    raise ResourceNotFoundError(
                        f"The requested stream {op.stream_name} is not found or not active."
                    )
                stream_id = row[0]
                server_ts = op.meta.server_timestamp_ms
                if server_ts is None:
                    server_ts = timestamps.now_ms()
                number = op.meta.fragment_number or self._next_fragment_number(stream_id, server_ts)
                rel_path = f"media/{stream_id}/{segment_name(server_ts)}"
                fd = self._segment_fd(rel_path)
                offset = os.fstat(fd).st_size
                write_all(fd, op.payload)
                dirty[fd] = None
            except BaseException as exc:
                op.future.set_exception(exc)
                continue
            records.append(
                (
                    op,
                    FragmentRecord(
                        stream_id=stream_id,
                        stream_name=op.stream_name,
                        fragment_number=number,
                        producer_timestamp_ms=op.meta.producer_timestamp_ms,
                        server_timestamp_ms=server_ts,
                        duration_ms=op.meta.duration_ms,
                        size=len(op.payload) if op.meta.size is None else op.meta.size,
                        path=rel_path,
                        offset=offset,
                        length=len(op.payload),
                        tags=tuple(op.meta.tags),
                    ),
                    fd,
                )
            )
        if not records:
            return
        # The segment fsyncs run in parallel with each other and with the index commit
        # (itself synced): the ack waits for both, so a fragment is durable when
        # answered, at about the cost of one sync instead of two in a row. A crash
        # between the two leaves index rows past the end of a segment; they are
        # dropped when the store opens (_drop_rows_past_segment_ends).
        syncs = {fd: self._fsync_pool.submit(os.fsync, fd) for fd in dirty}
        committed: list[tuple[_Append, FragmentRecord, int]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for op, record, fd in records:
                    # One savepoint per fragment: a row SQLite refuses (a number out of
                    # its range, say) fails that fragment alone, never the others
                    # committed with it, which may be other streams' uploads.
                    self._conn.execute("SAVEPOINT fragment")
                    try:
                        self._insert_rows(record)
                    except (sqlite3.Error, OverflowError, ValueError) as exc:
                        self._conn.execute("ROLLBACK TO fragment")
                        self._conn.execute("RELEASE fragment")
                        logger.warning("fragment of %s not indexed: %s", op.stream_name, exc)
                        op.future.set_exception(EmulatorError(f"cannot index the fragment: {exc}"))
                        continue
                    self._conn.execute("RELEASE fragment")
                    committed.append((op, record, fd))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if isinstance(exc, OSError | sqlite3.OperationalError):
                # a full disk or a failing device: one line; each upload gets its ERROR ack
                logger.error("persisting %d fragment(s) failed: %s", len(committed), exc)
            else:
                logger.exception("persisting %d fragment(s) failed", len(committed))
            for op, _, _ in committed:
                op.future.set_exception(exc)
            for sync in syncs.values():
                with contextlib.suppress(OSError):
                    sync.result()
            return
        for op, record, fd in committed:
            try:
                syncs[fd].result()
            except OSError as exc:
                # The index has the row but its bytes may not be durable: do not
                # acknowledge it (a restart drops rows past a segment's end).
                logger.error("fsync of %s failed: %s", record.path, exc)
                op.future.set_exception(exc)
                continue
            op.future.set_result(record)
            for listener in self._listeners:
                try:
                    listener(record)
                except Exception:
                    logger.exception("fragment listener failed")

    def _insert_rows(self, r: FragmentRecord) -> None:
        self._conn.execute(
            f"INSERT INTO fragments ({FRAGMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r.stream_id,
                r.fragment_number,
                r.producer_timestamp_ms,
                r.server_timestamp_ms,
                r.duration_ms,
                r.size,
                r.path,
                r.offset,
                r.length,
            ),
        )
        self._conn.executemany(
            "INSERT INTO fragment_tags (stream_id, fragment_number, seq, name, value) "
            "VALUES (?,?,?,?,?)",
            [
                (r.stream_id, r.fragment_number, seq, name, value)
                for seq, (name, value) in enumerate(r.tags)
            ],
        )

    def _drop_rows_past_segment_ends(self) -> None:
        # Index rows may commit before their segment bytes were synced (see
        # _commit_appends); after a crash such a fragment was never acknowledged and its
        # bytes may be missing: forget it.
        ends = self._conn.execute(
            "SELECT path, MAX(file_offset + length) FROM fragments GROUP BY path"
        ).fetchall()
        for path, end in ends:
            try:
                size = os.path.getsize(self.data_dir / path)
            except OSError:
                size = 0
            if end > size:
                with self._conn:
                    cut = self._conn.execute(
                        "SELECT stream_id, fragment_number FROM fragments "
                        "WHERE path = ? AND file_offset + length > ?",
                        (path, size),
                    ).fetchall()
                    self._conn.executemany(
                        "DELETE FROM fragment_tags WHERE stream_id = ? AND fragment_number = ?",
                        cut,
                    )
                    self._conn.execute(
                        "DELETE FROM fragments WHERE path = ? AND file_offset + length > ?",
                        (path, size),
                    )
                logger.warning("%s: dropped %d fragment(s) a crash cut short", path, len(cut))

    def _remove_orphan_directories(self) -> None:
        # A crash between deleting a stream's rows and its files leaves a directory
        # whose id no stream has (ids are never reused).
        ids = {row[0] for row in self._conn.execute("SELECT stream_id FROM streams")}
        for entry in self.media_dir.iterdir():
            if entry.is_dir() and entry.name.isdigit() and int(entry.name) not in ids:
                shutil.rmtree(entry, ignore_errors=True)

    # -- streams: writes --

    def create_stream(
        self,
        name: str,
        *,
        region: str,
        account_id: str,
        retention_hours: int = 0,
        kms_key_id: str | None = None,
        media_type: str | None = None,
        device_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        status: StreamStatus = "ACTIVE",
    ) -> StreamRecord:
        """Create a stream; :class:`ResourceInUseError` when the name is taken."""
        if not 0 <= retention_hours <= MAX_RETENTION_HOURS:
            raise InvalidArgumentError(
                f"DataRetentionInHours {retention_hours} is outside 0..{MAX_RETENTION_HOURS}"
            )
        tag_map = dict(tags or {})
        if len(tag_map) > MAX_TAGS_PER_STREAM:
            raise TagsPerResourceExceededLimitError(
                f"{len(tag_map)} tags exceed the limit of {MAX_TAGS_PER_STREAM} tags per stream"
            )
        if kms_key_id is None:
            # The service's default key for Kinesis Video Streams.
            kms_key_id = f"arn:aws:kms:{region}:{account_id}:alias/aws/kinesisvideo"

        def op(conn: sqlite3.Connection) -> StreamRecord:
            if conn.execute("SELECT 1 FROM streams WHERE name = ?", (name,)).fetchone():
                raise ResourceInUseError(f"The stream {name} already exists.")
            if self.max_streams is not None:
                (count,) = conn.execute("SELECT COUNT(*) FROM streams").fetchone()
                if count >= self.max_streams:
                    raise AccountStreamLimitExceededError(
                        f"The account has reached its limit of {self.max_streams} streams."
                    )
            created = timestamps.now_ms()
            arn = f"arn:aws:kinesisvideo:{region}:{account_id}:stream/{name}/{created}"
            cur = conn.execute(
                "INSERT INTO streams (name, arn, version, status, creation_time_ms, "
                "retention_hours, kms_key_id, media_type, device_name, tags) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    name,
                    arn,
                    _new_version(),
                    status,
                    created,
                    retention_hours,
                    kms_key_id,
                    media_type,
                    device_name,
                    json.dumps(tag_map),
                ),
            )
            return select_stream(conn, "stream_id", cur.lastrowid)

        return self._submit_call(op).result()

    def _update(
        self,
        name: str,
        current_version: str | None,
        change: Callable[[StreamRecord], dict[str, Any]],
        *,
        new_version: bool = True,
    ) -> StreamRecord:
        def op(conn: sqlite3.Connection) -> StreamRecord:
            stream = select_stream(conn, "name", name)
            if current_version is not None and current_version != stream.version:
                raise VersionMismatchError(
                    f"The stream version {current_version} does not match the current "
                    f"version {stream.version}."
                )
            if stream.status != "ACTIVE":
                raise ResourceInUseError(f"The stream {name} is {stream.status}, not ACTIVE.")
            columns = change(stream)
            if new_version:
                columns["version"] = _new_version()
            if columns:
                assignments = ", ".join(f"{column} = ?" for column in columns)
                conn.execute(
                    f"UPDATE streams SET {assignments} WHERE stream_id = ?",
                    (*columns.values(), stream.stream_id),
                )
            return select_stream(conn, "stream_id", stream.stream_id)

        return self._submit_call(op).result()

    def update_stream(
        self,
        name: str,
        current_version: str,
        *,
        device_name: str | None = None,
        media_type: str | None = None,
    ) -> StreamRecord:
        """UpdateStream: change DeviceName and/or MediaType, check the version."""

        def change(_: StreamRecord) -> dict[str, Any]:
            columns: dict[str, Any] = {}
            if device_name is not None:
                columns["device_name"] = device_name
            if media_type is not None:
                columns["media_type"] = media_type
            return columns

        return self._update(name, current_version, change)

    def change_retention(self, name: str, current_version: str, delta_hours: int) -> StreamRecord:
        """UpdateDataRetention: add ``delta_hours`` (negative to decrease), check the version."""

        def change(stream: StreamRecord) -> dict[str, Any]:
            hours = stream.retention_hours + delta_hours
            if not 0 <= hours <= MAX_RETENTION_HOURS:
                raise InvalidArgumentError(
                    f"The new data retention of {hours} hours is outside 0..{MAX_RETENTION_HOURS}."
                )
            return {"retention_hours": hours}

        return self._update(name, current_version, change)

    def set_status(self, name: str, status: StreamStatus) -> StreamRecord:
        def op(conn: sqlite3.Connection) -> StreamRecord:
            stream = select_stream(conn, "name", name)
            conn.execute(
                "UPDATE streams SET status = ? WHERE stream_id = ?", (status, stream.stream_id)
            )
            return select_stream(conn, "stream_id", stream.stream_id)

        return self._submit_call(op).result()

    def tag_stream(self, name: str, tags: Mapping[str, str]) -> StreamRecord:
        """Add or overwrite tags; more than 50 in all is TagsPerResourceExceededLimit."""

        def change(stream: StreamRecord) -> dict[str, Any]:
            merged = {**stream.tags, **tags}
            if len(merged) > MAX_TAGS_PER_STREAM:
                raise TagsPerResourceExceededLimitError(
                    f"The stream would have {len(merged)} tags; the limit is {MAX_TAGS_PER_STREAM}."
                )
            return {"tags": json.dumps(merged)}

        return self._update_any_status(name, change)

    def untag_stream(self, name: str, keys: Sequence[str]) -> StreamRecord:
        def change(stream: StreamRecord) -> dict[str, Any]:
            remaining = {k: v for k, v in stream.tags.items() if k not in set(keys)}
            return {"tags": json.dumps(remaining)}

        return self._update_any_status(name, change)

    def _update_any_status(
        self, name: str, change: Callable[[StreamRecord], dict[str, Any]]
    ) -> StreamRecord:
        # Tags do not change the stream's version.
        def op(conn: sqlite3.Connection) -> StreamRecord:
            stream = select_stream(conn, "name", name)
            if stream.status == "DELETING":
                raise ResourceNotFoundError(f"The stream {name} is being deleted.")
            columns = change(stream)
            assignments = ", ".join(f"{column} = ?" for column in columns)
            conn.execute(
                f"UPDATE streams SET {assignments} WHERE stream_id = ?",
                (*columns.values(), stream.stream_id),
            )
            return select_stream(conn, "stream_id", stream.stream_id)

        return self._submit_call(op).result()

    def begin_delete(self, name: str, current_version: str | None = None) -> StreamRecord:
        """Mark a stream DELETING (checking the version); :meth:`purge_stream` removes it."""

        def op(conn: sqlite3.Connection) -> StreamRecord:
            stream = select_stream(conn, "name", name)
            if current_version is not None and current_version != stream.version:
                raise VersionMismatchError(
                    f"The stream version {current_version} does not match the current "
                    f"version {stream.version}."
                )
            if stream.status == "DELETING":
                raise ResourceInUseError(f"The stream {name} is already being deleted.")
            conn.execute(
                "UPDATE streams SET status = 'DELETING' WHERE stream_id = ?", (stream.stream_id,)
            )
            return select_stream(conn, "stream_id", stream.stream_id)

        try:
            return self._submit_call(op).result()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != _SQLITE_FULL:
                raise
            # A full disk: the index cannot be written until space is freed, so the
            # stream's payload files go first (its rows, about to go too, may point at
            # missing bytes meanwhile; reads of them fail cleanly).
            stream = self.get_stream(name)
            logger.warning("disk full: removing the files of %s before deleting it", name)
            self._submit_call(
                lambda _conn: None, lambda _: self._remove_stream_files(stream.stream_id)
            ).result()
            return self._submit_call(op).result()

    def _remove_stream_files(self, stream_id: int) -> None:
        # Writer thread only: it owns the open segment files.
        self._close_segments(stream_id)
        shutil.rmtree(self.media_dir / str(stream_id), ignore_errors=True)

    def purge_stream(self, stream_id: int) -> None:
        """Remove a stream, its index rows and its segment files (rows first)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM fragment_tags WHERE stream_id = ?", (stream_id,))
            conn.execute("DELETE FROM fragments WHERE stream_id = ?", (stream_id,))
            conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))

        def remove_files(_: None) -> None:
            # After the commit: a crash here leaves an orphan directory, removed at open.
            self._remove_stream_files(stream_id)

        self._submit_call(op, remove_files).result()

    def purge_expired(self, now_ms: int | None = None) -> int:
        """Delete fragments older than their stream's retention; return how many rows went.

        Rows are deleted one by one; segment files whole, once their hour is past the
        cutoff.
        """
        now = timestamps.now_ms() if now_ms is None else now_ms

        def op(conn: sqlite3.Connection) -> tuple[int, list[Path]]:
            deleted = 0
            doomed: list[Path] = []
            streams = conn.execute("SELECT stream_id, retention_hours FROM streams").fetchall()
            for stream_id, hours in streams:
                keep_ms = hours * HOUR_MS if hours > 0 else self.no_retention_keep_ms
                cutoff = now - keep_ms
                conn.execute(
                    "DELETE FROM fragment_tags WHERE stream_id = ? AND fragment_number IN "
                    "(SELECT fragment_number FROM fragments WHERE stream_id = ? "
                    "AND server_ts_ms < ?)",
                    (stream_id, stream_id, cutoff),
                )
                cur = conn.execute(
                    "DELETE FROM fragments WHERE stream_id = ? AND server_ts_ms < ?",
                    (stream_id, cutoff),
                )
                deleted += cur.rowcount
                directory = self.media_dir / str(stream_id)
                if directory.is_dir():
                    for segment in directory.iterdir():
                        end = segment_hour_end_ms(segment.name)
                        if end is not None and end <= cutoff:
                            doomed.append(segment)
            return deleted, doomed

        def remove_files(result: tuple[int, list[Path]]) -> None:
            for segment in result[1]:
                rel_path = segment.relative_to(self.data_dir).as_posix()
                fd = self._segments.pop(rel_path, None)
                if fd is not None:
                    os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    segment.unlink()

        deleted, _ = self._submit_call(op, remove_files).result()
        if deleted:
            logger.info("retention removed %d fragment(s)", deleted)
        return int(deleted)

    # -- fragments: writes --

    def append_fragment(
        self, stream_name: str, payload: bytes, meta: FragmentMeta
    ) -> FragmentRecord:
        """Persist one fragment durably and index it; return its record (blocking)."""
        return self.submit_append(stream_name, payload, meta).result()

    # -- streams: reads --

    def get_stream(self, name: str) -> StreamRecord:
        """The stream by name; :class:`ResourceNotFoundError` when there is none."""
        with self._read() as conn:
            return select_stream(conn, "name", name)

    def get_stream_by_arn(self, arn: str) -> StreamRecord:
        with self._read() as conn:
            return select_stream(conn, "arn", arn)

    def list_streams(
        self, *, prefix: str | None = None, after_name: str | None = None, limit: int = 10000
    ) -> tuple[list[StreamRecord], bool]:
        """Streams in name order after ``after_name``; the flag says whether more follow."""
        clauses: list[str] = []
        params: list[Any] = []
        if prefix:
            # substr comparison rather than LIKE: '_' is a wildcard in LIKE.
            clauses.append("substr(name, 1, ?) = ?")
            params += [len(prefix), prefix]
        if after_name is not None:
            clauses.append("name > ?")
            params.append(after_name)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {STREAM_COLUMNS} FROM streams {where} ORDER BY name LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
        streams = [stream_from_row(row) for row in rows[:limit]]
        return streams, len(rows) > limit

    # -- fragments: reads --

    def get_fragment(self, stream_name: str, fragment_number: str) -> FragmentRecord | None:
        found = self.get_fragments(stream_name, [fragment_number])
        return found[0] if found else None

    def get_fragments(
        self, stream_name: str, fragment_numbers: Sequence[str]
    ) -> list[FragmentRecord]:
        """The fragments with these numbers that exist, in the order asked."""
        keys = [fragment_number_key(n) for n in fragment_numbers]
        with self._read() as conn:
            stream = select_stream(conn, "name", stream_name)
            found: dict[str, FragmentRecord] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT {FRAGMENT_COLUMNS} FROM fragments WHERE stream_id = ? "
                    f"AND fragment_number IN ({marks}) ORDER BY fragment_number",
                    (stream.stream_id, *chunk),
                ).fetchall()
                for record in with_tags(conn, stream.name, rows):
                    found[record.fragment_number] = record
        return [found[k] for k in keys if k in found]

    def list_fragments(
        self,
        stream_name: str,
        *,
        timestamp_type: TimestampType | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_fragment_number: str | None = None,
        limit: int = 1000,
    ) -> FragmentPage:
        """Fragments in fragment-number order, filtered by an inclusive time range.

        ``timestamp_type`` picks the producer or server timestamp for the range.
        Pagination is by fragment number: pass the page's ``next_token`` back through
        :func:`decode_fragment_token` or use :meth:`list_fragments_page`.
        """
        clauses = ["stream_id = ?"]
        params: list[Any] = []
        if timestamp_type is not None:
            column = "producer_ts_ms" if timestamp_type == "PRODUCER_TIMESTAMP" else "server_ts_ms"
            if start_ms is not None:
                clauses.append(f"{column} >= ?")
                params.append(start_ms)
            if end_ms is not None:
                clauses.append(f"{column} <= ?")
                params.append(end_ms)
        if after_fragment_number is not None:
            clauses.append("fragment_number > ?")
            params.append(fragment_number_key(after_fragment_number))
        with self._read() as conn:
            stream = select_stream(conn, "name", stream_name)
            rows = conn.execute(
                f"SELECT {FRAGMENT_COLUMNS} FROM fragments WHERE {' AND '.join(clauses)} "
                "ORDER BY fragment_number LIMIT ?",
                (stream.stream_id, *params, limit + 1),
            ).fetchall()
            records = with_tags(conn, stream.name, rows[:limit])
        token = None
        if len(rows) > limit:
            token = encode_token({"after": records[-1].fragment_number})
        return FragmentPage(tuple(records), token)

    def fragments_after(
        self, stream_name: str, fragment_number: str | None, limit: int = 100
    ) -> list[FragmentRecord]:
        """Fragments after ``fragment_number`` (from the earliest when None), in order."""
        return list(
            self.list_fragments(
                stream_name, after_fragment_number=fragment_number, limit=limit
            ).fragments
        )

    def count_fragments(self, stream_name: str) -> int:
        """How many fragments the stream holds (an index-only count)."""
        with self._read() as conn:
            stream = select_stream(conn, "name", stream_name)
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM fragments WHERE stream_id = ?", (stream.stream_id,)
            ).fetchone()
        return int(count)

    def earliest_fragment(self, stream_name: str) -> FragmentRecord | None:
        return self._edge_fragment(stream_name, "ASC")

    def latest_fragment(self, stream_name: str) -> FragmentRecord | None:
        return self._edge_fragment(stream_name, "DESC")

    def _edge_fragment(
        self, stream_name: str, order: Literal["ASC", "DESC"]
    ) -> FragmentRecord | None:
        with self._read() as conn:
            stream = select_stream(conn, "name", stream_name)
            rows = conn.execute(
                f"SELECT {FRAGMENT_COLUMNS} FROM fragments WHERE stream_id = ? "
                f"ORDER BY fragment_number {order} LIMIT 1",
                (stream.stream_id,),
            ).fetchall()
            records = with_tags(conn, stream.name, rows)
        return records[0] if records else None

    def first_fragment_at_or_after(
        self, stream_name: str, timestamp_type: TimestampType, timestamp_ms: int
    ) -> FragmentRecord | None:
        """The first fragment (by number) whose timestamp is at or after ``timestamp_ms``.

        For GetMedia's PRODUCER_TIMESTAMP / SERVER_TIMESTAMP start selectors.
        """
        page = self.list_fragments(
            stream_name, timestamp_type=timestamp_type, start_ms=timestamp_ms, limit=1
        )
        return page.fragments[0] if page.fragments else None

    def read_payload(self, record: FragmentRecord) -> bytes:
        """The stored bytes of a fragment (blocking file read)."""
        path = self.data_dir / record.path
        try:
            with open(path, "rb") as f:
                f.seek(record.offset)
                data = f.read(record.length)
        except OSError as exc:
            raise EmulatorError(
                f"cannot read fragment {record.fragment_number} from {path}: {exc}"
            ) from exc
        if len(data) != record.length:
            raise EmulatorError(
                f"fragment {record.fragment_number} is truncated in {path}: "
                f"{len(data)} of {record.length} bytes"
            )
        return data
