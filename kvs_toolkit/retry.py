"""Retry and rate policies shared by every client: one back-off, one token bucket.

Both are pure: they compute delays and admit calls from the numbers and the clock
they are given, and never sleep or do I/O on their own (:meth:`TokenBucket.acquire`
sleeps through the injected ``sleep``). Tests drive them with a fake clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["DEFAULT_MAX_ATTEMPTS", "RetryPolicy", "TokenBucket"]

#: Attempts at an unreachable endpoint before a command gives up: 5 attempts wait about
#: 0.25 + 0.5 + 1 + 2 s with the default back-off, so a dead endpoint is reported in a
#: few seconds rather than hanging, and a restart of a local emulator is ridden out.
DEFAULT_MAX_ATTEMPTS: Final = 5


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off with "equal jitter".

    Attempt ``n`` (1-based, the attempt that just failed) waits between half and all of
    ``min(max_s, base_s * 2**(n-1))``: never zero, and never in step with other clients
    that failed at the same moment. ``max_attempts`` counts every attempt, the first
    included; ``None`` retries without end (live reading, when the user asks for it).
    """

    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    base_s: float = 0.5
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if not (self.base_s > 0 and self.max_s >= self.base_s):
            raise ValueError("need 0 < base_s <= max_s")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** max(0, attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def gives_up_after(self, attempt: int) -> bool:
        """True when attempt number ``attempt`` was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def describe(self, attempt: int) -> str:
        """``attempt 2/5`` (or ``attempt 2`` without a bound), for progress messages."""
        if self.max_attempts is None:
            return f"attempt {attempt}"
        return f"attempt {attempt}/{self.max_attempts}"


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts of up to ``burst``.

    Thread-safe. :meth:`try_acquire` admits or refuses at once (a server's rate limit);
    :meth:`acquire` waits for a token (a client's cap). ``clock`` and ``sleep`` are
    injectable for tests.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self) -> bool:
        """Take a token if one is there now; never waits."""
        with self._lock:
            self._refill()
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def acquire(self) -> float:
        """Take a token, waiting for one if needed; return the seconds waited."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
