"""Raw HTTP helpers for the emulator tests (requests boto3 would refuse to send)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_post(
    endpoint_url: str,
    path: str,
    body: bytes | None = b"{}",
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
) -> RawResponse:
    """POST ``body`` to the emulator and return the whole response."""
    parts = urlsplit(endpoint_url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        send_headers = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            send_headers["Transfer-Encoding"] = "chunked"
            conn.request(
                "POST", path, body=iter([body or b""]), headers=send_headers, encode_chunked=True
            )
        else:
            conn.request("POST", path, body=body, headers=send_headers)
        response = conn.getresponse()
        data = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()
