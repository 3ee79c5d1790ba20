"""produce(), ProducerThread and ``kvs produce`` against the real emulator (SigV4 verified)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.aws import AwsAccess, DataEndpointCache
from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli.options import parse_size, parse_start_time, parse_tags
from kvs_toolkit.cli.produce import run as cmd_produce
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.errors import EndpointUnreachableError, PutMediaError
from kvs_toolkit.mkv import Tag
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.run import ProducerThread, Progress, produce
from kvs_toolkit.producer.sources import (
    FrameSource,
    NumpySource,
    SourceError,
    SourceOptions,
    open_source,
)
from kvs_toolkit.producer.uploader import Uploader, UploadStats
from kvs_toolkit.retry import RetryPolicy
from kvs_toolkit.samples import SampleSpec, render_frame
from tests.producer.conftest import ClipFactory
from tests.producer.emulated_kvs import emulated_kvs
from tests.producer.media import Clip
from tests.test_uploader import VIDEO, frame

CREDENTIALS = Credentials("AKIDTEST", "secret")


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # never the developer's real credentials or profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def test_produce_a_file_with_audio_and_tags(make_clip: ClipFactory) -> None:
    path = make_clip("aac.mp4", Clip(audio="aac"))
    source = open_source(str(path), SourceOptions(realtime=False, fragment_duration_ms=1000))
    reports: list[Progress] = []
    with emulated_kvs() as kvs:
        stats = asyncio.run(
            produce(
                source,
                kvs.url,
                "cam-1",
                tags={"site": "lab", "camera": "1"},
                credentials=CREDENTIALS,
                fragment_duration_ms=1000,
                create_stream=True,
                progress=reports.append,
            )
        )
    assert kvs.created == ["cam-1"]
    assert stats.fragments == stats.acked == 2
    assert stats.dropped_fragments == 0 and not stats.errors
    # the emulator verifies SigV4: the upload got in, so it was signed right
    fragments = kvs.fragments
    assert [f.cluster_timecode is not None for f in fragments] == [True, True]
    for fragment in fragments:  # persistent metadata on every fragment
        assert fragment.producer_tags == (Tag("site", "lab"), Tag("camera", "1"))
    assert sum(len(f.frames) for f in fragments if f.track(1)) >= 50
    decoder = FragmentDecoder()
    assert len([d for f in fragments for d in decoder.decode(f)] + decoder.flush()) == 50
    assert reports[-1].done and reports[-1].frames == stats.frames
    assert reports[-1].acked == 2 and reports[-1].ack_latency_ms is not None


def test_stream_without_retention_is_released_on_received(make_clip: ClipFactory) -> None:
    path = make_clip("clip.mkv", Clip())
    with emulated_kvs(**{"no-archive": 0}) as kvs:
        stats = asyncio.run(
            produce(
                open_source(str(path), SourceOptions(realtime=False)),
                kvs.url,
                "no-archive",
                credentials=CREDENTIALS,
                close_timeout_s=5,
            )
        )
    assert stats.acked == stats.fragments == 1


def test_missing_stream_without_create_is_an_error(make_clip: ClipFactory) -> None:
    source = open_source(str(make_clip("clip.mkv", Clip())), SourceOptions(realtime=False))
    with emulated_kvs() as kvs, pytest.raises(PutMediaError, match="does not exist"):
        asyncio.run(produce(source, kvs.url, "nobody", credentials=CREDENTIALS))
    assert source._closed  # the source thread let go of the file


def test_stop_ends_a_looping_realtime_source_gracefully(make_clip: ClipFactory) -> None:
    path = make_clip("clip.mkv", Clip())

    async def run(url: str) -> tuple[float, int, int]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, stop.set)
        started = time.monotonic()
        stats = await produce(
            open_source(str(path), SourceOptions(loop=True, fragment_duration_ms=1000)),
            url,
            "live",
            credentials=CREDENTIALS,
            fragment_duration_ms=1000,
            stop=stop,
        )
        return time.monotonic() - started, stats.fragments, stats.acked

    with emulated_kvs(live=24) as kvs:
        elapsed, fragments, acked = asyncio.run(run(kvs.url))
    assert 1.4 < elapsed < 5
    assert fragments == acked == 2  # 1.5 s of real-time video: 2 fragments, all acked
    assert len(kvs.fragments) == 2  # the last one was closed at once (END_OF_FRAGMENT)


class _FailingSource(FrameSource):
    """Good frames, then the kind of error a broken camera or file raises."""

    def __init__(self, inner: FrameSource, fail_after: int) -> None:
        super().__init__("failing")
        self.inner = inner
        self.fail_after = fail_after

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        self._set_tracks(self.inner.tracks)
        yield from itertools.islice(self.inner, self.fail_after)
        raise SourceError("failing: the device went away")


def test_source_error_is_raised_after_uploading_what_was_read(make_clip: ClipFactory) -> None:
    inner = open_source(str(make_clip("clip.mkv", Clip())), SourceOptions(realtime=False))
    with emulated_kvs(cam=24) as kvs, pytest.raises(SourceError, match="device went away"):
        asyncio.run(produce(_FailingSource(inner, 30), kvs.url, "cam", credentials=CREDENTIALS))
    inner.close()
    assert sum(len(f.frames) for f in kvs.fragments) == 30


def test_producer_thread_with_put_frame() -> None:
    spec = SampleSpec(width=160, height=96, fps=25)
    source = NumpySource(fps=25, options=SourceOptions(fragment_duration_ms=1000))
    with emulated_kvs(cam=24) as kvs:
        producer = ProducerThread(
            source, kvs.url, "cam", credentials=CREDENTIALS, fragment_duration_ms=1000
        )
        producer.start()
        start = 1_700_000_000_000
        for index in range(60):
            source.put_frame(render_frame(spec, index), timestamp_ms=start + index * 40)
        source.finish()
        stats = producer.result(timeout=30)
    assert stats.frames == 60
    assert stats.fragments == stats.acked == 3
    assert [f.cluster_timecode for f in kvs.fragments] == [start, start + 1000, start + 2000]


def test_a_key_frame_stamped_a_little_early_still_ends_the_fragment() -> None:
    # a camera's clock jitters: the key frame due at 2000 ms arrives at 1995 ms
    source = NumpySource(fps=25, options=SourceOptions(fragment_duration_ms=2000))
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    with emulated_kvs(cam=24) as kvs:
        producer = ProducerThread(source, kvs.url, "cam", credentials=CREDENTIALS)
        producer.start()
        for index in range(75):
            source.put_frame(image, timestamp_ms=10_000 + index * 40 - 5 * (index == 50))
        source.finish()
        stats = producer.result(timeout=30)
    assert stats.fragments == 2
    assert [f.cluster_timecode for f in kvs.fragments] == [10_000, 11_995]


def test_producer_thread_stop() -> None:
    source = NumpySource(fps=25)
    with emulated_kvs(cam=24) as kvs:
        producer = ProducerThread(source, kvs.url, "cam", credentials=CREDENTIALS)
        producer.start()
        source.put_frame(np.zeros((48, 64, 3), dtype=np.uint8))
        time.sleep(0.3)
        producer.stop()
        stats = producer.result(timeout=30)
    assert stats.frames == 1 and stats.acked == 1


# --- kvs produce ------------------------------------------------------------------------


def produce_args(*argv: str) -> argparse.Namespace:
    return build_parser("produce").parse_args(["produce", *argv])


def test_cli_produce(make_clip: ClipFactory, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_clip("clip.ts", Clip())
    with emulated_kvs() as kvs:
        args = produce_args(
            str(path),
            "--stream", "porch",
            "--endpoint-url", kvs.url,
            "--tag", "site=porch",
            "--fragment-duration", "1",
            "--no-realtime",
            "--create-stream",
        )  # fmt: skip
        assert cmd_produce(args) == 0
    assert kvs.created == ["porch"]
    fragments = kvs.fragments
    assert len(fragments) == 2
    assert all(f.producer_tags == (Tag("site", "porch"),) for f in fragments)
    err = capsys.readouterr().err
    assert "50 frames" in err and "fragments 2/2 acked" in err


def test_cli_arguments() -> None:
    args = produce_args("-", "--stream", "s", "--codec", "h265", "--fps", "30", "--loop")
    assert (args.source, args.codec, args.fps, args.loop, args.realtime) == (
        "-",
        "h265",
        30,
        True,
        True,
    )
    assert args.fragment_duration == 2.0 and args.encoder == "auto" and args.audio
    assert parse_tags(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_tags(["novalue"])


def test_cli_missing_file_is_a_source_error(tmp_path: Path) -> None:
    args = produce_args(str(tmp_path / "nope.mp4"), "--stream", "s")
    with pytest.raises(SourceError, match="no such file"):
        cmd_produce(args)


def test_control_plane_that_does_not_answer_is_retried_then_one_error(
    make_clip: ClipFactory, caplog: pytest.LogCaptureFixture
) -> None:
    source = open_source(str(make_clip("clip.mkv", Clip())), SourceOptions(realtime=False))
    # nothing listens on port 9 (discard) of localhost
    aws = AwsAccess(
        endpoint_url="http://127.0.0.1:9",
        credentials_override=CREDENTIALS,
        retry=RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.02),
    )
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            EndpointUnreachableError,
            match=r"cannot reach http://127.0.0.1:9 \(DescribeStream\): connection refused; "
            "gave up after 3 attempts",
        ),
    ):
        asyncio.run(produce(source, stream_name="cam", aws=aws))
    retries = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert [m.split("; ")[1].split(",")[0] for m in retries] == ["attempt 1/3", "attempt 2/3"]


def test_cli_kms_key_id_with_create_stream(make_clip: ClipFactory) -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with emulated_kvs() as kvs:
        args = produce_args(
            str(make_clip("clip.mkv", Clip())), "--stream", "secret", "--endpoint-url", kvs.url,
            "--no-realtime", "--create-stream", "--kms-key-id", key,
        )  # fmt: skip
        assert cmd_produce(args) == 0
        info = kvs.client("kinesisvideo").describe_stream(StreamName="secret")["StreamInfo"]
    assert info["KmsKeyId"] == key


def test_bad_kms_key_id_is_a_clear_error(make_clip: ClipFactory) -> None:
    source = open_source(str(make_clip("clip.mkv", Clip())), SourceOptions(realtime=False))
    with emulated_kvs() as kvs, pytest.raises(PutMediaError, match="InvalidArgumentException"):
        asyncio.run(
            produce(
                source, kvs.url, "secret", credentials=CREDENTIALS, create_stream=True,
                kms_key_id="k" * 2049,  # the service's limit is 2048 characters
            )
        )  # fmt: skip
    assert kvs.created == []


def test_cli_duration_stops_a_looping_source(
    make_clip: ClipFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulated_kvs(live=24) as kvs:
        args = produce_args(
            str(make_clip("clip.mkv", Clip())), "--stream", "live", "--endpoint-url", kvs.url,
            "--loop", "--fragment-duration", "1", "--duration", "1.2",
        )  # fmt: skip
        started = time.monotonic()
        assert cmd_produce(args) == 0  # everything acknowledged
        elapsed = time.monotonic() - started
    assert 1.1 < elapsed < 6
    assert len(kvs.fragments) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "fragments 2/2 acked  0 pending" in last and "reconnects 0" in last
    assert "buffer 0.0/64 MiB" in last


def test_progress_line_shows_buffer_use_reconnects_and_spool() -> None:
    progress = Progress(
        elapsed_s=12.0, frames=300, video_frames=300, frames_per_s=25.0,
        payload_bytes=2_000_000, megabytes_per_s=0.17, fragments=6, acked=4,
        ack_latency_ms=850.0, dropped_fragments=1, errors=0, pending=2,
        buffer_bytes=1_572_864, buffer_max_bytes=64 << 20, spool_bytes=3_355_443,
        reconnects=3,
    )  # fmt: skip
    assert progress.line() == (
        "  12.0 s  300 frames (25.0/s)  0.17 MB/s  fragments 4/6 acked  2 pending  "
        "ack latency 850 ms  buffer 1.5/64 MiB  reconnects 3  spool 3.2 MiB  dropped 1  errors 0"
    )


def test_parse_start_time() -> None:
    assert parse_start_time("2026-11-20T06:30:00Z") == 1_795_156_200_000
    assert parse_start_time("2026-11-20T07:30:00+01:00") == 1_795_156_200_000
    assert parse_start_time("2026-11-20T06:30:00") == 1_795_156_200_000  # UTC if no zone
    assert parse_start_time("source") == "source"
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO 8601 time"):
        parse_start_time("yesterday")
    args = produce_args("clip.mp4", "--stream", "s", "--start-time", "2026-11-20T06:30:00Z")
    assert args.start_time == 1_795_156_200_000


def test_parse_size() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1.5g") == 3 * 1024**3 // 2
    assert parse_size("64KiB") == 65536
    for bad in ("", "lots", "-1M", "0"):
        with pytest.raises(argparse.ArgumentTypeError, match="size"):
            parse_size(bad)
    args = produce_args("-", "--stream", "s", "--spool-dir", "/var/spool/kvs",
                        "--spool-max-bytes", "2G")  # fmt: skip
    assert (args.spool_dir, args.spool_max_bytes) == ("/var/spool/kvs", 2 * 1024**3)
    assert args.buffer_max_bytes == 64 * 1024**2 and args.close_timeout == 30.0
    with pytest.raises(SystemExit):
        produce_args("-", "--stream", "s", "--duration", "-3")


class PutMediaBlackHole:
    """A TCP proxy to the emulator that lets the control plane through but drops every
    PutMedia connection: the network path to the data plane is down."""

    def __init__(self, target: str) -> None:
        self.target_port = int(target.rsplit(":", 1)[1])
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self) -> type[socketserver.BaseRequestHandler]:
        target_port = self.target_port

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                first = client.recv(65536)
                if first.startswith(b"POST /putMedia"):
                    return  # closed unanswered
                with socket.create_connection(("127.0.0.1", target_port)) as upstream:
                    upstream.sendall(first)
                    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                    back.start()
                    _pipe(client, upstream)
                    back.join(5)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def test_cli_exit_status_1_when_unacknowledged_and_the_spool_delivers_on_the_next_run(
    make_clip: ClipFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = str(make_clip("clip.mkv", Clip()))
    spool = tmp_path / "spool"
    with emulated_kvs(cam=24) as kvs:
        black_hole = PutMediaBlackHole(kvs.url)
        kvs.emulator.advertised_url = black_hole.url  # GetDataEndpoint gives the black hole
        try:
            args = produce_args(
                clip, "--stream", "cam", "--endpoint-url", black_hole.url, "--no-realtime",
                "--fragment-duration", "1", "--spool-dir", str(spool), "--close-timeout", "0.5",
            )  # fmt: skip
            with caplog.at_level(logging.WARNING):
                assert cmd_produce(args) == 1
        finally:
            black_hole.close()
            kvs.emulator.advertised_url = None
        assert "2 unacknowledged (kept in the spool)" in caplog.text
        assert len(list(spool.glob("*.frag"))) == 2
        # the network is back: the next run sends the spool first, then its own video
        args = produce_args(
            clip, "--stream", "cam", "--endpoint-url", kvs.url, "--no-realtime",
            "--fragment-duration", "1", "--spool-dir", str(spool),
        )  # fmt: skip
        assert cmd_produce(args) == 0
    assert list(spool.glob("*.frag")) == []
    fragments = kvs.fragments
    assert len(fragments) == 4
    assert sum(len(f.frames) for f in fragments) == 100  # both runs' 50 frames, once each


def test_sigterm_ends_kvs_produce_gracefully(make_clip: ClipFactory) -> None:
    clip = str(make_clip("clip.mkv", Clip()))
    with emulated_kvs(porch=24) as kvs:
        process = subprocess.Popen(
            [sys.executable, "-m", "kvs_toolkit.cli", "produce", clip, "--stream", "porch",
             "--endpoint-url", kvs.url, "--loop", "--fragment-duration", "1"],
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:  # a status line a second (not a terminal)
            if "fragments 1/" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        acked = int(err.strip().splitlines()[-1].split("fragments ")[1].split("/")[0])
    assert "SIGTERM: flushing the last fragment" in err
    assert len(kvs.fragments) == acked >= 2


# --- the data endpoint, looked up again ---------------------------------------------------

DEAD_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


def test_data_endpoint_is_looked_up_again_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    with emulated_kvs(cam=24) as kvs:
        cache = DataEndpointCache(
            AwsAccess(endpoint_url=kvs.url, credentials_override=CREDENTIALS),
            {"StreamName": "cam"},
            "PUT_MEDIA",
            endpoint=DEAD_ENDPOINT,  # where the stream was; it has moved since
            refresh_s=60,
            clock=lambda: now[0],
        )
        assert cache() == DEAD_ENDPOINT and cache.lookups == 0  # just looked up
        now[0] = 61
        moved = cache()
        assert moved == kvs.url and cache.lookups == 1
        now[0] = 90
        assert cache() == moved and cache.lookups == 1  # not again within the minute
    now[0] = 200  # the control plane is gone too (an outage): keep the last endpoint
    with caplog.at_level(logging.WARNING):
        assert cache() == moved and cache.lookups == 2
    assert f"GetDataEndpoint failed, keeping {moved}" in caplog.text


def test_uploader_connects_to_the_endpoint_the_cache_finds() -> None:
    with emulated_kvs(cam=24) as kvs:
        cache = DataEndpointCache(
            AwsAccess(endpoint_url=kvs.url, credentials_override=CREDENTIALS),
            {"StreamName": "cam"},
            "PUT_MEDIA",
            endpoint=DEAD_ENDPOINT,
            refresh_s=0,
        )

        async def run() -> UploadStats:
            uploader = Uploader(
                DEAD_ENDPOINT,
                "cam",
                [VIDEO],
                credentials=CREDENTIALS,
                fragment_duration_ms=1000,
                endpoint_provider=cache,
            )
            await uploader.start()
            for i in range(20):
                uploader.put_frame(frame(i))
            return await uploader.close(timeout=10)

        stats = asyncio.run(run())
        assert stats.acked == 2 and stats.connection_failures == 0
        assert cache.lookups == 1 and len(kvs.fragments) == 2
