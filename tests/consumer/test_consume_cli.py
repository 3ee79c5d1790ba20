"""``kvs consume`` end to end: real H.264 produced into the emulator, read back, decoded,
written as JSON lines (in-process through cmd_consume, and as a subprocess), plus the
ready-to-run programs in consumers/."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli.consume import run as cmd_consume
from kvs_toolkit.consumer.readers import LiveReader
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.errors import GetMediaError, MkvError
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample

from .test_readers import ACCESS_KEY, SECRET, aws_session

ROOT = Path(__file__).resolve().parents[2]
SPEC = SampleSpec(width=320, height=240, fps=10, seconds=4.0, codec="h264", gop_seconds=1.0)
STREAM = "cli"
FRAGMENTS = 4
FRAMES = 40


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One emulator for the module, with four one-second H.264 fragments in STREAM."""
    path = write_sample(tmp_path_factory.mktemp("sample") / "sample.mkv", SPEC)
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        stats = asyncio.run(
            produce(
                open_source(str(path), SourceOptions(realtime=False, audio=False)),
                emu.endpoint_url,
                STREAM,
                create_stream=True,
                credentials=Credentials(ACCESS_KEY, SECRET),
                fragment_duration_ms=1000,
            )
        )
        assert stats.acked == FRAGMENTS
        yield emu


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **env}


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("consume").parse_args(["consume", *argv])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def live(emulator: Emulator, *argv: str) -> argparse.Namespace:
    return parse("--stream", STREAM, "--endpoint-url", emulator.endpoint_url, *argv)


def test_consume_live_writes_jsonl_and_jpegs_then_resumes_from_the_checkpoint(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    checkpoint = tmp_path / "checkpoint.json"
    frames_dir = tmp_path / "frames"
    args = live(emulator, "--start", "earliest", "--out", str(first), "--max-fragments", "2",
                "--frames-dir", str(frames_dir), "--checkpoint", str(checkpoint))  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(first)
    assert len(records) == FRAMES // 2
    assert set(records[0]) == {"fragment_number", "producer_timestamp", "server_timestamp",
                               "timestamp", "keyframe", "width", "height", "track", "index",
                               "jpeg"}  # fmt: skip
    assert {(r["width"], r["height"]) for r in records} == {(SPEC.width, SPEC.height)}
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert [r["keyframe"] for r in records] == [i % 10 == 0 for i in range(20)]
    assert len({r["fragment_number"] for r in records}) == 2
    for record in records:
        assert (
            record["producer_timestamp"] <= record["timestamp"] < record["producer_timestamp"] + 1
        )
        assert abs(record["server_timestamp"] - dt.datetime.now().timestamp()) < 120
    jpegs = sorted(frames_dir.iterdir())
    assert [p.name for p in jpegs] == sorted(r["jpeg"] for r in records)
    image = cv2.imread(str(jpegs[0]))
    assert image is not None and image.shape == (SPEC.height, SPEC.width, 3)
    err = capsys.readouterr().err
    assert "fragments 2  frames 20" in err and "MB/s" in err and "lag" in err

    # A second run resumes right after the last fragment the first one processed.
    args = live(emulator, "--out", str(second), "--max-fragments", "2", "--checkpoint",
                str(checkpoint), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    more = read_jsonl(second)
    assert len(more) == FRAMES // 2
    assert more[0]["timestamp"] > records[-1]["timestamp"]
    assert len({r["fragment_number"] for r in records + more}) == FRAGMENTS
    assert capsys.readouterr().err == ""


def test_consume_sampling_options(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "key.jsonl"
    args = live(emulator, "--start", "earliest", "--out", str(out), "--keyframes-only",
                "--max-fragments", str(FRAGMENTS), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert [r["keyframe"] for r in read_jsonl(out)] == [True] * FRAGMENTS
    args = live(emulator, "--start", "earliest", "--out", str(out), "--overwrite", "--fps", "2",
                "--max-fragments", str(FRAGMENTS), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert len(read_jsonl(out)) == 2 * FRAGMENTS


def test_consume_archive_range(emulator: Emulator, aws_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "archive.jsonl"
    args = live(emulator, "--archive", "2000-01-01T00:00:00Z", "2100-01-01", "--out", str(out),
                "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    records = read_jsonl(out)
    assert len(records) == FRAMES
    third = sorted({r["producer_timestamp"] for r in records})[2]
    args = live(emulator, "--archive", str(third), "2100-01-01", "--out", str(out), "--overwrite",
                "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert [r["timestamp"] for r in read_jsonl(out)] == [r["timestamp"] for r in records[20:]]
    args = live(emulator, "--archive", "2000-01-01", "2100-01-01", "--timestamp-type", "server",
                "--out", str(out), "--overwrite", "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert len(read_jsonl(out)) == FRAMES


def test_consume_duration_ends_a_quiet_live_read(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "quiet.jsonl"
    args = live(emulator, "--start", "now", "--duration", "0.5", "--out", str(out), "--no-progress")
    assert cmd_consume(args) == 0
    assert out.read_text() == ""


def test_consume_idle_exit_ends_a_live_read_after_the_last_fragment(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "idle.jsonl"
    args = live(emulator, "--start", "earliest", "--idle-exit", "2", "--out", str(out),
                "--no-progress")  # fmt: skip
    started = time.monotonic()
    assert cmd_consume(args) == 0
    assert len(read_jsonl(out)) == FRAMES  # everything there was, then quiet: done
    assert time.monotonic() - started < 15


def test_consume_from_a_getmedia_capture(captures: Path, tmp_path: Path) -> None:
    path = captures / "output_get_media.mkv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    out = tmp_path / "capture.jsonl"
    assert cmd_consume(parse("--from-file", str(path), "--out", str(out), "--no-progress")) == 0
    records = read_jsonl(out)
    assert records and all(r["width"] > 0 and r["height"] > 0 for r in records)
    assert all(r["fragment_number"] for r in records)


def test_reading_a_file_never_imports_the_aws_sdk(captures: Path, tmp_path: Path) -> None:
    # boto3 takes ~0.15 s to import, a tenth of decoding a 20 s 1080p file: a file read,
    # which needs no AWS, must not pay it (issue 15's whole-process benchmark row).
    out = tmp_path / "file.jsonl"
    code = (
        "import sys; from kvs_toolkit.cli import main; "
        f"rc = main(['consume', '--from-file', {str(captures / 'output_get_media.mkv')!r}, "
        f"'--out', {str(out)!r}, '--no-progress']); "
        "print(rc, sorted(m for m in ('boto3', 'botocore.session') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == ["0", "[]\n"]
    assert read_jsonl(out)


def test_consume_errors(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.jsonl")
    assert cmd_consume(parse("--out", out)) == 2
    assert "--stream is required" in capsys.readouterr().err
    assert cmd_consume(parse("--from-file", "a.mkv", "--checkpoint", "c.json")) == 2
    assert "--checkpoint applies to live streams" in capsys.readouterr().err
    with pytest.raises(GetMediaError, match="GetMedia nope: the stream was not found"):
        cmd_consume(parse("--stream", "nope", "--endpoint-url", emulator.endpoint_url,
                          "--out", out, "--no-progress"))  # fmt: skip
    corrupt = tmp_path / "corrupt.mkv"
    corrupt.write_bytes(b"\x1a\x45\xdf\xa3\x88" + b"\xff" * 64)
    with pytest.raises(MkvError, match=r"corrupt\.mkv") as caught:
        cmd_consume(parse("--from-file", str(corrupt), "--out", out, "--no-progress"))
    assert caught.value.offset is not None
    with pytest.raises(SystemExit):
        parse("--start", "yesterday")
    assert "invalid start 'yesterday'" in capsys.readouterr().err


def _cli_has_consume() -> bool:
    from kvs_toolkit.cli import build_parser

    try:
        build_parser().parse_args(["consume", "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return False


def test_kvs_consume_subprocess(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    if not _cli_has_consume():
        pytest.skip("kvs_toolkit.cli has no consume subcommand yet")
    out = tmp_path / "sub.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "kvs_toolkit.cli", "consume", "--stream", STREAM,
         "--endpoint-url", emulator.endpoint_url, "--start", "earliest", "--out", str(out),
         "--max-fragments", str(FRAGMENTS)],
        env=aws_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(out)) == FRAMES
    missing = subprocess.run(
        [sys.executable, "-m", "kvs_toolkit.cli", "consume", "--stream", "nope",
         "--endpoint-url", emulator.endpoint_url],
        env=aws_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "the stream was not found" in missing.stderr


def test_consumer_programs(emulator: Emulator, aws_env: dict[str, str], tmp_path: Path) -> None:
    common = ["--stream", STREAM, "--endpoint-url", emulator.endpoint_url, "--start", "earliest"]
    printed = subprocess.run(
        [sys.executable, str(ROOT / "consumers" / "print_frames.py"), *common,
         "--keyframes-only", "--max-frames", "3"],
        env=aws_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert len(lines) == 3 and all("320x240  key  fragment " in line for line in lines)
    snapshots = tmp_path / "snapshots"
    saved = subprocess.run(
        [sys.executable, str(ROOT / "consumers" / "save_snapshots.py"), *common,
         "--every", "1", "--out", str(snapshots), "--max-snapshots", "3"],
        env=aws_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    jpegs = sorted(snapshots.glob("*.jpg"))
    assert len(jpegs) == 3
    assert cv2.imread(str(jpegs[0])).shape == (SPEC.height, SPEC.width, 3)


def test_readers_are_fragment_sources(emulator: Emulator) -> None:
    from kvs_toolkit.consumer import ArchiveReader, FileReader, FragmentSource

    now = dt.datetime.now(dt.timezone.utc)
    readers = [
        LiveReader(STREAM, endpoint_url=emulator.endpoint_url, session=aws_session()),
        ArchiveReader(STREAM, now, now, endpoint_url=emulator.endpoint_url, session=aws_session()),
        FileReader("unused.mkv"),
    ]
    for reader in readers:
        assert isinstance(reader, FragmentSource)
        reader.close()


def test_start_checkpoint_uses_the_default_sqlite_store_per_consumer_group(
    emulator: Emulator,
    aws_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvs_toolkit.consumer.checkpoint import SqliteCheckpointStore, default_checkpoint_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    runs = []
    for run, group in enumerate(["a", "a", "b"]):
        out = tmp_path / f"run{run}.jsonl"
        args = live(emulator, "--start", "checkpoint", "--consumer-group", group, "--out",
                    str(out), "--max-fragments", "2", "--no-progress")  # fmt: skip
        assert cmd_consume(args) == 0
        runs.append([r["fragment_number"] for r in read_jsonl(out)])
    # Group a: the first two fragments, then the next two; group b starts over.
    assert len(set(runs[0])) == 2 and len(set(runs[1])) == 2
    assert not set(runs[0]) & set(runs[1])
    assert runs[2] == runs[0]
    store = SqliteCheckpointStore(default_checkpoint_path(), consumer_group="a")
    saved = store.load(STREAM)
    store.close()
    assert saved is not None and saved.fragment_number == runs[1][-1]
    assert saved.continuation_token
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"garbage" * 100)
    assert cmd_consume(live(emulator, "--checkpoint", str(corrupt), "--no-progress")) == 2
    assert "is not usable: file is not a database" in capsys.readouterr().err


def test_a_second_run_does_not_erase_the_first_runs_records(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "first.jsonl"
    args = live(emulator, "--start", "earliest", "--out", str(out),
                "--max-fragments", "1", "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    first = out.read_bytes()
    assert first
    assert cmd_consume(args) == 2  # refused: the file holds records, no --overwrite
    assert out.read_bytes() == first
    args = live(emulator, "--start", "earliest", "--out", str(out), "--overwrite",
                "--max-fragments", "2", "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert len(read_jsonl(out)) == 2 * FRAMES // FRAGMENTS


def test_resuming_from_a_checkpoint_appends_and_loses_no_record(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The README's "resume after a crash": the second run starts after the checkpoint
    and appends, so the file ends with every frame exactly once."""
    out = tmp_path / "resume.jsonl"
    checkpoint = tmp_path / "checkpoints.sqlite3"
    common = ("--start", "checkpoint", "--checkpoint", str(checkpoint), "--out", str(out),
              "--no-progress")  # fmt: skip
    assert cmd_consume(live(emulator, *common, "--max-fragments", "1")) == 0
    assert len(read_jsonl(out)) == FRAMES // FRAGMENTS
    assert cmd_consume(live(emulator, *common, "--idle-exit", "1")) == 0
    records = read_jsonl(out)
    assert [r["timestamp"] for r in records] == sorted({r["timestamp"] for r in records})
    assert len(records) == FRAMES


def test_max_frames_and_format(emulator: Emulator, aws_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "gray.jsonl"
    frames_dir = tmp_path / "frames"
    args = live(emulator, "--start", "earliest", "--out", str(out), "--max-frames", "7",
                "--format", "gray", "--frames-dir", str(frames_dir), "--no-progress")  # fmt: skip
    assert cmd_consume(args) == 0
    assert len(read_jsonl(out)) == 7
    pictures = sorted(frames_dir.glob("*.jpg"))
    assert len(pictures) == 7
    assert cv2.imread(str(pictures[0]), cv2.IMREAD_UNCHANGED).ndim == 2  # saved as gray


def test_motion_ignore_zones_reach_the_detector(
    emulator: Emulator, aws_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "motion.jsonl"
    common = ("--start", "earliest", "--max-fragments", str(FRAGMENTS), "--no-progress",
              "--model", "motion", "--out", str(out), "--overwrite")  # fmt: skip
    assert cmd_consume(live(emulator, *common)) == 0
    assert any(r["detections"] for r in read_jsonl(out))  # the squares move
    assert cmd_consume(live(emulator, *common, "--motion-ignore", "0,0,4000,4000")) == 0
    assert not any(r["detections"] for r in read_jsonl(out))  # all of the frame ignored
    with pytest.raises(SystemExit) as usage:  # argparse: one line and exit 2
        live(emulator, "--motion-ignore", "1,2,3")
    assert usage.value.code == 2
