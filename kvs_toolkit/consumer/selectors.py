"""Where a read starts: :class:`StartSelector` (GetMedia's StartSelector) and the
timestamps users type (:func:`parse_timestamp`). Standard library only, so command-line
parsing needs nothing heavy."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kvs_toolkit.timestamps import EPOCH

if TYPE_CHECKING:
    from kvs_toolkit.consumer.checkpoint import Checkpoint

__all__ = ["StartSelector", "TimestampType", "parse_timestamp"]

TimestampType = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]


def parse_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 time (``2024-05-01T12:00:00Z``; no zone means UTC) or epoch seconds."""
    value = text.strip()
    try:
        return EPOCH + dt.timedelta(seconds=float(value))
    except ValueError:
        pass
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor epoch seconds") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


SelectorKind = Literal[
    "NOW",
    "EARLIEST",
    "FRAGMENT_NUMBER",
    "SERVER_TIMESTAMP",
    "PRODUCER_TIMESTAMP",
    "CONTINUATION_TOKEN",
]


@dataclass(frozen=True, slots=True)
class StartSelector:
    """Where GetMedia starts (the API's StartSelector).

    ``value`` is the fragment number (FRAGMENT_NUMBER: start *after* it) or the
    continuation token; ``timestamp`` the start of SERVER/PRODUCER_TIMESTAMP.
    """

    kind: SelectorKind
    value: str | None = None
    timestamp: dt.datetime | None = None

    @classmethod
    def now(cls) -> StartSelector:
        return cls("NOW")

    @classmethod
    def earliest(cls) -> StartSelector:
        return cls("EARLIEST")

    @classmethod
    def after_fragment(cls, fragment_number: str) -> StartSelector:
        return cls("FRAGMENT_NUMBER", value=fragment_number)

    @classmethod
    def continuation(cls, token: str) -> StartSelector:
        return cls("CONTINUATION_TOKEN", value=token)

    @classmethod
    def server_timestamp(cls, when: dt.datetime) -> StartSelector:
        return cls("SERVER_TIMESTAMP", timestamp=when)

    @classmethod
    def producer_timestamp(cls, when: dt.datetime) -> StartSelector:
        return cls("PRODUCER_TIMESTAMP", timestamp=when)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> StartSelector:
        """Right after the checkpoint's fragment."""
        if checkpoint.continuation_token:
            return cls.continuation(checkpoint.continuation_token)
        return cls.after_fragment(checkpoint.fragment_number)

    @classmethod
    def parse(cls, text: str) -> StartSelector:
        """``now``, ``earliest``, ``fragment:N``, ``producer:TIME``, ``server:TIME`` or
        ``token:TOKEN`` (TIME: ISO 8601 or epoch seconds)."""
        kind, sep, rest = text.strip().partition(":")
        kind = kind.lower()
        if not sep and kind in ("now", "earliest"):
            return cls.now() if kind == "now" else cls.earliest()
        if sep and rest:
            if kind == "fragment":
                return cls.after_fragment(rest)
            if kind == "token":
                return cls.continuation(rest)
            if kind in ("producer", "server"):
                when = parse_timestamp(rest)
                if kind == "producer":
                    return cls.producer_timestamp(when)
                return cls.server_timestamp(when)
        raise ValueError(
            f"invalid start {text!r}: use now, earliest, fragment:N, producer:TIME, "
            "server:TIME or token:TOKEN"
        )

    def to_api(self) -> dict[str, Any]:
        """The StartSelector structure of the GetMedia request."""
        selector: dict[str, Any] = {"StartSelectorType": self.kind}
        if self.kind == "FRAGMENT_NUMBER":
            selector["AfterFragmentNumber"] = self.value
        elif self.kind == "CONTINUATION_TOKEN":
            selector["ContinuationToken"] = self.value
        elif self.kind in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
            selector["StartTimestamp"] = self.timestamp
        return selector

    def spec(self) -> str:
        """The text :meth:`parse` reads back into this selector (``fragment:N``, ...)."""
        prefix = {
            "FRAGMENT_NUMBER": "fragment",
            "CONTINUATION_TOKEN": "token",
            "PRODUCER_TIMESTAMP": "producer",
            "SERVER_TIMESTAMP": "server",
        }.get(self.kind)
        if prefix is None:
            return self.kind.lower()  # now, earliest
        if self.timestamp is not None:
            return f"{prefix}:{self.timestamp.isoformat()}"
        return f"{prefix}:{self.value}"

    def __str__(self) -> str:
        if self.value is not None:
            return f"{self.kind} {self.value}"
        if self.timestamp is not None:
            return f"{self.kind} {self.timestamp.isoformat()}"
        return self.kind


# --- stats, back-off, the protocol ---------------------------------------------------------
