"""PutMedia, GetMedia and GetMediaForFragmentList against a real running emulator."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.acks import Ack, AckEventType
from kvs_toolkit.emulator import Emulator, dataplane
from kvs_toolkit.emulator.dataplane import DataPlaneConfig
from kvs_toolkit.emulator.server import DEFAULT_ROUTE_INSTALLERS
from kvs_toolkit.errors import PutMediaError
from kvs_toolkit.getmedia import iter_fragments
from kvs_toolkit.mkv import Fragment, FragmentReader, Tag, TrackInfo
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, tags_element
from kvs_toolkit.putmedia import PutMediaSession
from tests.media import encode_matroska, read_fragments

from .conftest import ACCESS_KEY, SECRET, ClientFactory

VIDEO = TrackInfo(
    1, "V_MPEG4/ISO/AVC", b"\x01\x42\x00\x1e\xff\xe1\x00\x00\x01\x00\x00", width=64, height=48
)
END = tags_element([Tag(TAG_END_OF_FRAGMENT, "")])
CREDS = Credentials(ACCESS_KEY, SECRET)
BASE_MS = 1_790_000_000_000


def frames(start: int, count: int = 5, track: int = 1, size: int = 200) -> list[FrameData]:
    return [
        FrameData(track, start + 33 * i, bytes([i % 256]) * size, keyframe=i == 0)
        for i in range(count)
    ]


async def upload(
    url: str,
    stream: str,
    parts: Sequence[bytes],
    *,
    relative: bool = False,
    start: float | None = None,
    credentials: Credentials | None = CREDS,
) -> list[Ack]:
    """Send ``parts`` in one PutMedia request; return every ack until the service closes."""
    async with aiohttp.ClientSession() as http:
        session = PutMediaSession(
            http,
            url,
            stream,
            timecode_type="RELATIVE" if relative else "ABSOLUTE",
            producer_start_timestamp=start,
            credentials=credentials,
        )
        async with session:
            for part in parts:
                await session.write(part)
            await session.finish()
            return [ack async for ack in session.acks()]


@pytest.fixture
def media(emulator: Emulator, make_client: ClientFactory) -> Any:
    return make_client("kinesis-video-media", emulator.endpoint_url)


def create(kv: Any, name: str, retention: int = 24) -> None:
    kv.create_stream(StreamName=name, DataRetentionInHours=retention)


def kinds(acks: Sequence[Ack]) -> list[str]:
    return [
        f"ERROR {a.error_id}" if a.event_type == AckEventType.ERROR else a.event_type.value
        for a in acks
        if a.event_type != AckEventType.IDLE
    ]


def test_ffmpeg_matroska_upload_reads_back_frame_exact(
    emulator: Emulator, kv: Any, media: Any
) -> None:
    """An independent producer: ffmpeg's matroska muxer, RELATIVE timecodes."""
    create(kv, "ffmpeg")
    data = encode_matroska(90, fps=30, gop=30)
    reader = FragmentReader()
    source = reader.feed(data) + reader.close()
    acks = asyncio.run(
        upload(emulator.endpoint_url, "ffmpeg", [data], relative=True, start=BASE_MS / 1000)
    )
    persisted = [a for a in acks if a.event_type == AckEventType.PERSISTED]
    assert len(persisted) == len(source) == 3
    back = read_fragments(media, "ffmpeg", 3)
    assert [bytes(f.data) for s in source for f in s.frames] == [
        bytes(f.data) for b in back for f in b.frames
    ]
    assert [f.producer_timestamp.timestamp() for f in back if f.producer_timestamp] == [
        (BASE_MS + s.cluster_timecode) / 1000 for s in source if s.cluster_timecode is not None
    ]
    assert back[0].tracks[0].codec_private == source[0].tracks[0].codec_private
    assert [a.fragment_number for a in persisted] == [f.fragment_number for f in back]


def _repackage(
    fragments: list[Fragment],
) -> tuple[bytes, list[list[FrameData]], list[tuple[Tag, ...]]]:
    """The capture's frames and producer tags as one PutMedia body (RELATIVE timecodes)."""
    tracks = fragments[0].tracks
    writer = MkvWriter(
        [
            TrackInfo(
                t.number, t.codec_id, t.codec_private, t.track_type, width=t.width, height=t.height
            )
            for t in tracks
        ]
    )
    parts = [writer.header()]
    sent_frames = []
    sent_tags = []
    for fragment in fragments:
        if not fragment.frames:
            continue
        out = [
            FrameData(f.track_number, f.timecode, bytes(f.data), keyframe=f.keyframe)
            for f in fragment.frames
        ]
        tags = fragment.producer_tags
        parts.append(writer.fragment(fragment.cluster_timecode or 0, out, tags))
        sent_frames.append(out)
        sent_tags.append(tags)
    parts.append(END)
    return b"".join(parts), sent_frames, sent_tags


@pytest.mark.parametrize(
    ("name", "rejected"),
    [
        ("output_get_media.mkv", []),
        ("output_get_media_sparse_fragments.mkv", []),
        ("test_mixed_tags.mkv", []),
        ("output-get-media-equal-timecode.mkv", []),
        ("output-get-media-non-increasing-timecode.mkv", [1]),  # 0 ms after 10014 ms
    ],
)
def test_captures_round_trip_through_putmedia_and_getmedia(  # noqa: PLR0917
    captures: Path, emulator: Emulator, kv: Any, media: Any, name: str, rejected: list[int]
) -> None:
    reader = FragmentReader()
    fragments = reader.feed((captures / name).read_bytes()) + reader.close(keep_truncated=True)
    body, sent_frames, sent_tags = _repackage(fragments)
    stream = name.replace(".mkv", "").replace("_", "-")
    create(kv, stream)
    acks = asyncio.run(
        upload(emulator.endpoint_url, stream, [body], relative=True, start=1_600_000_000.0)
    )
    errors = [a for a in acks if a.event_type == AckEventType.ERROR]
    assert [a.error_id for a in errors] == [4004] * len(rejected)
    kept = [i for i in range(len(sent_frames)) if i not in rejected]
    back = read_fragments(media, stream, len(kept))
    assert len(back) == len(kept)
    for index, fragment in zip(kept, back, strict=True):
        assert [bytes(f.data) for f in fragment.frames] == [
            bytes(f.data) for f in sent_frames[index]
        ]
        assert [f.keyframe for f in fragment.frames] == [f.keyframe for f in sent_frames[index]]
        assert fragment.producer_tags == sent_tags[index]
        assert fragment.fragment_number is not None
        assert fragment.server_timestamp is not None
        assert fragment.continuation_token == fragment.fragment_number


def test_acks_arrive_while_the_upload_is_still_running(emulator: Emulator, kv: Any) -> None:
    """Fragment N+1 is only sent once fragment N's PERSISTED ack has arrived."""
    create(kv, "live")
    writer = MkvWriter([VIDEO])

    async def run() -> list[str]:
        seen: list[str] = []
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(http, emulator.endpoint_url, "live", credentials=CREDS) as session,
        ):
            await session.write(writer.header())
            acks = session.acks()
            for n in range(4):
                await session.write(
                    writer.fragment(BASE_MS + n * 1000, frames(BASE_MS + n * 1000)) + END
                )
                async for ack in acks:
                    seen.append(f"{ack.event_type.value} {ack.fragment_timecode}")
                    if ack.event_type == AckEventType.PERSISTED:
                        break
            await session.finish()
        return seen

    seen = asyncio.run(run())
    assert seen == [
        f"{kind} {BASE_MS + n * 1000}"
        for n in range(4)
        for kind in ("BUFFERING", "RECEIVED", "PERSISTED")
    ]


def test_putmedia_error_ids(emulator: Emulator, kv: Any) -> None:
    create(kv, "errors")
    writer = MkvWriter([VIDEO])
    url = emulator.endpoint_url
    body = [
        writer.header(),
        writer.fragment(BASE_MS + 5000, frames(BASE_MS + 5000)),
        writer.fragment(BASE_MS + 3000, frames(BASE_MS + 3000)),  # 4004
        writer.fragment(
            BASE_MS + 6000,
            [
                FrameData(1, BASE_MS + 6000, b"k", keyframe=True),
                FrameData(1, BASE_MS + 16_500, b"p"),
            ],
        ),  # 4002
        writer.fragment(
            BASE_MS + 20_000, frames(BASE_MS + 20_000), [Tag(f"k{i}", "v") for i in range(11)]
        ),  # 4009
        writer.fragment(BASE_MS + 21_000, frames(BASE_MS + 21_000)),
        END,
    ]
    acks = asyncio.run(upload(url, "errors", body))
    assert kinds(acks) == [
        "BUFFERING", "RECEIVED", "PERSISTED",
        "BUFFERING", "ERROR 4004",
        "BUFFERING", "ERROR 4002",
        "BUFFERING", "ERROR 4009",
        "BUFFERING", "RECEIVED", "PERSISTED",
    ]  # fmt: skip
    error = next(a for a in acks if a.error_id == 4004)
    assert (error.error_code, error.fragment_timecode) == (
        "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
        BASE_MS + 3000,
    )
    # invalid MKV ends the upload with 4006
    assert kinds(asyncio.run(upload(url, "errors", [b"definitely not matroska"]))) == ["ERROR 4006"]
    # tracks: a frame for an undeclared track (4010), a declared track without frames (4011)
    two = MkvWriter([VIDEO, TrackInfo(2, "A_AAC", b"\x12\x10", track_type=2)])
    bad_track = (
        writer.header()
        + writer.fragment(BASE_MS + 30_000, frames(BASE_MS + 30_000))
        + (
            b"\xa3\x87\x83\x00\x05\x80abc"  # a SimpleBlock for track 3 inside that cluster
        )
        + END
    )
    assert "ERROR 4010" in kinds(asyncio.run(upload(url, "errors", [bad_track])))
    missing = two.header() + two.fragment(BASE_MS + 40_000, frames(BASE_MS + 40_000)) + END
    assert kinds(asyncio.run(upload(url, "errors", [missing]))) == ["BUFFERING", "ERROR 4011"]


def test_putmedia_http_errors(emulator: Emulator, kv: Any) -> None:
    url = emulator.endpoint_url
    with pytest.raises(PutMediaError, match="404 ResourceNotFoundException") as info:
        asyncio.run(upload(url, "no-such-stream", [b""]))
    assert info.value.status == 404
    create(kv, "signed")
    with pytest.raises(PutMediaError, match="403") as info:
        asyncio.run(upload(url, "signed", [b""], credentials=Credentials(ACCESS_KEY, "wrong")))
    assert info.value.error_code == "InvalidSignatureException"
    with pytest.raises(PutMediaError, match="403"):
        asyncio.run(upload(url, "signed", [b""], credentials=None))


def test_replaced_putmedia_connection_ends_after_its_grace(make_client: ClientFactory) -> None:
    """A newer PutMedia wins at once; the older one is ended only after the grace."""
    installers = [
        functools.partial(dataplane.install, config=DataPlaneConfig(rotation_grace_s=0.5))
        if install is dataplane.install
        else install
        for install in DEFAULT_ROUTE_INSTALLERS
    ]
    with Emulator(credentials={ACCESS_KEY: SECRET}, route_installers=installers) as emu:
        kv = make_client("kinesisvideo", emu.endpoint_url)
        create(kv, "single")
        writer = MkvWriter([VIDEO])

        async def run() -> tuple[list[Ack], float, list[Ack]]:
            async with (
                aiohttp.ClientSession() as http,
                PutMediaSession(http, emu.endpoint_url, "single", credentials=CREDS) as first,
            ):
                await first.write(writer.header())
                await first.write(writer.fragment(BASE_MS, frames(BASE_MS)) + END)
                await first.response()
                started = time.monotonic()
                second = await upload(
                    emu.endpoint_url,
                    "single",
                    [
                        writer.header(),
                        writer.fragment(BASE_MS + 1000, frames(BASE_MS + 1000)) + END,
                    ],
                )
                # The first never finishes its body; the emulator ends it after the grace.
                first_acks = [ack async for ack in first.acks()]
                return first_acks, time.monotonic() - started, second

        first_acks, waited, second = asyncio.run(run())
        assert kinds(second) == ["BUFFERING", "RECEIVED", "PERSISTED"]
        assert kinds(first_acks) == ["BUFFERING", "RECEIVED", "PERSISTED"]
        assert 0.3 <= waited < 8


def test_deleted_stream_mid_upload_gets_4008(emulator: Emulator, kv: Any) -> None:
    create(kv, "doomed")
    arn = kv.describe_stream(StreamName="doomed")["StreamInfo"]["StreamARN"]
    writer = MkvWriter([VIDEO])

    async def run() -> list[Ack]:
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(http, emulator.endpoint_url, "doomed", credentials=CREDS) as session,
        ):
            await session.write(writer.header() + writer.fragment(BASE_MS, frames(BASE_MS)) + END)
            acks = session.acks()
            seen = [await acks.__anext__() for _ in range(3)]
            await asyncio.to_thread(kv.delete_stream, StreamARN=arn)
            await session.write(writer.fragment(BASE_MS + 1000, frames(BASE_MS + 1000)) + END)
            seen += [ack async for ack in acks]
            return seen

    assert kinds(asyncio.run(run())) == [
        "BUFFERING",
        "RECEIVED",
        "PERSISTED",
        "BUFFERING",
        "RECEIVED",
        "ERROR 4008",
    ]


def test_killed_connection_keeps_everything_persisted(
    emulator: Emulator, kv: Any, media: Any
) -> None:
    create(kv, "flaky")
    writer = MkvWriter([VIDEO])

    async def run() -> int:
        async with aiohttp.ClientSession() as http:
            session = PutMediaSession(http, emulator.endpoint_url, "flaky", credentials=CREDS)
            async with session:
                await session.write(writer.header())
                acks = session.acks()
                for n in range(3):
                    await session.write(
                        writer.fragment(BASE_MS + n * 1000, frames(BASE_MS + n * 1000))
                    )
                await session.write(END)
                persisted = 0
                async for ack in acks:
                    persisted += ack.event_type == AckEventType.PERSISTED
                    if persisted == 3:
                        break
                half = writer.fragment(BASE_MS + 3000, frames(BASE_MS + 3000, size=5000))
                await session.write(half[: len(half) // 2])
                await asyncio.sleep(0.2)
                session.abort()  # the network goes away mid-fragment
            return persisted

    assert asyncio.run(run()) == 3
    time.sleep(0.2)
    back = read_fragments(media, "flaky", 3)
    assert [f.producer_timestamp.timestamp() for f in back if f.producer_timestamp] == [
        (BASE_MS + n * 1000) / 1000 for n in range(3)
    ]
    listed = emulator.store.sync.list_fragments("flaky").fragments
    assert len(listed) == 3  # the half fragment left nothing behind


def test_restart_serves_the_same_fragments(tmp_path: Path, make_client: ClientFactory) -> None:
    writer = MkvWriter([VIDEO])
    body = (
        [writer.header()]
        + [
            writer.fragment(BASE_MS + n * 1000, frames(BASE_MS + n * 1000), [Tag("n", str(n))])
            for n in range(3)
        ]
        + [END]
    )
    with Emulator(data_dir=tmp_path) as emu:
        make_client("kinesisvideo", emu.endpoint_url).create_stream(
            StreamName="kept", DataRetentionInHours=2
        )
        asyncio.run(upload(emu.endpoint_url, "kept", body, credentials=None))
        first = read_fragments(make_client("kinesis-video-media", emu.endpoint_url), "kept", 3)
    with Emulator(data_dir=tmp_path) as emu:
        again = read_fragments(make_client("kinesis-video-media", emu.endpoint_url), "kept", 3)
    assert [f.fragment_number for f in again] == [f.fragment_number for f in first]
    assert [[bytes(x.data) for x in f.frames] for f in again] == [
        [bytes(x.data) for x in f.frames] for f in first
    ]
    assert [f.producer_tags for f in again] == [(Tag("n", str(n)),) for n in range(3)]


def test_start_selectors(emulator: Emulator, kv: Any, media: Any) -> None:
    create(kv, "selectors")
    writer = MkvWriter([VIDEO])
    body = (
        [writer.header()]
        + [writer.fragment(BASE_MS + n * 2000, frames(BASE_MS + n * 2000)) for n in range(5)]
        + [END]
    )
    acks = asyncio.run(upload(emulator.endpoint_url, "selectors", body))
    numbers = [a.fragment_number for a in acks if a.event_type == AckEventType.PERSISTED]
    assert len(numbers) == 5

    def starts(selector: dict[str, Any], count: int) -> list[str | None]:
        return [f.fragment_number for f in read_fragments(media, "selectors", count, selector)]

    assert starts({"StartSelectorType": "EARLIEST"}, 5) == numbers
    assert (
        starts({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": numbers[1]}, 3)
        == numbers[2:]
    )
    assert (
        starts({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": numbers[3]}, 1)
        == numbers[4:]
    )
    assert (
        starts(
            {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": (BASE_MS + 4000) / 1000},
            3,
        )
        == numbers[2:]
    )
    # SERVER_TIMESTAMP: the first fragment stored at or after that instant (several may
    # share a millisecond when they arrive in one burst)
    records = [emulator.store.sync.get_fragment("selectors", n) for n in numbers]
    server_ms = [r.server_timestamp_ms for r in records if r is not None]
    at = server_ms[3]
    expected = [n for n, ms in zip(numbers, server_ms, strict=True) if ms >= at]
    assert (
        starts({"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": at / 1000}, 2)
        == expected[:2]
    )


def test_getmedia_for_fragment_list(emulator: Emulator, kv: Any, archived: Any) -> None:
    create(kv, "listed")
    writer = MkvWriter([VIDEO])
    body = (
        [writer.header()]
        + [writer.fragment(BASE_MS + n * 1000, frames(BASE_MS + n * 1000)) for n in range(4)]
        + [END]
    )
    asyncio.run(upload(emulator.endpoint_url, "listed", body))
    listed = archived.list_fragments(StreamName="listed")["Fragments"]
    numbers = sorted(f["FragmentNumber"] for f in listed)
    wanted = [numbers[2], numbers[0], "91343852333179999999999999999999999999999999999"]
    response = archived.get_media_for_fragment_list(StreamName="listed", Fragments=wanted)
    fragments = list(iter_fragments(response["Payload"]))
    assert [f.fragment_number for f in fragments] == wanted
    assert fragments[2].error_code == "4000"
    assert fragments[2].frames == ()
    assert [len(f.frames) for f in fragments[:2]] == [5, 5]


def _live_reader(
    media: Any, stream: str, out: list[tuple[float, Fragment]], ready: threading.Event, count: int
) -> None:
    response = media.get_media(StreamName=stream, StartSelector={"StartSelectorType": "NOW"})
    ready.set()
    try:
        for fragment in iter_fragments(response["Payload"]):
            out.append((time.monotonic(), fragment))
            if len(out) == count:
                return
    finally:
        response["Payload"].close()


def test_live_getmedia_now_gets_a_fragment_within_100_ms_of_persisted(
    emulator: Emulator, kv: Any, media: Any
) -> None:
    create(kv, "latency")
    writer = MkvWriter([VIDEO])
    asyncio.run(
        upload(
            emulator.endpoint_url,
            "latency",
            [writer.header(), writer.fragment(BASE_MS, frames(BASE_MS)), END],
        )
    )
    received: list[tuple[float, Fragment]] = []
    ready = threading.Event()
    reader = threading.Thread(target=_live_reader, args=(media, "latency", received, ready, 3))
    reader.start()
    assert ready.wait(10)
    time.sleep(0.2)
    persisted_at: dict[str, float] = {}

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(http, emulator.endpoint_url, "latency", credentials=CREDS) as session,
        ):
            await session.write(writer.header())
            acks = session.acks()
            for n in range(1, 4):
                await session.write(
                    writer.fragment(BASE_MS + n * 1000, frames(BASE_MS + n * 1000)) + END
                )
                async for ack in acks:
                    if ack.event_type == AckEventType.PERSISTED:
                        persisted_at[str(ack.fragment_number)] = time.monotonic()
                        break
            await session.finish()

    asyncio.run(run())
    reader.join(10)
    assert len(received) == 3  # NOW: only fragments persisted after the request
    for at, fragment in received:
        assert at - persisted_at[str(fragment.fragment_number)] < 0.1


def test_three_getmedia_connections_at_most(emulator: Emulator, kv: Any, media: Any) -> None:
    create(kv, "popular")
    responses = [
        media.get_media(StreamName="popular", StartSelector={"StartSelectorType": "NOW"})
        for _ in range(3)
    ]
    try:
        with pytest.raises(media.exceptions.ConnectionLimitExceededException):
            media.get_media(StreamName="popular", StartSelector={"StartSelectorType": "NOW"})
    finally:
        for response in responses:
            response["Payload"].close()


def test_getmedia_errors(emulator: Emulator, media: Any, kv: Any) -> None:
    with pytest.raises(media.exceptions.ResourceNotFoundException):
        media.get_media(StreamName="nothing-here", StartSelector={"StartSelectorType": "NOW"})
    create(kv, "bad-selector")
    with pytest.raises(media.exceptions.InvalidArgumentException):
        media.get_media(
            StreamName="bad-selector", StartSelector={"StartSelectorType": "FRAGMENT_NUMBER"}
        )


def test_no_retention_means_no_persisted_ack(emulator: Emulator, kv: Any) -> None:
    create(kv, "ephemeral", retention=0)
    writer = MkvWriter([VIDEO])
    acks = asyncio.run(
        upload(
            emulator.endpoint_url,
            "ephemeral",
            [writer.header(), writer.fragment(BASE_MS, frames(BASE_MS)), END],
        )
    )
    assert kinds(acks) == ["BUFFERING", "RECEIVED"]


def test_idle_acks_while_no_data_and_close_after_the_idle_limit() -> None:
    """IDLE every few seconds without data; the request ends after the idle limit."""
    from functools import partial

    from kvs_toolkit.emulator import archived, control, dataplane

    config = dataplane.DataPlaneConfig(idle_ack_interval_s=0.2, idle_timeout_s=1.0)
    installers = [control.install, archived.install, partial(dataplane.install, config=config)]
    with Emulator(route_installers=installers) as emu:
        writer = MkvWriter([VIDEO])

        async def run() -> tuple[list[str], float]:
            async with aiohttp.ClientSession() as http:
                await http.post(
                    f"{emu.endpoint_url}/createStream",
                    json={"StreamName": "quiet", "DataRetentionInHours": 1},
                )
                session = PutMediaSession(http, emu.endpoint_url, "quiet")
                async with session:
                    await session.write(writer.header())
                    started = time.monotonic()
                    seen = [ack.event_type.value async for ack in session.acks()]
                    return seen, time.monotonic() - started

        seen, elapsed = asyncio.run(run())
    assert set(seen) == {"IDLE"}
    assert 3 <= len(seen) <= 6
    assert 0.9 <= elapsed < 3
