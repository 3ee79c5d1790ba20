"""The Annex-B pipe source (``kvs produce -``) fed through a real OS pipe."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest

from kvs_toolkit import bitstream
from kvs_toolkit.bitstream import Codec
from kvs_toolkit.errors import BitstreamError
from kvs_toolkit.producer.encoder import Encoder
from kvs_toolkit.producer.sources import (
    AnnexBSource,
    ArrivalClock,
    FixedRateClock,
    SourceError,
    SourceOptions,
    open_source,
)
from tests.producer.media import (
    FPS,
    HEIGHT,
    WIDTH,
    Clip,
    annexb_stream,
    check_fragments,
    decode_counts,
    demux,
    needs_x265,
    package,
    strictly_increasing,
    to_avcc,
)


@contextmanager
def pipe(data: bytes, chunk: int = 1500, delay_s: float = 0.0) -> Iterator[BinaryIO]:
    """The read end of an OS pipe that a writer thread fills with ``data`` in chunks."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        # a source that gives up on bad input closes its end first: not the writer's error
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_fd, "wb", buffering=0) as out:
            for start in range(0, len(data), chunk):
                out.write(data[start : start + chunk])
                if delay_s:
                    time.sleep(delay_s)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as reader:
        yield reader
    writer.join(5)


@pytest.fixture(scope="module")
def h264_stream() -> bytes:
    return annexb_stream(Clip(frames=50))


@pytest.mark.parametrize("read_size", [1, 777, 65536])
def test_pipe_frames_are_the_access_units_in_avcc(h264_stream: bytes, read_size: int) -> None:
    before = Encoder.created
    with (
        pipe(h264_stream) as stream,
        AnnexBSource(stream, chunk_size=read_size, description="pipe") as source,
    ):
        tracks = source.tracks
        frames = list(source)
    assert Encoder.created == before  # passed through, never re-encoded
    # FFmpeg's own H.264 parser cuts the same access units
    packets = demux(io.BytesIO(h264_stream))
    assert [bytes(f.data) for f in frames] == to_avcc(packets)
    assert [f.keyframe for f in frames] == [p.keyframe for p in packets]
    (video,) = tracks
    assert (video.codec_id, video.width, video.height) == ("V_MPEG4/ISO/AVC", WIDTH, HEIGHT)
    avcc = bitstream.parse_avcc(video.codec_private)
    assert avcc.sps and avcc.pps
    stamps = [f.timestamp_ms for f in frames]
    assert strictly_increasing(stamps)  # arrival clock, forced to increase
    assert abs(stamps[-1] - time.time() * 1000) < 5000
    packaged = package(tracks, frames, fragment_duration_ms=0)  # a fragment per key frame
    check_fragments(packaged)
    assert len(packaged.fragments) == 2
    assert decode_counts(packaged.body) == (50, 0)


def test_arrival_timestamps_follow_the_writer(h264_stream: bytes) -> None:
    # 20 chunks, 30 ms apart: the stream arrives over ~0.6 s and the stamps show it
    chunk = len(h264_stream) // 20 + 1
    with pipe(h264_stream, chunk=chunk, delay_s=0.03) as stream:
        source = AnnexBSource(stream, clock=ArrivalClock())
        frames = list(source)
    span = frames[-1].timestamp_ms - frames[0].timestamp_ms
    assert 400 <= span <= 3000


def test_fps_clock_spaces_timestamps_evenly(h264_stream: bytes) -> None:
    with pipe(h264_stream) as stream:
        frames = list(AnnexBSource(stream, clock=FixedRateClock(FPS)))
    assert {b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(frames)} == {40}


def test_stream_joined_mid_gop_starts_at_the_next_key_frame(h264_stream: bytes) -> None:
    packets = demux(io.BytesIO(h264_stream))
    tail = b"".join(p.data for p in packets[5:])  # starts on a P-frame
    with pipe(tail) as stream:
        source = AnnexBSource(stream)
        tracks = source.tracks
        frames = list(source)
    assert source.dropped == 20  # frames 5-24 cannot be decoded without frame 0
    assert len(frames) == 25 and frames[0].keyframe
    assert decode_counts(package(tracks, frames).body) == (25, 0)


@needs_x265
def test_h265_pipe() -> None:
    data = annexb_stream(Clip(codec="libx265", frames=30))
    with pipe(data) as stream:
        source = AnnexBSource(stream, codec="h265", clock=FixedRateClock(FPS))
        tracks = source.tracks
        frames = list(source)
    (video,) = tracks
    assert video.codec_id == "V_MPEGH/ISO/HEVC"
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    hvcc = bitstream.parse_hvcc(video.codec_private)
    assert hvcc.vps and hvcc.sps and hvcc.pps
    assert [bytes(f.data) for f in frames] == to_avcc(demux(io.BytesIO(data)))
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (30, 0)


def test_garbage_on_the_pipe_is_a_bitstream_error() -> None:
    with pipe(b"this is not video at all" * 100) as stream:
        source = AnnexBSource(stream, description="stdin")
        with pytest.raises(BitstreamError, match=r"^stdin: non-zero byte at stream offset 0"):
            _ = source.tracks


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_wrong_codec_or_no_key_frame_is_a_source_error(h264_stream: bytes, codec: Codec) -> None:
    # an H.264 stream read as H.265 never shows an H.265 key frame with VPS/SPS/PPS
    data = h264_stream if codec == "h265" else b""
    with pipe(data) as stream:
        source = AnnexBSource(stream, codec=codec)
        with pytest.raises(
            SourceError, match=r"without a h26\d key frame carrying its parameter sets"
        ):
            _ = source.tracks


def test_dash_opens_stdin_with_the_fps_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    data = annexb_stream(Clip(frames=10))
    fake_stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)))
    monkeypatch.setattr("sys.stdin", fake_stdin)
    source = open_source("-", SourceOptions(fps=10))
    assert isinstance(source, AnnexBSource)
    frames = list(source)
    assert len(frames) == 10
    assert {b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(frames)} == {100}


@pytest.mark.parametrize(
    ("stdin_is", "realtime", "live"),
    [("pipe", True, True), ("pipe", False, False), ("file", True, False)],
)
def test_stdin_from_a_file_or_with_fast_is_a_recording(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stdin_is: str, realtime: bool, live: bool
) -> None:
    """A pipe is taken for a camera (never waited for) unless --fast says it carries a
    recording; stdin redirected from a file is a recording (read at the upload's pace)."""
    with contextlib.ExitStack() as stack:
        if stdin_is == "file":
            path = tmp_path / "clip.h264"
            path.write_bytes(annexb_stream(Clip(frames=5)))
            stdin = stack.enter_context(path.open("r"))
        else:
            read_fd, write_fd = os.pipe()
            stack.callback(os.close, write_fd)
            stdin = stack.enter_context(os.fdopen(read_fd, "r"))
        monkeypatch.setattr("sys.stdin", stdin)
        source = open_source("-", SourceOptions(fps=10, realtime=realtime))
        assert source.live is live


def _stdin_produce(tmp_path: Path, sample: Path, *, pipe: bool) -> tuple[int, str]:
    """`kvs produce - --stream s` with ``sample`` on stdin (a redirect or a pipe) against
    a closed endpoint: reading the source happens first, so the source's verdict shows."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "kvs_toolkit.cli", "produce", "-", "--stream", "s",
            "--endpoint-url", "http://127.0.0.1:9", "--max-attempts", "1", "--fast"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if pipe:
        result = subprocess.run(
            argv, input=sample.read_bytes(), capture_output=True, env=env, timeout=60,
            check=False,
        )  # fmt: skip
    else:
        with sample.open("rb") as stdin:
            result = subprocess.run(
                argv, stdin=stdin, capture_output=True, env=env, timeout=60, check=False
            )
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_container_file_on_stdin_is_read_as_a_file(tmp_path: Path, suffix: str) -> None:
    from kvs_toolkit.samples import SampleSpec, write_sample

    sample = write_sample(tmp_path / f"sample{suffix}", SampleSpec(160, 120, 10, 1.0))
    status, err = _stdin_produce(tmp_path, sample, pipe=False)
    # the file was read as a container: what stops it now is the closed endpoint
    assert "before the first start code" not in err
    assert "cannot reach http://127.0.0.1:9" in err and status == 2
    status, err = _stdin_produce(tmp_path, sample, pipe=True)
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("kvs produce: stdin carries a ")
    assert "not an H.264/H.265 Annex-B stream" in err and "Traceback" not in err
