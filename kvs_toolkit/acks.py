"""PutMedia acknowledgements: the wire type and a sans-I/O decoder.

The service answers a PutMedia request with HTTP 200 and then, on the same connection
while the upload goes on, a stream of JSON objects (docs/kvs-wire.md "PutMedia acknowledgements")::

    {"EventType":"PERSISTED","FragmentTimecode":1595833960258,"FragmentNumber":"9134..."}

The documentation says they are newline-separated; the C producer SDK finds them by
matching braces. :class:`AckDecoder` accepts both, in any chunking.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final

from kvs_toolkit.errors import PutMediaError


class AckEventType(str, enum.Enum):
    BUFFERING = "BUFFERING"
    RECEIVED = "RECEIVED"
    PERSISTED = "PERSISTED"
    ERROR = "ERROR"
    IDLE = "IDLE"


# ErrorId -> ErrorCode, from the PutMedia API reference; the names are the ones the C
# producer SDK (PIC) gives these results.
ERROR_CODES: Final[dict[int, str]] = {
    4000: "STREAM_READ_ERROR",
    4001: "MAX_FRAGMENT_SIZE_REACHED",
    4002: "MAX_FRAGMENT_DURATION_REACHED",
    4003: "MAX_CONNECTION_DURATION_REACHED",
    4004: "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
    4005: "MORE_THAN_ALLOWED_TRACKS_FOUND",
    4006: "INVALID_MKV_DATA",
    4007: "INVALID_PRODUCER_TIMESTAMP",
    4008: "STREAM_NOT_ACTIVE",
    4009: "FRAGMENT_METADATA_LIMIT_REACHED",
    4010: "TRACK_NUMBER_MISMATCH",
    4011: "FRAMES_MISSING_FOR_TRACK",
    4012: "MORE_THAN_ALLOWED_TRACKS_FOUND",
    4500: "KMS_KEY_ACCESS_DENIED",
    4501: "KMS_KEY_DISABLED",
    4502: "KMS_KEY_VALIDATION_ERROR",
    4503: "KMS_KEY_UNAVAILABLE",
    4504: "KMS_KEY_INVALID_USAGE",
    4505: "KMS_KEY_INVALID_STATE",
    4506: "KMS_KEY_NOT_FOUND",
    5000: "INTERNAL_ERROR",
    5001: "ARCHIVAL_ERROR",
}
# The C producer SDK retries these (re-sends the fragment) and skips the fragment on
# the others.
RETRIABLE_ERROR_IDS: Final = frozenset({4000, 4003, 5000, 5001})

# An acknowledgement is well under 1 KiB; a "JSON object" larger than this is garbage.
MAX_ACK_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement event."""

    event_type: AckEventType
    fragment_timecode: int | None = None
    fragment_number: str | None = None
    error_id: int | None = None
    error_code: str | None = None

    @property
    def retriable(self) -> bool:
        return self.error_id in RETRIABLE_ERROR_IDS

    @classmethod
    def error(cls, error_id: int, fragment_timecode: int | None = None) -> Ack:
        return cls(
            AckEventType.ERROR,
            fragment_timecode,
            None,
            error_id,
            ERROR_CODES.get(error_id, "UNKNOWN"),
        )

    @classmethod
    def parse(cls, data: bytes | str) -> Ack:
        """Parse one JSON acknowledgement; raises :class:`PutMediaError` if malformed."""
        try:
            obj: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PutMediaError(f"malformed acknowledgement {data[:80]!r}: {exc}") from exc
        if not isinstance(obj, dict):
            raise PutMediaError(f"acknowledgement is not a JSON object: {data[:80]!r}")
        if isinstance(obj.get("Acknowledgement"), dict):  # the shape in the API reference
            obj = obj["Acknowledgement"]
        try:
            event_type = AckEventType(obj.get("EventType"))
        except ValueError as exc:
            raise PutMediaError(
                f"unknown acknowledgement EventType {obj.get('EventType')!r}"
            ) from exc
        timecode = obj.get("FragmentTimecode")
        number = obj.get("FragmentNumber")
        error_id = obj.get("ErrorId")
        try:
            return cls(
                event_type,
                None if timecode is None else int(timecode),
                None if number is None else str(number),
                None if error_id is None else int(error_id),
                None if obj.get("ErrorCode") is None else str(obj["ErrorCode"]),
            )
        except (TypeError, ValueError) as exc:
            raise PutMediaError(f"malformed acknowledgement field in {data[:80]!r}") from exc

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"EventType": self.event_type.value}
        if self.fragment_timecode is not None:
            doc["FragmentTimecode"] = self.fragment_timecode
        if self.fragment_number is not None:
            doc["FragmentNumber"] = self.fragment_number
        if self.error_id is not None:
            doc["ErrorId"] = self.error_id
        if self.error_code is not None:
            doc["ErrorCode"] = self.error_code
        return doc

    def __bytes__(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode() + b"\n"


class AckDecoder:
    """Incremental decoder: ``feed(bytes) -> list[Ack]``, then ``close()`` at the end.

    Scans each byte once (the scan position survives between calls), tracks string
    literals so braces inside strings do not count, and refuses an object over
    :data:`MAX_ACK_BYTES` instead of buffering it.
    """

    def __init__(self, *, max_ack_bytes: int = MAX_ACK_BYTES) -> None:
        self.max_ack_bytes = max_ack_bytes
        self._buf = bytearray()
        self._scan = 0  # next byte to look at
        self._start = -1  # start of the current object, -1 between objects
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Ack]:
        self._buf += data
        acks: list[Ack] = []
        buf = self._buf
        i = self._scan
        end = len(buf)
        while i < end:
            if self._start < 0:
                # Between objects: skip whitespace/newlines up to the next '{'.
                brace = buf.find(b"{", i)
                junk = bytes(buf[i : end if brace < 0 else brace]).strip()
                if junk:
                    raise PutMediaError(f"unexpected bytes between acknowledgements: {junk[:40]!r}")
                if brace < 0:
                    i = end
                    break
                self._start = brace
                self._depth = 0
                i = brace
            byte = buf[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # closing quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte == 0x7B:  # {
                self._depth += 1
            elif byte == 0x7D:  # }
                self._depth -= 1
                if self._depth == 0:
                    acks.append(Ack.parse(bytes(buf[self._start : i + 1])))
                    self._start = -1
            i += 1
            if self._start >= 0 and i - self._start > self.max_ack_bytes:
                raise PutMediaError(
                    f"acknowledgement larger than {self.max_ack_bytes} bytes: not an ack stream"
                )
        keep_from = self._start if self._start >= 0 else i
        del buf[:keep_from]
        self._scan = i - keep_from
        self._start = min(0, self._start)
        return acks

    def close(self) -> None:
        """End of the response: an acknowledgement cut off in the middle is an error."""
        if self._start >= 0:
            raise PutMediaError("the acknowledgement stream ended inside an acknowledgement")
