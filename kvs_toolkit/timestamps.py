"""Epoch seconds, the one time unit of every JSON record and checkpoint."""

from __future__ import annotations

import datetime as dt
from typing import Final

__all__ = ["EPOCH", "epoch_seconds"]

EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_seconds(value: dt.datetime | None, digits: int | None = 6) -> float | None:
    """``value`` (timezone-aware) as seconds since the epoch, rounded to ``digits``
    (microseconds by default; None: not rounded); None stays None."""
    if value is None:
        return None
    seconds = (value - EPOCH) / dt.timedelta(seconds=1)
    return seconds if digits is None else round(seconds, digits)
