"""Connections that stop half way cost nothing for long: idle and half-sent connections
are closed, stalled bodies refused, and GetMedia readers that stop reading lose their
slot. A real emulator on 127.0.0.1 with short timeouts."""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Iterator

import pytest

from kvs_toolkit.emulator import Emulator, dataplane
from kvs_toolkit.emulator.dataplane import DataPlaneConfig
from kvs_toolkit.emulator.server import DEFAULT_ROUTE_INSTALLERS

from .process import BASE_MS, create_stream, frames, put_media, sdk_upload


@pytest.fixture
def emu() -> Iterator[Emulator]:
    installers = [
        functools.partial(dataplane.install, config=DataPlaneConfig(getmedia_stall_timeout_s=0.5))
        if install is dataplane.install
        else install
        for install in DEFAULT_ROUTE_INSTALLERS
    ]
    with Emulator(idle_timeout=0.5, route_installers=installers) as emulator:
        yield emulator


def connect(emu: Emulator, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    port = int(emu.endpoint_url.rsplit(":", 1)[1])
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError("the connection was never closed")


def test_idle_connection_is_closed(emu: Emulator) -> None:
    with connect(emu) as sock:
        assert read_until_closed(sock) == b""


def test_half_sent_request_head_is_closed(emu: Emulator) -> None:
    with connect(emu) as sock:
        sock.sendall(b"POST /listStreams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        assert read_until_closed(sock) == b""


def test_half_sent_body_is_refused(emu: Emulator) -> None:
    with connect(emu) as sock:
        sock.sendall(
            b"POST /listStreams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
            b'Content-Type: application/json\r\n\r\n{"Limit":'
        )
        answer = b""
        while b"RequestTimeoutException" not in answer:
            chunk = sock.recv(65536)  # (the socket's 10 s timeout bounds the wait)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"RequestTimeoutException" in answer


def _get_media_request(stream: str) -> bytes:
    body = json.dumps({"StreamName": stream, "StartSelector": {"StartSelectorType": "EARLIEST"}})
    return (
        f"POST /getMedia HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def test_stalled_getmedia_readers_lose_their_slots(emu: Emulator) -> None:
    create_stream(emu.endpoint_url, "stall")
    fragments = [frames(BASE_MS + 2000 * n, count=4, size=250_000, seed=n) for n in range(24)]
    acks = put_media(emu.endpoint_url, "stall", sdk_upload(fragments)).acks()
    assert sum(a.event_type.value == "PERSISTED" for a in acks) == 24
    # Three readers that never read: the service's limit of three per stream.
    stalled = [connect(emu, rcvbuf=4096) for _ in range(3)]
    try:
        for sock in stalled:
            sock.sendall(_get_media_request("stall"))
        deadline = time.monotonic() + 20
        status = b""
        while time.monotonic() < deadline:
            with connect(emu) as sock:
                sock.sendall(_get_media_request("stall"))
                head = sock.recv(4096)
                status = head.split(b"\r\n", 1)[0]
            if b" 200 " in status:
                break
            time.sleep(0.1)
        assert b" 200 " in status, status
    finally:
        for sock in stalled:
            sock.close()
