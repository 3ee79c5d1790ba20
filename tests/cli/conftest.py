"""Fixtures for the ``kvs`` command tests: the command run as a subprocess in an
environment with no AWS configuration at all, an emulator, and a stream holding the
sample video.

The environment is that of a fresh machine: HOME an empty folder, AWS_CONFIG_FILE and
AWS_SHARED_CREDENTIALS_FILE naming files that do not exist, every other AWS_* variable
removed. Two settings keep every request on loopback: AWS_EC2_METADATA_DISABLED stops
botocore's credential chain from probing the instance metadata service at
169.254.169.254 (on a laptop that probe fails the same way, after a timeout), and
HTTP(S)_PROXY point at a closed loopback port with NO_PROXY for loopback, so anything
addressed elsewhere (AWS itself) fails at once instead of leaving the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.samples import write_sample
from tests.emulator.test_hls import SPEC, SampleStream, upload_file

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_machine_env(home: Path) -> dict[str, str]:
    """The environment of a machine where AWS was never set up (see the module doc)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    }
    home.mkdir(parents=True, exist_ok=True)
    guard = f"http://127.0.0.1:{closed_port()}"
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(home / "no-such-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-such-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        HTTP_PROXY=guard,
        HTTPS_PROXY=guard,
        NO_PROXY="127.0.0.1,localhost,::1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass
class Kvs:
    """``kvs ...`` as a subprocess with :func:`fresh_machine_env`."""

    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, timeout: float = 120) -> Result:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "kvs_toolkit.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@pytest.fixture
def kvs(tmp_path: Path) -> Kvs:
    return Kvs(fresh_machine_env(tmp_path / "home"), tmp_path)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    """An emulator that does not check signatures (placeholder credentials sign)."""
    with Emulator() as emu:
        yield emu


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 6 s sample video (150 frames, key frame every 2 s) as an MKV file."""
    path = tmp_path_factory.mktemp("cli-sample") / "sample.mkv"
    write_sample(path, SPEC)
    return path


@pytest.fixture(scope="module")
def sample(emulator: Emulator, sample_file: Path) -> SampleStream:
    """Stream ``cam`` holding the sample in three 2 s fragments."""
    return upload_file(emulator, sample_file, "cam")
