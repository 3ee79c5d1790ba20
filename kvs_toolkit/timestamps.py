"""Epoch seconds, the one time unit of every JSON record and checkpoint."""

from __future__ import annotations

import datetime as dt
import time
from typing import Final

__all__ = ["EPOCH", "epoch_seconds", "now_ms"]

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_seconds(value: dt.datetime | None, digits: int | None = 6) -> float | None:
    """``value`` (timezone-aware) as seconds since the epoch, rounded to ``digits``
    (microseconds by default; None: not rounded); None stays None."""
    if value is None:
        return None
    seconds = (value - EPOCH) / dt.timedelta(seconds=1)
    return seconds if digits is None else round(seconds, digits)


def now_ms() -> int:
    """The wall clock in epoch milliseconds (the unit of KVS timecodes)."""
    return time.time_ns() // 1_000_000
