"""Group commit: a fragment the index refuses fails alone, never the others committed
with it (which may be other streams' uploads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvs_toolkit.emulator.store import FragmentMeta, Store
from kvs_toolkit.errors import EmulatorError


def test_a_refused_row_fails_only_its_own_fragment(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.create_stream("good", region="us-east-1", account_id="1", retention_hours=1)
        store.create_stream("bad", region="us-east-1", account_id="1", retention_hours=1)
        # Queued together, so the writer commits them as one group.
        futures = []
        for n in range(50):
            futures.append(store.submit_append("good", b"x" * 100, FragmentMeta(1_000 + n, 10)))
            if n == 25:
                # 2**70 does not fit SQLite's 64-bit INTEGER.
                futures.append(store.submit_append("bad", b"y", FragmentMeta(2**70, 10)))
        bad = futures.pop(26)
        assert all(f.result(timeout=30).stream_name == "good" for f in futures)
        with pytest.raises(EmulatorError, match="cannot index"):
            bad.result(timeout=30)
        assert store.count_fragments("good") == 50
        assert store.count_fragments("bad") == 0


def test_reserved_numbers_and_server_times_grow(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        stream = store.create_stream("s", region="us-east-1", account_id="1")
        reserved = [store.reserve_fragment_number(stream.stream_id, 5_000) for _ in range(5)]
        numbers = [n for n, _ in reserved]
        times = [t for _, t in reserved]
        assert numbers == sorted(set(numbers))
        assert times == sorted(set(times)) and times[0] >= 5_000
        record = store.append_fragment(
            "s", b"z", FragmentMeta(7, 1, server_timestamp_ms=times[2], fragment_number=numbers[2])
        )
        assert (record.fragment_number, record.server_timestamp_ms) == (numbers[2], times[2])
