"""The emulator store's segment files: append-only payload files and their durability.

``media/<stream id>/<YYYYMMDDHH>.seg`` holds one stream's fragment payloads for one UTC
hour of server time. Files are only appended to and deleted whole (retention); the
helpers here write fully, fsync files and directories, and lock the data directory
so that one store at a time writes it.
"""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path
from typing import Final

__all__ = [
    "HOUR_MS",
    "fsync_dir",
    "lock_data_dir",
    "segment_hour_end_ms",
    "segment_name",
    "write_all",
]

HOUR_MS: Final = 3_600_000


def segment_name(server_ts_ms: int) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(server_ts_ms // 1000)) + ".seg"


def segment_hour_end_ms(name: str) -> int | None:
    stem = name.removesuffix(".seg")
    try:
        start = time.strptime(stem, "%Y%m%d%H")
    except ValueError:
        return None
    return calendar.timegm(start) * 1000 + HOUR_MS


def lock_data_dir(data_dir: Path) -> int | None:
    """Hold an exclusive lock on the data directory: one store may write it at a time.

    Two writers would interleave appends to the same segment files.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here
        return None
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise OSError(f"the data directory is in use by another emulator ({exc})") from exc
    return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
