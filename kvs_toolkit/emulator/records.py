"""The emulator store's records: what the index holds about streams and fragments,
fragment-number keys and pagination tokens. Plain values, no I/O."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kvs_toolkit.emulator.errors import InvalidArgumentError

__all__ = [
    "FRAGMENT_NUMBER_DIGITS",
    "FragmentMeta",
    "FragmentPage",
    "FragmentRecord",
    "StreamRecord",
    "StreamStatus",
    "TimestampType",
    "decode_fragment_token",
    "decode_token",
    "encode_token",
    "fragment_number_key",
]

StreamStatus = Literal["CREATING", "ACTIVE", "UPDATING", "DELETING"]
TimestampType = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]

FRAGMENT_NUMBER_DIGITS = 47


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One stream as the index holds it."""

    stream_id: int
    name: str
    arn: str
    version: str
    status: StreamStatus
    creation_time_ms: int
    retention_hours: int
    kms_key_id: str
    media_type: str | None
    device_name: str | None
    tags: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class FragmentMeta:
    """What the caller of :meth:`Store.append_fragment` knows about a fragment.

    ``server_timestamp_ms`` defaults to the time the fragment is persisted; a PutMedia
    handler may pass the time the fragment arrived instead. ``size`` is the
    FragmentSizeInBytes reported by ListFragments (default: the payload length).
    ``tags`` are the fragment's metadata items in order (name, value).
    ``fragment_number``: one from :meth:`Store.reserve_fragment_number` (PutMedia
    reserves it when the fragment's first byte arrives, to put it in BUFFERING and
    RECEIVED acks); default: assigned at commit.
    """

    producer_timestamp_ms: int
    duration_ms: int
    server_timestamp_ms: int | None = None
    size: int | None = None
    tags: tuple[tuple[str, str], ...] = ()
    fragment_number: str | None = None


@dataclass(frozen=True, slots=True)
class FragmentRecord:
    """One persisted fragment. ``path`` is relative to the data directory."""

    stream_id: int
    stream_name: str
    fragment_number: str
    producer_timestamp_ms: int
    server_timestamp_ms: int
    duration_ms: int
    size: int
    path: str
    offset: int
    length: int
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FragmentPage:
    """A page of fragments in fragment-number order; ``next_token`` is None on the last."""

    fragments: tuple[FragmentRecord, ...]
    next_token: str | None


def fragment_number_key(number: str) -> str:
    """A fragment number as a fixed-width string that compares like the number.

    Numbers from clients may have any width; ours always have 47 digits.
    """
    if not number.isdigit() or not number.isascii():
        raise InvalidArgumentError(f"fragment number {number!r} is not a decimal number")
    stripped = number.lstrip("0") or "0"
    if len(stripped) > FRAGMENT_NUMBER_DIGITS:
        return "9" * FRAGMENT_NUMBER_DIGITS + "+"  # sorts after every stored number
    return stripped.rjust(FRAGMENT_NUMBER_DIGITS, "0")


def encode_token(payload: Mapping[str, Any]) -> str:
    """An opaque pagination token (standard base64, as the models' NextToken patterns)."""
    return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(token: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.b64decode(token.encode("ascii"), validate=True))
    except (ValueError, UnicodeError) as exc:
        raise InvalidArgumentError("NextToken is not valid") from exc
    if not isinstance(value, dict):
        raise InvalidArgumentError("NextToken is not valid")
    return value


def decode_fragment_token(token: str) -> str:
    """The fragment number a :class:`FragmentPage` ``next_token`` continues after."""
    after = decode_token(token).get("after")
    if not isinstance(after, str) or not after.isdigit():
        raise InvalidArgumentError("NextToken is not valid")
    return after
