"""Camera (OpenCV on a video file), URL (HTTP server with MPEG-TS) and numpy sources."""

from __future__ import annotations

import functools
import http.server
import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from kvs_toolkit import bitstream
from kvs_toolkit.producer.encoder import Encoder
from kvs_toolkit.producer.sources import (
    CameraSource,
    NumpySource,
    SourceError,
    SourceOptions,
    UrlSource,
    open_source,
    redact_url,
)
from kvs_toolkit.samples import SampleSpec, render_frame
from tests.producer.conftest import ClipFactory
from tests.producer.media import (
    FPS,
    HEIGHT,
    WIDTH,
    Clip,
    check_fragments,
    decode_counts,
    decoded_size,
    demux,
    package,
    strictly_increasing,
    to_avcc,
)

# --- camera -----------------------------------------------------------------------------


def test_camera_source_encodes_what_opencv_captures(make_clip: ClipFactory) -> None:
    path = make_clip("camera.mp4", Clip(frames=40))
    probe = cv2.VideoCapture(str(path))
    if not probe.isOpened():
        pytest.skip("this OpenCV build cannot open video files")
    probe.release()
    before = Encoder.created
    options = SourceOptions(fps=FPS, clock="fps", fragment_duration_ms=1000)
    source = open_source(f"camera:{path}", options)
    assert isinstance(source, CameraSource)
    with source:
        tracks = source.tracks
        frames = list(source)
    assert Encoder.created == before + 1
    assert source.captured == 40 and len(frames) == 40
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 25]
    assert {b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(frames)} == {40}
    (video,) = tracks
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    bitstream.parse_avcc(video.codec_private)
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (40, 0)
    assert decoded_size(packaged.body) == (WIDTH, HEIGHT)


def test_camera_that_does_not_open_is_a_source_error(tmp_path: Path) -> None:
    source = CameraSource(str(tmp_path / "no-such-camera"))
    with pytest.raises(SourceError, match="cannot open camera"):
        _ = source.tracks


def test_camera_string_picks_the_device_and_releases_it() -> None:
    source = open_source("camera:3")
    assert isinstance(source, CameraSource) and source.device == 3
    calls: list[object] = []

    class Closed:
        def isOpened(self) -> bool:  # OpenCV's name
            return False

        def release(self) -> None:
            calls.append("released")

    def factory(device: int | str) -> Closed:
        calls.append(device)
        return Closed()

    source = CameraSource(3, capture_factory=factory)  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="cannot open camera 3"):
        _ = source.tracks
    assert calls == [3, "released"]


# --- URL over HTTP ----------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(make_clip: ClipFactory) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the clips folder."""
    folder = make_clip("served.ts", Clip(audio="aac")).parent
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_url_source_reads_mpeg_ts_over_http(make_clip: ClipFactory, http_server: str) -> None:
    path = make_clip("served.ts", Clip(audio="aac"))
    before = Encoder.created
    source = open_source(f"{http_server}/{path.name}", SourceOptions(realtime=False))
    assert isinstance(source, UrlSource)
    with source:
        tracks = source.tracks
        frames = list(source)
    assert Encoder.created == before
    video = [bytes(f.data) for f in frames if f.track_number == 1]
    assert video == to_avcc(demux(path))  # the same bytes as from the file
    assert [t.codec_id for t in tracks] == ["V_MPEG4/ISO/AVC", "A_AAC"]
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body)[0] == 50


def test_url_that_does_not_answer_is_a_source_error(http_server: str) -> None:
    source = open_source(f"{http_server}/missing.ts", SourceOptions(realtime=False))
    with pytest.raises(SourceError, match="cannot open http://"):
        _ = source.tracks


def test_a_camera_password_never_reaches_errors_or_logs(
    http_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = http_server.replace("http://", "http://admin:hunter2@") + "/missing.ts"
    source = open_source(url, SourceOptions(realtime=False))
    assert source.description == url.replace("hunter2", "***")
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as raised:
        _ = source.tracks
    message = str(raised.value)
    assert message.startswith(f"cannot open {source.description}: ")
    assert "404" in message  # FFmpeg's reason is kept, only the URL is not repeated
    assert "hunter2" not in message and "hunter2" not in caplog.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/s1", "rtsp://admin:***@10.0.0.5:554/s1"),
        ("rtsp://admin:p%40ss@[fe80::1]:554/s", "rtsp://admin:***@[fe80::1]:554/s"),
        ("rtsp://admin@cam/s1?channel=1", "rtsp://admin@cam/s1?channel=1"),
        ("http://cam/live.ts", "http://cam/live.ts"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- numpy frames -----------------------------------------------------------------------


def test_numpy_put_frame_encodes_and_yields() -> None:
    spec = SampleSpec(width=WIDTH, height=HEIGHT, fps=FPS)
    source = NumpySource(fps=FPS, options=SourceOptions(fragment_duration_ms=1000))

    def feed() -> None:
        for index in range(30):
            source.put_frame(render_frame(spec, index), timestamp_ms=10_000 + index * 40)
        source.finish()

    before = Encoder.created
    feeder = threading.Thread(target=feed)
    feeder.start()
    tracks = source.tracks  # blocks until the first frame is encoded
    frames = list(source)
    feeder.join(5)
    assert Encoder.created == before + 1
    assert len(frames) == 30
    assert [f.timestamp_ms for f in frames] == [10_000 + i * 40 for i in range(30)]
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 25]
    assert (tracks[0].width, tracks[0].height) == (WIDTH, HEIGHT)
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (30, 0)
    with pytest.raises(SourceError, match="after finish"):
        source.put_frame(render_frame(spec, 0))


def test_numpy_default_timestamps_are_the_wall_clock() -> None:
    source = NumpySource(fps=30, pixel_format="rgb24")
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    for _ in range(3):
        source.put_frame(image)
    source.finish()
    frames = list(source)
    assert len(frames) == 3
    assert strictly_increasing([f.timestamp_ms for f in frames])
