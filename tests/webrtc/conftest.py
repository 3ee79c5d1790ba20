"""Fixtures for the WebRTC tests: an emulator with SigV4 on and real boto3 clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from kvs_toolkit.aws import AwsAccess
from kvs_toolkit.emulator import Emulator
from tests.webrtc import media

ACCESS_KEY = "AKIDWEBRTC"
SECRET = "webrtc-secret"
REGION = "us-east-1"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the selected tests marked ``loopback_namespace``, per test file."""
    if media.inside_namespace():
        return
    media.SELECTED.clear()
    marked = [item for item in session.items if item.get_closest_marker(media.MARK)]
    for item in marked:
        media.SELECTED.setdefault(item.nodeid.split("::", 1)[0], []).append(item.nodeid)
    # The first marked test of a file to run waits for the whole file's batch: it gets
    # pytest-timeout's limit (pyproject.toml) once per test of the batch.
    limit = float(session.config.getini("timeout") or 120)
    for item in marked:
        batch = media.SELECTED[item.nodeid.split("::", 1)[0]]
        item.add_marker(pytest.mark.timeout(limit * len(batch)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    media.record_outcome(report)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        yield emu


def client(service: str, emulator: Emulator) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=emulator.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        # botocore would refuse some bad values itself: let the emulator answer them.
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )


@pytest.fixture
def kv(emulator: Emulator) -> Iterator[Any]:
    made = client("kinesisvideo", emulator)
    yield made
    made.close()


def aws_for(emulator: Emulator) -> AwsAccess:
    return AwsAccess(
        region_name=REGION,
        endpoint_url=emulator.endpoint_url,
        credentials_override=Credentials(ACCESS_KEY, SECRET),
    )
