"""What the official AWS C producer SDK does, reproduced with raw HTTP against the
emulator run as a subprocess (``kvs emulator``): a Host header without the port,
streaming-token rotation that overlaps two PutMedia connections, fragment metadata and
AWS_KINESISVIDEO_END_OF_FRAGMENT after the last Cluster, and acks matched by number.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.mkv import Fragment, FragmentReader, Tag
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import MkvWriter, cluster, tags_element
from kvs_toolkit.putmedia import PutMediaSession

from .conftest import ACCESS_KEY, SECRET, ClientFactory
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


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    data_dir = tmp_path_factory.mktemp("official")
    with run_emulator(data_dir, "--verify-sigv4", f"{ACCESS_KEY}:{SECRET}") as process:
        yield process


def kinds(acks: list[Ack]) -> list[str]:
    return [
        f"ERROR {a.error_id}" if a.event_type == AckEventType.ERROR else a.event_type.value
        for a in acks
        if a.event_type != AckEventType.IDLE
    ]


def stored_fragments(archived: Any, stream: str, numbers: list[str]) -> list[Fragment]:
    body = archived.get_media_for_fragment_list(StreamName=stream, Fragments=numbers)["Payload"]
    reader = FragmentReader()
    out = reader.feed(body.read())
    return out + reader.close()


def wait_for_fragments(url: str, stream: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = call(url, "/listFragments", {"StreamName": stream}, sign=True)
        if len(reply.json().get("Fragments", ())) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{stream} never had {count} fragment(s)")


def test_host_without_port_gets_a_reachable_data_endpoint(emu: EmulatorProcess) -> None:
    # The C SDK signs and sends "Host: 127.0.0.1" while connecting to the real port.
    create_stream(emu.url, "c-sdk", sign=True, host="127.0.0.1")
    reply = call(
        emu.url, "/getDataEndpoint", {"StreamName": "c-sdk", "APIName": "PUT_MEDIA"},
        sign=True, host="127.0.0.1",
    )  # fmt: skip
    assert reply.status == 200, reply.body
    endpoint = reply.json()["DataEndpoint"]
    assert endpoint == emu.url
    # ... and PutMedia to that endpoint, with the same port-less Host, stores fragments.
    upload = sdk_upload([frames(BASE_MS), frames(BASE_MS + 2000)])
    acks = put_media(endpoint, "c-sdk", upload, sign=True, host="127.0.0.1").acks()
    assert kinds(acks).count("PERSISTED") == 2


def test_advertised_url_option(tmp_path: Path) -> None:
    with run_emulator(tmp_path, "--advertised-url", "http://kvs.example:1234") as process:
        create_stream(process.url, "adv")
        reply = call(process.url, "/getDataEndpoint", {"StreamName": "adv", "APIName": "GET_HLS_STREAMING_SESSION_URL"})  # fmt: skip  # noqa: E501
        assert reply.json()["DataEndpoint"] == "http://kvs.example:1234"


def test_acks_carry_the_fragment_number_from_buffering_on(emu: EmulatorProcess) -> None:
    create_stream(emu.url, "numbers", sign=True)
    upload = sdk_upload([frames(BASE_MS + 2000 * n) for n in range(3)])
    acks = put_media(emu.url, "numbers", upload, sign=True).acks()
    by_timecode: dict[int, dict[str, str | None]] = {}
    for ack in acks:
        if ack.fragment_timecode is not None and ack.event_type != AckEventType.IDLE:
            by_timecode.setdefault(ack.fragment_timecode, {})[ack.event_type.value] = (
                ack.fragment_number
            )
    assert len(by_timecode) == 3
    for events in by_timecode.values():
        assert set(events) == {"BUFFERING", "RECEIVED", "PERSISTED"}
        assert events["BUFFERING"] is not None
        assert events["BUFFERING"] == events["RECEIVED"] == events["PERSISTED"]


def test_rotation_overlaps_two_putmedia_connections(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    """A second PutMedia while the first awaits its acks: both complete, every fragment
    PERSISTED exactly once, in order."""
    create_stream(emu.url, "rotate", sign=True)
    first_sent = threading.Event()
    second_done = threading.Event()
    first_reply: list[Any] = []

    def first_body() -> Iterator[bytes]:
        pieces = sdk_upload([frames(BASE_MS), frames(BASE_MS + 2000)])
        yield from pieces[:-1]
        first_sent.set()
        # Token rotation: the SDK keeps this connection open for its last acks.
        second_done.wait(30)
        yield pieces[-1]

    def first() -> None:
        first_reply.append(put_media(emu.url, "rotate", first_body(), sign=True))

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_sent.wait(30)
        # The first fragment is stored (so the first connection's bytes have arrived)
        # while the first connection still waits for the rest of its acks.
        wait_for_fragments(emu.url, "rotate", 1)
        second = put_media(
            emu.url, "rotate", sdk_upload([frames(BASE_MS + 4000), frames(BASE_MS + 6000)]),
            sign=True,
        )  # fmt: skip
    finally:
        second_done.set()
        thread.join(30)
    assert second.status == 200, second.body
    first_acks = first_reply[0].acks()
    persisted = [a for a in first_acks + second.acks() if a.event_type == AckEventType.PERSISTED]
    assert sorted(a.fragment_timecode or 0 for a in persisted) == [
        BASE_MS, BASE_MS + 2000, BASE_MS + 4000, BASE_MS + 6000,
    ]  # fmt: skip
    kv = make_client("kinesis-video-archived-media", emu.url)
    listed = kv.list_fragments(StreamName="rotate")["Fragments"]
    listed.sort(key=lambda f: f["FragmentNumber"])
    assert [f["FragmentNumber"] for f in listed] == sorted(
        a.fragment_number or "" for a in persisted
    )
    producer = [f["ProducerTimestamp"].timestamp() for f in listed]
    assert producer == sorted(producer)


def test_tags_after_the_last_cluster_belong_to_the_fragment_they_close(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    create_stream(emu.url, "closing", sign=True)
    upload = sdk_upload(
        [frames(BASE_MS), frames(BASE_MS + 2000)], closing_tags=[Tag("camera", "front door")]
    )
    acks = put_media(emu.url, "closing", upload, sign=True).acks()
    numbers = [a.fragment_number or "" for a in acks if a.event_type == AckEventType.PERSISTED]
    assert len(numbers) == 2
    archived = make_client("kinesis-video-archived-media", emu.url)
    first, last = stored_fragments(archived, "closing", numbers)
    assert ("camera", "front door") in [(t.name, t.value) for t in last.tags]
    assert "camera" not in [t.name for t in first.tags]

    # Over the service's 10 items: the service's 4009 for the fragment they close.
    too_many = [Tag(f"k{i}", "v") for i in range(11)]
    upload = sdk_upload([frames(BASE_MS + 10_000), frames(BASE_MS + 12_000)], closing_tags=too_many)
    assert kinds(put_media(emu.url, "closing", upload, sign=True).acks()) == [
        "BUFFERING", "RECEIVED", "PERSISTED", "BUFFERING", "ERROR 4009",
    ]  # fmt: skip


def test_kvs_producer_and_sdk_shaped_uploads_read_back_identically(
    emu: EmulatorProcess, make_client: ClientFactory
) -> None:
    """The toolkit's writer (what ``kvs produce`` sends) and the C SDK's stream shape
    store the same frames, byte for byte, and the same fragment metadata (the SDK sends
    the last fragment's pending metadata after its Cluster, when the stream stops)."""
    fragments = [frames(BASE_MS + 2000 * n, count=8, size=500 + n, seed=n) for n in range(3)]
    metadata = [[Tag("fragment", str(n))] for n in range(3)]
    closing = [Tag("stopped", "yes")]
    create_stream(emu.url, "ours", sign=True)
    create_stream(emu.url, "sdk", sign=True)

    async def ours() -> list[Ack]:
        writer = MkvWriter([VIDEO])
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(
                http, emu.url, "ours", credentials=Credentials(ACCESS_KEY, SECRET)
            ) as session,
        ):
            await session.write(writer.header())
            for n, fragment in enumerate(fragments):
                tags = metadata[n] + (closing if n == len(fragments) - 1 else [])
                await session.write(writer.fragment(fragment[0].timecode, fragment, tags))
            await session.write(tags_element([Tag(TAG_END_OF_FRAGMENT, "")]))
            await session.finish()
            return [ack async for ack in session.acks()]

    ours_acks = asyncio.run(ours())
    sdk_pieces = [MkvWriter([VIDEO], segment_uid=b"\x01" * 16).header()]
    for n, fragment in enumerate(fragments):
        sdk_pieces.append(tags_element(metadata[n]) + cluster(fragment[0].timecode, fragment))
    sdk_pieces.append(tags_element(closing) + tags_element([Tag(TAG_END_OF_FRAGMENT, "")]))
    sdk_acks = put_media(emu.url, "sdk", sdk_pieces, sign=True).acks()
    archived = make_client("kinesis-video-archived-media", emu.url)
    read: dict[str, list[Fragment]] = {}
    for stream, acks in (("ours", ours_acks), ("sdk", sdk_acks)):
        numbers = [a.fragment_number or "" for a in acks if a.event_type == AckEventType.PERSISTED]
        assert len(numbers) == 3
        read[stream] = stored_fragments(archived, stream, numbers)

    def frame_list(fragments: list[Fragment]) -> list[tuple[int, bool, bytes]]:
        return [
            (f.timestamp_ns, f.keyframe, bytes(f.data)) for frag in fragments for f in frag.frames
        ]

    def producer_tags(fragments: list[Fragment]) -> list[list[tuple[str, str]]]:
        return [
            [(t.name, t.value) for t in frag.tags if not t.name.startswith("AWS_KINESISVIDEO")]
            for frag in fragments
        ]

    assert frame_list(read["ours"]) == frame_list(read["sdk"])
    expected = [(f.timecode * 1_000_000, f.keyframe, f.data) for frag in fragments for f in frag]
    assert frame_list(read["sdk"]) == expected
    assert producer_tags(read["ours"]) == producer_tags(read["sdk"]) == [
        [("fragment", "0")], [("fragment", "1")], [("fragment", "2"), ("stopped", "yes")],
    ]  # fmt: skip


def test_advertised_url_can_point_at_a_proxy_started_later(make_client: ClientFactory) -> None:
    from kvs_toolkit.emulator import Emulator

    with Emulator() as emulator:
        client = make_client("kinesisvideo", emulator.endpoint_url)
        client.create_stream(StreamName="proxied")
        emulator.advertised_url = "http://127.0.0.1:9"
        answer = client.get_data_endpoint(StreamName="proxied", APIName="GET_MEDIA")
        assert answer["DataEndpoint"] == "http://127.0.0.1:9"
        emulator.advertised_url = None
        answer = client.get_data_endpoint(StreamName="proxied", APIName="GET_MEDIA")
        assert answer["DataEndpoint"] == emulator.endpoint_url
