"""``kvs inspect`` as a user runs it: a real subprocess on real captures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

KVS = [sys.executable, "-m", "kvs_toolkit.cli"]


def run(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KVS, "inspect", *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=60,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def write_av_file(
    path: Path, *, codec: str = "libx264", seconds: int = 4, audio: bool = True
) -> Path:
    """30 fps video with a key frame every 2 s, and 48 kHz stereo AAC (1024 samples a frame)."""
    fps, gop = 30, 60
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        video.codec_context.gop_size = gop
        if codec == "libx264":
            video.codec_context.options = {
                "preset": "ultrafast",
                "bf": "0",
                "keyint": str(gop),
                "min-keyint": str(gop),
                "sc_threshold": "0",
            }
        sound = container.add_stream("aac", rate=48000) if audio else None
        for index in range(seconds * fps):
            image = np.full((120, 160, 3), index * 5 % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            for start in range(0, 48000 * seconds, 1024):
                samples = np.zeros((2, 1024), np.float32)
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inspect-media")
    write_av_file(folder / "av.mkv")
    write_av_file(folder / "av.mp4")
    return folder


def test_table(captures: Path) -> None:
    result = run(str(captures / "test_mixed_tags.mkv"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "fragment", "number"]
    assert len(lines) == 1 + 10 + 1
    assert "testTag_0=testTag_0_Value" in lines[1]
    assert "2018-09-22 00:08:35.281" in lines[1]
    assert lines[-1].startswith("10 fragments, 100 video frames (10 key), 50.000 s, 0 gaps")
    assert "V_MS/VFW/FOURCC 640x480" in lines[-1]


def test_json(captures: Path) -> None:
    result = run("--json", str(captures / "output_get_media.mkv"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    first = doc["fragments"][0]
    assert first["fragment_number"] == "91343852333181432392682062607743920146159169392"
    assert first["producer_timestamp"] == 1511852108.513
    assert first["server_timestamp"] == 1511852109.126
    assert (first["video_frames"], first["video_keyframes"], first["audio_frames"]) == (60, 1, 0)
    assert first["cluster_timecode"] == 0
    assert (first["codec_id"], first["width"], first["height"]) == ("V_MPEG4/ISO/AVC", 640, 360)
    assert first["tags"][7] == {
        "name": "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
        "value": "91343852333181432392682062607743920146159169392",
    }
    assert len(doc["fragments"]) == 5
    assert doc["summary"]["video_frames"] == 300


def test_stdin(captures: Path) -> None:
    data = (captures / "test_mixed_tags.mkv").read_bytes()
    result = run("--json", "-", stdin=data)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["fragments"]) == 10


def test_tags_only_document_has_null_timestamps(captures: Path) -> None:
    result = run("--json", str(captures / "test_tags_empty_cluster.mkv"))
    (fragment,) = json.loads(result.stdout)["fragments"]
    assert fragment["producer_timestamp"] is None
    assert fragment["video_frames"] == 0
    assert fragment["tracks"] == []
    assert [t["name"] for t in fragment["tags"]] == [f"testTag_{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("content", "message", "ffmpeg_tried"),
    [
        (b"this is not a video", "not an MKV stream", True),
        (
            b"\x1a\x45\xdf\xa3\x80\x18\x53\x80\x67\x01\xff\xff\xff\xff\xff\xff\xff\x1f\x43",
            "input ends",
            False,
        ),
        (b"\x00" * 64, "invalid element ID first byte 0x00", True),
    ],
)
def test_invalid_input_exits_2_with_one_line(
    tmp_path: Path, content: bytes, message: str, ffmpeg_tried: bool
) -> None:
    path = tmp_path / "bad.mkv"
    path.write_bytes(content)
    result = run(str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert message in line
    assert "byte offset" in line
    assert ("FFmpeg cannot read it either" in line) is ffmpeg_tried
    assert "Traceback" not in result.stderr


def test_empty_input_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "empty.mkv"
    path.write_bytes(b"")
    result = run(str(path))
    assert result.returncode == 2
    assert "the input is empty" in result.stderr


@pytest.mark.parametrize(
    ("name", "fragments", "offset"),
    [
        ("output-get-media-equal-timecode.mkv", 2, 1272988),
        ("output-get-media-non-increasing-timecode.mkv", 12, 1912925),
    ],
)
def test_capture_ending_mid_fragment_warns_and_exits_0(
    captures: Path, name: str, fragments: int, offset: int
) -> None:
    result = run("--json", str(captures / name))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [f["truncated"] for f in doc["fragments"]] == [False] * (fragments - 1) + [True]
    assert doc["truncation"]["offset"] == offset
    assert doc["summary"]["truncated"] is True
    assert "error" not in doc
    (line,) = result.stderr.splitlines()
    assert "warning" in line
    assert f"inside fragment {fragments - 1}" in line
    assert f"byte offset {offset}" in line

    table = run(str(captures / name))
    assert table.returncode == 0
    rows = table.stdout.splitlines()
    assert len(rows) == 1 + fragments + 1
    assert rows[-2].split()[2] == "(truncated)"
    assert rows[-1].endswith("the last fragment truncated")


def test_strict_makes_a_truncated_capture_fail(captures: Path) -> None:
    result = run("--strict", "--json", str(captures / "output-get-media-equal-timecode.mkv"))
    assert result.returncode == 2
    assert len(json.loads(result.stdout)["fragments"]) == 2  # still shows what it read
    assert "error: the input ends inside fragment 1" in result.stderr
    complete = run("--strict", str(captures / "output_get_media.mkv"))
    assert (complete.returncode, complete.stderr) == (0, "")


def test_fragment_numbers_are_printed_whole_on_a_narrow_terminal(captures: Path) -> None:
    listed = run("--json", str(captures / "output_get_media.mkv"))
    numbers = [f["fragment_number"] for f in json.loads(listed.stdout)["fragments"]]
    assert len(numbers) == 5 and all(len(n) == 47 for n in numbers)
    result = run(str(captures / "output_get_media.mkv"), env={"COLUMNS": "40"})
    assert result.returncode == 0
    rows = result.stdout.splitlines()[1:-1]
    assert [row.split()[1] for row in rows] == numbers
    assert "\u2026" not in result.stdout


def test_frames_are_counted_per_track(media: Path) -> None:
    """A 2 s fragment with AAC audio has 60 video frames (1 key), not 150-odd "frames"."""
    result = run("--json", str(media / "av.mkv"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    first = doc["fragments"][0]
    assert (first["video_frames"], first["video_keyframes"]) == (60, 1)
    assert 90 <= first["audio_frames"] <= 96  # 2 s of 1024-sample frames at 48 kHz: ~94
    video, audio = first["tracks"]
    assert video == {
        "track_number": 1,
        "type": "video",
        "codec_id": "V_MPEG4/ISO/AVC",
        "frames": 60,
        "keyframes": 1,
    }
    assert (audio["type"], audio["codec_id"]) == ("audio", "A_AAC")
    assert audio["frames"] == first["audio_frames"]
    totals = {t["type"]: t for t in doc["summary"]["tracks"]}
    assert (totals["video"]["frames"], totals["video"]["keyframes"]) == (120, 2)
    assert totals["audio"]["frames"] == doc["summary"]["audio_frames"] >= 185

    table = run(str(media / "av.mkv"))
    header, row, *_, last = table.stdout.splitlines()
    columns = header.split()
    assert columns[columns.index("video") : columns.index("video") + 4] == [
        "video",
        "key",
        "audio",
        "bytes",
    ]
    # a plain MKV file has no fragment number or times: "0 - - - <dur> <video> <key> <audio>"
    assert row.split()[5:8] == ["60", "1", str(first["audio_frames"])]
    assert "120 video frames (2 key), " in last
    assert "A_AAC 48000 Hz 2 ch" in last


def test_an_mp4_is_described_through_pyav(media: Path) -> None:
    result = run(str(media / "av.mp4"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("not MKV/GetMedia: a QuickTime / MOV (mov,mp4,m4a,3gp,3g2,mj2)")
    assert lines[1] == "track 0: video h264 160x120, 120 frames (2 key)"
    assert lines[2].startswith("track 1: audio aac 48000 Hz 2 ch, ")
    assert lines[3] == "key frames at (s): 0.000 2.000, every 2.000 s"
    assert "kvs produce" in lines[4]
    assert lines[-1] == "2 fragments"

    doc = json.loads(run("--json", str(media / "av.mp4")).stdout)["container"]
    video, audio = doc["tracks"]
    assert (video["type"], video["codec"], video["frames"], video["keyframes"]) == (
        "video",
        "h264",
        120,
        2,
    )
    assert (audio["type"], audio["codec"], audio["sample_rate"], audio["channels"]) == (
        "audio",
        "aac",
        48000,
        2,
    )
    fragments = doc["fragments"]
    assert [(f["start_ms"], f["duration_ms"]) for f in fragments] == [(0, 2000), (2000, 2000)]
    assert [(f["video_frames"], f["video_keyframes"]) for f in fragments] == [(60, 1), (60, 1)]
    assert all(85 <= f["audio_frames"] <= 100 and f["size"] > 0 for f in fragments)


def test_an_mp4_on_stdin_is_described_too(media: Path) -> None:
    result = run("--json", "-", stdin=(media / "av.mp4").read_bytes())
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["size"] == (media / "av.mp4").stat().st_size
    assert [f["video_frames"] for f in doc["container"]["fragments"]] == [60, 60]


def test_a_container_kvs_produce_would_re_encode_says_so(tmp_path: Path) -> None:
    path = write_av_file(tmp_path / "mpeg4.mp4", codec="mpeg4", seconds=1, audio=False)
    result = run(str(path))
    assert result.returncode == 0, result.stderr
    assert "track 0: video mpeg4 160x120, 30 frames" in result.stdout
    assert result.stdout.splitlines()[-1].startswith(
        "fragments: kvs produce would re-encode this mpeg4 video as h264"
    )


def test_missing_file(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope.mkv"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
