"""A full disk: every failed write is an ERROR ack on its own upload, the emulator
still starts and serves reads, and DeleteStream frees space. The data directory is a
small tmpfs (mounting one needs root; the test is skipped otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs_toolkit.acks import AckEventType

from .conftest import ClientFactory
from .process import BASE_MS, call, create_stream, frames, put_media, run_emulator, sdk_upload


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def kinds(reply_acks: list) -> list[str]:  # type: ignore[type-arg]
    return [
        f"ERROR {a.error_id}" if a.event_type == AckEventType.ERROR else a.event_type.value
        for a in reply_acks
        if a.event_type != AckEventType.IDLE
    ]


def test_full_disk(small_disk: Path, make_client: ClientFactory) -> None:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    big = [frames(BASE_MS + 2000 * n, count=4, size=120_000, seed=n) for n in range(60)]
    with run_emulator(data_dir) as emu:
        create_stream(emu.url, "filler")
        create_stream(emu.url, "other")
        acks = kinds(put_media(emu.url, "filler", sdk_upload(big)).acks())
        persisted = acks.count("PERSISTED")
        assert 0 < persisted < len(big), acks
        assert "ERROR 5001" in acks
        assert shutil.disk_usage(small_disk).free < 500_000
    # It starts again on the full disk and serves what it has.
    with run_emulator(data_dir) as emu:
        listed = call(emu.url, "/listFragments", {"StreamName": "filler", "MaxResults": 100})
        assert listed.status == 200
        numbers = [f["FragmentNumber"] for f in listed.json()["Fragments"]]
        assert len(numbers) == persisted
        archived = make_client("kinesis-video-archived-media", emu.url)
        body = archived.get_media_for_fragment_list(StreamName="filler", Fragments=numbers[:1])
        assert len(body["Payload"].read()) > 400_000
        # Another stream's upload fails with an ERROR ack, not a broken stream ...
        acks = kinds(put_media(emu.url, "other", sdk_upload(big[:2])).acks())
        assert "PERSISTED" not in acks and "ERROR 5001" in acks, acks
        # ... until DeleteStream frees the space.
        arn = call(emu.url, "/describeStream", {"StreamName": "filler"}).json()["StreamInfo"][
            "StreamARN"
        ]
        deleted = call(emu.url, "/deleteStream", {"StreamARN": arn})
        assert deleted.status == 200, deleted.body
        assert shutil.disk_usage(small_disk).free > 3_000_000
        acks = kinds(put_media(emu.url, "other", sdk_upload(big[:2])).acks())
        assert acks.count("PERSISTED") == 2, acks
