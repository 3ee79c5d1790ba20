"""PutMedia over a full-duplex HTTP connection (the I/O layer around :mod:`kvs_toolkit.acks`).

There is no boto3 call for PutMedia (docs/kvs-wire.md "PutMedia request"): the body is an MKV stream
written as frames arrive, and the acknowledgements come back on the same connection
while the upload is still going. aiohttp's client writes the body from a task of its
own while the response is read, which is what this needs::

    async with PutMediaSession(http, endpoint, "my-stream", credentials=creds) as upload:
        await upload.write(writer.header())
        await upload.write(writer.fragment(...))
        async for ack in upload.acks():
            ...
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Final

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

from kvs_toolkit.acks import Ack, AckDecoder
from kvs_toolkit.errors import PutMediaError

log = logging.getLogger(__name__)

# All three KVS clients sign with this service name (docs/kvs-wire.md "Endpoints and signing").
SIGNING_SERVICE: Final = "kinesisvideo"
# Bytes queued for the socket before write() waits: backpressure, not unbounded memory.
DEFAULT_SEND_QUEUE_BYTES: Final = 8 * 1024 * 1024
_END: Final = b""


def sign_request(
    url: str,
    headers: Mapping[str, str],
    credentials: Credentials | ReadOnlyCredentials,
    region: str,
) -> dict[str, str]:
    """SigV4 headers for a streaming POST, signed as the C producer SDK signs PutMedia.

    The streaming body cannot be hashed in advance: the payload hash is the SHA-256 of
    the empty string, which botocore computes for an empty body. A session token goes
    in ``X-Amz-Security-Token``.
    """
    frozen = (
        credentials.get_frozen_credentials()
        if isinstance(credentials, Credentials)
        else credentials
    )
    request = AWSRequest(method="POST", url=url, headers=dict(headers), data=b"")
    SigV4Auth(frozen, SIGNING_SERVICE, region).add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


class PutMediaSession:
    """One PutMedia request. Write MKV bytes with :meth:`write`; read :meth:`acks`.

    ``write`` applies backpressure: it waits while more than ``send_queue_bytes`` are
    queued for the socket. HTTP errors (404 for an unknown stream, 400
    ConnectionLimitExceeded, 403 for a bad signature) raise :class:`PutMediaError` with
    the service's error type from :meth:`acks` / :meth:`response` (and later writes).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: str,
        stream_name: str | None = None,
        *,
        stream_arn: str | None = None,
        timecode_type: str = "ABSOLUTE",
        producer_start_timestamp: float | None = None,
        credentials: Credentials | ReadOnlyCredentials | None = None,
        region: str = "us-east-1",
        send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES,
        connect_timeout: float = 10.0,
    ) -> None:
        if (stream_name is None) == (stream_arn is None):
            raise ValueError("give exactly one of stream_name and stream_arn")
        self._http = http
        self.url = endpoint.rstrip("/") + "/putMedia"
        start = time.time() if producer_start_timestamp is None else producer_start_timestamp
        headers = {
            "x-amzn-fragment-timecode-type": timecode_type,
            "x-amzn-producer-start-timestamp": f"{start:.3f}",
            "x-amzn-fragment-acknowledgment-required": "1",
        }
        if stream_name is not None:
            headers["x-amzn-stream-name"] = stream_name
        else:
            headers["x-amzn-stream-arn"] = str(stream_arn)
        if credentials is not None:
            headers = sign_request(self.url, headers, credentials, region)
        self._headers = headers
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queued_bytes = 0
        self._send_limit = send_queue_bytes
        self._drained = asyncio.Event()
        self._drained.set()
        self._connect_timeout = connect_timeout
        self._response: aiohttp.ClientResponse | None = None
        self._opening: asyncio.Future[aiohttp.ClientResponse] | None = None
        self._closed = False
        self.bytes_sent = 0

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self._queue.get()
            if chunk is _END:
                return
            self._queued_bytes -= len(chunk)
            if self._queued_bytes <= self._send_limit:
                self._drained.set()
            self.bytes_sent += len(chunk)
            yield chunk

    async def __aenter__(self) -> PutMediaSession:
        # aiohttp sends the request headers together with the first body chunk, so the
        # response cannot be awaited here: it is awaited by acks() and response().
        self._opening = asyncio.ensure_future(self._open())
        return self

    async def _open(self) -> aiohttp.ClientResponse:
        try:
            response = await asyncio.wait_for(
                self._http.post(self.url, data=self._body(), headers=self._headers, chunked=True),
                self._connect_timeout,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PutMediaError(f"PutMedia to {self.url} failed to connect: {exc!r}") from exc
        if response.status != 200:
            status = response.status
            error_type = response.headers.get("x-amzn-ErrorType", "").split(":")[0]
            text = (await response.text())[:500]
            response.close()
            raise PutMediaError(
                f"PutMedia answered HTTP {status} {error_type}: {text}",
                status=status,
                error_code=error_type or None,
            )
        self._response = response
        return response

    async def response(self) -> aiohttp.ClientResponse:
        """The HTTP 200 response (raises :class:`PutMediaError` for an HTTP error)."""
        if self._opening is None:
            raise PutMediaError("the upload was not started (use 'async with')")
        return await self._opening

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    async def write(self, data: bytes) -> None:
        """Queue MKV bytes for the upload, waiting while the send queue is full."""
        if self._closed:
            raise PutMediaError("write() after the upload was finished or aborted")
        if self._opening is not None and self._opening.done() and self._opening.exception():
            await self._opening  # raises the HTTP error
        if not data:
            return
        while self._queued_bytes > self._send_limit:
            self._drained.clear()
            await self._drained.wait()
        self._queued_bytes += len(data)
        self._queue.put_nowait(bytes(data))

    async def finish(self) -> None:
        """End the request body; acks still arrive until the service closes."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_END)

    def abort(self) -> None:
        """Drop the connection at once (what a network loss looks like to the service)."""
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        elif self._opening is not None and not self._opening.cancelled():
            self._opening.exception()  # retrieved: an HTTP error was already reported
        if self._response is not None:
            self._response.close()

    async def acks(self) -> AsyncIterator[Ack]:
        """Acknowledgements as they arrive, until the service ends the response."""
        response = await self.response()
        decoder = AckDecoder()
        try:
            async for chunk in response.content.iter_any():
                for ack in decoder.feed(chunk):
                    yield ack
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise PutMediaError(f"PutMedia connection lost: {exc!r}") from exc
        decoder.close()
