"""Property: whatever a PutMedia body holds, the emulator answers with acks or an HTTP
error (never a 500, never a broken ack stream), its memory stays bounded, and a
well-formed upload on another stream at the same time loses nothing.

Against ``kvs emulator`` as a subprocess (its fixture fails the test if the emulator
logged a traceback). Bounded in time: a fixed number of examples, each one upload.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_toolkit.acks import AckEventType
from kvs_toolkit.mkv import Tag, ids
from kvs_toolkit.mkv.ebml import element, encode_id, encode_size, string_element
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, cluster, tags_element

from .process import (
    BASE_MS,
    VIDEO,
    EmulatorProcess,
    call,
    create_stream,
    frames,
    put_media,
    run_emulator,
    sdk_upload,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with run_emulator(tmp_path_factory.mktemp("property")) as process:
        # Many targets, so that the limit on refused uploads per stream (5/s after a
        # burst) rarely answers in the parser's place.
        for n in range(TARGETS):
            create_stream(process.url, f"target-{n}")
        create_stream(process.url, "steady")
        yield process


def _nested(depth: int) -> bytes:
    simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, "x"))
    for _ in range(depth - 1):
        simple = element(ids.SIMPLE_TAG, string_element(ids.TAG_NAME, "d") + simple)
    return element(ids.TAGS, element(ids.TAG, simple))


TARGETS = 30
STATUSES: list[int] = []
EDGE_TIMECODES = [0, 1, 2**15, 2**31, 2**53, 2**62, 2**63 - 1, 2**64 - 2]


@st.composite
def uploads(draw: st.DrawFn) -> list[bytes]:
    """A valid C-SDK-shaped upload, then one or two mutations."""
    count = draw(st.integers(1, 3))
    pieces = sdk_upload([frames(BASE_MS + 2000 * n, count=3, size=64) for n in range(count)])
    data = bytearray(b"".join(pieces))
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(
            st.sampled_from(
                ["truncate", "huge_size", "nesting", "timecode", "tag_flood", "flip", "splice"]
            )
        )
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            del data[at:]
        elif kind == "huge_size":
            element_id = draw(st.sampled_from([ids.TAGS, ids.VOID, ids.CLUSTER, 0x4DBB, 0xA3]))
            claim = draw(st.sampled_from([2**20, 45_000_000, 2**40, 2**56 - 2]))
            data[at:at] = encode_id(element_id) + encode_size(claim) + b"\x00" * 64
        elif kind == "nesting":
            data[at:at] = _nested(draw(st.sampled_from([9, 100, 5000])))
        elif kind == "timecode":
            timecode = draw(st.sampled_from(EDGE_TIMECODES))
            relative = draw(st.sampled_from([0, 32767]))
            block = FrameData(1, timecode + relative, b"\x01" * 16, keyframe=True)
            data += cluster(timecode, [block])
        elif kind == "tag_flood":
            tags = tags_element([Tag(f"k{i}", "v" * 20) for i in range(100)])
            data[at:at] = tags * draw(st.sampled_from([1, 5, 50]))
        elif kind == "flip" and data:
            index = min(at, len(data) - 1)
            data[index] ^= draw(st.integers(1, 255))
        elif kind == "splice":
            data[at:at] = MkvWriter([VIDEO]).header()
    size = draw(st.sampled_from([7, 4096, 65536]))
    return [bytes(data[i : i + size]) for i in range(0, len(data), size)]


def test_putmedia_never_breaks_and_costs_other_streams_nothing(emu: EmulatorProcess) -> None:
    rss_before = emu.rss_bytes()
    stop = threading.Event()
    steady: list[list[str]] = []
    failures: list[BaseException] = []

    def well_formed() -> None:
        n = 0
        try:
            while not stop.is_set():
                upload = sdk_upload([frames(BASE_MS + 2000 * (2 * n + k)) for k in range(2)])
                acks = put_media(emu.url, "steady", upload).acks()
                steady.append(
                    [a.event_type.value for a in acks if a.event_type != AckEventType.IDLE]
                )
                n += 1
        except BaseException as exc:  # reported below
            failures.append(exc)

    thread = threading.Thread(target=well_formed)
    thread.start()
    try:
        _mutated_uploads(emu)
    finally:
        stop.set()
        thread.join(60)
    assert not failures, failures
    # The parser, not the refusal limit, answered most of them.
    assert STATUSES.count(200) > len(STATUSES) // 2, STATUSES
    assert steady and all(k == ["BUFFERING", "RECEIVED", "PERSISTED"] * 2 for k in steady)
    listed = call(emu.url, "/listFragments", {"StreamName": "steady", "MaxResults": 1000})
    assert len(listed.json()["Fragments"]) == 2 * len(steady)
    assert emu.rss_bytes() - rss_before < 150_000_000


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(upload=uploads(), target=st.integers(0, TARGETS - 1))
def _check_one(emu: EmulatorProcess, upload: list[bytes], target: int) -> None:
    reply = put_media(emu.url, f"target-{target}", upload)
    STATUSES.append(reply.status)
    assert reply.status == 200 or 400 <= reply.status < 500, (reply.status, reply.body[:300])
    if reply.status == 200:
        for ack in reply.acks():  # JSON objects to the end, nothing else
            assert ack.event_type in set(AckEventType)
    else:
        assert reply.headers.get("x-amzn-errortype"), reply.headers


def _mutated_uploads(emu: EmulatorProcess) -> None:
    _check_one(emu)
