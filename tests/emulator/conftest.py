"""Fixtures for the emulator tests: a running emulator and real boto3 clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from kvs_toolkit.emulator import Emulator

ACCESS_KEY = "AKIDTEST"
SECRET = "secret"
CREDENTIALS = {ACCESS_KEY: SECRET}
REGION = "us-east-1"

ClientFactory = Callable[..., Any]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator on 127.0.0.1 (port 0) that verifies SigV4 with CREDENTIALS."""
    with Emulator(credentials=CREDENTIALS) as emu:
        yield emu


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """``make_client(service, endpoint_url, **overrides)``: boto3 clients closed afterwards."""
    made: list[Any] = []

    def make(service: str, endpoint_url: str | None, **kwargs: Any) -> Any:
        options: dict[str, Any] = {
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET,
            # Errors come back at once; a retry would only slow the tests.
            "config": Config(retries={"max_attempts": 1, "mode": "standard"}),
        }
        if endpoint_url is not None:
            options["endpoint_url"] = endpoint_url
        options.update(kwargs)
        client = boto3.client(service, **options)  # type: ignore[call-overload]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def kv(emulator: Emulator, make_client: ClientFactory) -> Any:
    """A ``kinesisvideo`` client for the emulator."""
    return make_client("kinesisvideo", emulator.endpoint_url)


@pytest.fixture
def archived(emulator: Emulator, make_client: ClientFactory) -> Any:
    """A ``kinesis-video-archived-media`` client for the emulator."""
    return make_client("kinesis-video-archived-media", emulator.endpoint_url)
