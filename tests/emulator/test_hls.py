"""HLS and DASH playback: the sans-I/O builders, and real players against a running emulator.

The integration tests upload real H.264 (``kvs_toolkit.samples``) with the project's
producer, get the session URL through boto3 exactly as a client of the service does
(GetDataEndpoint for the APIName first), and then let independent players read it:
FFmpeg's HLS/DASH demuxers through PyAV and ffprobe. PyAV's bundled FFmpeg cannot open
any MPD (not even one FFmpeg's own dash muxer wrote), so for DASH the PyAV check reads
the MPD with ElementTree and decodes the init segment and the ``$Number$`` segments it
lists; ffprobe reads the MPD itself.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import shutil
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from kvs_toolkit.acks import AckEventType
from kvs_toolkit.bitstream import parse_avcc, parse_h264_sps
from kvs_toolkit.emulator import Emulator, hls, playback, remux
from kvs_toolkit.emulator.errors import InvalidArgumentError
from kvs_toolkit.emulator.playback import (
    MediaInfo,
    SessionIndex,
    TrackMedia,
    dash_manifest,
    hls_master_playlist,
    hls_media_playlist,
    media_info,
    order_for_playback,
    parse_session_request,
)
from kvs_toolkit.emulator.store import FragmentRecord
from kvs_toolkit.errors import DecodeError
from kvs_toolkit.mkv import Fragment, FragmentReader, Tag, TrackInfo
from kvs_toolkit.mkv.ebml import UNKNOWN_SIZE_BYTES, encode_id
from kvs_toolkit.mkv.ids import SEGMENT
from kvs_toolkit.mkv.model import TAG_END_OF_FRAGMENT
from kvs_toolkit.mkv.writer import FrameData, MkvWriter, ebml_header, tags_element
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.putmedia import PutMediaSession
from kvs_toolkit.samples import SampleSpec, write_sample
from tests.producer.media import Clip, needs_x265, write_clip

ACCESS_KEY = "AKIDTEST"
SECRET = "secret"
CREDS = Credentials(ACCESS_KEY, SECRET)
REGION = "us-east-1"
SPEC = SampleSpec(seconds=6, fps=25, gop_seconds=2)
FRAME_MS = 1000 // SPEC.fps
END = tags_element([Tag(TAG_END_OF_FRAGMENT, "")])
# ffprobe checks run where FFmpeg's tools are installed (the PyAV checks always run).
FFPROBE = shutil.which("ffprobe")


# --- shared helpers (test_clip_images.py uses them too) ------------------------------------


@dataclass
class SampleStream:
    """A stream holding the 6 s sample: 3 fragments of 2 s, 150 frames."""

    emulator: Emulator
    name: str
    records: list[FragmentRecord]
    fragments: list[Fragment]  # the stored fragments, parsed

    @property
    def tracks(self) -> tuple[TrackInfo, ...]:
        return self.fragments[0].tracks

    @property
    def frame_count(self) -> int:
        return self.track_frames(1)

    def track_frames(self, track: int) -> int:
        return sum(1 for f in self.fragments for frame in f.frames if frame.track_number == track)

    @property
    def first_ms(self) -> int:
        return self.records[0].producer_timestamp_ms

    @property
    def end_ms(self) -> int:
        last = self.records[-1]
        return last.producer_timestamp_ms + last.duration_ms


def parse_payload(payload: bytes) -> Fragment:
    reader = FragmentReader()
    doc = ebml_header() + encode_id(SEGMENT) + UNKNOWN_SIZE_BYTES + payload
    (fragment,) = reader.feed(doc) + reader.close()
    return fragment


def upload_file(
    emulator: Emulator, path: Path, name: str, fragment_duration_ms: int = 2000
) -> SampleStream:
    """Upload a media file with the project's producer (stream created); read it back."""
    source = open_source(
        str(path), SourceOptions(realtime=False, fragment_duration_ms=fragment_duration_ms)
    )
    asyncio.run(
        produce(
            source,
            emulator.endpoint_url,
            name,
            create_stream=True,
            credentials=CREDS,
            fragment_duration_ms=fragment_duration_ms,
        )
    )
    store = emulator.store.sync
    records = list(store.list_fragments(name).fragments)
    fragments = [parse_payload(store.read_payload(r)) for r in records]
    return SampleStream(emulator, name, records, fragments)


def upload_sample(emulator: Emulator, directory: Path, name: str) -> SampleStream:
    """Encode the sample (6 s, 150 frames) and upload it in 2 s fragments."""
    path = directory / "sample.mkv"
    if not path.exists():
        write_sample(path, SPEC)
    return upload_file(emulator, path, name)


def shifted(fragment: Fragment, start_ms: int) -> tuple[int, list[FrameData]]:
    """A fragment's frames moved to start at ``start_ms`` (a cluster for MkvWriter)."""
    base = fragment.cluster_timecode or 0
    return start_ms, [
        FrameData(f.track_number, start_ms + f.timecode - base, bytes(f.data), keyframe=f.keyframe)
        for f in fragment.frames
    ]


def put_fragments(
    endpoint: str,
    stream: str,
    tracks: tuple[TrackInfo, ...],
    clusters: list[tuple[int, list[FrameData]]],
) -> None:
    """One PutMedia request with these clusters (ABSOLUTE timecodes); all persisted."""

    async def run() -> list[Any]:
        writer = MkvWriter(tracks)
        async with (
            aiohttp.ClientSession() as http,
            PutMediaSession(http, endpoint, stream, credentials=CREDS) as session,
        ):
            await session.write(writer.header())
            for timecode, frames in clusters:
                await session.write(writer.fragment(timecode, frames) + END)
            await session.finish()
            return [ack async for ack in session.acks()]

    acks = asyncio.run(run())
    persisted = [a for a in acks if a.event_type == AckEventType.PERSISTED]
    assert len(persisted) == len(clusters), acks


def client(service: str, endpoint: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def archived_client(emulator: Emulator, stream: str, api_name: str) -> Any:
    """An archived-media client on the data endpoint GetDataEndpoint gives for ``api_name``."""
    kv = client("kinesisvideo", emulator.endpoint_url)
    endpoint = kv.get_data_endpoint(StreamName=stream, APIName=api_name)["DataEndpoint"]
    return client("kinesis-video-archived-media", endpoint)


def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    """A plain unsigned GET, as a player sends it."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def decode_count(url: str, **options: str) -> int:
    with av.open(url, options=options or None) as container:
        return sum(1 for _ in container.decode(video=0))


def ffprobe_frames(url: str) -> int:
    assert FFPROBE is not None
    result = subprocess.run(
        [
            FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", url,
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(result.stdout.strip().splitlines()[-1])


# --- a tiny ISO BMFF walker (independent of remux.iter_boxes) --------------------------------


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, box end) of each box."""
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        yield kind.decode(), start + header, start + size
        start += size


def child(data: bytes, parent: tuple[str, int, int], kind: str) -> tuple[str, int, int]:
    return next(b for b in boxes(data, parent[1], parent[2]) if b[0] == kind)


@dataclass
class MoofTiming:
    sequence: int
    base_decode_time: int
    duration: int  # sum of the sample durations
    samples: int


def moof_timing(segment: bytes) -> MoofTiming:
    """mfhd sequence, tfdt and the total sample duration of a one-moof media segment."""
    moof = next(b for b in boxes(segment) if b[0] == "moof")
    (sequence,) = struct.unpack_from(">I", segment, child(segment, moof, "mfhd")[1] + 4)
    traf = child(segment, moof, "traf")
    tfhd = child(segment, traf, "tfhd")
    (tf_flags,) = struct.unpack_from(">I", segment, tfhd[1])
    pos = tfhd[1] + 8  # version/flags, track_ID
    default_duration = 0
    if tf_flags & 0x01:
        pos += 8  # base_data_offset
    if tf_flags & 0x02:
        pos += 4  # sample_description_index
    if tf_flags & 0x08:
        (default_duration,) = struct.unpack_from(">I", segment, pos)
    tfdt = child(segment, traf, "tfdt")
    version = segment[tfdt[1]]
    (base,) = struct.unpack_from(">Q" if version == 1 else ">I", segment, tfdt[1] + 4)
    trun = child(segment, traf, "trun")
    (tr_flags,) = struct.unpack_from(">I", segment, trun[1])
    (count,) = struct.unpack_from(">I", segment, trun[1] + 4)
    pos = trun[1] + 8
    pos += 4 if tr_flags & 0x001 else 0  # data_offset
    pos += 4 if tr_flags & 0x004 else 0  # first_sample_flags
    total = 0
    for _ in range(count):
        if tr_flags & 0x100:
            (duration,) = struct.unpack_from(">I", segment, pos)
            total += duration
        else:
            total += default_duration
        pos += 4 * bin(tr_flags & 0xF00).count("1")
    return MoofTiming(sequence, base, total, count)


def timescale_of(init: bytes) -> int:
    moov = next(b for b in boxes(init) if b[0] == "moov")
    mdhd = child(init, child(init, child(init, moov, "trak"), "mdia"), "mdhd")
    version = init[mdhd[1]]
    (scale,) = struct.unpack_from(">I", init, mdhd[1] + (20 if version == 1 else 12))
    return int(scale)


def playlist_uris(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def base_of(url: str) -> str:
    return url.split("?", 1)[0].rsplit("/", 1)[0] + "/"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def sample(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    return upload_sample(emu, tmp_path_factory.mktemp("hls"), "cam")


def on_demand_selector(stream: SampleStream, kind: str = "PRODUCER_TIMESTAMP") -> dict[str, Any]:
    if kind == "PRODUCER_TIMESTAMP":
        start, end = stream.first_ms, stream.records[-1].producer_timestamp_ms
    else:
        start = stream.records[0].server_timestamp_ms
        end = stream.records[-1].server_timestamp_ms
    return {
        "FragmentSelectorType": kind,
        "TimestampRange": {"StartTimestamp": start / 1000, "EndTimestamp": end / 1000},
    }


def hls_url(emulator: Emulator, stream: str, **kwargs: Any) -> str:
    am = archived_client(emulator, stream, "GET_HLS_STREAMING_SESSION_URL")
    response = am.get_hls_streaming_session_url(StreamName=stream, **kwargs)
    return str(response["HLSStreamingSessionURL"])


# --- sans-I/O: requests ---------------------------------------------------------------------

NOW = 1_800_000_000_000


def test_session_request_defaults() -> None:
    params = parse_session_request({"StreamName": "s"}, "HLS", NOW)
    assert (params.mode, params.selector, params.container) == (
        "LIVE",
        "SERVER_TIMESTAMP",
        "FRAGMENTED_MP4",
    )
    assert (params.discontinuity, params.expires_s, params.max_results) == ("ALWAYS", 300, 5)
    assert not params.display_timestamp
    on_demand = parse_session_request(
        {
            "PlaybackMode": "ON_DEMAND",
            "HLSFragmentSelector": {
                "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1.5, "EndTimestamp": 9.25},
            },
        },
        "HLS",
        NOW,
    )
    assert (on_demand.start_ms, on_demand.end_ms) == (1500, 9250)
    assert (on_demand.discontinuity, on_demand.max_results) == ("NEVER", 1000)
    dash = parse_session_request({"DisplayFragmentNumber": "ALWAYS"}, "DASH", NOW)
    assert dash.display_fragment_number and dash.container == "FRAGMENTED_MP4"


def ranged(mode: str, start: float, end: float | None = None) -> dict[str, Any]:
    time_range: dict[str, float] = {"StartTimestamp": start}
    if end is not None:
        time_range["EndTimestamp"] = end
    return {"PlaybackMode": mode, "HLSFragmentSelector": {"TimestampRange": time_range}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"PlaybackMode": "LIVE_PLAY"}, "PlaybackMode 'LIVE_PLAY' is not valid"),
        (ranged("LIVE", 1), "TimestampRange must not be set when PlaybackMode is LIVE"),
        ({"PlaybackMode": "ON_DEMAND"}, "HLSFragmentSelector with a TimestampRange is required"),
        (ranged("ON_DEMAND", 1), "EndTimestamp is required when PlaybackMode is ON_DEMAND"),
        (ranged("LIVE_REPLAY", 5, 5), "EndTimestamp must be later than StartTimestamp"),
        (ranged("ON_DEMAND", 0, 86401), "within 24 hours"),
        (ranged("ON_DEMAND", NOW / 1000, NOW / 1000 + 5), "must be in the past"),
        ({"Expires": 299}, "Expires 299 is outside the range 300..43200"),
        ({"Expires": 43201}, "Expires 43201 is outside the range 300..43200"),
        ({"MaxMediaPlaylistFragmentResults": 5001}, "outside the range 1..5000"),
        ({"ContainerFormat": "MP4"}, "ContainerFormat 'MP4' is not valid"),
        ({"DiscontinuityMode": "SOMETIMES"}, "DiscontinuityMode 'SOMETIMES' is not valid"),
    ],
)
def test_session_request_validation(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        parse_session_request(body, "HLS", NOW)


# --- sans-I/O: fragment index and playlists -------------------------------------------------


def record(
    number: int, producer_ms: int, duration_ms: int = 2000, server_ms: int | None = None
) -> FragmentRecord:
    return FragmentRecord(
        stream_id=1,
        stream_name="s",
        fragment_number=f"{number:047d}",
        producer_timestamp_ms=producer_ms,
        server_timestamp_ms=producer_ms + 100 if server_ms is None else server_ms,
        duration_ms=duration_ms,
        size=25_000,
        path="x",
        offset=0,
        length=25_000,
    )


def test_order_for_playback_keeps_the_newest_of_equal_producer_timestamps() -> None:
    records = [record(3, 4000), record(1, 2000), record(2, 2000), record(4, 1000)]
    ordered = order_for_playback(records, "PRODUCER_TIMESTAMP")
    assert [int(r.fragment_number) for r in ordered] == [4, 2, 3]
    by_server = order_for_playback(records, "SERVER_TIMESTAMP")
    assert [int(r.fragment_number) for r in by_server] == [4, 1, 2, 3]


def test_index_numbers_fragments_and_marks_discontinuities() -> None:
    index = SessionIndex("PRODUCER_TIMESTAMP", "ON_DISCONTINUITY")
    added = [
        index.add(record(1, 0)),
        index.add(record(2, 2040)),  # 40 ms gap: within the 50 ms tolerance
        index.add(record(3, 4100)),  # 60 ms gap
        index.add(record(4, 4100)),  # same producer timestamp: a re-send, not added
        index.add(record(5, 3000)),  # older than the newest: never added
        index.add(record(6, 6070)),  # 30 ms overlap
    ]
    assert [e.sequence if e else None for e in added] == [1, 2, 3, None, None, 4]
    assert [e.discontinuity for e in index.entries] == [False, False, True, False]
    always = SessionIndex("SERVER_TIMESTAMP", "ALWAYS")
    never = SessionIndex("SERVER_TIMESTAMP", "NEVER")
    for n in range(3):
        always.add(record(n + 1, n * 2000))
        never.add(record(n + 1, n * 5000))
    assert [e.discontinuity for e in always.entries] == [False, True, True]
    assert [e.discontinuity for e in never.entries] == [False, False, False]


def test_live_index_trims_and_keeps_sequence_numbers() -> None:
    index = SessionIndex("SERVER_TIMESTAMP", "ALWAYS", keep=3)
    for n in range(1, 8):
        index.add(record(n, n * 2000))
    assert [e.sequence for e in index.entries] == [5, 6, 7]
    window = index.window(2, newest=True)
    assert [e.sequence for e in window] == [6, 7]
    # Markers before entries 2..6 (entry 1 has none): the discontinuity number of 6 is 5.
    assert index.discontinuity_sequence(window[0]) == 5
    assert index.by_sequence(4) is None
    entry = index.by_sequence(6)
    assert entry is not None and index.sequence_of(entry.fragment_number) == 6


def test_media_playlist_text() -> None:
    index = SessionIndex("PRODUCER_TIMESTAMP", "ON_DISCONTINUITY")
    for n, start in enumerate((1_700_000_000_000, 1_700_000_002_000, 1_700_000_010_000), 1):
        index.add(record(n, start, duration_ms=2000 if n < 3 else 2480))
    text = hls_media_playlist(
        index.entries,
        segment_uri=lambda e: f"seg?n={e.sequence}",
        map_uri="init.mp4",
        program_date_time="PRODUCER_TIMESTAMP",
        ended=True,
        playlist_type="VOD",
    )
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:2",
        "#EXT-X-MEDIA-SEQUENCE:1",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z",
        "#EXTINF:2.000,",
        "seg?n=1",
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:22.000Z",
        "#EXTINF:2.000,",
        "seg?n=2",
        "#EXT-X-DISCONTINUITY",
        "#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:30.000Z",
        "#EXTINF:2.480,",
        "seg?n=3",
        "#EXT-X-ENDLIST",
    ]
    live = hls_media_playlist(
        index.window(1, newest=True),
        segment_uri=lambda e: e.fragment_number,
        map_uri=None,
        discontinuity_sequence=index.discontinuity_sequence(index.entries[-1]),
        target_duration=4,
    )
    assert "#EXT-X-VERSION:3" in live and "#EXT-X-TARGETDURATION:4" in live
    assert "#EXT-X-MEDIA-SEQUENCE:3" in live and "#EXT-X-DISCONTINUITY-SEQUENCE:1" in live
    assert "#EXT-X-DISCONTINUITY\n" not in live and "#EXT-X-ENDLIST" not in live


def test_codec_configuration_change_is_a_discontinuity_with_a_new_map() -> None:
    index = SessionIndex("PRODUCER_TIMESTAMP", "NEVER")
    for n, config in enumerate((0, 0, 1, 1, 0), start=1):
        index.add(record(n, n * 2000), config)
    # NEVER, and yet each change of codec configuration is marked (RFC 8216 6.2.1).
    assert [e.discontinuity for e in index.entries] == [False, False, True, False, True]
    text = hls_media_playlist(
        index.entries,
        segment_uri=lambda e: f"seg?n={e.sequence}",
        map_uri=lambda e: f"init?config={e.config}",
    )
    body = [line for line in text.splitlines() if not line.startswith("#EXTINF")]
    assert body[body.index("#EXT-X-INDEPENDENT-SEGMENTS") + 1 :] == [
        '#EXT-X-MAP:URI="init?config=0"',
        "seg?n=1",
        "seg?n=2",
        "#EXT-X-DISCONTINUITY",
        '#EXT-X-MAP:URI="init?config=1"',
        "seg?n=3",
        "seg?n=4",
        "#EXT-X-DISCONTINUITY",
        '#EXT-X-MAP:URI="init?config=0"',
        "seg?n=5",
    ]


def test_master_playlist_and_codecs_from_the_sps(sample: SampleStream) -> None:
    track = sample.tracks[0]
    info = media_info(sample.tracks, bandwidth=123_456)
    sps = parse_h264_sps(parse_avcc(track.codec_private).sps[0])
    assert info.codecs == (sps.codec_string,) and info.codecs[0].startswith("avc1.")
    assert (info.width, info.height) == (SPEC.width, SPEC.height)
    text = hls_master_playlist(info, lambda n: f"media.m3u8?TrackNumber={n}")
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-STREAM-INF:BANDWIDTH=123456,RESOLUTION=640x360,CODECS="{sps.codec_string}"',
        "media.m3u8?TrackNumber=1",
    ]
    with pytest.raises(playback.UnsupportedStreamMediaTypeError):
        media_info([TrackInfo(1, "V_MS/VFW/FOURCC", b"x" * 40)])
    with pytest.raises(playback.MissingCodecPrivateDataError):
        media_info([TrackInfo(1, "V_MPEG4/ISO/AVC", b"")])
    with pytest.raises(playback.InvalidCodecPrivateDataError):
        media_info([TrackInfo(1, "V_MPEG4/ISO/AVC", b"\x01\x64\x00")])
    # AAC LC (AudioSpecificConfig 0x1210: object type 2, 44.1 kHz, stereo).
    aac = TrackInfo(2, "A_AAC", b"\x12\x10", track_type=2, sampling_frequency=44100.0)
    with_audio = media_info([track, aac])
    assert with_audio.codecs_attribute == f"{sps.codec_string},mp4a.40.2"
    assert with_audio.audio == TrackMedia(2, "audio", "mp4a.40.2", 44100)
    # fMP4: the audio is a rendition with its own playlist; TS: one muxed playlist.
    separate = hls_master_playlist(with_audio, lambda n: f"media.m3u8?TrackNumber={n}")
    assert (
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
        'URI="media.m3u8?TrackNumber=2"'
    ) in separate
    assert f'CODECS="{sps.codec_string},mp4a.40.2",AUDIO="audio"' in separate
    muxed = hls_master_playlist(with_audio, lambda n: "media.m3u8")
    assert "EXT-X-MEDIA" not in muxed and "AUDIO=" not in muxed
    with pytest.raises(playback.UnsupportedStreamMediaTypeError):
        media_info([track, TrackInfo(2, "A_MS/ACM", b"\x07\x00" + bytes(16), track_type=2)])
    g711 = media_info(
        [track, TrackInfo(2, "A_MS/ACM", b"\x07\x00" + bytes(16), track_type=2)],
        audio_codecs=("A_AAC", "A_MS/ACM"),
    )
    assert g711.codecs[1] == "ulaw" and [t.number for t in g711.mp4_tracks] == [1]


def test_dash_manifest_timeline_and_kvs_attributes() -> None:
    index = SessionIndex("SERVER_TIMESTAMP", "NEVER")
    for n, start in enumerate((10_000, 12_000, 16_000), 1):
        index.add(record(n, start))
    video = TrackMedia(1, "video", "avc1.64001E")
    info = MediaInfo((video, TrackMedia(2, "audio", "mp4a.40.2", 48000)), 640, 360, 80_000)
    text = dash_manifest(
        index.entries,
        info=info,
        origin_ms=10_000,
        init_uri=lambda n: f"init?T=1&TrackNumber={n}",
        media_uri_template=lambda n: f"media?T=1&TrackNumber={n}&SequenceNumber=$Number$",
        dynamic=False,
        fragment_timestamp="SERVER_TIMESTAMP",
        fragment_number=True,
    )
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(text)
    assert root.get("type") == "static" and root.get("mediaPresentationDuration") == "PT8.000S"
    sets = root.findall(".//d:AdaptationSet", ns)
    assert [(a.get("contentType"), a.get("mimeType")) for a in sets] == [
        ("video", "video/mp4"),
        ("audio", "audio/mp4"),
    ]
    audio = sets[1].find("d:Representation", ns)
    assert audio is not None and audio.get("codecs") == "mp4a.40.2"
    assert audio.get("audioSamplingRate") == "48000"
    template = root.find(".//d:SegmentTemplate", ns)
    assert template is not None
    assert template.get("initialization") == "init?T=1&TrackNumber=1"
    assert template.get("media") == "media?T=1&TrackNumber=1&SequenceNumber=$Number$"
    assert template.get("startNumber") == "1"
    segments = sets[0].findall(".//d:S", ns)
    assert [(s.get("t"), s.get("d")) for s in segments] == [
        ("0", "2000"),
        ("2000", "2000"),
        ("6000", "2000"),
    ]
    kvs = f"{{{playback.KVS_DASH_NAMESPACE}}}"
    assert [s.get(kvs + "fn") for s in segments] == [e.fragment_number for e in index.entries]
    assert [s.get(kvs + "ts") for s in segments] == ["10100", "12100", "16100"]
    live = ET.fromstring(
        dash_manifest(
            index.window(2, newest=True), info=MediaInfo((video,), 640, 360, 1), origin_ms=10_000,
            init_uri=str, media_uri_template=str, dynamic=True, availability_start_ms=10_000,
            publish_ms=20_000,
        )
    )  # fmt: skip
    assert live.get("type") == "dynamic"
    assert live.get("availabilityStartTime") == "1970-01-01T00:00:10.000Z"
    assert len(live.findall(".//d:AdaptationSet", ns)) == 1
    live_template = live.find(".//d:SegmentTemplate", ns)
    assert live_template is not None and live_template.get("startNumber") == "2"


def test_byte_lru_is_bounded_by_size() -> None:
    cache = remux.ByteLRU(1000)
    for n in range(10):
        cache.put(n, bytes(200))
    assert cache.size <= 1000 and len(cache) == 5
    assert cache.get(0) is None and cache.get(9) == bytes(200)
    cache.put("big", bytes(300))  # over a quarter of the bound: not kept
    assert cache.get("big") is None


# --- real players: ON_DEMAND ----------------------------------------------------------------


def test_on_demand_fmp4_plays_every_frame_with_continuous_tfdt(sample: SampleStream) -> None:
    url = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(sample),
        DisplayFragmentTimestamp="ALWAYS",
    )
    assert re.fullmatch(
        r"http://127\.0\.0\.1:\d+/hls/v1/getHLSMasterPlaylist\.m3u8\?SessionToken=[\w-]+", url
    )
    assert decode_count(url) == sample.frame_count == SPEC.frame_count
    if FFPROBE:
        assert ffprobe_frames(url) == sample.frame_count
    # The playlists a player sees.
    status, headers, body = http_get(url)
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
    master = body.decode()
    assert 'CODECS="avc1.' in master and "RESOLUTION=640x360" in master
    media_url = base_of(url) + playlist_uris(master)[0]
    media = http_get(media_url)[2].decode()
    assert "#EXT-X-ENDLIST" in media and "#EXT-X-PLAYLIST-TYPE:VOD" in media
    assert "#EXT-X-DISCONTINUITY" not in media  # PRODUCER_TIMESTAMP: NEVER by default
    assert media.count("#EXTINF:2.000,") == 3
    dates = re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(.+)", media)
    assert dates == [playback.iso8601(r.producer_timestamp_ms) for r in sample.records]
    init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', media)
    assert init_uri is not None
    init = http_get(base_of(url) + init_uri.group(1))[2]
    assert [b[0] for b in boxes(init)] == ["ftyp", "moov"]
    scale = timescale_of(init)
    segments = [http_get(base_of(url) + uri) for uri in playlist_uris(media)]
    assert all(s[0] == 200 and s[1]["Content-Type"] == "video/mp4" for s in segments)
    timings = [moof_timing(s[2]) for s in segments]
    assert all([b[0] for b in boxes(s[2])] == ["moof", "mdat"] for s in segments)
    assert [t.sequence for t in timings] == [1, 2, 3]
    assert [t.samples for t in timings] == [len(f.frames) for f in sample.fragments]
    # tfdt: producer time since the first fragment, and each segment ends where the next begins.
    assert [t.base_decode_time for t in timings] == [
        (r.producer_timestamp_ms - sample.first_ms) * scale // 1000 for r in sample.records
    ]
    for before, after in itertools.pairwise(timings):
        assert before.base_decode_time + before.duration == after.base_decode_time
    # Concatenated like a player does: one timeline of 150 frames, 40 ms apart.
    with av.open(io.BytesIO(init + b"".join(s[2] for s in segments))) as container:
        stream = container.streams.video[0]
        times = [
            float(f.pts * stream.time_base) for f in container.decode(stream) if f.pts is not None
        ]
    assert times == pytest.approx([i * FRAME_MS / 1000 for i in range(SPEC.frame_count)])


def test_on_demand_mpeg_ts_plays_every_frame(sample: SampleStream) -> None:
    url = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand_selector(sample, "SERVER_TIMESTAMP"),
    )
    assert decode_count(url) == sample.frame_count
    if FFPROBE:
        assert ffprobe_frames(url) == sample.frame_count
    media = http_get(base_of(url) + playlist_uris(http_get(url)[2].decode())[0])[2].decode()
    assert "#EXT-X-MAP" not in media and "#EXT-X-VERSION:3" in media
    assert media.count("#EXT-X-DISCONTINUITY\n") == 2  # SERVER_TIMESTAMP: ALWAYS by default
    segments = [http_get(base_of(url) + uri) for uri in playlist_uris(media)]
    assert all(s[1]["Content-Type"] == "video/mp2t" and s[2][0] == 0x47 for s in segments)
    # Timestamps continue from segment to segment (90 kHz since the session origin).
    firsts = []
    for _status, _headers, data in segments:
        with av.open(io.BytesIO(data), format="mpegts") as container:
            packet = next(p for p in container.demux(video=0) if p.pts is not None)
            firsts.append(packet.pts)
    assert firsts == [(r.producer_timestamp_ms - sample.first_ms) * 90 for r in sample.records]


def test_dash_on_demand_plays_every_frame(sample: SampleStream) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_DASH_STREAMING_SESSION_URL")
    url = am.get_dash_streaming_session_url(
        StreamName=sample.name,
        PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=on_demand_selector(sample),
        DisplayFragmentNumber="ALWAYS",
    )["DASHStreamingSessionURL"]
    assert "/dash/v1/getDASHManifest.mpd?SessionToken=" in url
    status, headers, body = http_get(url)
    assert status == 200 and headers["Content-Type"].startswith("application/dash+xml")
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(body)
    template = root.find(".//d:SegmentTemplate", ns)
    assert root.get("type") == "static" and template is not None
    numbers = [s.get(f"{{{playback.KVS_DASH_NAMESPACE}}}fn") for s in root.findall(".//d:S", ns)]
    assert numbers == [r.fragment_number for r in sample.records]
    start = int(template.get("startNumber", "1"))
    init = http_get(base_of(url) + str(template.get("initialization")))[2]
    media = [
        http_get(base_of(url) + str(template.get("media")).replace("$Number$", str(start + i)))[2]
        for i in range(len(numbers))
    ]
    with av.open(io.BytesIO(init + b"".join(media))) as container:
        assert sum(1 for _ in container.decode(video=0)) == sample.frame_count
    if FFPROBE:
        assert ffprobe_frames(url) == sample.frame_count
    # A $Number$ outside the session is not found.
    missing = http_get(base_of(url) + str(template.get("media")).replace("$Number$", "99"))
    assert missing[0] == 404 and missing[1]["x-amzn-ErrorType"] == "ResourceNotFoundException"


# --- sessions: tokens and errors ------------------------------------------------------------


def test_session_token_is_the_only_credential_and_expires(
    sample: SampleStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(sample),
        Expires=300,
    )
    status, headers, _ = http_get(url)  # no SigV4 on a player's GET
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    unknown = http_get(url.split("SessionToken=")[0] + "SessionToken=nope")
    assert unknown[0] == 403 and unknown[1]["x-amzn-ErrorType"] == "NotAuthorizedException"
    missing = http_get(url.split("?")[0])
    assert missing[0] == 400 and missing[1]["x-amzn-ErrorType"] == "InvalidArgumentException"
    later = time.time_ns() // 1_000_000 + 301_000
    monkeypatch.setattr(hls, "now_ms", lambda: later)
    expired = http_get(url)
    assert expired[0] == 403 and expired[1]["x-amzn-ErrorType"] == "NotAuthorizedException"
    assert b"Streaming session token is expired" in expired[2]


def test_segment_requests_name_what_is_wrong(sample: SampleStream) -> None:
    """Segment URLs a player could get wrong: each answers the service's error, with why."""
    first, second, third = sample.records
    url = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": first.producer_timestamp_ms / 1000,
                "EndTimestamp": second.producer_timestamp_ms / 1000,
            },
        },
    )
    token = url.split("SessionToken=", 1)[1]
    segment = f"{base_of(url)}getMP4MediaFragment.mp4?SessionToken={token}"
    cases = [
        ("", 400, "InvalidArgumentException", "FragmentNumber is required."),
        ("&FragmentNumber=abc", 400, "InvalidArgumentException", "is not a fragment number"),
        ("&FragmentNumber=123", 404, "ResourceNotFoundException", "was not found in the stream"),
        (
            f"&FragmentNumber={third.fragment_number}",
            404,
            "ResourceNotFoundException",
            "is not part of the streaming session",
        ),
        ("&SequenceNumber=x", 400, "InvalidArgumentException", "SequenceNumber 'x' is not a"),
        ("&SequenceNumber=99", 404, "ResourceNotFoundException", "No fragment with sequence"),
        ("&TrackNumber=7", 400, "InvalidArgumentException", "TrackNumber '7' is not a track"),
    ]
    for query, status, code, message in cases:
        got_status, headers, body = http_get(segment + query)
        assert (got_status, headers["x-amzn-ErrorType"]) == (status, code), query
        assert message in body.decode(), (query, body)
    ok = http_get(f"{segment}&FragmentNumber={second.fragment_number}")
    assert ok[0] == 200 and [b[0] for b in boxes(ok[2])] == ["moof", "mdat"]


def test_session_url_errors_through_boto3(sample: SampleStream, emu: Emulator) -> None:
    am = archived_client(emu, sample.name, "GET_HLS_STREAMING_SESSION_URL")

    def code(**kwargs: Any) -> str:
        with pytest.raises(ClientError) as info:
            am.get_hls_streaming_session_url(**kwargs)
        return str(info.value.response["Error"]["Code"])

    selector = on_demand_selector(sample)
    assert (
        code(StreamName=sample.name, PlaybackMode="LIVE", HLSFragmentSelector=selector)
        == "InvalidArgumentException"
    )
    assert code(StreamName=sample.name, PlaybackMode="ON_DEMAND") == "InvalidArgumentException"
    assert code(StreamName=sample.name, Expires=50_000) == "InvalidArgumentException"
    assert code(StreamName="nobody") == "ResourceNotFoundException"
    empty = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": 1000, "EndTimestamp": 2000},
    }
    assert (
        code(StreamName=sample.name, PlaybackMode="ON_DEMAND", HLSFragmentSelector=empty)
        == "ResourceNotFoundException"
    )
    kv = client("kinesisvideo", emu.endpoint_url)
    kv.create_stream(StreamName="no-archive", DataRetentionInHours=0)
    assert code(StreamName="no-archive") == "NoDataRetentionException"
    # A stream whose track 1 is not H.264/H.265.
    kv.create_stream(StreamName="mjpeg", DataRetentionInHours=1)
    mjpeg = (TrackInfo(1, "V_MS/VFW/FOURCC", bytes(40), width=64, height=48),)
    now = time.time_ns() // 1_000_000
    put_fragments(
        emu.endpoint_url,
        "mjpeg",
        mjpeg,
        [(now, [FrameData(1, now, b"\xff\xd8\xff\xd9", keyframe=True)])],
    )
    assert code(StreamName="mjpeg") == "UnsupportedStreamMediaTypeException"
    # HLS segments from a DASH token, TS from an fMP4 session: refused.
    url = hls_url(
        sample.emulator, sample.name, PlaybackMode="ON_DEMAND", HLSFragmentSelector=selector
    )
    ts = http_get(
        url.replace("getHLSMasterPlaylist.m3u8", "getTSFragment.ts")
        + f"&FragmentNumber={sample.records[0].fragment_number}"
    )
    assert ts[0] == 400 and ts[1]["x-amzn-ErrorType"] == "InvalidArgumentException"
    outside = http_get(
        url.replace("getHLSMasterPlaylist.m3u8", "getMP4MediaFragment.mp4") + "&FragmentNumber=1"
    )
    assert outside[0] == 404 and outside[1]["x-amzn-ErrorType"] == "ResourceNotFoundException"


def test_on_demand_keeps_the_oldest_max_results_and_live_replay_adds_as_time_passes(
    sample: SampleStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_two = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(sample),
        MaxMediaPlaylistFragmentResults=2,
    )
    media = http_get(base_of(first_two) + playlist_uris(http_get(first_two)[2].decode())[0])
    numbers = re.findall(r"FragmentNumber=(\d+)", media[2].decode())
    assert numbers == [r.fragment_number for r in sample.records[:2]]
    # LIVE_REPLAY from the first fragment to the last: one fragment joins per 2 s elapsed.
    selector = on_demand_selector(sample)
    url = hls_url(
        sample.emulator, sample.name, PlaybackMode="LIVE_REPLAY", HLSFragmentSelector=selector
    )
    media_url = base_of(url) + playlist_uris(http_get(url)[2].decode())[0]
    real_now = hls.now_ms

    def playlist_after(seconds: float) -> str:
        monkeypatch.setattr(hls, "now_ms", lambda: real_now() + round(seconds * 1000))
        return http_get(media_url)[2].decode()

    assert len(playlist_uris(playlist_after(0))) == 1
    assert len(playlist_uris(playlist_after(2.1))) == 2
    last = playlist_after(4.1)
    assert len(playlist_uris(last)) == 3 and "#EXT-X-ENDLIST" in last
    # Without an end it goes on as long as new fragments come.
    open_ended = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": sample.first_ms / 1000},
    }
    monkeypatch.setattr(hls, "now_ms", real_now)
    url = hls_url(
        sample.emulator, sample.name, PlaybackMode="LIVE_REPLAY", HLSFragmentSelector=open_ended
    )
    media_url = base_of(url) + playlist_uris(http_get(url)[2].decode())[0]
    endless = playlist_after(60)
    assert len(playlist_uris(endless)) == 3 and "#EXT-X-ENDLIST" not in endless


def test_remux_errors_are_decode_errors_with_the_reason(sample: SampleStream) -> None:
    payload = sample.emulator.store.sync.read_payload(sample.records[0])
    with pytest.raises(DecodeError, match=r"the fragment has no track #5 to put in mp4"):
        remux.fmp4_init_segment(payload, stream_index=5)
    with pytest.raises(DecodeError, match=r"box b'moof' at byte 0 has a bad size 16"):
        list(remux.iter_boxes(b"\x00\x00\x00\x10moof"))
    with pytest.raises(DecodeError, match="a stored fragment is corrupt"):
        remux.fmp4_media_segment(b"\x1a\x45\xdf\xa3\x88", origin_ms=0)


# --- LIVE -----------------------------------------------------------------------------------


def test_live_playlist_follows_new_fragments_then_404s_when_idle(
    sample: SampleStream, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hls, "LIVE_IDLE_TIMEOUT_S", 2.0)
    kv = client("kinesisvideo", emu.endpoint_url)
    kv.create_stream(StreamName="grow", DataRetentionInHours=1)
    base = time.time_ns() // 1_000_000 - 10_000
    put_fragments(emu.endpoint_url, "grow", sample.tracks, [shifted(sample.fragments[0], base)])
    url = hls_url(
        emu,
        "grow",
        PlaybackMode="LIVE",
        MaxMediaPlaylistFragmentResults=2,
        DiscontinuityMode="ON_DISCONTINUITY",
    )
    media_url = base_of(url) + playlist_uris(http_get(url)[2].decode())[0]

    def playlist() -> str:
        status, _headers, body = http_get(media_url)
        assert status == 200, body
        return body.decode()

    first = playlist()
    assert "#EXT-X-MEDIA-SEQUENCE:1" in first and len(playlist_uris(first)) == 1
    assert "#EXT-X-ENDLIST" not in first and "#EXT-X-PLAYLIST-TYPE" not in first
    put_fragments(
        emu.endpoint_url, "grow", sample.tracks, [shifted(sample.fragments[1], base + 2000)]
    )
    assert len(playlist_uris(playlist())) == 2
    # A 4 s gap, then the next fragment: the window slides and marks the discontinuity.
    put_fragments(
        emu.endpoint_url, "grow", sample.tracks, [shifted(sample.fragments[2], base + 8000)]
    )
    third = playlist()
    assert "#EXT-X-MEDIA-SEQUENCE:2" in third and len(playlist_uris(third)) == 2
    assert third.count("#EXT-X-DISCONTINUITY\n") == 1
    numbers = [re.search(r"FragmentNumber=(\d+)", u).group(1) for u in playlist_uris(third)]  # type: ignore[union-attr]
    stored = [r.fragment_number for r in emu.store.sync.list_fragments("grow").fragments]
    assert numbers == stored[1:]
    time.sleep(2.2)
    status, headers, _ = http_get(media_url)
    assert status == 404 and headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    am = archived_client(emu, "grow", "GET_HLS_STREAMING_SESSION_URL")
    with pytest.raises(ClientError) as info:
        am.get_hls_streaming_session_url(StreamName="grow", PlaybackMode="LIVE")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # New data: the same session plays on.
    put_fragments(
        emu.endpoint_url, "grow", sample.tracks, [shifted(sample.fragments[0], base + 10_000)]
    )
    assert "#EXT-X-MEDIA-SEQUENCE:3" in playlist()


def test_live_players_decode_every_frame_uploaded(
    sample: SampleStream, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyAV and ffprobe follow a LIVE session while fragments arrive, until it goes idle."""
    # Long enough for the players to fetch the last segment, short for the test.
    monkeypatch.setattr(hls, "LIVE_IDLE_TIMEOUT_S", 3.0)
    kv = client("kinesisvideo", emu.endpoint_url)
    kv.create_stream(StreamName="live", DataRetentionInHours=1)
    base = time.time_ns() // 1_000_000
    clusters = [shifted(f, base + 2000 * i) for i, f in enumerate(sample.fragments)]
    put_fragments(emu.endpoint_url, "live", sample.tracks, clusters[:1])
    urls = [hls_url(emu, "live", PlaybackMode="LIVE") for _ in range(2)]
    counts: dict[str, int] = {}

    def pyav() -> None:
        counts["pyav"] = decode_count(urls[0], live_start_index="0")

    def probe() -> None:
        # ffprobe starts a live playlist 3 segments from its end: here, at the first.
        counts["ffprobe"] = ffprobe_frames(urls[1])

    players = [threading.Thread(target=pyav)]
    if FFPROBE:
        players.append(threading.Thread(target=probe))
    for player in players:
        player.start()
    for cluster in clusters[1:]:
        time.sleep(0.4)
        put_fragments(emu.endpoint_url, "live", sample.tracks, [cluster])
    for player in players:
        player.join(30)
    assert counts["pyav"] == sample.frame_count
    if FFPROBE:
        assert counts["ffprobe"] == sample.frame_count


def test_dash_live_manifest_grows(sample: SampleStream, emu: Emulator) -> None:
    kv = client("kinesisvideo", emu.endpoint_url)
    kv.create_stream(StreamName="dash-live", DataRetentionInHours=1)
    base = time.time_ns() // 1_000_000 - 6000
    put_fragments(
        emu.endpoint_url, "dash-live", sample.tracks, [shifted(sample.fragments[0], base)]
    )
    am = archived_client(emu, "dash-live", "GET_DASH_STREAMING_SESSION_URL")
    url = am.get_dash_streaming_session_url(
        StreamName="dash-live", DisplayFragmentTimestamp="ALWAYS"
    )["DASHStreamingSessionURL"]
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}

    def segments() -> list[ET.Element]:
        root = ET.fromstring(http_get(url)[2])
        assert root.get("type") == "dynamic" and root.get("minimumUpdatePeriod") == "PT1.000S"
        return root.findall(".//d:S", ns)

    assert len(segments()) == 1
    put_fragments(
        emu.endpoint_url, "dash-live", sample.tracks, [shifted(sample.fragments[1], base + 2000)]
    )
    grown = segments()
    assert [(s.get("t"), s.get("d")) for s in grown] == [("0", "2000"), ("2000", "2000")]
    stored = emu.store.sync.list_fragments("dash-live").fragments
    assert [s.get(f"{{{playback.KVS_DASH_NAMESPACE}}}ts") for s in grown] == [
        str(r.server_timestamp_ms) for r in stored
    ]


# --- other codecs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def with_audio(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    """H.264 and AAC (48 kHz stereo), 2 s in 1 s fragments."""
    path = tmp_path_factory.mktemp("aac") / "aac.mp4"
    write_clip(path, Clip(audio="aac", frames=50))
    return upload_file(emu, path, "with-audio", fragment_duration_ms=1000)


def packet_counts(url: str) -> dict[str, int]:
    counts = {"video": 0, "audio": 0}
    with av.open(url) as container:
        for packet in container.demux():
            if packet.size:
                counts[packet.stream.type] += 1
    return counts


def test_aac_is_its_own_rendition_with_continuous_tfdt(with_audio: SampleStream) -> None:
    video, audio = with_audio.track_frames(1), with_audio.track_frames(2)
    assert (video, len(with_audio.records)) == (50, 2) and audio > 80
    url = hls_url(
        with_audio.emulator,
        with_audio.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(with_audio),
    )
    master = http_get(url)[2].decode()
    rendition = re.search(r'#EXT-X-MEDIA:TYPE=AUDIO,.*URI="([^"]+)"', master)
    assert rendition is not None and rendition.group(1).endswith("&TrackNumber=2")
    assert re.search(r'CODECS="avc1\.[0-9A-F]{6},mp4a\.40\.2",AUDIO="audio"', master)
    assert packet_counts(url) == {"video": video, "audio": audio}
    assert decode_count(url) == video
    # The audio rendition's segments continue each other to within the 1 ms resolution
    # of the stored timestamps.
    media = http_get(base_of(url) + rendition.group(1))[2].decode()
    init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', media)
    assert init_uri is not None and init_uri.group(1).endswith("&TrackNumber=2")
    init = http_get(base_of(url) + init_uri.group(1))[2]
    scale = timescale_of(init)
    assert scale == 48_000
    timings = [moof_timing(http_get(base_of(url) + u)[2]) for u in playlist_uris(media)]
    assert sum(t.samples for t in timings) == audio
    assert timings[0].base_decode_time <= scale // 20  # the audio starts with the video
    for before, after in itertools.pairwise(timings):
        assert (
            abs(before.base_decode_time + before.duration - after.base_decode_time) <= scale // 1000
        )
    # MPEG-TS: one playlist, both tracks in every segment.
    ts_url = hls_url(
        with_audio.emulator,
        with_audio.name,
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand_selector(with_audio),
    )
    assert "EXT-X-MEDIA" not in http_get(ts_url)[2].decode()
    assert packet_counts(ts_url) == {"video": video, "audio": audio}


def test_aac_is_its_own_dash_adaptation_set(with_audio: SampleStream) -> None:
    am = archived_client(with_audio.emulator, with_audio.name, "GET_DASH_STREAMING_SESSION_URL")
    url = am.get_dash_streaming_session_url(
        StreamName=with_audio.name,
        PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=on_demand_selector(with_audio),
    )["DASHStreamingSessionURL"]
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    root = ET.fromstring(http_get(url)[2])
    counts = {}
    for adaptation in root.findall(".//d:AdaptationSet", ns):
        template = adaptation.find(".//d:SegmentTemplate", ns)
        assert template is not None
        start = int(template.get("startNumber", "1"))
        count = len(adaptation.findall(".//d:S", ns))
        data = http_get(base_of(url) + str(template.get("initialization")))[2] + b"".join(
            http_get(base_of(url) + str(template.get("media")).replace("$Number$", str(n)))[2]
            for n in range(start, start + count)
        )
        with av.open(io.BytesIO(data)) as container:
            assert len(container.streams) == 1  # one track per AdaptationSet
            counts[adaptation.get("contentType")] = sum(1 for p in container.demux() if p.size)
    assert counts == {"video": with_audio.track_frames(1), "audio": with_audio.track_frames(2)}
    if FFPROBE:
        assert ffprobe_frames(url) == with_audio.track_frames(1)


@needs_x265
def test_h265_plays_in_fmp4_and_ts(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("hevc") / "hevc.mkv"
    write_clip(path, Clip(codec="libx265", frames=50))
    stream = upload_file(emu, path, "hevc", fragment_duration_ms=1000)
    for container_format in ("FRAGMENTED_MP4", "MPEG_TS"):
        url = hls_url(
            emu,
            "hevc",
            PlaybackMode="ON_DEMAND",
            ContainerFormat=container_format,
            HLSFragmentSelector=on_demand_selector(stream),
        )
        master = http_get(url)[2].decode()
        assert 'CODECS="hvc1.' in master
        assert decode_count(url) == stream.frame_count == 50
        if FFPROBE:
            assert ffprobe_frames(url) == 50
        if container_format == "FRAGMENTED_MP4":
            media = http_get(base_of(url) + playlist_uris(master)[0])[2].decode()
            init_uri = re.search(r'#EXT-X-MAP:URI="([^"]+)"', media)
            assert init_uri is not None
            init = http_get(base_of(url) + init_uri.group(1))[2]
            # The hvc1 sample entry (parameter sets in hvcC), which Apple players need.
            assert b"hvc1" in init and b"hvcC" in init and b"hev1" not in init


def test_opencv_videocapture_reads_the_hls_url(sample: SampleStream) -> None:
    """OpenCV, as many consumer scripts use it, plays the session URL directly."""
    import cv2

    if "FFMPEG" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV build has no FFmpeg backend")
    url = hls_url(
        sample.emulator,
        sample.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(sample),
    )
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        assert capture.isOpened()
        frames = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            assert image.shape == (360, 640, 3)
            frames += 1
    finally:
        capture.release()
    assert frames == sample.frame_count


# --- codec private data changing inside a session -------------------------------------------


@pytest.fixture(scope="module")
def resized(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    """A producer restarted with another resolution: 2 fragments of 160x96, then 2 of
    320x192 (a new SPS, so new CodecPrivate), on one stream."""
    directory = tmp_path_factory.mktemp("resized")
    small, large = directory / "small.mkv", directory / "large.mkv"
    write_clip(small, Clip(frames=50))
    write_clip(large, Clip(frames=50, width=320, height=192))
    first = upload_file(emu, small, "resized", fragment_duration_ms=1000)
    # The producer stamps a file's fragments from the time it starts; the restart is
    # placed right after the first run's end instead, so only the codec changes.
    source = upload_file(emu, large, "resized-source", fragment_duration_ms=1000)
    clusters = [shifted(f, first.end_ms + 1000 * n) for n, f in enumerate(source.fragments)]
    put_fragments(emu.endpoint_url, "resized", source.tracks, clusters)
    store = emu.store.sync
    records = list(store.list_fragments("resized").fragments)
    fragments = [parse_payload(store.read_payload(r)) for r in records]
    both = SampleStream(emu, "resized", records, fragments)
    assert first.tracks[0].codec_private != both.fragments[-1].tracks[0].codec_private
    return both


def test_codec_change_gets_a_discontinuity_and_a_new_init_segment(resized: SampleStream) -> None:
    assert len(resized.records) == 4
    url = hls_url(
        resized.emulator,
        resized.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(resized),  # PRODUCER_TIMESTAMP: NEVER
    )
    master = http_get(url)[2].decode()
    media = http_get(base_of(url) + playlist_uris(master)[0])[2].decode()
    lines = media.splitlines()
    maps = [line for line in lines if line.startswith("#EXT-X-MAP:")]
    assert len(maps) == 2 and lines.count("#EXT-X-DISCONTINUITY") == 1
    third = resized.records[2].fragment_number
    assert maps[1].endswith(f'&FragmentNumber={third}"')
    # The discontinuity and the new map come right before the first 320x192 segment.
    at = lines.index("#EXT-X-DISCONTINUITY")
    assert lines[at + 1] == maps[1] and f"FragmentNumber={third}&" in lines[at + 3]
    # A player appends each init segment before the segments after its EXT-X-MAP (as
    # MSE players do): every frame decodes, at its own size, on one timeline.
    sizes: list[tuple[int, int]] = []
    times: list[float] = []
    init = b""
    for line in lines:
        if line.startswith("#EXT-X-MAP:"):
            init = http_get(base_of(url) + line.split('"')[1])[2]
            assert [b[0] for b in boxes(init)] == ["ftyp", "moov"]
        elif line and not line.startswith("#"):
            segment = http_get(base_of(url) + line)[2]
            with av.open(io.BytesIO(init + segment)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    sizes.append((frame.width, frame.height))
                    times.append(float(frame.pts * stream.time_base))
    assert sizes == [(160, 96)] * 50 + [(320, 192)] * 50
    assert times == sorted(times)
    # An init segment of a fragment that brings no configuration in: not found.
    token = url.split("SessionToken=", 1)[1]
    second = resized.records[1].fragment_number
    status, _headers, body = http_get(
        f"{base_of(url)}getMP4InitFragment.mp4?SessionToken={token}&FragmentNumber={second}"
    )
    assert status == 404 and b"does not start a codec configuration" in body


def test_codec_change_plays_in_ffmpeg_over_mpeg_ts(resized: SampleStream) -> None:
    """MPEG-TS carries the parameter sets in band: FFmpeg's HLS demuxer plays across."""
    url = hls_url(
        resized.emulator,
        resized.name,
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand_selector(resized),
    )
    media = http_get(base_of(url) + playlist_uris(http_get(url)[2].decode())[0])[2].decode()
    assert media.count("#EXT-X-DISCONTINUITY\n") == 1 and "#EXT-X-MAP" not in media
    with av.open(url) as container:
        sizes = [(f.width, f.height) for f in container.decode(video=0)]
    assert sizes == [(160, 96)] * 50 + [(320, 192)] * 50


def test_dash_refuses_a_codec_change(resized: SampleStream) -> None:
    am = archived_client(resized.emulator, resized.name, "GET_DASH_STREAMING_SESSION_URL")
    url = am.get_dash_streaming_session_url(
        StreamName=resized.name,
        PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=on_demand_selector(resized),
    )["DASHStreamingSessionURL"]
    token = url.split("SessionToken=", 1)[1]
    status, headers, body = http_get(
        f"{base_of(url)}getMP4MediaFragment.mp4?SessionToken={token}&TrackNumber=1&SequenceNumber=3"
    )
    assert status == 400 and headers["x-amzn-ErrorType"] == "InvalidCodecPrivateDataException"
    assert b"may not change inside a DASH session" in body
