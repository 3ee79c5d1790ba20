"""An on-disk spool of fragments not yet acknowledged (blocking file I/O, sans-asyncio).

Each fragment is one file, ``<sequence>.frag`` (20 digits, so a directory listing
sorted by name is the upload order), written to ``<sequence>.tmp``, fsynced, renamed
into place and the directory fsynced: after a crash a file is either whole or absent,
and a leftover ``.tmp`` is removed when the spool opens. The file holds a small header
(magic, version, fragment timecode, lengths, CRC-32 of the content), the PutMedia body
header (EBML header, Segment, Info, Tracks) that the fragment was made with, and the
fragment's bytes (Tags and Cluster). A file that is truncated or fails its CRC is
skipped with a warning and deleted, never fatal.

The :class:`~kvs_toolkit.producer.uploader.Uploader` decides what goes in and out and
enforces the byte bound; this module only does the file work, from one worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kvs_toolkit.errors import SpoolError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SPOOL_MAX_BYTES",
    "FILE_OVERHEAD",
    "FragmentSpool",
    "SpoolError",
    "SpooledFragment",
]

DEFAULT_SPOOL_MAX_BYTES: Final = 1024 * 1024 * 1024
_MAGIC: Final = b"KVSSPOOL"
_VERSION: Final = 1
# magic, version, fragment timecode (ms), header length, fragment length, CRC-32
_PREFIX: Final = struct.Struct("<8sHqIQI")
# bytes a file takes beyond the MKV header and the fragment
FILE_OVERHEAD: Final = _PREFIX.size
_SUFFIX: Final = ".frag"
_TEMP_SUFFIX: Final = ".tmp"
_OWNER_FILE: Final = "STREAM"


@dataclass(frozen=True, slots=True)
class SpooledFragment:
    """What the spool's index knows about one file without reading its content."""

    sequence: int
    timecode: int
    size: int  # bytes on disk


def _name(sequence: int) -> str:
    return f"{sequence:020d}{_SUFFIX}"


class FragmentSpool:
    """One directory of fragment files. Not thread-safe: use it from one thread."""

    def __init__(self, directory: str | os.PathLike[str], owner: str | None = None) -> None:
        """Open (or make) ``directory``. ``owner`` (the stream name) is recorded in it,
        and a directory recorded for another owner is refused: fragments spooled for
        one stream must never be sent to another."""
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            if owner is not None:
                self._claim(owner)
        except OSError as exc:
            raise SpoolError(f"spool directory {str(self.directory)!r} is unusable: {exc}") from exc
        self.corrupt = 0

    def _claim(self, owner: str) -> None:
        marker = self.directory / _OWNER_FILE
        try:
            recorded = marker.read_text(encoding="utf-8")
        except FileNotFoundError:
            marker.write_text(owner, encoding="utf-8")
            return
        if recorded != owner:
            raise SpoolError(
                f"spool directory {str(self.directory)!r} holds fragments of stream "
                f"{recorded!r}, not {owner!r}: give each stream a spool directory of its own"
            )

    def recover(self) -> list[SpooledFragment]:
        """The whole, readable fragment files, oldest first (a restart's backlog).

        Leftover temporary files (a crash mid-write) and files whose header or length
        is wrong are deleted with a warning.
        """
        found: list[SpooledFragment] = []
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(_TEMP_SUFFIX):
                log.warning("spool: removing %s, left unfinished by a crash", path.name)
                path.unlink(missing_ok=True)
                continue
            if not path.name.endswith(_SUFFIX):
                continue
            stem = path.name[: -len(_SUFFIX)]
            if not stem.isdigit():
                continue
            try:
                entry = self._check(path, int(stem))
            except SpoolError as exc:
                self._discard(path, str(exc))
                continue
            found.append(entry)
        return found

    def _check(self, path: Path, sequence: int) -> SpooledFragment:
        try:
            with path.open("rb") as file:
                prefix = file.read(_PREFIX.size)
                size = os.fstat(file.fileno()).st_size
        except OSError as exc:
            raise SpoolError(f"cannot read: {exc}") from exc
        timecode, header_length, data_length, _crc = self._parse_prefix(prefix)
        expected = _PREFIX.size + header_length + data_length
        if size != expected:
            raise SpoolError(f"truncated: {size} bytes, its header says {expected}")
        return SpooledFragment(sequence, timecode, size)

    @staticmethod
    def _parse_prefix(prefix: bytes) -> tuple[int, int, int, int]:
        if len(prefix) < _PREFIX.size:
            raise SpoolError(f"truncated: {len(prefix)} bytes, shorter than its header")
        magic, version, timecode, header_length, data_length, crc = _PREFIX.unpack_from(prefix)
        if magic != _MAGIC or version != _VERSION:
            raise SpoolError("not a spool file of this version")
        return timecode, header_length, data_length, crc

    def _discard(self, path: Path, why: str) -> None:
        self.corrupt += 1
        log.warning("spool: skipping corrupt file %s (%s); deleted", path.name, why)
        path.unlink(missing_ok=True)

    def write(
        self, sequence: int, timecode: int, header: bytes, chunks: Iterable[bytes]
    ) -> SpooledFragment:
        """Write one fragment durably. Raises ``OSError`` (e.g. ENOSPC) with nothing
        left behind on failure."""
        data = b"".join(chunks)
        crc = zlib.crc32(data, zlib.crc32(header))
        content = _PREFIX.pack(_MAGIC, _VERSION, timecode, len(header), len(data), crc)
        final = self.directory / _name(sequence)
        temp = final.with_suffix(_TEMP_SUFFIX)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(b"".join((content, header, data)))
            while view:
                written = os.write(fd, view)
                if written == 0:  # pragma: no cover - a full device answers ENOSPC
                    raise OSError(errno.ENOSPC, "no progress writing the spool file")
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temp, final)
        self._sync_directory()
        return SpooledFragment(sequence, timecode, _PREFIX.size + len(header) + len(data))

    def read(self, sequence: int) -> tuple[bytes, bytes]:
        """(body header, fragment bytes) of one file; :class:`SpoolError` when it is
        missing, truncated or fails its CRC (the file is then deleted)."""
        path = self.directory / _name(sequence)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"spool file {path.name} cannot be read: {exc}") from exc
        try:
            _timecode, header_length, data_length, crc = self._parse_prefix(content)
            body = memoryview(content)[_PREFIX.size :]
            if len(body) != header_length + data_length:
                raise SpoolError(
                    f"truncated: {len(body)} content bytes, its header says "
                    f"{header_length + data_length}"
                )
            if zlib.crc32(body) != crc:
                raise SpoolError("CRC-32 mismatch")
        except SpoolError as exc:
            self._discard(path, str(exc))
            raise SpoolError(f"spool file {path.name} is corrupt: {exc}") from None
        return bytes(body[:header_length]), bytes(body[header_length:])

    def remove(self, sequence: int) -> None:
        """Delete one file (acknowledged, or dropped for space); a missing one is fine."""
        (self.directory / _name(sequence)).unlink(missing_ok=True)

    def _sync_directory(self) -> None:
        # The rename is durable only once the directory entry is on disk (POSIX).
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - platforms without directory fds
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover - some filesystems refuse it
            pass
        finally:
            os.close(fd)
