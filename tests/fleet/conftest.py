"""Fixtures of the fleet tests: a real DynamoDB-compatible server (moto in server mode,
its own process on 127.0.0.1), the real emulator, and real-time producers uploading
real H.264 to many streams at once.

Nothing is mocked: the workers talk HTTP to moto and to the emulator exactly as they
would to DynamoDB and Kinesis Video Streams.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from kvs_toolkit.consumer.checkpoint import DynamoDBCheckpointStore
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample

ACCESS_KEY = "AKIDFLEET"
SECRET = "fleet-secret"
REGION = "us-east-1"
TABLE = "kvs-fleet"
# Small frames, short fragments: 10 fps, a key frame (and a fragment) every 0.5 s.
FPS = 10
FRAGMENT_MS = 500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


# moto's own server (``python -m moto.server``) serves requests on many threads, and its
# DynamoDB backend does not lock an item across a conditional update: two workers racing
# for one free lease were both granted it (seen in this test, 2 ms apart). DynamoDB
# applies conditional writes atomically, so the same moto application is served here
# on one thread (werkzeug's server, HTTP/1.0: one request per connection).
_MOTO_SERVER = """
import sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False)
"""


class MotoServer:
    """moto in server mode in its own process; :meth:`pause` / :meth:`resume` stop and
    continue it (SIGSTOP/SIGCONT: its state survives, clients time out meanwhile)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        client = self.client()

        def answers() -> bool:
            assert self.process.poll() is None, "moto server exited"
            try:
                client.list_tables()
            except Exception:
                return False
            return True

        wait_until(answers, 30, "moto server answering")

    def client(self) -> Any:
        return boto3.client(
            "dynamodb",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
            config=Config(retries={"total_max_attempts": 1}, read_timeout=10),
        )

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="session")
def moto_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def moto_server(moto_process: MotoServer) -> Iterator[MotoServer]:
    """The moto server with an empty ``TABLE`` (dropped again after the test)."""
    moto_process.resume()
    client = moto_process.client()
    DynamoDBCheckpointStore.create_table(client, TABLE)
    try:
        yield moto_process
    finally:
        moto_process.resume()
        client.delete_table(TableName=TABLE)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials and region for this process and the worker processes."""
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    values = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        yield emu


def kvs_client(url: str) -> Any:
    return boto3.client(
        "kinesisvideo",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )


def sample_file(folder: Path, seconds: float) -> Path:
    spec = SampleSpec(width=160, height=96, fps=FPS, seconds=seconds, codec="h264", gop_seconds=0.5)
    return write_sample(folder / f"sample-{seconds:g}s.mkv", spec)


class LiveProducers:
    """Real-time uploads of one sample file to several streams at once (one event loop
    in a background thread), as cameras would send them."""

    def __init__(self, url: str, streams: Sequence[str], sample: Path) -> None:
        self.url = url
        self.streams = list(streams)
        self.sample = sample
        self.results: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="producers", daemon=True)

    def start(self) -> LiveProducers:
        self._thread.start()
        return self

    def _run(self) -> None:
        async def one(stream: str) -> None:
            try:
                stats = await produce(
                    open_source(str(self.sample), SourceOptions(realtime=True, audio=False)),
                    self.url,
                    stream,
                    credentials=Credentials(ACCESS_KEY, SECRET),
                    fragment_duration_ms=FRAGMENT_MS,
                )
                self.results[stream] = stats.acked
            except Exception as exc:
                self.results[stream] = exc

        async def everything() -> None:
            await asyncio.gather(*(one(s) for s in self.streams))

        asyncio.run(everything())

    def join(self, timeout: float) -> dict[str, Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producers did not finish"
        return self.results


def fragment_numbers(url: str, stream: str) -> list[str]:
    """Every fragment the emulator stored for ``stream`` (ListFragments), in order."""
    import datetime as dt

    control = kvs_client(url)
    endpoint = control.get_data_endpoint(StreamName=stream, APIName="LIST_FRAGMENTS")
    archived = boto3.client(
        "kinesis-video-archived-media",
        endpoint_url=endpoint["DataEndpoint"],
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )
    now = dt.datetime.now(dt.timezone.utc)
    numbers: list[str] = []
    request: dict[str, Any] = {
        "StreamName": stream,
        "FragmentSelector": {
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": now - dt.timedelta(hours=1),
                "EndTimestamp": now + dt.timedelta(minutes=1),
            },
        },
    }
    while True:
        page = archived.list_fragments(**request)
        numbers += [f["FragmentNumber"] for f in page.get("Fragments", ())]
        if not page.get("NextToken"):
            break
        request = {"StreamName": stream, "NextToken": page["NextToken"]}
    return sorted(numbers, key=int)
