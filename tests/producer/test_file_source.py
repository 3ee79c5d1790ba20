"""File sources: pass-through of H.264/H.265, re-encoding of anything else, audio, loops."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import av
import pytest

from kvs_toolkit import bitstream
from kvs_toolkit.errors import KvsError
from kvs_toolkit.mkv import TrackInfo
from kvs_toolkit.producer import EncodedFrame
from kvs_toolkit.producer.encoder import Encoder
from kvs_toolkit.producer.sources import (
    FileSource,
    SourceError,
    SourceOptions,
    adts_to_asc,
    open_source,
)
from tests.producer.conftest import ClipFactory
from tests.producer.media import (
    FPS,
    HEIGHT,
    WIDTH,
    Clip,
    check_fragments,
    decode_counts,
    decoded_size,
    demux,
    needs_x265,
    package,
    strictly_increasing,
    to_avcc,
    write_silence,
)

FAST = SourceOptions(realtime=False, fragment_duration_ms=1000)


def read_all(
    path: Path, options: SourceOptions = FAST
) -> tuple[FileSource, list[TrackInfo], list[EncodedFrame]]:
    source = open_source(str(path), options)
    assert isinstance(source, FileSource)
    with source:
        tracks = source.tracks
        frames = list(source)
    return source, tracks, frames


@pytest.mark.parametrize("suffix", ["mp4", "mkv", "ts", "h264"])
def test_h264_is_passed_through_byte_for_byte(make_clip: ClipFactory, suffix: str) -> None:
    path = make_clip(f"clip.{suffix}", Clip())
    encoders_before = Encoder.created
    source, tracks, frames = read_all(path)

    # no encoder was made: the packets went through untouched (Annex-B -> AVCC for .ts/.h264)
    assert Encoder.created == encoders_before
    assert source.encoder is None
    packets = demux(path)
    expected = [p.data for p in packets] if suffix in ("mp4", "mkv") else to_avcc(packets)
    assert [bytes(f.data) for f in frames] == expected
    assert [f.keyframe for f in frames] == [p.keyframe for p in packets]

    (video,) = tracks
    assert video.codec_id == "V_MPEG4/ISO/AVC"
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    avcc = bitstream.parse_avcc(video.codec_private)
    assert bitstream.parse_h264_sps(avcc.sps[0]).width == WIDTH

    stamps = [f.timestamp_ms for f in frames]
    assert strictly_increasing(stamps)
    assert {b - a for a, b in itertools.pairwise(stamps)} == {1000 // FPS}
    assert abs(stamps[0] - time.time() * 1000) < 5000  # absolute wall-clock ms

    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert len(packaged.fragments) == 2  # 50 frames, a key frame every 25, 1 s fragments
    assert decode_counts(packaged.body) == (50, 0)
    assert decoded_size(packaged.body) == (WIDTH, HEIGHT)


def test_loop_keeps_timestamps_increasing_across_passes(make_clip: ClipFactory) -> None:
    path = make_clip("clip.mp4", Clip())
    source = open_source(str(path), SourceOptions(realtime=False, loop=True))
    with source:
        tracks = source.tracks
        frames = list(itertools.islice(source, 130))  # 2.6 passes
    assert isinstance(source, FileSource) and source.passes == 2
    stamps = [f.timestamp_ms for f in frames]
    assert strictly_increasing(stamps)
    # the pass boundary is one frame interval like every other step
    assert {b - a for a, b in itertools.pairwise(stamps)} == {1000 // FPS}
    keys = [i for i, f in enumerate(frames) if f.keyframe]
    assert keys == [0, 25, 50, 75, 100, 125]
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (130, 0)


def test_realtime_paces_frames_to_their_timestamps(make_clip: ClipFactory) -> None:
    path = make_clip("short.mkv", Clip(frames=15))  # 0.6 s
    source = open_source(str(path), SourceOptions(realtime=True))
    started = time.monotonic()
    lags = []
    with source:
        for frame in source:
            lags.append(time.time() * 1000 - frame.timestamp_ms)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    # each frame leaves when the wall clock reaches its timestamp (not long before or after)
    assert all(-20 < lag < 300 for lag in lags), lags


def test_other_codecs_are_decoded_and_encoded(make_clip: ClipFactory) -> None:
    path = make_clip("mjpeg.mkv", Clip(codec="mjpeg", frames=40))
    before = Encoder.created
    source, tracks, frames = read_all(path)
    assert Encoder.created == before + 1
    assert source.encoder is not None and source.encoder.gop == FPS  # 1 s fragments x 25 fps
    assert source.video_codec == "mjpeg"
    (video,) = tracks
    assert video.codec_id == "V_MPEG4/ISO/AVC"
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    bitstream.parse_avcc(video.codec_private)
    assert len(frames) == 40
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 25]
    stamps = [f.timestamp_ms for f in frames]
    assert {b - a for a, b in itertools.pairwise(stamps)} == {40}
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (40, 0)


@needs_x265
@pytest.mark.parametrize("suffix", ["mkv", "ts"])
def test_h265_is_passed_through(make_clip: ClipFactory, suffix: str) -> None:
    path = make_clip(f"hevc.{suffix}", Clip(codec="libx265", frames=30))
    before = Encoder.created
    _source, tracks, frames = read_all(path)
    assert Encoder.created == before
    (video,) = tracks
    assert video.codec_id == "V_MPEGH/ISO/HEVC"
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    hvcc = bitstream.parse_hvcc(video.codec_private)
    assert hvcc.vps and hvcc.sps and hvcc.pps
    packets = demux(path)
    expected = [p.data for p in packets] if suffix == "mkv" else to_avcc(packets)
    assert [bytes(f.data) for f in frames] == expected
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert decode_counts(packaged.body) == (30, 0)


# --- audio ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["mp4", "ts"])
def test_aac_audio_becomes_track_2(make_clip: ClipFactory, suffix: str) -> None:
    path = make_clip(f"aac.{suffix}", Clip(audio="aac"))
    _source, tracks, frames = read_all(path)
    video, audio = tracks
    assert video.codec_id == "V_MPEG4/ISO/AVC"
    assert (audio.number, audio.track_type, audio.codec_id) == (2, 2, "A_AAC")
    assert (audio.sampling_frequency, audio.channels) == (48000.0, 2)
    # AudioSpecificConfig: AAC-LC (2), 48 kHz (index 3), 2 channels
    assert audio.codec_private[:2] == bytes.fromhex("1190")

    audio_packets = demux(path, "audio")
    first_video = demux(path)[0].pts_s
    assert first_video is not None
    kept = [p for p in audio_packets if p.pts_s is not None and p.pts_s >= first_video]
    audio_frames = [f for f in frames if f.track_number == 2]
    if suffix == "ts":  # ADTS headers stripped, the raw AAC frames kept
        assert audio.codec_private == adts_to_asc(kept[0].data)[0]
        assert [bytes(f.data) for f in audio_frames] == [
            p.data[adts_to_asc(p.data)[1] :] for p in kept
        ]
    else:
        assert [bytes(f.data) for f in audio_frames] == [p.data for p in kept]

    packaged = package(tracks, frames)
    check_fragments(packaged)
    for fragment in packaged.fragments:  # the service wants every track in every fragment
        assert {f.track_number for f in fragment.frames} == {1, 2}
    video_count, audio_count = decode_counts(packaged.body)
    assert video_count == 50
    assert audio_count == len(kept)
    # merged in time order: no frame is before its fragment's key frame
    for fragment in packaged.fragments:
        assert min(f.timecode for f in fragment.frames) == fragment.cluster_timecode


@pytest.mark.parametrize("suffix", ["mp4", "ts"])
def test_b_frames_with_audio(make_clip: ClipFactory, suffix: str) -> None:
    path = make_clip(f"bframes.{suffix}", Clip(audio="aac", bframes=2))
    source, tracks, frames = read_all(path)
    video = [f for f in frames if f.track_number == 1]
    stamps = [f.timestamp_ms for f in video]
    assert stamps != sorted(stamps)  # decoding order, presentation timestamps
    assert sorted(stamps) == list(range(stamps[0], stamps[0] + 50 * 40, 40))
    assert source._interleaver is not None and source._interleaver.dropped_audio == 0
    packaged = package(tracks, frames)
    check_fragments(packaged)
    first_video = demux(path)[0].pts_s
    assert first_video is not None
    kept = [p for p in demux(path, "audio") if p.pts_s is not None and p.pts_s >= first_video]
    assert decode_counts(packaged.body) == (50, len(kept))


def test_audio_false_drops_the_audio_track(make_clip: ClipFactory) -> None:
    path = make_clip("aac.mp4", Clip(audio="aac"))
    _source, tracks, frames = read_all(path, SourceOptions(realtime=False, audio=False))
    assert [t.number for t in tracks] == [1]
    assert {f.track_number for f in frames} == {1}
    assert decode_counts(package(tracks, frames).body) == (50, 0)


def test_g711_audio_is_passed_through(make_clip: ClipFactory) -> None:
    path = make_clip("mulaw.mov", Clip(audio="pcm_mulaw", frames=25))
    _source, tracks, frames = read_all(path)
    audio = tracks[1]
    assert audio.codec_id == "A_MS/ACM"
    assert audio.codec_private[:2] == (7).to_bytes(2, "little")  # WAVE_FORMAT_MULAW
    assert (audio.sampling_frequency, audio.channels, audio.bit_depth) == (8000.0, 1, 8)
    assert any(f.track_number == 2 for f in frames)


def test_looping_with_audio_keeps_both_tracks_in_order(make_clip: ClipFactory) -> None:
    path = make_clip("aac.mkv", Clip(audio="aac"))
    source = open_source(str(path), SourceOptions(realtime=False, loop=True))
    with source:
        tracks = source.tracks
        frames = list(itertools.islice(source, 400))
    for track in (1, 2):
        assert strictly_increasing([f.timestamp_ms for f in frames if f.track_number == track])
    packaged = package(tracks, frames)
    check_fragments(packaged)
    assert sum(1 for f in frames if f.track_number == 1) > 100  # more than two passes


# --- errors -----------------------------------------------------------------------------


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope.mp4"))


def test_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="directory"):
        open_source(str(tmp_path))


def test_corrupt_file_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(bytes(range(256)) * 64)
    source = open_source(str(path))
    with pytest.raises(SourceError, match=f"cannot open {path}"):
        _ = source.tracks


def test_truncated_file_still_yields_what_is_there(make_clip: ClipFactory, tmp_path: Path) -> None:
    data = make_clip("clip.ts", Clip()).read_bytes()
    path = tmp_path / "cut.ts"
    path.write_bytes(data[: len(data) // 2])
    _source, tracks, frames = read_all(path)
    assert 10 < len(frames) < 50
    assert tracks[0].width == WIDTH


def test_file_without_video_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "stereo"
        write_silence(out, stream, 0.5)
    source = open_source(str(path))
    with pytest.raises(SourceError, match="no video stream"), source:
        _ = source.tracks
    assert issubclass(SourceError, KvsError)


# --- a recording keeps the time it was made ------------------------------------------------

RECORDED_AT = "2026-11-20T06:30:00.000000Z"
RECORDED_AT_MS = 1_795_156_200_000


def with_creation_time(path: Path, target: Path, creation_time: str) -> Path:
    """``path`` remuxed (packets copied) into ``target`` with a creation_time tag."""
    with av.open(str(path)) as source, av.open(str(target), "w") as out:
        out.metadata["creation_time"] = creation_time
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    return target


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_start_time_source_stamps_frames_with_the_files_creation_time(
    make_clip: ClipFactory, tmp_path: Path, suffix: str
) -> None:
    recorded = with_creation_time(
        make_clip(f"clip.{suffix}", Clip()), tmp_path / f"recorded.{suffix}", RECORDED_AT
    )
    _, _, frames = read_all(recorded, SourceOptions(realtime=False, start_time_ms="source"))
    assert [f.timestamp_ms for f in frames] == [RECORDED_AT_MS + i * 40 for i in range(50)]


def test_explicit_start_time_stamps_the_first_frame(make_clip: ClipFactory) -> None:
    path = make_clip("clip.mp4", Clip())
    _, _, frames = read_all(path, SourceOptions(realtime=False, start_time_ms=1_000_000))
    assert [f.timestamp_ms for f in frames[:3]] == [1_000_000, 1_000_040, 1_000_080]


def test_start_time_source_without_creation_time_is_a_source_error(
    make_clip: ClipFactory,
) -> None:
    path = make_clip("plain.mkv", Clip())
    with pytest.raises(SourceError, match=r"plain\.mkv: no creation_time in the file's metadata"):
        read_all(path, SourceOptions(realtime=False, start_time_ms="source"))


def test_start_time_that_is_not_a_time_is_a_source_error(
    make_clip: ClipFactory, tmp_path: Path
) -> None:
    # MKV and MP4 muxers drop a creation_time they cannot parse; NUT keeps any text
    recorded = with_creation_time(
        make_clip("clip.mkv", Clip()), tmp_path / "odd.nut", "last tuesday"
    )
    with pytest.raises(SourceError, match=r"creation_time 'last tuesday' is not an ISO 8601"):
        read_all(recorded, SourceOptions(realtime=False, start_time_ms="source"))
