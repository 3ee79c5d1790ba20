"""The emulator as a subprocess (``python -m kvs_toolkit.cli emulator``) and raw clients.

The raw clients send what the official C producer SDK sends and boto3 would not: a
``Host`` header without the port, unknown-size Clusters, fragment metadata and
``AWS_KINESISVIDEO_END_OF_FRAGMENT`` after the last Cluster, hostile bodies.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack, AckDecoder
from kvs_toolkit.mkv import Tag, TrackInfo
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, cluster, tags_element

from .conftest import ACCESS_KEY, REGION, SECRET

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
VIDEO = TrackInfo(
    1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e\xff\xe1\x00\x00\x01\x00\x00", width=64, height=48
)
BASE_MS = 1_790_000_000_000
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class EmulatorProcess:
    url: str
    process: subprocess.Popen[bytes]
    data_dir: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def rss_bytes(self) -> int:
        """Resident memory of the emulator process (Linux)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def run_emulator(data_dir: Path, *args: str, timeout: float = 30.0) -> Iterator[EmulatorProcess]:
    """Start ``kvs emulator --port 0`` and wait (with a deadline) for its URL line."""
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "kvs_toolkit.cli", "emulator", "--port", "0",
         "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        if not line.startswith(b"http://"):
            process.kill()
            _, stderr = process.communicate()
            raise AssertionError(f"the emulator did not start: {line!r} {stderr[-2000:]!r}")
        yield EmulatorProcess(line.decode().strip(), process, data_dir)
        assert process.poll() is None, "the emulator died"
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        # No request may end in a traceback (a 500) inside the emulator.
        at = stderr.find(b"Traceback")
        assert at < 0, stderr[max(0, at - 500) : at + 2500].decode(errors="replace")


def signed_headers(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    region: str = REGION,
    payload_hash: str | None = None,
) -> dict[str, str]:
    """Headers signed with SigV4 as the test credentials (botocore's signer)."""

    class Signer(SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            if payload_hash is not None:
                return payload_hash
            return str(super().payload(request))

    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    Signer(Credentials(ACCESS_KEY, SECRET), "kinesisvideo", region).add_auth(request)
    return dict(request.headers.items())


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def acks(self) -> list[Ack]:
        """The ack stream; raises if it is not JSON objects throughout."""
        acks = AckDecoder().feed(self.body)
        assert not self.body.strip() or self.body.rstrip().endswith(b"}"), self.body[-200:]
        return acks


def request(
    url: str,
    path: str,
    body: bytes | Iterable[bytes] = b"{}",
    headers: dict[str, str] | None = None,
    *,
    host: str | None = None,
    method: str = "POST",
    timeout: float = 30,
) -> Reply:
    """One raw HTTP request; ``host`` overrides the Host header (the C SDK sends no port).

    An iterable body is sent chunked, piece by piece.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        send = {"Host": host or parts.netloc, **(headers or {})}
        if isinstance(body, (bytes, bytearray)):
            send["Content-Length"] = str(len(body))
        else:
            send["Transfer-Encoding"] = "chunked"
        for name, value in send.items():
            if name.lower() != "host" or name == "Host":
                conn.putheader(name, value)
        conn.endheaders()
        if isinstance(body, (bytes, bytearray)):
            conn.send(body)
        else:
            for piece in body:
                if piece:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def stream_request(
    url: str,
    path: str,
    pieces: Iterable[bytes],
    headers: dict[str, str],
    *,
    host: str | None = None,
    timeout: float = 60,
) -> Reply:
    """A chunked POST whose body is sent by another thread while the answer is read.

    Unlike :func:`request`, the answer is read as it comes, so a server that answers
    and stops reading early (a refused flood) is still heard; send errors after that
    are ignored.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    head = [f"POST {path} HTTP/1.1", f"Host: {host or parts.netloc}",
            "Transfer-Encoding: chunked", "Connection: close"]  # fmt: skip
    head += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

    def send() -> None:
        with contextlib.suppress(OSError):
            for piece in pieces:
                if piece:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
            if _complete(received):
                break
    finally:
        sock.close()
        sender.join(timeout)
    return _parse_response(bytes(received))


def _complete(data: bytes | bytearray) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if b"transfer-encoding: chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _parse_response(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out = bytearray()
        pos = 0
        while True:
            eol = body.index(b"\r\n", pos)
            size = int(body[pos:eol].split(b";")[0], 16)
            if size == 0:
                break
            out += body[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        body = bytes(out)
    return Reply(status, headers, body)


def put_media(
    url: str,
    stream: str,
    pieces: Iterable[bytes],
    *,
    sign: bool = False,
    host: str | None = None,
    extra: dict[str, str] | None = None,
) -> Reply:
    """A PutMedia as the C producer SDK sends it (signed with the empty-payload hash)."""
    headers = {
        "x-amzn-stream-name": stream,
        "x-amzn-fragment-timecode-type": "ABSOLUTE",
        "x-amzn-producer-start-timestamp": f"{BASE_MS / 1000:.3f}",
        **(extra or {}),
    }
    if sign:
        netloc = host or urlsplit(url).netloc
        headers = signed_headers(
            f"http://{netloc}/putMedia", b"", {"host": netloc, **headers},
            payload_hash=EMPTY_SHA256,
        )  # fmt: skip
        headers = {k: v for k, v in headers.items() if k.lower() != "host"}
    return stream_request(url, "/putMedia", pieces, headers, host=host)


def call(url: str, path: str, payload: dict[str, Any], *, sign: bool = False,
         host: str | None = None) -> Reply:  # fmt: skip
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if sign:
        netloc = host or urlsplit(url).netloc
        headers = signed_headers(f"http://{netloc}{path}", body, {"host": netloc, **headers})
        headers = {k: v for k, v in headers.items() if k.lower() != "host"}
    return request(url, path, body, headers, host=host)


def frames(start_ms: int, count: int = 5, size: int = 300, seed: int = 0) -> list[FrameData]:
    return [
        FrameData(1, start_ms + 33 * i, bytes([(seed + i) % 256]) * size, keyframe=i == 0)
        for i in range(count)
    ]


def sdk_upload(
    fragments: Sequence[Sequence[FrameData]],
    *,
    closing_tags: Sequence[Tag] = (),
    end_of_fragment: bool = True,
) -> list[bytes]:
    """The byte pieces of a C-producer-shaped upload: header, unknown-size Clusters, and
    at the end the pending metadata and AWS_KINESISVIDEO_END_OF_FRAGMENT."""
    writer = MkvWriter([VIDEO], segment_uid=b"\x01" * 16)
    pieces = [writer.header()]
    for fragment in fragments:
        pieces.append(cluster(fragment[0].timecode, fragment))
    tail = list(closing_tags)
    if end_of_fragment:
        pieces.append(tags_element(tail) + tags_element([Tag(TAG_END_OF_FRAGMENT, "")]))
    elif tail:
        pieces.append(tags_element(tail))
    return pieces


def create_stream(url: str, name: str, retention: int = 24, **kwargs: Any) -> None:
    reply = call(url, "/createStream", {"StreamName": name, "DataRetentionInHours": retention},
                 **kwargs)  # fmt: skip
    assert reply.status == 200, reply.body
