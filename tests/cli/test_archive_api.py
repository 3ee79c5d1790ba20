"""kvs_toolkit.archive from Python (what ``kvs clip`` and ``kvs images`` are built on),
in-process against the emulator."""

from __future__ import annotations

import datetime as dt
import io
import threading
from pathlib import Path

import pytest
from botocore.credentials import Credentials

from kvs_toolkit.archive import ImagesResult, iter_images, save_clip, save_images
from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import ConfigurationError, GetMediaError
from tests.emulator.test_hls import SampleStream


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


@pytest.fixture
def aws(emulator: Emulator) -> AwsAccess:
    return AwsAccess(
        endpoint_url=emulator.endpoint_url, credentials_override=Credentials("AKID", "secret")
    )


def test_clip_into_a_file_object(aws: AwsAccess, sample: SampleStream) -> None:
    out = io.BytesIO()
    seen: list[int] = []
    last = sample.records[-1].producer_timestamp_ms
    result = save_clip(aws, "cam", at(sample.first_ms), at(last), out, progress=seen.append)
    data = out.getvalue()
    assert data[4:8] == b"ftyp"
    assert result.bytes_written == len(data) == seen[-1]
    assert result.content_type == "video/mp4"
    assert result.path is None
    assert result.fragments_in_range == 3 and result.truncated_at is None


def test_clip_stopped_leaves_no_file(aws: AwsAccess, sample: SampleStream, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    out = tmp_path / "stopped.mp4"
    result = save_clip(aws, "cam", at(sample.first_ms), at(sample.end_ms), out, stop=stop)
    assert result.stopped and result.path is None
    assert list(tmp_path.iterdir()) == []


def test_clip_errors(aws: AwsAccess, sample: SampleStream, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="must be later than the start"):
        save_clip(aws, "cam", at(sample.first_ms), at(sample.first_ms), tmp_path / "x.mp4")
    with pytest.raises(GetMediaError, match=r"^stream 'nobody' not found$"):
        save_clip(aws, "nobody", at(1000), at(2000), tmp_path / "x.mp4")
    with pytest.raises(GetMediaError, match=r"^stream 'cam' has no media between "):
        save_clip(aws, "cam", at(1000), at(2000), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_iter_images_yields_every_sampling_time_in_order(
    aws: AwsAccess, sample: SampleStream
) -> None:
    start = sample.first_ms - 2000
    images = list(
        iter_images(aws, "cam", at(start), at(sample.first_ms + 1000), interval_ms=500, page_size=2)
    )
    assert [round(i.timestamp.timestamp() * 1000) for i in images] == list(
        range(start, sample.first_ms + 1001, 500)
    )
    assert [i.error for i in images[:4]] == ["NO_MEDIA"] * 4
    assert all(i.content is not None and i.content[:2] == b"\xff\xd8" for i in images[4:])


def test_save_images_stops_when_asked(aws: AwsAccess, sample: SampleStream, tmp_path: Path) -> None:
    stop = threading.Event()

    def progress(result: ImagesResult) -> None:
        if result.written:
            stop.set()

    result = save_images(
        aws, "cam", at(sample.first_ms), at(sample.end_ms), tmp_path, progress=progress,
        stop=stop, interval_ms=500,
    )  # fmt: skip
    assert result.stopped
    assert len(result.written) == 1 and [p.name for p in tmp_path.iterdir()] == [
        result.written[0].name
    ]
