"""Stop a live reader after a while without a new fragment (``--idle-exit``)."""

from __future__ import annotations

import logging
import threading
import time

from kvs_toolkit.consumer.readers import FragmentSource

__all__ = ["IdleWatch", "stop_when_idle"]

log = logging.getLogger(__name__)


class IdleWatch:
    """Stops ``source`` once no fragment arrived for ``seconds``; :meth:`cancel` ends
    the watch. Polls the reader's fragment count (a few times per ``seconds``, at most
    every 0.1 s) in a daemon thread."""

    def __init__(self, source: FragmentSource, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, not {seconds}")
        self.source = source
        self.seconds = seconds
        self.fired = False
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvs-idle-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = self.source.stats.fragments
        last_change = time.monotonic()
        while not self._cancel.wait(min(0.1, self.seconds / 4)):
            count = self.source.stats.fragments
            now = time.monotonic()
            if count != seen:
                seen, last_change = count, now
            elif now - last_change >= self.seconds:
                log.info("no new fragment for %.1f s: stopping (idle exit)", self.seconds)
                self.fired = True
                self.source.stop()
                return

    def cancel(self) -> None:
        self._cancel.set()
        self._thread.join()


def stop_when_idle(source: FragmentSource, seconds: float) -> IdleWatch:
    """Start an :class:`IdleWatch` on ``source``."""
    return IdleWatch(source, seconds)
