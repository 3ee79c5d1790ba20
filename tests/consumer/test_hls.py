"""The HLS reader against the real emulator: the same frames as GetMedia and the archive.

Real H.264 (libx264 through kvs_toolkit.samples) goes in through the producer's PutMedia
path; GetMedia, GetMediaForFragmentList and an HLS session read it back, and the same
FragmentDecoder decodes all three.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from botocore.credentials import Credentials

from kvs_toolkit.cli import build_parser
from kvs_toolkit.cli.consume import run as cmd_consume
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.hls import (
    HlsReader,
    PlaylistSegment,
    parse_master_playlist,
    parse_media_playlist,
    segment_fragment,
)
from kvs_toolkit.consumer.readers import ArchiveReader, FragmentSource, LiveReader
from kvs_toolkit.emulator import Emulator
from kvs_toolkit.emulator import hls as emulator_hls
from kvs_toolkit.errors import DecodeError, GetMediaError
from kvs_toolkit.producer.run import produce
from kvs_toolkit.producer.sources import SourceOptions, open_source
from kvs_toolkit.samples import SampleSpec, write_sample

from .test_readers import ACCESS_KEY, FAST, SECRET, Collector, aws_session, wait_for

SPEC = SampleSpec(width=320, height=240, fps=10, seconds=4.0, codec="h264", gop_seconds=1.0)
FRAGMENTS = 4


def produce_sample(url: str, stream: str, path: Path, *, create: bool = True) -> None:
    stats = asyncio.run(
        produce(
            open_source(str(path), SourceOptions(realtime=False, audio=False)),
            url,
            stream,
            create_stream=create,
            credentials=Credentials(ACCESS_KEY, SECRET),
            fragment_duration_ms=1000,
        )
    )
    assert stats.acked == FRAGMENTS


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("hls") / "sample.mkv", SPEC)


@pytest.fixture(scope="module")
def emulator(sample: Path) -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        produce_sample(emu.endpoint_url, "hls", sample)
        yield emu


def decode(source: FragmentSource, limit: int | None = None) -> list[DecodedFrame]:
    decoder = FragmentDecoder()
    frames: list[DecodedFrame] = []
    for count, fragment in enumerate(source, start=1):
        frames += decoder.decode(fragment)
        if limit is not None and count >= limit:
            break
    return frames + decoder.flush()


def summary(frames: list[DecodedFrame]) -> list[tuple[str | None, int, bool, float | None]]:
    return [
        (
            f.fragment_number,
            f.timestamp_ns // 1_000_000,
            f.keyframe,
            None if f.producer_timestamp is None else f.producer_timestamp.timestamp(),
        )
        for f in frames
    ]


def test_hls_and_archive_readers_return_the_same_frames_as_getmedia(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    with LiveReader("hls", start="earliest", endpoint_url=url, session=aws_session()) as live:
        reference = decode(live, limit=FRAGMENTS)
    assert len(reference) == int(SPEC.fps * SPEC.seconds)
    producer = [f.producer_timestamp for f in reference if f.producer_timestamp]
    start, end = min(producer), max(producer)
    with ArchiveReader("hls", start, end, endpoint_url=url, session=aws_session()) as archive:
        archived = decode(archive)
    with HlsReader(
        "hls", playback_mode="ON_DEMAND", start=start, end=end, endpoint_url=url,
        session=aws_session(),
    ) as reader:  # fmt: skip
        played = decode(reader)
        assert reader.stats.fragments == FRAGMENTS
    for other in (archived, played):
        # Same count, fragment numbers, producer timestamps, frame timestamps (ms), key flags.
        assert summary(other) == summary(reference)
        for mine, theirs in zip(other, reference, strict=True):
            # Decoded from the same bytes by the same decoder: identical pixels.
            assert np.array_equal(mine.image, theirs.image)


def test_hls_session_url_and_sampling(emulator: Emulator) -> None:
    url = emulator.endpoint_url
    now = dt.datetime.now(dt.timezone.utc)
    creator = HlsReader(
        "hls", playback_mode="ON_DEMAND", start=now - dt.timedelta(hours=1),
        end=now + dt.timedelta(hours=1), endpoint_url=url, session=aws_session(),
    )  # fmt: skip
    session_url = creator.create_session()
    creator.close()
    with HlsReader(session_url=session_url) as reader:
        decoder = FragmentDecoder(keyframes_only=True, format="gray")
        frames = list(decoder.decode_all(reader))
    assert [f.keyframe for f in frames] == [True] * FRAGMENTS
    assert {f.image.shape for f in frames} == {(SPEC.height, SPEC.width)}
    assert decoder.stats.packets_skipped == int(SPEC.fps * SPEC.seconds) - FRAGMENTS
    assert len({f.fragment_number for f in frames}) == FRAGMENTS


def test_live_hls_fetches_only_new_segments_and_ends_when_the_session_ends(
    sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emu:
        url = emu.endpoint_url
        produce_sample(url, "live-hls", sample)
        reader = HlsReader(
            "live-hls", playback_mode="LIVE", endpoint_url=url, session=aws_session(),
            poll_interval_s=0.1, backoff=FAST,
        )  # fmt: skip
        collector = Collector(reader)
        first = collector.take(FRAGMENTS)
        produce_sample(url, "live-hls", sample, create=False)  # four more, while polling
        second = collector.take(FRAGMENTS)
        # Nothing new for LIVE_IDLE_TIMEOUT_S (read at each request; 30 s in the service,
        # shortened now that all was produced): the playlist answers 404, the read ends.
        monkeypatch.setattr(emulator_hls, "LIVE_IDLE_TIMEOUT_S", 0.5)
        got = collector.finish(timeout=15)
        reader.close()
    numbers = [f.fragment_number for f in got]
    assert numbers == [f.fragment_number for f in first + second]
    assert len(set(numbers)) == 2 * FRAGMENTS  # every segment fetched once
    assert numbers == sorted(numbers, key=int)


def test_live_hls_idle_exit_and_stop(emulator: Emulator, sample: Path) -> None:
    # Fresh fragments: a LIVE session needs some from the last 30 s.
    produce_sample(emulator.endpoint_url, "idle-hls", sample)
    reader = HlsReader(
        "idle-hls", playback_mode="LIVE", endpoint_url=emulator.endpoint_url,
        session=aws_session(), poll_interval_s=0.05, idle_exit_s=0.3,
    )  # fmt: skip
    collector = Collector(reader)
    got = collector.finish(timeout=10)
    assert 1 <= len(got) <= FRAGMENTS
    reader.close()
    stopped = HlsReader(
        "idle-hls", playback_mode="LIVE", endpoint_url=emulator.endpoint_url,
        session=aws_session(), poll_interval_s=30,
    )  # fmt: skip
    collector = Collector(stopped)
    wait_for(lambda: stopped.stats.fragments >= 1)
    stopped.stop()
    collector.finish(timeout=5)
    stopped.close()


# --- playlists and bad input ----------------------------------------------------------------
MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:5
#EXT-X-MAP:URI="getMP4InitFragment.mp4?SessionToken=T"
#EXT-X-PROGRAM-DATE-TIME:2024-05-01T12:00:00.123Z
#EXTINF:2.000,
getMP4MediaFragment.mp4?FragmentNumber=91343852333&SessionToken=T
#EXT-X-DISCONTINUITY
#EXTINF:1.500,
getMP4MediaFragment.mp4?FragmentNumber=91343852334&SessionToken=T
#EXT-X-ENDLIST
"""


def test_media_playlist_parser() -> None:
    base = "http://127.0.0.1:9/hls/v1/getHLSMediaPlaylist.m3u8?SessionToken=T"
    playlist = parse_media_playlist(MEDIA, base)
    assert playlist.ended and playlist.target_duration_s == 2 and playlist.media_sequence == 5
    first, second = playlist.segments
    assert first == PlaylistSegment(
        uri="http://127.0.0.1:9/hls/v1/getMP4MediaFragment.mp4?FragmentNumber=91343852333"
        "&SessionToken=T",
        duration_s=2.0,
        sequence=5,
        program_date_time=dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.timezone.utc),
        map_uri="http://127.0.0.1:9/hls/v1/getMP4InitFragment.mp4?SessionToken=T",
    )
    assert first.fragment_number == "91343852333"
    assert second.discontinuity and second.program_date_time is None
    assert (second.sequence, second.fragment_number) == (6, "91343852334")
    master = '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,CODECS="avc1"\nmedia.m3u8?T=1\n'
    assert parse_master_playlist(master, base) == ["http://127.0.0.1:9/hls/v1/media.m3u8?T=1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<html>", "not an HLS playlist: the first line is not #EXTM3U"),
        ("#EXTM3U\nsegment.mp4\n", "line 2: segment 'segment.mp4' without #EXTINF"),
        ("#EXTM3U\n#EXTINF:abc,\nx.mp4\n", r"line 2: bad value in '#EXTINF:abc,'"),
        ("#EXTM3U\n#EXT-X-PROGRAM-DATE-TIME:yesterday\n", "line 2: EXT-X-PROGRAM-DATE-TIME"),
        ("#EXTM3U\n#EXT-X-MAP:BYTERANGE=1\n", "line 2: EXT-X-MAP without a URI"),
    ],
)
def test_malformed_playlists_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(GetMediaError, match=message):
        parse_media_playlist(text, "http://x/")


def test_bad_segments_and_arguments_are_clear_errors() -> None:
    with pytest.raises(DecodeError, match="HLS segment 7: not an fMP4 segment"):
        segment_fragment(b"", b"not mp4", fragment_number="7")
    with pytest.raises(ValueError, match="needs a stream"):
        HlsReader()
    with pytest.raises(ValueError, match="ON_DEMAND HLS session needs a start and an end"):
        HlsReader("s", playback_mode="ON_DEMAND")


def test_unknown_stream_and_expired_session_are_clear_errors(emulator: Emulator) -> None:
    with (
        HlsReader("nope", endpoint_url=emulator.endpoint_url, session=aws_session()) as reader,
        pytest.raises(GetMediaError, match="GetHLSStreamingSessionURL nope: the stream was not"),
    ):
        list(reader)
    bogus = emulator.endpoint_url + "/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=nope"
    with (
        HlsReader(session_url=bogus, backoff=FAST) as reader,
        pytest.raises(GetMediaError, match="HLS playlist: HTTP 4"),
    ):
        list(reader)


# --- the command ----------------------------------------------------------------------------
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def run_consume(*argv: str) -> int:
    return cmd_consume(build_parser("consume").parse_args(["consume", *argv]))


def test_consume_hls_writes_the_same_lines_as_getmedia(
    emulator: Emulator, aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = emulator.endpoint_url
    getmedia, hls = tmp_path / "getmedia.jsonl", tmp_path / "hls.jsonl"
    common = ("--stream", "hls", "--endpoint-url", url, "--no-progress")
    assert run_consume(*common, "--start", "earliest", "--max-fragments", str(FRAGMENTS),
                       "--out", str(getmedia)) == 0  # fmt: skip
    reference = [json.loads(line) for line in getmedia.read_text().splitlines()]
    start = min(r["producer_timestamp"] for r in reference)
    end = max(r["producer_timestamp"] for r in reference)
    assert run_consume(*common, "--hls", "--archive", str(start), str(end), "--out", str(hls),
                       "--queue-size", "4", "--queue-policy", "block") == 0  # fmt: skip
    played = [json.loads(line) for line in hls.read_text().splitlines()]
    fields = ("fragment_number", "producer_timestamp", "timestamp", "keyframe", "width", "height")
    assert [[r[k] for k in fields] for r in played] == [[r[k] for k in fields] for r in reference]
    assert "queue: block, size 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--playback-mode", "LIVE"], "--playback-mode applies to --hls"),
        (["--idle-exit", "1", "--archive", "1", "2"], "--idle-exit applies to live reading"),
        (["--hls", "--playback-mode", "ON_DEMAND"], "ON_DEMAND needs --archive START END"),
        (["--hls", "--playback-mode", "LIVE", "--archive", "1", "2"], "leave out --archive"),
        (["--hls", "--checkpoint", "c.sqlite3"], "applies to live streams (GetMedia), not --hls"),
        (["--hls", "--start", "checkpoint"], "applies to live streams (GetMedia), not --hls"),
    ],
)
def test_consume_hls_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run_consume("--stream", "s", "--out", str(tmp_path / "o.jsonl"), *argv) == 2
    assert message in capsys.readouterr().err


def test_an_expired_session_is_renewed_and_the_read_goes_on(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    reader = HlsReader(
        "hls", playback_mode="ON_DEMAND", start=now - dt.timedelta(hours=1),
        end=now + dt.timedelta(hours=1), endpoint_url=emulator.endpoint_url,
        session=aws_session(),
    )  # fmt: skip
    assert isinstance(reader, FragmentSource)
    fragments = iter(reader)
    first = [next(fragments), next(fragments)]
    # Ten minutes later on the emulator's clock: the session (Expires 300 s) is over.
    real_now = emulator_hls.now_ms
    monkeypatch.setattr(emulator_hls, "now_ms", lambda: real_now() + 600_000)
    rest = list(fragments)
    reader.close()
    numbers = [f.fragment_number for f in first + rest]
    assert len(numbers) == len(set(numbers)) == FRAGMENTS
    assert reader.stats.session_rotations == 1


def test_segment_size_limit_is_a_clear_error(emulator: Emulator) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    reader = HlsReader(
        "hls", playback_mode="ON_DEMAND", start=now - dt.timedelta(hours=1),
        end=now + dt.timedelta(hours=1), endpoint_url=emulator.endpoint_url,
        session=aws_session(), max_segment_bytes=200,
    )  # fmt: skip
    with reader, pytest.raises(GetMediaError, match=r"HLS init segment: .*the limit of 200 bytes"):
        list(reader)


def test_an_empty_range_of_an_existing_stream_is_an_empty_read_not_a_missing_stream(
    emulator: Emulator, aws_env: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "empty.jsonl"
    argv = ("--stream", "hls", "--endpoint-url", emulator.endpoint_url, "--no-progress",
            "--hls", "--archive", "2001-01-01T00:00:00Z", "2001-01-01T00:01:00Z",
            "--out", str(out))  # fmt: skip
    assert run_consume(*argv) == 0
    assert out.read_text() == ""
    assert "no fragments in the requested range" in caplog.text
    assert "not found" not in caplog.text
    with pytest.raises(GetMediaError, match="the stream was not found"):
        run_consume("--stream", "nope", "--endpoint-url", emulator.endpoint_url, "--hls",
                    "--archive", "2001-01-01", "2001-01-02",
                    "--out", str(tmp_path / "x"))  # fmt: skip
