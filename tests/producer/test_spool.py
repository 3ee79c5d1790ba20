"""The on-disk spool: long outages, a restarted producer, a full spool, corrupt files and
a full disk, against the real emulator (which comes up only after the outage)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer import EncodedFrame, Fragmenter, Uploader
from kvs_toolkit.producer.spool import FILE_OVERHEAD, FragmentSpool, SpoolError
from tests.test_uploader import START_MS, VIDEO, kv, read_all

FPS = 10  # a key frame every 10 frames: 1 s fragments


def frame(i: int, padding: int = 0) -> EncodedFrame:
    return EncodedFrame(
        b"payload-%d" % i + b"." * padding, START_MS + i * 1000 // FPS, keyframe=i % FPS == 0
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def spool_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".frag"))


@contextlib.contextmanager
def stopping(emulator: Emulator) -> Iterator[Emulator]:
    try:
        yield emulator
    finally:
        emulator.close()


class Service:
    """A stream made while the service was up; then an outage until ``come_up()``."""

    def __init__(self, data_dir: Path, stream: str) -> None:
        self.data_dir = data_dir
        with Emulator(data_dir=data_dir) as emulator:
            kv(emulator).create_stream(StreamName=stream, DataRetentionInHours=1)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def come_up(self) -> Emulator:
        """The service comes back on the port the producer keeps trying, with its data."""
        emulator = Emulator(data_dir=self.data_dir, port=self.port)
        await asyncio.to_thread(emulator.__enter__)
        return emulator


def payloads(emulator: Emulator, stream: str, count: int) -> list[bytes]:
    return [
        bytes(f.data).split(b".")[0] for fr in read_all(emulator, stream, count) for f in fr.frames
    ]


def expected(frames: range) -> list[bytes]:
    return [b"payload-%d" % i for i in frames]


def test_outage_longer_than_the_memory_buffer_is_delivered_from_the_spool(
    tmp_path: Path,
) -> None:
    service = Service(tmp_path / "kvs", "outage")
    spool = tmp_path / "spool"

    async def run() -> tuple[Any, Emulator]:
        uploader = Uploader(
            service.url, "outage", [VIDEO], fragment_duration_ms=1000,
            buffer_bytes=600, spool_dir=spool,
        )  # fmt: skip
        await uploader.start()
        for i in range(60):  # 6 fragments; memory holds about one
            uploader.put_frame(frame(i))
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # a few refused connections
        assert uploader.stats.connection_failures >= 1
        assert uploader.stats.spool_fragments == 5  # the 6th is still open
        emulator = await service.come_up()
        return await uploader.close(timeout=30), emulator

    stats, emulator = asyncio.run(run())
    with stopping(emulator):
        assert (stats.fragments, stats.acked, stats.dropped_fragments) == (6, 6, 0)
        assert stats.all_acknowledged and stats.spooled == 6
        assert payloads(emulator, "outage", 6) == expected(range(60))
    assert spool_files(spool) == []  # deleted on their acks


def test_restarted_producer_sends_the_spool_first(tmp_path: Path) -> None:
    service = Service(tmp_path / "kvs", "cam")
    spool = tmp_path / "spool"

    async def first_run() -> Any:
        uploader = Uploader(service.url, "cam", [VIDEO], fragment_duration_ms=1000, spool_dir=spool)
        await uploader.start()
        for i in range(30):
            uploader.put_frame(frame(i))
        return await uploader.close(timeout=0.3)  # the service is down: it gives up

    stats = asyncio.run(first_run())
    assert stats.unacknowledged == 3 and not stats.all_acknowledged
    assert len(spool_files(spool)) == 3

    async def second_run() -> tuple[Any, Emulator]:
        emulator = await service.come_up()
        uploader = Uploader(
            emulator.endpoint_url, "cam", [VIDEO], fragment_duration_ms=1000, spool_dir=spool
        )
        assert uploader.stats.recovered_fragments == 3
        await uploader.start()
        for i in range(30, 60):
            uploader.put_frame(frame(i))
            await asyncio.sleep(0.005)
        return await uploader.close(timeout=30), emulator

    stats, emulator = asyncio.run(second_run())
    with stopping(emulator):
        assert stats.acked == 6 and stats.all_acknowledged
        # the first run's fragments carry its own MKV header: a connection of their own
        assert stats.connections >= 2
        assert payloads(emulator, "cam", 6) == expected(range(60))
    assert spool_files(spool) == []


def test_full_spool_drops_the_oldest_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fragmenter = Fragmenter([VIDEO], fragment_duration_ms=1000)
    for i in range(10):
        fragmenter.add(frame(i, padding=30))
    _, (first,) = fragmenter.add(frame(10, padding=30))
    file_size = FILE_OVERHEAD + len(fragmenter.header) + first.size  # about 700 bytes
    spool_max_bytes = 2 * file_size + file_size // 2  # room for two files

    async def run() -> Uploader:
        uploader = Uploader(
            f"http://127.0.0.1:{free_port()}", "full", [VIDEO], fragment_duration_ms=1000,
            buffer_bytes=600, spool_dir=tmp_path, spool_max_bytes=spool_max_bytes,
        )  # fmt: skip
        await uploader.start()
        for i in range(60):
            uploader.put_frame(frame(i, padding=30))  # about 600 bytes a fragment file
        await uploader.close(timeout=0.2)
        return uploader

    with caplog.at_level(logging.WARNING):
        uploader = asyncio.run(run())
    stats = uploader.stats
    # memory holds about one fragment: the four oldest were only on disk, now lost
    assert stats.spool_dropped == 4 and stats.dropped_fragments == 4
    assert f"spool full ({spool_max_bytes} bytes): dropped unacknowledged fragment" in caplog.text
    assert len(spool_files(tmp_path)) == 2
    # what is left is the newest video
    recovered = FragmentSpool(tmp_path).recover()
    assert [f.timecode for f in recovered] == [START_MS + 4000, START_MS + 5000]


def test_corrupt_spool_files_are_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(tmp_path / "kvs", "cam")
    spool = tmp_path / "spool"

    async def offline() -> None:
        uploader = Uploader(service.url, "cam", [VIDEO], fragment_duration_ms=1000, spool_dir=spool)
        await uploader.start()
        for i in range(40):
            uploader.put_frame(frame(i))
        await uploader.close(timeout=0.2)

    asyncio.run(offline())
    files = [spool / name for name in spool_files(spool)]
    assert len(files) == 4
    # a crash mid-write leaves a short file (or a .tmp); a bad sector flips a byte
    files[1].write_bytes(files[1].read_bytes()[:-7])
    data = bytearray(files[2].read_bytes())
    data[-3] ^= 0xFF
    files[2].write_bytes(bytes(data))
    (spool / "00000000000000000009.tmp").write_bytes(b"half a fragm")

    async def restarted() -> tuple[Any, Emulator]:
        emulator = await service.come_up()
        uploader = Uploader(
            emulator.endpoint_url, "cam", [VIDEO], fragment_duration_ms=1000, spool_dir=spool
        )
        await uploader.start()
        return await uploader.close(timeout=30), emulator

    with caplog.at_level(logging.WARNING):
        stats, emulator = asyncio.run(restarted())
    with stopping(emulator):
        assert stats.recovered_fragments == 3  # the truncated one is skipped at once
        assert stats.spool_corrupt == 2 and stats.dropped_fragments == 1  # + CRC at read
        assert stats.acked == 2
        assert payloads(emulator, "cam", 2) == expected(range(10)) + expected(range(30, 40))
    assert "truncated" in caplog.text and "CRC-32 mismatch" in caplog.text
    assert "left unfinished by a crash" in caplog.text
    assert spool_files(spool) == [] and not list(spool.glob("*.tmp"))


TINY_DISK_BYTES = 64 * 1024


@pytest.fixture
def tiny_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 64 KiB disk: a real tmpfs (a real ENOSPC) where mounting is permitted (root);
    elsewhere ``os.write`` raises ENOSPC for files in the folder past 64 KiB."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK_BYTES // 1024}k", "tmpfs",
             str(mount_point)],
            capture_output=True,
            check=False,
        ).returncode == 0  # fmt: skip
    except OSError:  # no mount command
        mounted = False
    if mounted:
        try:
            yield mount_point
        finally:
            subprocess.run(["umount", str(mount_point)], check=False)
        return
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("neither a tmpfs mount nor /proc/self/fd to simulate a full disk")
    real_write = os.write
    written = 0

    def write(fd: int, data: Any) -> int:
        nonlocal written
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(mount_point)):
            if written + len(data) > TINY_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    yield mount_point


def test_full_disk_is_a_warning_and_nothing_is_lost_from_memory(
    tiny_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(tmp_path / "kvs", "disk")

    async def run() -> tuple[Any, Emulator]:
        uploader = Uploader(
            service.url, "disk", [VIDEO], fragment_duration_ms=1000,
            spool_dir=tiny_disk,
        )  # fmt: skip
        await uploader.start()
        for i in range(60):  # 6 fragments of 20 KB: the disk takes 3
            uploader.put_frame(frame(i, padding=2000))
        await asyncio.sleep(0.3)
        emulator = await service.come_up()
        return await uploader.close(timeout=30), emulator

    with caplog.at_level(logging.WARNING):
        stats, emulator = asyncio.run(run())
    with stopping(emulator):
        assert stats.spool_errors >= 2 and stats.acked == 6 and stats.all_acknowledged
        assert payloads(emulator, "disk", 6) == expected(range(60))
    assert "No space left on device" in caplog.text and "kept in memory only" in caplog.text
    assert [p.name for p in tiny_disk.iterdir()] == ["STREAM"]  # no temporary file left


def test_unusable_spool_directory_is_a_clear_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(SpoolError, match=r"spool directory .*file' is unusable"):
        Uploader("http://127.0.0.1:9", "s", [VIDEO], spool_dir=not_a_directory)
    Uploader("http://127.0.0.1:9", "cam-1", [VIDEO], spool_dir=tmp_path / "spool")
    with pytest.raises(SpoolError, match="holds fragments of stream 'cam-1', not 'cam-2'"):
        Uploader("http://127.0.0.1:9", "cam-2", [VIDEO], spool_dir=tmp_path / "spool")
    with pytest.raises(ValueError, match="spool_max_bytes must be positive"):
        Uploader("http://127.0.0.1:9", "s", [VIDEO], spool_dir=tmp_path, spool_max_bytes=0)


def test_spool_file_round_trip(tmp_path: Path) -> None:
    spool = FragmentSpool(tmp_path)
    written = spool.write(7, 123, b"HEADER", [b"abc", b"def"])
    assert spool.recover() == [written]
    assert written.size == (tmp_path / "00000000000000000007.frag").stat().st_size
    assert spool.read(7) == (b"HEADER", b"abcdef")
    spool.remove(7)
    spool.remove(7)  # twice is fine
    with pytest.raises(SpoolError, match="cannot be read"):
        spool.read(7)
    (tmp_path / "notes.frag").write_bytes(b"x")  # not ours: left alone
    (tmp_path / "00000000000000000008.frag").write_bytes(b"not a spool file at all, no....")
    assert spool.recover() == []
    assert spool.corrupt == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.frag"]
