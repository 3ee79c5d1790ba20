"""H.264 with B-frames through the emulator: HLS (fMP4 and MPEG-TS), DASH and GetClip play
every frame in presentation order, each frame the picture the encoder was given.

The stream is libx264 with 2 B-frames (pyramid), uploaded by the project's producer,
which stores block timecodes = presentation times in decode order, as a KVS producer
does. The players are FFmpeg's (PyAV, ffprobe); each decoded picture is compared with
the sample frame it was encoded from.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from kvs_toolkit.emulator import Emulator
from kvs_toolkit.samples import SampleSpec, render_frame
from tests.emulator.test_clip_images import ffprobe_count
from tests.emulator.test_hls import (
    ACCESS_KEY,
    FFPROBE,
    SECRET,
    SampleStream,
    archived_client,
    base_of,
    boxes,
    child,
    ffprobe_frames,
    hls_url,
    http_get,
    on_demand_selector,
    playlist_uris,
    upload_file,
)
from tests.producer.media import FPS, HEIGHT, WIDTH, Clip, write_clip

FRAMES = 75  # 3 s at 25 fps: 3 fragments of one 1 s GOP each
FRAME_S = 1 / FPS
SPEC = SampleSpec(width=WIDTH, height=HEIGHT, fps=FPS)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def bframes(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    path = tmp_path_factory.mktemp("bframes") / "bframes.mkv"
    write_clip(path, Clip(frames=FRAMES, gop=FPS, bframes=2))
    return upload_file(emu, path, "bframes", fragment_duration_ms=1000)


def pictures(url: str) -> list[tuple[float, np.ndarray]]:
    """Every decoded frame of ``url`` (any container) as (time in s, BGR picture)."""
    with av.open(url) as container:
        stream = container.streams.video[0]
        return [
            (float(f.pts * stream.time_base), f.to_ndarray(format="bgr24"))
            for f in container.decode(stream)
            if f.pts is not None
        ]


def assert_frame_exact(decoded: list[tuple[float, np.ndarray]]) -> None:
    """Frames in presentation order, 40 ms apart from the first, each the frame encoded."""
    assert len(decoded) == FRAMES
    start = decoded[0][0]
    assert [t - start for t, _ in decoded] == pytest.approx([i * FRAME_S for i in range(FRAMES)])
    expected = [render_frame(SPEC, i).astype(np.int16) for i in range(FRAMES)]
    for index, (_t, picture) in enumerate(decoded):
        errors = [
            float(np.mean(np.abs(picture.astype(np.int16) - expected[j])))
            for j in range(max(0, index - 2), min(FRAMES, index + 3))
        ]
        assert int(np.argmin(errors)) == min(index, 2), (index, errors)


def test_the_stored_stream_has_b_frames(bframes: SampleStream) -> None:
    """The premise: blocks in decode order, their timecodes (presentation) not increasing."""
    assert bframes.frame_count == FRAMES
    for fragment in bframes.fragments:
        times = [f.timecode for f in fragment.frames]
        assert times != sorted(times)


def test_hls_fmp4_plays_b_frames_frame_exact(bframes: SampleStream) -> None:
    url = hls_url(
        bframes.emulator,
        bframes.name,
        PlaybackMode="ON_DEMAND",
        HLSFragmentSelector=on_demand_selector(bframes),
    )
    assert_frame_exact(pictures(url))
    if FFPROBE:
        assert ffprobe_frames(url) == FRAMES
    # The segments carry composition offsets, negative ones in a version 1 trun.
    master = http_get(url)[2].decode()
    media = http_get(base_of(url) + playlist_uris(master)[0])[2].decode()
    segment = http_get(base_of(url) + playlist_uris(media)[0])[2]
    moof = next(b for b in boxes(segment) if b[0] == "moof")
    trun = child(segment, child(segment, moof, "traf"), "trun")
    (version_flags,) = struct.unpack_from(">I", segment, trun[1])
    assert version_flags >> 24 == 1 and version_flags & 0x800


def test_hls_mpeg_ts_plays_b_frames_frame_exact(bframes: SampleStream) -> None:
    url = hls_url(
        bframes.emulator,
        bframes.name,
        PlaybackMode="ON_DEMAND",
        ContainerFormat="MPEG_TS",
        HLSFragmentSelector=on_demand_selector(bframes),
    )
    assert_frame_exact(pictures(url))
    if FFPROBE:
        assert ffprobe_frames(url) == FRAMES
    # Each segment's PTS/DTS: DTS never after PTS, increasing across segments; the
    # first PTS of each segment is its fragment's start since the session origin.
    media = http_get(base_of(url) + playlist_uris(http_get(url)[2].decode())[0])[2].decode()
    last_dts = -(1 << 33)
    firsts = []
    for uri in playlist_uris(media):
        data = http_get(base_of(url) + uri)[2]
        with av.open(io.BytesIO(data), format="mpegts") as container:
            packets = [p for p in container.demux(video=0) if p.pts is not None]
        firsts.append(min(p.pts for p in packets))
        for packet in packets:
            assert packet.dts is not None and last_dts < packet.dts <= packet.pts
            last_dts = packet.dts
    assert firsts == [(r.producer_timestamp_ms - bframes.first_ms) * 90 for r in bframes.records]


def test_dash_plays_b_frames(bframes: SampleStream) -> None:
    am = archived_client(bframes.emulator, bframes.name, "GET_DASH_STREAMING_SESSION_URL")
    url = am.get_dash_streaming_session_url(
        StreamName=bframes.name,
        PlaybackMode="ON_DEMAND",
        DASHFragmentSelector=on_demand_selector(bframes),
    )["DASHStreamingSessionURL"]
    if FFPROBE:
        assert ffprobe_frames(url) == FRAMES
    # The MPD's init and media segments, concatenated as a DASH player appends them.
    mpd = http_get(url)[2].decode()
    token = url.split("SessionToken=", 1)[1]
    base = base_of(url)
    init = http_get(f"{base}getMP4InitFragment.mp4?SessionToken={token}&TrackNumber=1")[2]
    segments = [
        http_get(
            f"{base}getMP4MediaFragment.mp4?SessionToken={token}&TrackNumber=1&SequenceNumber={n}"
        )[2]
        for n in range(1, len(bframes.records) + 1)
    ]
    assert "SegmentTimeline" in mpd
    with av.open(io.BytesIO(init + b"".join(segments))) as container:
        stream = container.streams.video[0]
        decoded = [
            (float(f.pts * stream.time_base), f.to_ndarray(format="bgr24"))
            for f in container.decode(stream)
        ]
    assert_frame_exact(decoded)


def test_get_clip_plays_b_frames_frame_exact(bframes: SampleStream, tmp_path: Path) -> None:
    am = archived_client(bframes.emulator, bframes.name, "GET_CLIP")
    last = bframes.records[-1].producer_timestamp_ms
    response = am.get_clip(
        StreamName=bframes.name,
        ClipFragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": bframes.first_ms / 1000,
                "EndTimestamp": last / 1000,
            },
        },
    )
    data = response["Payload"].read()
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    assert_frame_exact(pictures(str(path)))
    if FFPROBE:
        assert ffprobe_count(data, tmp_path / "probe.mp4") == FRAMES


def test_get_images_pick_the_right_b_frames(bframes: SampleStream) -> None:
    """GetImages decodes in decode order and stops only once every wanted frame is out."""
    am = archived_client(bframes.emulator, bframes.name, "GET_IMAGES")
    start = bframes.first_ms
    response = am.get_images(
        StreamName=bframes.name,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=start / 1000,
        EndTimestamp=(start + 1000) / 1000,
        SamplingInterval=200,  # frames 0, 5, 10, ...: B- and P-frames among them
        Format="PNG",
        MaxResults=100,
    )
    images = response["Images"]
    assert len(images) == 6
    expected = [render_frame(SPEC, i).astype(np.int16) for i in range(FRAMES)]
    for image in images:
        assert "Error" not in image, image
        index = round((image["TimeStamp"].timestamp() * 1000 - start) * FPS / 1000)
        picture = np.asarray(
            av.open(io.BytesIO(base64.b64decode(image["ImageContent"]))).decode(video=0).__next__()
            .to_ndarray(format="bgr24"),
            dtype=np.int16,
        )  # fmt: skip
        errors = [float(np.mean(np.abs(picture - expected[j]))) for j in range(FRAMES)]
        assert int(np.argmin(errors)) == index, (index, errors[max(0, index - 2) : index + 3])
