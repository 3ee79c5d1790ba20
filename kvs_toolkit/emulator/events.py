"""Per-stream notification of newly persisted fragments, for readers on the event loop.

A GetMedia handler reads what the store has, then waits here for the next fragment::

    record = await emu.events.wait_for_fragment(stream, after=last_number, timeout=3.0)
    if record is None:  # timed out, or the stream was deleted: check, then loop

There is no lost-wakeup race: the latest fragment of each stream is remembered, so a
fragment committed between the handler's query and its wait returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from kvs_toolkit.emulator.store import FragmentRecord, fragment_number_key

__all__ = ["StreamEvents"]


class StreamEvents:
    """Wake waiters when a stream gets a new persisted fragment. Use on one event loop."""

    def __init__(self) -> None:
        self._latest: dict[str, FragmentRecord] = {}
        self._waiters: dict[str, set[asyncio.Future[FragmentRecord | None]]] = {}

    def notify(self, record: FragmentRecord) -> None:
        """Record a newly persisted fragment and wake the stream's waiters (loop thread)."""
        latest = self._latest.get(record.stream_name)
        if latest is None or record.fragment_number > latest.fragment_number:
            self._latest[record.stream_name] = record
        for waiter in self._waiters.pop(record.stream_name, set()):
            if not waiter.done():
                waiter.set_result(record)

    def notify_deleted(self, stream_name: str) -> None:
        """The stream is gone: forget it and wake its waiters with ``None``."""
        self._latest.pop(stream_name, None)
        for waiter in self._waiters.pop(stream_name, set()):
            if not waiter.done():
                waiter.set_result(None)

    def latest(self, stream_name: str) -> FragmentRecord | None:
        """The newest fragment notified for the stream since the server started."""
        return self._latest.get(stream_name)

    async def wait_for_fragment(
        self, stream_name: str, *, after: str | None = None, timeout: float | None = None
    ) -> FragmentRecord | None:
        """Wait for a fragment newer than fragment number ``after`` (any, when None).

        Returns the newest such fragment known (fetch everything after ``after`` from
        the store: several may have arrived), or ``None`` on timeout or deletion.
        """
        after_key = None if after is None else fragment_number_key(after)
        latest = self._latest.get(stream_name)
        if latest is not None and (after_key is None or latest.fragment_number > after_key):
            return latest
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            waiter: asyncio.Future[FragmentRecord | None] = loop.create_future()
            self._waiters.setdefault(stream_name, set()).add(waiter)
            try:
                record = await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return None
            finally:
                waiters = self._waiters.get(stream_name)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        with contextlib.suppress(KeyError):
                            del self._waiters[stream_name]
            if record is None or after_key is None or record.fragment_number > after_key:
                return record
            # Not newer than asked for (notifications can trail the store): wait again.
