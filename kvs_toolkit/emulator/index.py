"""The emulator store's SQLite index: schema, row mapping and shared queries.

One database per data directory (``index.sqlite3``, WAL, ``synchronous=FULL``): the
``streams`` table, ``fragments`` rows pointing into segment files by (path, offset,
length), and each fragment's metadata in ``fragment_tags``. The store writes it from
one writer thread and reads it from per-thread read connections.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from kvs_toolkit.emulator.errors import ResourceNotFoundError
from kvs_toolkit.emulator.records import FragmentRecord, StreamRecord

__all__ = [
    "FRAGMENT_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STREAM_COLUMNS",
    "select_stream",
    "stream_from_row",
    "with_tags",
]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    arn TEXT NOT NULL UNIQUE,
    version TEXT NOT NULL,
    status TEXT NOT NULL,
    creation_time_ms INTEGER NOT NULL,
    retention_hours INTEGER NOT NULL,
    kms_key_id TEXT NOT NULL,
    media_type TEXT,
    device_name TEXT,
    tags TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS fragments (
    stream_id INTEGER NOT NULL,
    fragment_number TEXT NOT NULL,
    producer_ts_ms INTEGER NOT NULL,
    server_ts_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    file_offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (stream_id, fragment_number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fragments_by_producer_ts ON fragments (stream_id, producer_ts_ms);
CREATE INDEX IF NOT EXISTS fragments_by_server_ts ON fragments (stream_id, server_ts_ms);
CREATE TABLE IF NOT EXISTS fragment_tags (
    stream_id INTEGER NOT NULL,
    fragment_number TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (stream_id, fragment_number, seq)
) WITHOUT ROWID;
"""

STREAM_COLUMNS = (
    "stream_id, name, arn, version, status, creation_time_ms, retention_hours, "
    "kms_key_id, media_type, device_name, tags"
)
FRAGMENT_COLUMNS = (
    "stream_id, fragment_number, producer_ts_ms, server_ts_ms, duration_ms, size, "
    "path, file_offset, length"
)


def stream_from_row(row: Sequence[Any]) -> StreamRecord:
    return StreamRecord(
        stream_id=row[0],
        name=row[1],
        arn=row[2],
        version=row[3],
        status=row[4],
        creation_time_ms=row[5],
        retention_hours=row[6],
        kms_key_id=row[7],
        media_type=row[8],
        device_name=row[9],
        tags=json.loads(row[10]),
    )


def select_stream(conn: sqlite3.Connection, column: str, value: Any) -> StreamRecord:
    row = conn.execute(
        f"SELECT {STREAM_COLUMNS} FROM streams WHERE {column} = ?", (value,)
    ).fetchone()
    if row is None:
        what = "stream" if column != "arn" else "stream ARN"
        raise ResourceNotFoundError(f"The requested {what} {value} is not found.")
    return stream_from_row(row)


def with_tags(
    conn: sqlite3.Connection, stream_name: str, rows: Sequence[Sequence[Any]]
) -> list[FragmentRecord]:
    if not rows:
        return []
    stream_id = rows[0][0]
    tags: dict[str, list[tuple[str, str]]] = {}
    for number, name, value in conn.execute(
        "SELECT fragment_number, name, value FROM fragment_tags WHERE stream_id = ? "
        "AND fragment_number BETWEEN ? AND ? ORDER BY fragment_number, seq",
        (stream_id, min(r[1] for r in rows), max(r[1] for r in rows)),
    ):
        tags.setdefault(number, []).append((name, value))
    return [
        FragmentRecord(
            stream_id=r[0],
            stream_name=stream_name,
            fragment_number=r[1],
            producer_timestamp_ms=r[2],
            server_timestamp_ms=r[3],
            duration_ms=r[4],
            size=r[5],
            path=r[6],
            offset=r[7],
            length=r[8],
            tags=tuple(tags.get(r[1], ())),
        )
        for r in rows
    ]
