"""Checkpoints, so a consumer resumes after a crash; leases, so consumers share streams.

A :class:`Checkpoint` records the last fragment a consumer has *processed* (its number
and GetMedia continuation token). A :class:`CheckpointStore` keeps one per stream:

* :class:`SqliteCheckpointStore` - the default: one row per (stream, consumer group) in
  a SQLite database in WAL mode, each save one atomic, durable upsert.
* :class:`JsonFileCheckpointStore` - one local JSON file, rewritten atomically (temp
  file in the same folder, fsync, ``os.replace``, fsync of the folder), so a crash
  leaves either the old or the new file, never a torn one.
* :class:`DynamoDBCheckpointStore` - a DynamoDB table keyed by stream name, written
  with conditional updates. Given an ``owner_id`` it also holds a **lease** per stream
  (owner, expiry, counter) so N consumer processes share M streams without two reading
  the same one: :class:`LeaseCoordinator` claims a fair share, renews it, releases
  surplus when more workers join and takes over leases whose owner stopped renewing.
  A save by a consumer that no longer holds the stream's lease fails with
  :class:`LeaseLostError`.

The live reader (:class:`~kvs_toolkit.consumer.readers.LiveReader`) loads a stream's
checkpoint when it starts and saves after each processed fragment (or every N
fragments / S seconds).

Leases compare expiry times written by one host's clock with another host's clock:
keep clocks synchronised (NTP) and the lease duration much longer than their skew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from kvs_toolkit.errors import CheckpointError, LeaseLostError
from kvs_toolkit.mkv import Fragment
from kvs_toolkit.timestamps import epoch_seconds

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "DynamoDBCheckpointStore",
    "JsonFileCheckpointStore",
    "LeaseCoordinator",
    "LeaseInfo",
    "LeaseLostError",
    "SqliteCheckpointStore",
    "TableState",
    "WorkerInfo",
    "default_checkpoint_path",
    "open_checkpoint_store",
]

log = logging.getLogger(__name__)

DEFAULT_LEASE_DURATION_S: Final = 30.0
# Worker heartbeat items share the table with stream items; '#' cannot occur in a stream
# name ([a-zA-Z0-9_.-], docs/kvs-wire.md "Endpoints and signing"), so the keys never collide.
_WORKER_PREFIX: Final = "#worker#"
_KEY: Final = "stream"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The last processed fragment of a stream.

    ``continuation_token`` resumes GetMedia right after the fragment (StartSelector
    CONTINUATION_TOKEN); without it, ``fragment_number`` does (FRAGMENT_NUMBER).
    Timestamps are epoch seconds.
    """

    fragment_number: str
    continuation_token: str | None = None
    producer_timestamp: float | None = None
    server_timestamp: float | None = None
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, fragment: Fragment) -> Checkpoint:
        """The checkpoint after ``fragment`` (which must carry a fragment number)."""
        number = fragment.fragment_number
        if number is None:
            raise CheckpointError("a fragment without a fragment number cannot be checkpointed")
        return cls(
            fragment_number=number,
            continuation_token=fragment.continuation_token,
            producer_timestamp=epoch_seconds(fragment.producer_timestamp, None),
            server_timestamp=epoch_seconds(fragment.server_timestamp, None),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fragment_number": self.fragment_number,
            "continuation_token": self.continuation_token,
            "producer_timestamp": self.producer_timestamp,
            "server_timestamp": self.server_timestamp,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        number = data.get("fragment_number")
        if not isinstance(number, str) or not number:
            raise CheckpointError(f"checkpoint without a fragment_number: {dict(data)!r}")

        def number_or_none(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        token = data.get("continuation_token")
        return cls(
            fragment_number=number,
            continuation_token=token if isinstance(token, str) and token else None,
            producer_timestamp=number_or_none("producer_timestamp"),
            server_timestamp=number_or_none("server_timestamp"),
            updated_at=number_or_none("updated_at") or 0.0,
        )


@runtime_checkable
class CheckpointStore(Protocol):
    """Where consumers keep their position, one checkpoint per stream."""

    def load(self, stream: str) -> Checkpoint | None:
        """The stream's checkpoint, or None when it has none."""
        ...

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        """Record ``checkpoint`` as the stream's position (durable when this returns)."""
        ...


# --- local JSON file ----------------------------------------------------------------------
class JsonFileCheckpointStore:
    """Checkpoints of any number of streams in one JSON file, written atomically.

    Each save rewrites the whole file through a temporary file in the same folder,
    fsyncs it, renames it over the old one and fsyncs the folder. Meant for one
    consumer process per file (a lock orders the threads of that process).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: dict[str, Checkpoint] | None = None

    def _read(self) -> dict[str, Checkpoint]:
        if self._cache is not None:
            return self._cache
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._cache = {}
            return self._cache
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint file {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("streams"), dict):
                raise ValueError("expected an object with a 'streams' object")
            entries = {str(k): Checkpoint.from_json(v) for k, v in data["streams"].items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint file {self.path} is not valid: {exc}") from exc
        self._cache = entries
        return entries

    def load(self, stream: str) -> Checkpoint | None:
        with self._lock:
            return self._read().get(stream)

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        with self._lock:
            entries = dict(self._read())
            entries[stream] = checkpoint
            document = {"version": 1, "streams": {k: v.to_json() for k, v in entries.items()}}
            self._write_atomically(json.dumps(document, indent=2, sort_keys=True).encode())
            self._cache = entries

    def _write_atomically(self, data: bytes) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            _fsync_directory(folder)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint file {self.path}: {exc}") from exc


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk (POSIX); Windows
    # cannot open a directory, and does not need this.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- SQLite (the default) -------------------------------------------------------------------
def default_checkpoint_path() -> Path:
    """Where ``kvs consume`` keeps checkpoints unless told otherwise:
    ``$XDG_STATE_HOME/kvs-toolkit/checkpoints.sqlite3`` (``~/.local/state/...`` when the
    variable is unset), the XDG Base Directory place for state that survives restarts."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kvs-toolkit" / "checkpoints.sqlite3"


class SqliteCheckpointStore:
    """Checkpoints in a SQLite database (standard library ``sqlite3``), the default store.

    One row per (stream, consumer group) holds the last processed fragment number, its
    continuation token and timestamps; a save is one ``INSERT ... ON CONFLICT DO
    UPDATE`` in its own transaction, so the fields change together or not at all. The
    database runs in WAL mode with ``synchronous=FULL``: a save is on disk when it
    returns, and readers (another process looking at progress) never block the writer.
    Several processes may share a file (SQLite locks it; ``busy_timeout`` waits).
    ``consumer_group`` lets independent consumers of one stream keep separate positions.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        consumer_group: str = "default",
        busy_timeout_s: float = 10.0,
    ) -> None:
        if not consumer_group:
            raise ValueError("consumer_group must not be empty")
        self.path = Path(path)
        self.consumer_group = consumer_group
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise CheckpointError(f"cannot open checkpoint database {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints ("
                " stream TEXT NOT NULL,"
                " consumer_group TEXT NOT NULL,"
                " fragment_number TEXT NOT NULL,"
                " continuation_token TEXT,"
                " producer_timestamp REAL,"
                " server_timestamp REAL,"
                " updated_at REAL NOT NULL,"
                " PRIMARY KEY (stream, consumer_group))"
            )
        except sqlite3.Error as exc:
            self._db.close()
            raise CheckpointError(f"checkpoint database {self.path} is not usable: {exc}") from exc

    def load(self, stream: str) -> Checkpoint | None:
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT fragment_number, continuation_token, producer_timestamp,"
                    " server_timestamp, updated_at FROM checkpoints"
                    " WHERE stream = ? AND consumer_group = ?",
                    (stream, self.consumer_group),
                ).fetchone()
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"cannot read checkpoint of {stream!r} from {self.path}: {exc}"
                ) from exc
        if row is None:
            return None
        return Checkpoint(row[0], row[1] or None, row[2], row[3], row[4])

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO checkpoints (stream, consumer_group, fragment_number,"
                    " continuation_token, producer_timestamp, server_timestamp, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (stream, consumer_group) DO UPDATE SET"
                    " fragment_number = excluded.fragment_number,"
                    " continuation_token = excluded.continuation_token,"
                    " producer_timestamp = excluded.producer_timestamp,"
                    " server_timestamp = excluded.server_timestamp,"
                    " updated_at = excluded.updated_at",
                    (
                        stream,
                        self.consumer_group,
                        checkpoint.fragment_number,
                        checkpoint.continuation_token,
                        checkpoint.producer_timestamp,
                        checkpoint.server_timestamp,
                        checkpoint.updated_at,
                    ),
                )
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"cannot save checkpoint of {stream!r} to {self.path}: {exc}"
                ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteCheckpointStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_checkpoint_store(
    spec: str | os.PathLike[str] | None, *, consumer_group: str = "default"
) -> CheckpointStore:
    """The store a ``--checkpoint`` value names: ``dynamodb:TABLE`` (DynamoDB), a path
    ending in ``.json`` (:class:`JsonFileCheckpointStore`), any other path (SQLite), or
    None for SQLite at :func:`default_checkpoint_path`."""
    if spec is None:
        return SqliteCheckpointStore(default_checkpoint_path(), consumer_group=consumer_group)
    text = os.fspath(spec)
    if text.startswith("dynamodb:"):
        table = text.partition(":")[2]
        if not table:
            raise CheckpointError("--checkpoint dynamodb:TABLE needs a table name")
        # One table per consumer group: its items are keyed by stream (and hold leases).
        return DynamoDBCheckpointStore(table)
    if text.endswith(".json"):
        return JsonFileCheckpointStore(text)
    return SqliteCheckpointStore(text, consumer_group=consumer_group)


# --- DynamoDB -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who holds a stream's lease and until when (epoch seconds of the owner's clock).

    ``renewed`` / ``acquired``: when the owner last renewed / first took it;
    ``checkpoint``: the stream's checkpoint in the same item, if any.
    """

    stream: str
    owner: str | None
    expires: float | None
    counter: int
    renewed: float | None = None
    acquired: float | None = None
    checkpoint: Checkpoint | None = None

    def held_at(self, now: float) -> bool:
        return self.owner is not None and self.expires is not None and self.expires >= now


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker's heartbeat item: alive until ``expires``; ``status`` is what it last
    reported about itself (its streams and their lags, see ``heartbeat(status=...)``)."""

    owner: str
    expires: float | None
    beat: float | None
    status: Mapping[str, Any]

    def alive_at(self, now: float) -> bool:
        return self.expires is not None and self.expires >= now


@dataclass(frozen=True, slots=True)
class TableState:
    """Every lease and heartbeat of a table, read with one (paginated) Scan."""

    leases: dict[str, LeaseInfo]
    workers: dict[str, WorkerInfo]

    def live_workers(self, now: float) -> set[str]:
        return {w.owner for w in self.workers.values() if w.alive_at(now)}


def _checkpoint_of(item: Mapping[str, Any]) -> Checkpoint | None:
    if "fragment_number" not in item:
        return None
    return Checkpoint(
        fragment_number=item["fragment_number"]["S"],
        continuation_token=item.get("continuation_token", {}).get("S"),
        producer_timestamp=_number(item.get("producer_timestamp")),
        server_timestamp=_number(item.get("server_timestamp")),
        updated_at=_number(item.get("updated_at")) or 0.0,
    )


def _lease_of(stream: str, item: Mapping[str, Any]) -> LeaseInfo:
    return LeaseInfo(
        stream=stream,
        owner=item.get("lease_owner", {}).get("S"),
        expires=_number(item.get("lease_expires")),
        counter=int(_number(item.get("lease_counter")) or 0),
        renewed=_number(item.get("lease_renewed")),
        acquired=_number(item.get("lease_acquired")),
        checkpoint=_checkpoint_of(item),
    )


def _is_conditional_failure(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return bool(response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class DynamoDBCheckpointStore:
    """Checkpoints (and, with ``owner_id``, stream leases) in a DynamoDB table.

    The table's partition key is the string attribute ``stream``; create it with
    :meth:`create_table`. A stream's item holds the checkpoint attributes
    (``fragment_number``, ``continuation_token``, timestamps) and the lease attributes
    (``lease_owner``, ``lease_expires``, ``lease_counter``); each write updates only
    its own attributes, so saving a checkpoint never disturbs a lease and vice versa.

    With ``owner_id`` set, :meth:`save` is conditional on this owner holding the lease
    and raises :class:`LeaseLostError` otherwise: a consumer whose lease was taken over
    cannot move the new owner's checkpoint. ``clock`` (epoch seconds) is injectable
    for tests.
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: Any | None = None,
        owner_id: str | None = None,
        lease_duration_s: float = DEFAULT_LEASE_DURATION_S,
        region: str | None = None,
        endpoint_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url)
        if lease_duration_s <= 0:
            raise ValueError("lease_duration_s must be positive")
        self.table_name = table_name
        self.client = client
        self.owner_id = owner_id
        self.lease_duration_s = lease_duration_s
        self.clock = clock

    @classmethod
    def from_aws(
        cls,
        aws: AwsAccess,
        table_name: str,
        *,
        endpoint_url: str | None = None,
        owner_id: str | None = None,
        lease_duration_s: float = DEFAULT_LEASE_DURATION_S,
        timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> DynamoDBCheckpointStore:
        """A store whose client comes from ``aws`` (``endpoint_url``: DynamoDB's, which is
        not the Kinesis Video endpoint; default ``AWS_ENDPOINT_URL_DYNAMODB`` or AWS).

        Calls time out after ``timeout_s`` (default a sixth of the lease) and are tried
        once: a lease holder must learn that DynamoDB is unreachable while its leases
        are still valid, not after botocore's retries; the callers retry (the lease
        rounds come again, checkpoint saves back off with a RetryPolicy).
        """
        from botocore.config import Config

        timeout = timeout_s if timeout_s is not None else max(0.5, lease_duration_s / 6)
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
        client = aws.client("dynamodb", endpoint_url=endpoint_url, config=config)
        return cls(
            table_name,
            client=client,
            owner_id=owner_id,
            lease_duration_s=lease_duration_s,
            clock=clock,
        )

    @staticmethod
    def create_table(client: Any, table_name: str, *, wait: bool = True) -> None:
        """Create the table (on-demand capacity); no-op if it exists."""
        try:
            client.create_table(
                TableName=table_name,
                AttributeDefinitions=[{"AttributeName": _KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": _KEY, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except client.exceptions.ResourceInUseException:
            return
        if wait:
            client.get_waiter("table_exists").wait(TableName=table_name)

    # --- checkpoints ----------------------------------------------------------------
    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            response = self.client.get_item(
                TableName=self.table_name, Key={_KEY: {"S": key}}, ConsistentRead=True
            )
        except Exception as exc:
            raise CheckpointError(f"DynamoDB GetItem {key!r} failed: {exc}") from exc
        item: dict[str, Any] | None = response.get("Item")
        return item

    def load(self, stream: str) -> Checkpoint | None:
        item = self._get(stream)
        return None if item is None else _checkpoint_of(item)

    def save(self, stream: str, checkpoint: Checkpoint) -> None:
        names = {"#n": "fragment_number", "#u": "updated_at"}
        values: dict[str, Any] = {
            ":n": {"S": checkpoint.fragment_number},
            ":u": {"N": repr(checkpoint.updated_at)},
        }
        sets = ["#n = :n", "#u = :u"]
        removes = []
        for short, name, value in (
            ("t", "continuation_token", checkpoint.continuation_token),
            ("p", "producer_timestamp", checkpoint.producer_timestamp),
            ("s", "server_timestamp", checkpoint.server_timestamp),
        ):
            names[f"#{short}"] = name
            if value is None:
                removes.append(f"#{short}")
            else:
                sets.append(f"#{short} = :{short}")
                values[f":{short}"] = {"S": value} if isinstance(value, str) else {"N": repr(value)}
        expression = "SET " + ", ".join(sets)
        if removes:
            expression += " REMOVE " + ", ".join(removes)
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": {_KEY: {"S": stream}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if self.owner_id is not None:
            request["ConditionExpression"] = "#o = :me"
            names["#o"] = "lease_owner"
            values[":me"] = {"S": self.owner_id}
        try:
            self.client.update_item(**request)
        except Exception as exc:
            if _is_conditional_failure(exc):
                raise LeaseLostError(
                    f"{self.owner_id} no longer holds the lease of stream {stream!r}: "
                    "checkpoint not saved"
                ) from exc
            raise CheckpointError(f"DynamoDB UpdateItem {stream!r} failed: {exc}") from exc

    # --- leases -----------------------------------------------------------------------
    def _require_owner(self) -> str:
        if self.owner_id is None:
            raise CheckpointError("leases need a DynamoDBCheckpointStore with an owner_id")
        return self.owner_id

    def _conditional_update(self, key: str, **request: Any) -> bool:
        try:
            self.client.update_item(TableName=self.table_name, Key={_KEY: {"S": key}}, **request)
        except Exception as exc:
            if _is_conditional_failure(exc):
                return False
            raise CheckpointError(f"DynamoDB UpdateItem {key!r} failed: {exc}") from exc
        return True

    def acquire_lease(self, stream: str) -> bool:
        """Take the stream's lease if it is free, expired or already ours (conditional put:
        of two workers racing for one lease exactly one wins)."""
        me = self._require_owner()
        now = self.clock()
        acquired = self._conditional_update(
            stream,
            UpdateExpression="SET #o = :me, #e = :exp, #r = :now, #a = :now,"
            " #c = if_not_exists(#c, :zero) + :one",
            ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #e < :now",
            ExpressionAttributeNames={
                "#o": "lease_owner",
                "#e": "lease_expires",
                "#c": "lease_counter",
                "#r": "lease_renewed",
                "#a": "lease_acquired",
            },
            ExpressionAttributeValues={
                ":me": {"S": me},
                ":exp": {"N": repr(now + self.lease_duration_s)},
                ":now": {"N": repr(now)},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
            },
        )
        if acquired:
            log.info("%s acquired the lease of stream %s", me, stream)
        return acquired

    def renew_lease(self, stream: str) -> bool:
        """Extend our lease; False when another owner holds it now (we lost it).

        The new expiry counts from the clock read before the request is sent."""
        me = self._require_owner()
        now = self.clock()
        return self._conditional_update(
            stream,
            UpdateExpression="SET #e = :exp, #r = :now",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={
                "#o": "lease_owner",
                "#e": "lease_expires",
                "#r": "lease_renewed",
            },
            ExpressionAttributeValues={
                ":me": {"S": me},
                ":exp": {"N": repr(now + self.lease_duration_s)},
                ":now": {"N": repr(now)},
            },
        )

    def release_lease(self, stream: str) -> bool:
        """Give the lease up (after a final checkpoint); False if it was not ours."""
        me = self._require_owner()
        released = self._conditional_update(
            stream,
            UpdateExpression="REMOVE #o, #e",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "lease_owner", "#e": "lease_expires"},
            ExpressionAttributeValues={":me": {"S": me}},
        )
        if released:
            log.info("%s released the lease of stream %s", me, stream)
        return released

    def lease(self, stream: str) -> LeaseInfo:
        """The stream's lease as stored now."""
        return _lease_of(stream, self._get(stream) or {})

    def heartbeat(self, status: Mapping[str, Any] | None = None) -> None:
        """Announce this worker as alive for one lease duration (for fair shares), with
        an optional JSON-able ``status`` (its streams and lags, for ``kvs fleet status``;
        an item holds at most 400 KB, so keep it to a few hundred bytes per stream)."""
        me = self._require_owner()
        now = self.clock()
        names = {"#e": "lease_expires", "#b": "heartbeat_at"}
        values: dict[str, Any] = {
            ":exp": {"N": repr(now + self.lease_duration_s)},
            ":now": {"N": repr(now)},
        }
        expression = "SET #e = :exp, #b = :now"
        if status is not None:
            names["#s"] = "status"
            values[":s"] = {"S": json.dumps(status, separators=(",", ":"), default=str)}
            expression += ", #s = :s"
        self._conditional_update(
            _WORKER_PREFIX + me,
            UpdateExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def table_state(self) -> TableState:
        """Every stream's lease (and checkpoint) and every worker's heartbeat: one
        consistent, paginated Scan instead of a GetItem per stream."""
        leases: dict[str, LeaseInfo] = {}
        workers: dict[str, WorkerInfo] = {}
        request: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True}
        try:
            while True:
                page = self.client.scan(**request)
                for item in page.get("Items", ()):
                    key = item[_KEY]["S"]
                    if key.startswith(_WORKER_PREFIX):
                        owner = key[len(_WORKER_PREFIX) :]
                        try:
                            status = json.loads(item.get("status", {}).get("S", "{}"))
                        except ValueError:
                            status = {}
                        workers[owner] = WorkerInfo(
                            owner=owner,
                            expires=_number(item.get("lease_expires")),
                            beat=_number(item.get("heartbeat_at")),
                            status=status if isinstance(status, dict) else {},
                        )
                    else:
                        leases[key] = _lease_of(key, item)
                if "LastEvaluatedKey" not in page:
                    return TableState(leases, workers)
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except Exception as exc:
            raise CheckpointError(f"DynamoDB Scan of {self.table_name} failed: {exc}") from exc

    def leave(self) -> None:
        """Withdraw this worker's heartbeat (a clean shutdown)."""
        me = self._require_owner()
        try:
            self.client.delete_item(
                TableName=self.table_name, Key={_KEY: {"S": _WORKER_PREFIX + me}}
            )
        except Exception as exc:
            raise CheckpointError(f"DynamoDB DeleteItem for worker {me!r} failed: {exc}") from exc

    def live_workers(self) -> set[str]:
        """Owner ids whose heartbeat has not expired (this one included once it beat)."""
        now = self.clock()
        workers: set[str] = set()
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "begins_with(#k, :prefix) AND #e >= :now",
            "ExpressionAttributeNames": {"#k": _KEY, "#e": "lease_expires"},
            "ExpressionAttributeValues": {
                ":prefix": {"S": _WORKER_PREFIX},
                ":now": {"N": repr(now)},
            },
            "ConsistentRead": True,
        }
        try:
            while True:
                page = self.client.scan(**request)
                workers.update(i[_KEY]["S"][len(_WORKER_PREFIX) :] for i in page.get("Items", ()))
                if "LastEvaluatedKey" not in page:
                    return workers
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except Exception as exc:
            raise CheckpointError(f"DynamoDB Scan of {self.table_name} failed: {exc}") from exc


def _number(value: Mapping[str, str] | None) -> float | None:
    if not value or "N" not in value:
        return None
    return float(value["N"])


# --- sharing streams between workers ------------------------------------------------------
class LeaseCoordinator:
    """Shares a set of streams among the workers using one :class:`DynamoDBCheckpointStore`.

    Call :meth:`balance` periodically (well within the lease duration, e.g. every third
    of it). Each round it announces this worker (heartbeat, with ``status()`` if
    given), renews the leases it holds, reads the table once (one Scan: every lease and
    heartbeat) and moves towards a fair share, ``ceil(streams / live workers)`` (never
    more than the exact fair share + 1):

    * leases that are free or expired (their owner stopped renewing: crashed or cut
      off) are taken until the share is reached;
    * leases above the share, when other workers are alive, are released, so the
      newcomers can take them on their next round.

    A stream is never taken from a live owner: it changes hands only after its owner
    released it or its lease expired, so two workers never read one stream at the same
    time as long as each stops reading a stream by :meth:`deadline` (its last renewal
    request plus the lease duration) unless renewed. ``on_acquired(stream)`` /
    ``on_released(stream)`` / ``on_lost(stream)`` are called from :meth:`balance`;
    ``before_release(stream)`` runs before a voluntary release, to stop the stream's
    reader and save its checkpoint. Not thread-safe: one thread calls :meth:`balance`
    and :meth:`release_all`; :meth:`deadline` and :attr:`owned` may be read from others.
    """

    def __init__(
        self,
        store: DynamoDBCheckpointStore,
        *,
        on_acquired: Callable[[str], None] | None = None,
        on_released: Callable[[str], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        before_release: Callable[[str], None] | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.owner_id = store._require_owner()
        self.store = store
        self.owned: set[str] = set()
        self.workers: set[str] = {self.owner_id}  # live workers seen in the last round
        self.share = 0
        self._renewed: dict[str, float] = {}
        self._on_acquired = on_acquired
        self._on_released = on_released
        self._on_lost = on_lost
        self._before_release = before_release
        self._status = status

    @classmethod
    def new_owner_id(cls) -> str:
        """A unique worker id: host name, process id and a random suffix."""
        import socket

        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def deadline(self, stream: str) -> float | None:
        """When our lease of ``stream`` runs out (store clock) unless renewed; None if
        we do not hold it."""
        renewed = self._renewed.get(stream)
        return None if renewed is None else renewed + self.store.lease_duration_s

    def balance(self, streams: Iterable[str]) -> set[str]:
        """One round of heartbeat, renewal, release and acquisition; the streams now held.

        A DynamoDB failure raises :class:`CheckpointError` part-way; the leases renewed
        so far keep their new deadlines and the next round goes on from there."""
        wanted = sorted(set(streams))
        store = self.store
        store.heartbeat(self._status() if self._status is not None else None)
        for stream in sorted(self.owned):
            if stream not in wanted:
                self._release(stream)
                continue
            sent = store.clock()
            if store.renew_lease(stream):
                self._renewed[stream] = sent
            else:
                self._lost(stream)
        state = store.table_state()
        now = store.clock()
        self.workers = state.live_workers(now) | {self.owner_id}
        self.share = math.ceil(len(wanted) / len(self.workers)) if wanted else 0
        for stream in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - self.share)]:
            self._release(stream)
        for stream in wanted:
            if len(self.owned) >= self.share:
                break
            if stream in self.owned:
                continue
            lease = state.leases.get(stream)
            if lease is not None and lease.owner != self.owner_id and lease.held_at(now):
                continue
            sent = store.clock()
            if store.acquire_lease(stream):
                self.owned.add(stream)
                self._renewed[stream] = sent
                if self._on_acquired is not None:
                    self._on_acquired(stream)
        return set(self.owned)

    def _lost(self, stream: str) -> None:
        self.owned.discard(stream)
        self._renewed.pop(stream, None)
        log.warning("%s lost the lease of stream %s", self.owner_id, stream)
        if self._on_lost is not None:
            self._on_lost(stream)

    def _release(self, stream: str) -> None:
        if self._before_release is not None:
            self._before_release(stream)
        try:
            self.store.release_lease(stream)
        finally:
            # Released or not (DynamoDB unreachable: it then expires), we stop using it.
            self.owned.discard(stream)
            self._renewed.pop(stream, None)
        if self._on_released is not None:
            self._on_released(stream)

    def release_all(self) -> None:
        """Release every lease and withdraw the heartbeat (a clean shutdown). Every lease
        is tried; the first DynamoDB failure is raised at the end."""
        failure: CheckpointError | None = None
        for stream in sorted(self.owned):
            try:
                self._release(stream)
            except CheckpointError as exc:
                failure = failure or exc
        try:
            self.store.leave()
        except CheckpointError as exc:
            failure = failure or exc
        if failure is not None:
            raise failure
