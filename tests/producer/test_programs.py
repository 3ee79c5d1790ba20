"""The ready-to-run programs in producers/, run as real subprocesses against the real
emulator (in this process, on loopback): what they upload is read back through GetMedia.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

from kvs_toolkit.mkv import Fragment, Tag
from tests.media import read_fragments
from tests.producer.conftest import ClipFactory
from tests.producer.emulated_kvs import ACCESS_KEY, SECRET, EmulatedKvs, emulated_kvs
from tests.producer.media import Clip, demux

PRODUCERS = Path(__file__).resolve().parents[2] / "producers"


def program_env() -> dict[str, str]:
    """The emulator's credentials (it verifies SigV4), nothing of the user's profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def run_program(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PRODUCERS / name), *args],
        capture_output=True,
        text=True,
        env=program_env(),
        timeout=timeout,
        check=False,
    )


def stored(kvs: EmulatedKvs, stream: str) -> list[Fragment]:
    """Every fragment of ``stream``, oldest first, through GetMedia."""
    listed = kvs.client("kinesis-video-archived-media").list_fragments(StreamName=stream)
    count = len(listed["Fragments"])
    return read_fragments(kvs.client("kinesis-video-media"), stream, count)


def frames_of(fragments: list[Fragment], track: int) -> int:
    return sum(1 for f in fragments for frame in f.frames if frame.track_number == track)


def load_program(name: str) -> ModuleType:
    """A program's module, for its pure helpers (back-off, rate cap)."""
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), PRODUCERS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# --- --help -----------------------------------------------------------------------------


def test_help() -> None:
    options = {
        "replay_file.py": "--loop",
        "webcam.py": "--device",
        "rtsp_relay.py": "--give-up-after",
        "numpy_frames.py": "--seconds",
    }
    running = {
        name: subprocess.Popen(
            [sys.executable, str(PRODUCERS / name), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=program_env(),
        )
        for name in options
    }  # all at once: each start costs about a second of imports
    for name, process in running.items():
        with process:
            out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert out.startswith("usage: ") and err == ""
        assert options[name] in out and "--iot-role-alias" in out
        # the global options of kvs, as the AWS CLI has them
        for option in ("--version", "--debug", "--profile", "--region", "--endpoint-url"):
            assert option in out, (name, option)
        assert "--max-attempts N" in out


# --- replay_file.py ---------------------------------------------------------------------


def test_replay_file_uploads_every_frame(make_clip: ClipFactory) -> None:
    path = make_clip("replay.mp4", Clip())  # 50 frames, a key frame every second
    with emulated_kvs() as kvs:
        done = run_program(
            "replay_file.py", str(path),
            "--stream", "replayed",
            "--endpoint-url", kvs.url,
            "--create-stream",
            "--fast",
            "--fragment-duration", "1",
            "--tag", "site=lab",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        fragments = stored(kvs, "replayed")
    assert len(fragments) == 2
    assert frames_of(fragments, 1) == 50
    assert all(f.producer_tags == (Tag("site", "lab"),) for f in fragments)
    assert "kvs replay_file: 50 frames in 2 fragments, 2 acknowledged" in done.stderr


def test_replay_file_flushes_on_sigterm(make_clip: ClipFactory) -> None:
    path = make_clip("replay.mp4", Clip())
    with emulated_kvs() as kvs:
        with subprocess.Popen(
            [
                sys.executable, str(PRODUCERS / "replay_file.py"), str(path),
                "--stream", "looped",
                "--endpoint-url", kvs.url,
                "--create-stream",
                "--loop",
                "--fragment-duration", "1",
                "-v",  # INFO lines: "PutMedia to ..." says the upload runs
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=program_env(),
        ) as process:  # fmt: skip
            assert process.stderr is not None
            lines: list[str] = []
            for line in process.stderr:  # until the upload runs
                lines.append(line)
                if "PutMedia to" in line:
                    break
            time.sleep(1.3)  # mid-way through the second fragment (real time)
            process.send_signal(signal.SIGTERM)
            rest = process.stderr.read()
            assert process.wait(30) == 0, "".join(lines) + rest
        fragments = stored(kvs, "looped")
    assert "SIGTERM: flushing the last fragment" in rest
    summary = next(line for line in rest.splitlines() if " frames in " in line)
    sent = frames_of(fragments, 1)
    assert sent > 25  # past the first fragment (the loop has no end of its own)
    assert summary == (
        f"kvs replay_file: {sent} frames in {len(fragments)} fragments, "
        f"{len(fragments)} acknowledged"
    )


def test_replay_file_missing_file_is_one_line() -> None:
    done = run_program("replay_file.py", "/nonexistent/clip.mp4", "--stream", "s")
    assert done.returncode == 2
    assert done.stderr.strip() == "kvs replay_file: /nonexistent/clip.mp4: no such file"


# --- webcam.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("camera:99", "kvs webcam: cannot open camera 99"),
        ("/dev/video99", "kvs webcam: cannot open camera /dev/video99: no such device"),
    ],
)
def test_webcam_that_does_not_exist(device: str, message: str) -> None:
    with emulated_kvs() as kvs:
        done = run_program(
            "webcam.py", "--device", device, "--stream", "desk",
            "--endpoint-url", kvs.url, "--create-stream",
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == message  # one line: OpenCV's own warnings are silenced
    assert kvs.created == []  # failed before touching the service


def test_webcam_captures_and_encodes(make_clip: ClipFactory) -> None:
    # A video file stands in for the camera: OpenCV's VideoCapture opens it the same way
    # and the frames go the camera's path (capture, libx264 encoding, upload).
    path = make_clip("webcam.mp4", Clip())
    with emulated_kvs() as kvs:
        done = run_program(
            "webcam.py", "--device", str(path),
            "--stream", "desk",
            "--endpoint-url", kvs.url,
            "--create-stream",
            "--fps", "25",
            "--clock", "fps",
            "--fragment-duration", "1",
            "-v",  # INFO lines: the encoder's
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        fragments = stored(kvs, "desk")
    # libx264 here; the hardware encoder where one opens
    assert re.search(r"encoder \S+ 160x96 @ 25 fps, key frame every 25 frames", done.stderr)
    assert len(fragments) == 2
    assert frames_of(fragments, 1) == 50
    assert all(f.producer_tags == (Tag("source", f"webcam {path}"),) for f in fragments)
    assert "kvs webcam: 50 frames in 2 fragments, 2 acknowledged" in done.stderr


def test_webcam_fps_clock_needs_fps() -> None:
    done = run_program("webcam.py", "--stream", "desk", "--clock", "fps")
    assert done.returncode == 2
    assert done.stderr.strip() == "kvs webcam: --clock fps needs --fps"


# --- rtsp_relay.py ----------------------------------------------------------------------


class ScriptedCamera(http.server.BaseHTTPRequestHandler):
    """Answers each request as ``script`` says: "serve" the clip, "cut" it off half-way
    (the connection drops mid-feed), or (the default) 404: a camera whose feed ends or
    drops, that is away for a while, and comes back."""

    clip: ClassVar[bytes] = b""
    script: ClassVar[list[str]] = []
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        action = self.script.pop(0) if self.script else "404"
        self.requests.append(action)
        if action in ("serve", "cut"):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.send_header("Content-Length", str(len(self.clip)))
            self.end_headers()
            self.wfile.write(self.clip if action == "serve" else self.clip[: len(self.clip) // 2])
            if action == "cut":
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


CAMERA_CLIP = Clip(frames=25, audio="aac")  # 1 s of MPEG-TS, H.264 + AAC: one fragment
CameraFactory = Callable[[list[str]], tuple[str, type[ScriptedCamera]]]


@pytest.fixture
def camera(make_clip: ClipFactory) -> Iterator[CameraFactory]:
    """``camera(script)``: (the feed's URL, its handler class, which records requests)."""
    path = make_clip("camera.ts", CAMERA_CLIP)
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(script: list[str]) -> tuple[str, type[ScriptedCamera]]:
        class Handler(ScriptedCamera):
            clip: ClassVar[bytes] = path.read_bytes()
            requests: ClassVar[list[str]] = []

        Handler.script = list(script)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/camera.ts", Handler

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_rtsp_relay_reconnects_and_tags(make_clip: ClipFactory, camera: CameraFactory) -> None:
    url, handler = camera(["serve", "404", "404", "serve"])
    path = make_clip("camera.ts", CAMERA_CLIP)
    first_video_s = min(p.pts_s or 0.0 for p in demux(path))
    # audio from the first video frame on (earlier audio has no fragment to go in)
    audio_per_feed = sum(1 for p in demux(path, "audio") if (p.pts_s or 0.0) >= first_video_s)
    with emulated_kvs() as kvs:
        done = run_program(
            "rtsp_relay.py", url,
            "--stream", "porch",
            "--endpoint-url", kvs.url,
            "--create-stream",
            "--fragment-duration", "1",
            "--tag", "site=porch",
            "--tag", "camera=1",
            "--retry-delay", "0.05",
            "--max-retry-delay", "0.15",
            "--give-up-after", "3",
            "--max-attempts-per-minute", "10",
        )  # fmt: skip
        fragments = stored(kvs, "porch")
    # feed, ended; 404 twice; feed again, ended; 404 three times: given up
    assert handler.requests == ["serve", "404", "404", "serve", "404", "404", "404"]
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"kvs rtsp_relay: {url}: gave up after 3 failed attempts in a row (cannot open {url}: "
    )
    assert "Server returned 404 Not Found" in lines[-1]
    assert lines[-2] == (
        "kvs rtsp_relay: 2 sessions (7 attempts), "
        f"{2 * (25 + audio_per_feed)} frames in 2 fragments, 2 acknowledged"
    )
    # each reconnect logged with its reason; the back-off doubles while the camera is
    # away (to the bound) and starts again after a feed
    reconnects = [line for line in lines if "; reconnecting in " in line]
    assert [line.rpartition("; reconnecting in ")[2] for line in reconnects] == [
        "0.05 s", "0.1 s", "0.15 s", "0.05 s", "0.1 s", "0.15 s",
    ]  # fmt: skip
    assert ["feed ended" in line for line in reconnects] == [True, False, False] * 2
    assert all("404 Not Found" in line for line in reconnects if "feed ended" not in line)
    # both feeds arrived whole, audio along, each fragment tagged
    assert len(fragments) == 2
    assert frames_of(fragments, 1) == 2 * 25
    assert frames_of(fragments, 2) == 2 * audio_per_feed
    assert [t.codec_id for t in fragments[0].tracks] == ["V_MPEG4/ISO/AVC", "A_AAC"]
    assert all(f.producer_tags == (Tag("site", "porch"), Tag("camera", "1")) for f in fragments)
    timecodes = [f.cluster_timecode or 0 for f in fragments]
    assert timecodes == sorted(timecodes)  # the second feed follows the first


def test_rtsp_relay_keeps_what_arrived_before_the_feed_dropped(camera: CameraFactory) -> None:
    url, handler = camera(["cut", "serve"])
    with emulated_kvs() as kvs:
        done = run_program(
            "rtsp_relay.py", url,
            "--stream", "flaky",
            "--endpoint-url", kvs.url,
            "--create-stream",
            "--fragment-duration", "1",
            "--no-audio",
            "--retry-delay", "0.05",
            "--give-up-after", "1",
        )  # fmt: skip
        fragments = stored(kvs, "flaky")
    assert handler.requests == ["cut", "serve", "404"]
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    lost = [line for line in lines if "feed lost: " in line]
    assert len(lost) == 1 and "read failed" in lost[0], done.stderr
    assert lost[0].endswith("; reconnecting in 0.05 s")
    summary = lines[-2]
    assert summary.startswith("kvs rtsp_relay: 2 sessions (3 attempts), "), done.stderr
    # the frames read before the drop went up and were acknowledged, then the whole feed
    sent = frames_of(fragments, 1)
    assert 25 < sent < 50
    assert summary.endswith(
        f" {sent} frames in {len(fragments)} fragments, {len(fragments)} acknowledged"
    )
    assert frames_of(fragments, 2) == 0  # --no-audio
    assert all(len(f.tracks) == 1 for f in fragments)


def test_rtsp_relay_backoff_and_attempt_cap() -> None:
    relay = load_program("rtsp_relay.py")
    assert [relay.backoff_s(n, 1.0, 30.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    now = [1000.0]
    limiter = relay.AttemptLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.wait_s() == 0
        limiter.record()
        now[0] += 5
    assert limiter.wait_s() == 45  # the first of the 3 attempts leaves the window then
    now[0] += 45
    assert limiter.wait_s() == 0
    with pytest.raises(ValueError, match="at least 1"):
        relay.AttemptLimiter(0)


# --- numpy_frames.py --------------------------------------------------------------------


def test_numpy_frames_uploads_what_it_makes() -> None:
    with emulated_kvs() as kvs:
        done = run_program(
            "numpy_frames.py", "--stream", "synthetic", "--seconds", "1", "--fps", "25",
            "--endpoint-url", kvs.url, "--create-stream",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        fragments = stored(kvs, "synthetic")
    assert frames_of(fragments, 1) == 25
    assert all(f.producer_tags == (Tag("generator", "numpy_frames.py"),) for f in fragments)
    assert f"kvs numpy_frames: 25 frames in {len(fragments)} fragments" in done.stderr
