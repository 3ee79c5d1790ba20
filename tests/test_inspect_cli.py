"""``kvs inspect`` as a user runs it: a real subprocess on real captures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

KVS = [sys.executable, "-m", "kvs_toolkit.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVS, "inspect", *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=60,
        check=False,
    )


def test_table(captures: Path) -> None:
    result = run(str(captures / "test_mixed_tags.mkv"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "fragment", "number"]
    assert len(lines) == 1 + 10 + 1
    assert "testTag_0=testTag_0_Value" in lines[1]
    assert "2018-09-22 00:08:35.281" in lines[1]
    assert lines[-1].startswith("10 fragments, 100 frames (10 key), 50.000 s, 0 gaps")
    assert "V_MS/VFW/FOURCC 640x480" in lines[-1]


def test_json(captures: Path) -> None:
    result = run("--json", str(captures / "output_get_media.mkv"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    first = doc["fragments"][0]
    assert first["fragment_number"] == "91343852333181432392682062607743920146159169392"
    assert first["producer_timestamp"] == 1511852108.513
    assert first["server_timestamp"] == 1511852109.126
    assert (first["frames"], first["keyframes"], first["cluster_timecode"]) == (60, 1, 0)
    assert (first["codec_id"], first["width"], first["height"]) == ("V_MPEG4/ISO/AVC", 640, 360)
    assert first["tags"][7] == {
        "name": "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
        "value": "91343852333181432392682062607743920146159169392",
    }
    assert len(doc["fragments"]) == 5
    assert doc["summary"]["frames"] == 300


def test_stdin(captures: Path) -> None:
    data = (captures / "test_mixed_tags.mkv").read_bytes()
    result = run("--json", "-", stdin=data)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["fragments"]) == 10


def test_tags_only_document_has_null_timestamps(captures: Path) -> None:
    result = run("--json", str(captures / "test_tags_empty_cluster.mkv"))
    (fragment,) = json.loads(result.stdout)["fragments"]
    assert fragment["producer_timestamp"] is None
    assert fragment["frames"] == 0
    assert [t["name"] for t in fragment["tags"]] == [f"testTag_{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a video", "not an MKV stream"),
        (
            b"\x1a\x45\xdf\xa3\x80\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff\x1f\x43",
            "input ends",
        ),
        (b"\x00" * 64, "invalid element ID first byte 0x00"),
    ],
)
def test_invalid_input_exits_2_with_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.mkv"
    path.write_bytes(content)
    result = run(str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert message in line
    assert "byte offset" in line
    assert "Traceback" not in result.stderr


def test_truncated_capture_shows_complete_fragments_then_fails(captures: Path) -> None:
    result = run("--json", str(captures / "output-get-media-equal-timecode.mkv"))
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert [f["truncated"] for f in doc["fragments"]] == [False, True]
    assert doc["error"]["offset"] == 1272988


def test_missing_file(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope.mkv"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
