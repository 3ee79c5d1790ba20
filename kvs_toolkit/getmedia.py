"""Reading GetMedia and GetMediaForFragmentList responses as fragments (thin I/O layer).

botocore's ``StreamingBody.iter_chunks(n)`` waits until ``n`` bytes have arrived, so a
live stream whose next fragment has not been produced yet would hold back a fragment
that is already complete. :func:`iter_payload` reads whatever has arrived instead
(``read1`` on the underlying urllib3 response), so each fragment is handed out as soon
as its last byte is in.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Final

from kvs_toolkit.mkv import Fragment, FragmentReader

_CHUNK: Final = 64 * 1024


def iter_payload(payload: Any, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """Chunks of a botocore ``StreamingBody`` (or any binary stream) as they arrive."""
    raw = getattr(payload, "_raw_stream", payload)
    read = getattr(raw, "read1", None) or raw.read
    while True:
        chunk = read(chunk_size)
        if not chunk:
            return
        yield chunk


def interrupt(payload: Any) -> None:
    """Unblock a read of ``payload`` that another thread is waiting in.

    Closing a response from another thread blocks until that read returns (http.client
    holds the stream's lock); shutting the connection down ends the read at once, and
    the reading thread then closes the payload itself. urllib3 >= 2.3 has
    ``HTTPResponse.shutdown()``; before that the socket is shut down directly. Best
    effort: failing both, the read timeout ends the read.
    """
    raw = getattr(payload, "_raw_stream", payload)
    with contextlib.suppress(OSError):
        shutdown = getattr(raw, "shutdown", None)
        if callable(shutdown):
            shutdown()
            return
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)


def iter_fragments(payload: Any, *, keep_truncated: bool = False) -> Iterator[Fragment]:
    """Fragments of a GetMedia-shaped response body, each as soon as it is complete."""
    reader = FragmentReader()
    for chunk in iter_payload(payload):
        yield from reader.feed(chunk)
    yield from reader.close(keep_truncated=keep_truncated)
