"""The emulator store for an event loop: :class:`AsyncStore`, the same API as
:class:`~kvs_toolkit.emulator.store.Store`, awaitable."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from kvs_toolkit.emulator.records import (
    FragmentMeta,
    FragmentPage,
    FragmentRecord,
    StreamRecord,
    StreamStatus,
    TimestampType,
)

if TYPE_CHECKING:
    from kvs_toolkit.emulator.store import Store

__all__ = ["AsyncStore"]

T = TypeVar("T")


class AsyncStore:
    """:class:`Store` for an event loop: the same methods, awaitable.

    Writes go to the store's writer thread and are awaited without blocking the loop;
    reads run on a small thread pool. ``sync`` is the underlying blocking store, safe to
    use from any thread.
    """

    def __init__(self, store: Store, *, read_threads: int = 4) -> None:
        self.sync = store
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=read_threads, thread_name_prefix="kvs-store-read"
        )

    def close(self) -> None:
        """Stop the read pool and close the underlying store."""
        self._pool.shutdown(wait=True)
        self.sync.close()

    async def _in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def append_fragment(
        self, stream_name: str, payload: bytes, meta: FragmentMeta
    ) -> FragmentRecord:
        """Persist a fragment; returns once it is durable (see :meth:`Store.append_fragment`)."""
        return await asyncio.wrap_future(self.sync.submit_append(stream_name, payload, meta))

    async def create_stream(
        self,
        name: str,
        *,
        region: str,
        account_id: str,
        retention_hours: int = 0,
        kms_key_id: str | None = None,
        media_type: str | None = None,
        device_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        status: StreamStatus = "ACTIVE",
    ) -> StreamRecord:
        return await self._in_pool(
            self.sync.create_stream,
            name,
            region=region,
            account_id=account_id,
            retention_hours=retention_hours,
            kms_key_id=kms_key_id,
            media_type=media_type,
            device_name=device_name,
            tags=tags,
            status=status,
        )

    async def update_stream(
        self,
        name: str,
        current_version: str,
        *,
        device_name: str | None = None,
        media_type: str | None = None,
    ) -> StreamRecord:
        return await self._in_pool(
            self.sync.update_stream,
            name,
            current_version,
            device_name=device_name,
            media_type=media_type,
        )

    async def change_retention(
        self, name: str, current_version: str, delta_hours: int
    ) -> StreamRecord:
        return await self._in_pool(self.sync.change_retention, name, current_version, delta_hours)

    async def set_status(self, name: str, status: StreamStatus) -> StreamRecord:
        return await self._in_pool(self.sync.set_status, name, status)

    async def tag_stream(self, name: str, tags: Mapping[str, str]) -> StreamRecord:
        return await self._in_pool(self.sync.tag_stream, name, tags)

    async def untag_stream(self, name: str, keys: Sequence[str]) -> StreamRecord:
        return await self._in_pool(self.sync.untag_stream, name, keys)

    async def begin_delete(self, name: str, current_version: str | None = None) -> StreamRecord:
        return await self._in_pool(self.sync.begin_delete, name, current_version)

    async def purge_stream(self, stream_id: int) -> None:
        await self._in_pool(self.sync.purge_stream, stream_id)

    async def purge_expired(self, now_ms: int | None = None) -> int:
        return await self._in_pool(self.sync.purge_expired, now_ms)

    async def get_stream(self, name: str) -> StreamRecord:
        return await self._in_pool(self.sync.get_stream, name)

    async def get_stream_by_arn(self, arn: str) -> StreamRecord:
        return await self._in_pool(self.sync.get_stream_by_arn, arn)

    async def list_streams(
        self, *, prefix: str | None = None, after_name: str | None = None, limit: int = 10000
    ) -> tuple[list[StreamRecord], bool]:
        return await self._in_pool(
            self.sync.list_streams, prefix=prefix, after_name=after_name, limit=limit
        )

    async def get_fragment(self, stream_name: str, fragment_number: str) -> FragmentRecord | None:
        return await self._in_pool(self.sync.get_fragment, stream_name, fragment_number)

    async def get_fragments(
        self, stream_name: str, fragment_numbers: Sequence[str]
    ) -> list[FragmentRecord]:
        return await self._in_pool(self.sync.get_fragments, stream_name, fragment_numbers)

    async def list_fragments(
        self,
        stream_name: str,
        *,
        timestamp_type: TimestampType | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after_fragment_number: str | None = None,
        limit: int = 1000,
    ) -> FragmentPage:
        return await self._in_pool(
            self.sync.list_fragments,
            stream_name,
            timestamp_type=timestamp_type,
            start_ms=start_ms,
            end_ms=end_ms,
            after_fragment_number=after_fragment_number,
            limit=limit,
        )

    async def fragments_after(
        self, stream_name: str, fragment_number: str | None, limit: int = 100
    ) -> list[FragmentRecord]:
        return await self._in_pool(self.sync.fragments_after, stream_name, fragment_number, limit)

    async def count_fragments(self, stream_name: str) -> int:
        return await self._in_pool(self.sync.count_fragments, stream_name)

    async def earliest_fragment(self, stream_name: str) -> FragmentRecord | None:
        return await self._in_pool(self.sync.earliest_fragment, stream_name)

    async def latest_fragment(self, stream_name: str) -> FragmentRecord | None:
        return await self._in_pool(self.sync.latest_fragment, stream_name)

    async def first_fragment_at_or_after(
        self, stream_name: str, timestamp_type: TimestampType, timestamp_ms: int
    ) -> FragmentRecord | None:
        return await self._in_pool(
            self.sync.first_fragment_at_or_after, stream_name, timestamp_type, timestamp_ms
        )

    async def read_payload(self, record: FragmentRecord) -> bytes:
        return await self._in_pool(self.sync.read_payload, record)
