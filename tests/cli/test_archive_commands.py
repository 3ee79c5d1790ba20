"""``kvs clip`` and ``kvs images`` against the emulator, on a machine with no AWS
configuration; clips checked with ffprobe, images decoded with OpenCV."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from kvs_toolkit.archive import _windows, image_file_name
from kvs_toolkit.emulator import Emulator
from tests.cli.conftest import Kvs, Result
from tests.emulator.test_hls import FRAME_MS, SPEC, SampleStream, client, put_fragments, shifted

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe (FFmpeg) is not installed")


def seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"


def iso(ms: int) -> str:
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def video_frames(path: Path) -> int:
    assert FFPROBE is not None
    probed = subprocess.run(
        [
            FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_frames,codec_name,width,height", "-of",
            "default=noprint_wrappers=1", str(path),
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    fields = dict(line.split("=", 1) for line in probed.stdout.split())
    assert fields["codec_name"] == "h264"
    assert (int(fields["width"]), int(fields["height"])) == (SPEC.width, SPEC.height)
    return int(fields["nb_read_frames"])


def error_line(result: Result, command: str) -> str:
    """The one ``kvs COMMAND: ...`` line of a failed command; besides it only the
    placeholder-credentials notice may be on stderr."""
    assert "Traceback" not in result.stderr
    lines = result.stderr_lines
    errors = [line for line in lines if line.startswith(f"kvs {command}:")]
    assert len(errors) == 1, lines
    assert all(
        "placeholder credentials" in line or line.startswith(f"kvs {command}:") for line in lines
    ), lines
    return errors[0]


# --- kvs clip ---------------------------------------------------------------------------


@needs_ffprobe
def test_clip_of_the_whole_stream(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    out = kvs.cwd / "whole.mp4"
    last = sample.records[-1].producer_timestamp_ms
    result = kvs(
        "clip", "--stream", sample.name, "--start", iso(sample.first_ms), "--end", seconds(last),
        "-o", str(out), "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert video_frames(out) == SPEC.frame_count
    size = out.stat().st_size
    assert f"{out}: {size} bytes" in result.stderr_lines[-1]
    assert "3 fragments in the range" in result.stderr_lines[-1]
    assert not out.with_name(out.name + ".part").exists()


@needs_ffprobe
def test_clip_of_the_middle_fragment(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    out = kvs.cwd / "middle.mp4"
    middle = sample.records[1].producer_timestamp_ms
    result = kvs(
        "clip", "--stream", sample.name, "--start", seconds(middle - 1),
        "--end", seconds(middle + 1), "-o", str(out), "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert video_frames(out) == len(sample.fragments[1].frames)


def test_clip_errors_are_one_line(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    url = emulator.endpoint_url
    out = kvs.cwd / "none.mp4"

    def clip(stream: str, start: str, end: str) -> Result:
        return kvs("clip", "--stream", stream, "--start", start, "--end", end, "-o", str(out),
                   "--endpoint-url", url)  # fmt: skip

    before = sample.first_ms - 100_000
    empty = clip(sample.name, seconds(before), seconds(before + 50_000))
    assert empty.returncode == 2
    assert error_line(empty, "clip") == (
        f"kvs clip: stream 'cam' has no media between {iso(before)} and "
        f"{iso(before + 50_000)} (by producer timestamp)"
    )
    missing = clip("nobody", seconds(before), seconds(before + 50_000))
    assert missing.returncode == 2
    assert error_line(missing, "clip") == "kvs clip: stream 'nobody' not found"
    day = clip(sample.name, seconds(before), seconds(before + 25 * 3600_000))
    assert day.returncode == 2
    assert "a clip covers at most 24 hours" in error_line(day, "clip")
    backwards = clip(sample.name, seconds(before), seconds(before - 1000))
    assert backwards.returncode == 2
    assert "must be later than the start" in error_line(backwards, "clip")
    bad_time = clip(sample.name, "yesterday", seconds(before))
    assert bad_time.returncode == 2 and "not an ISO 8601 time" in bad_time.stderr
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


@needs_ffprobe
def test_clip_cut_by_the_200_fragment_limit_says_where_it_stops(
    kvs: Kvs, emulator: Emulator, sample: SampleStream
) -> None:
    """GetClip holds at most 200 fragments: the command says where the clip stops and
    exits 1; fetching from there gets the rest."""
    client("kinesisvideo", emulator.endpoint_url).create_stream(
        StreamName="many", DataRetentionInHours=1
    )
    base = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) - 60_000
    key_frame = sample.fragments[0]
    one_frame = key_frame.__class__(
        tags=(),
        tracks=key_frame.tracks,
        cluster_timecode=key_frame.cluster_timecode,
        frames=key_frame.frames[:1],
    )
    put_fragments(
        emulator.endpoint_url,
        "many",
        sample.tracks,
        [shifted(one_frame, base + 40 * i) for i in range(205)],
    )
    out = kvs.cwd / "many.mp4"
    common = ("--stream", "many", "--end", seconds(base + 40 * 210),
              "--endpoint-url", emulator.endpoint_url)  # fmt: skip
    result = kvs("clip", "--start", seconds(base), "-o", str(out), *common)
    assert result.returncode == 1, result.stderr
    assert video_frames(out) == 200
    resume = iso(base + 40 * 200)
    *_, summary, warning = result.stderr_lines
    assert summary.startswith(f"{out}: {out.stat().st_size} bytes")
    assert "205 fragments in the range" in summary
    assert warning == (
        "kvs clip: the range holds more than one clip can (200 fragments or 100 MB): "
        f"{out} stops before {resume}; run again with --start {resume} for the rest"
    )
    rest = kvs("clip", "--start", resume, "-o", str(kvs.cwd / "rest.mp4"), *common)
    assert rest.returncode == 0, rest.stderr
    assert video_frames(kvs.cwd / "rest.mp4") == 5


# --- kvs images -------------------------------------------------------------------------


def stamps(directory: Path, stream: str, suffix: str) -> list[int]:
    """The sampling times (epoch ms) in the names of the images, in name order."""
    names = sorted(p.name for p in directory.iterdir())
    assert all(n.startswith(f"{stream}_") and n.endswith(suffix) for n in names), names
    times = []
    for name in names:
        text = name[len(stream) + 1 : -len(suffix)]
        when = dt.datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.timezone.utc)
        times.append(round(when.timestamp() * 1000))
    return times


def test_images_every_second_with_gaps_counted(
    kvs: Kvs, emulator: Emulator, sample: SampleStream
) -> None:
    out = kvs.cwd / "stills"
    start, end = sample.first_ms - 1000, sample.end_ms + 1000
    result = kvs(
        "images", "--stream", sample.name, "--start", seconds(start), "--end", seconds(end),
        "--interval-ms", "1000", "-o", str(out), "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    times = list(range(start, end + 1, 1000))
    inside = [t for t in times if sample.first_ms <= t < sample.end_ms]
    assert stamps(out, sample.name, ".jpg") == inside
    missing = len(times) - len(inside)
    assert missing >= 2
    assert result.stderr_lines[-1].endswith(
        f"{len(inside)} images ({sum(p.stat().st_size for p in out.iterdir())} bytes), "
        f"missing: {missing} NO_MEDIA, 0 MEDIA_ERROR"
    )
    for path in out.iterdir():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (SPEC.height, SPEC.width, 3)
        assert path.read_bytes().startswith(b"\xff\xd8")


def test_images_png_scaled(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    out = kvs.cwd / "png"
    t = sample.first_ms + 40 * FRAME_MS
    result = kvs(
        "images", "--stream", sample.name, "--start", iso(t), "--end", iso(t + 400),
        "--interval-ms", "200", "--format", "png", "--width", "320", "-o", str(out),
        "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stamps(out, sample.name, ".png") == [t, t + 200, t + 400]
    for path in out.iterdir():
        assert path.read_bytes().startswith(b"\x89PNG")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (180, 320, 3)
        assert float(np.mean(image)) > 0


def test_images_over_more_than_300_seconds(
    kvs: Kvs, emulator: Emulator, sample: SampleStream
) -> None:
    """GetImages takes at most 300 s a request: a longer range is asked in windows."""
    out = kvs.cwd / "long"
    start, end = sample.end_ms - 400_000, sample.end_ms
    result = kvs(
        "images", "--stream", sample.name, "--start", seconds(start), "--end", seconds(end),
        "--interval-ms", "2000", "-o", str(out), "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    times = list(range(start, end + 1, 2000))
    inside = [t for t in times if sample.first_ms <= t < sample.end_ms]
    assert stamps(out, sample.name, ".jpg") == inside
    assert f"missing: {len(times) - len(inside)} NO_MEDIA" in result.stderr_lines[-1]


def test_images_errors_are_one_line(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    url = emulator.endpoint_url
    out = kvs.cwd / "none"
    before = sample.first_ms - 100_000

    def images(stream: str, *extra: str) -> Result:
        return kvs("images", "--stream", stream, "--start", seconds(before),
                   "--end", seconds(before + 10_000), "-o", str(out), "--endpoint-url", url,
                   *extra)  # fmt: skip

    empty = images(sample.name)
    assert empty.returncode == 2
    assert error_line(empty, "images") == (
        f"kvs images: stream 'cam' has no media between {iso(before)} and "
        f"{iso(before + 10_000)} (by producer timestamp)"
    )
    missing = images("nobody")
    assert missing.returncode == 2
    assert error_line(missing, "images") == "kvs images: stream 'nobody' not found"
    fast = images(sample.name, "--interval-ms", "100")
    assert fast.returncode == 2
    assert "sampling interval is at least 200 ms" in error_line(fast, "images")
    wide = images(sample.name, "--width", "5000")
    assert wide.returncode == 2 and "width is 1..3840" in error_line(wide, "images")


def test_windows_cover_every_sampling_time_once() -> None:
    for start, end, interval in [(0, 0, 200), (0, 300_000, 1000), (7, 1_000_007, 700),
                                 (0, 900_000, 400_000), (5, 299_999, 200)]:  # fmt: skip
        windows = list(_windows(start, end, interval))
        assert all(b - a <= 300_000 and a <= b <= end for a, b in windows)
        sampled = [t for a, b in windows for t in range(a, b + 1, interval)]
        assert sampled == list(range(start, end + 1, interval))


def test_image_file_names_sort_by_time() -> None:
    when = dt.datetime(2026, 12, 5, 3, 15, 0, 200_000, tzinfo=dt.timezone.utc)
    assert image_file_name("cam-1", when, "JPEG") == "cam-1_20261205T031500.200Z.jpg"
    assert image_file_name("cam-1", when, "PNG").endswith(".png")


def test_images_of_media_that_does_not_decode_exit_1(
    kvs: Kvs, emulator: Emulator, sample: SampleStream
) -> None:
    """MEDIA_ERROR (media there that cannot be made into an image) is counted, reported
    and exits 1; NO_MEDIA around it is counted too."""
    client("kinesisvideo", emulator.endpoint_url).create_stream(
        StreamName="broken", DataRetentionInHours=1
    )
    base = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000) - 60_000
    start_ms, frames = shifted(sample.fragments[0], base)
    garbage = [dataclasses.replace(f, data=b"\xff" * len(f.data)) for f in frames]
    put_fragments(emulator.endpoint_url, "broken", sample.tracks, [(start_ms, garbage)])
    out = kvs.cwd / "broken"
    result = kvs(
        "images", "--stream", "broken", "--start", seconds(base - 1000),
        "--end", seconds(base + 1000), "--interval-ms", "500", "-o", str(out),
        "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert not out.exists() or list(out.iterdir()) == []
    *_, summary, warning = result.stderr_lines
    assert summary.endswith("0 images (0 bytes), missing: 2 NO_MEDIA, 3 MEDIA_ERROR")
    assert warning == (
        "kvs images: 3 sampling times had media that could not be made into an image (MEDIA_ERROR)"
    )


@pytest.mark.parametrize("command", ["clip", "images"])
def test_an_output_that_cannot_be_written_is_one_line(
    kvs: Kvs, emulator: Emulator, sample: SampleStream, command: str
) -> None:
    blocker = kvs.cwd / "a-file"
    blocker.write_bytes(b"")
    out = blocker / "sub" / ("x.mp4" if command == "clip" else "images")
    result = kvs(
        command, "--stream", sample.name, "--start", seconds(sample.first_ms),
        "--end", seconds(sample.first_ms + 2000), "-o", str(out),
        "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 2
    line = error_line(result, command)
    assert line.startswith(f"kvs {command}: cannot write {blocker}"), line
    assert "Not a directory" in line


@needs_ffprobe
def test_clip_by_server_timestamp(kvs: Kvs, emulator: Emulator, sample: SampleStream) -> None:
    out = kvs.cwd / "server.mp4"
    first, last = sample.records[0], sample.records[-1]
    result = kvs(
        "clip", "--stream", sample.name, "--timestamps", "server",
        "--start", seconds(first.server_timestamp_ms), "--end", seconds(last.server_timestamp_ms),
        "-o", str(out), "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert video_frames(out) == SPEC.frame_count
    # ten minutes before the first fragment arrived: nothing there
    wrong = kvs(
        "clip", "--stream", sample.name, "--start", seconds(first.server_timestamp_ms - 600_000),
        "--end", seconds(first.server_timestamp_ms - 500_000), "-o", str(out) + "2",
        "--timestamps", "server", "--endpoint-url", emulator.endpoint_url,
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "(by server timestamp)" in error_line(wrong, "clip")
