"""GetClip and GetImages through boto3 against a running emulator, on real H.264.

The sample (``kvs_toolkit.samples``) draws coloured boxes at positions known for every
frame; images are checked against the frame the sampling time should pick, and not
its neighbours.
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from botocore.exceptions import ClientError

from kvs_toolkit.emulator import Emulator, clip
from kvs_toolkit.emulator.clip import covering_fragment, parse_image_request
from kvs_toolkit.emulator.errors import InvalidArgumentError
from kvs_toolkit.samples import ground_truth, render_frame
from tests.emulator.test_hls import (
    ACCESS_KEY,
    FFPROBE,
    FRAME_MS,
    SECRET,
    SPEC,
    SampleStream,
    archived_client,
    boxes,
    client,
    put_fragments,
    record,
    shifted,
    upload_file,
    upload_sample,
)
from tests.producer.media import Clip, write_clip

Image = npt.NDArray[np.uint8]
COLOURS = {"red-square": (40, 40, 220), "green-square": (60, 200, 60)}  # BGR, as drawn


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def sample(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> SampleStream:
    return upload_sample(emu, tmp_path_factory.mktemp("clip"), "cam")


def clip_range(start_ms: int, end_ms: int, kind: str = "PRODUCER_TIMESTAMP") -> dict[str, Any]:
    return {
        "FragmentSelectorType": kind,
        "TimestampRange": {"StartTimestamp": start_ms / 1000, "EndTimestamp": end_ms / 1000},
    }


def frames_of(data: bytes) -> list[float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [
            float(f.pts * stream.time_base) for f in container.decode(stream) if f.pts is not None
        ]


def ffprobe_count(data: bytes, path: Path) -> int:
    assert FFPROBE is not None
    path.write_bytes(data)
    result = subprocess.run(
        [
            FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(path),
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(result.stdout.strip())


# --- GetClip --------------------------------------------------------------------------------


def test_clip_of_the_whole_stream_plays_every_frame(sample: SampleStream, tmp_path: Path) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_CLIP")
    last = sample.records[-1].producer_timestamp_ms
    response = am.get_clip(
        StreamName=sample.name, ClipFragmentSelector=clip_range(sample.first_ms, last)
    )
    assert response["ContentType"] == "video/mp4"
    data = response["Payload"].read()
    kinds = [b[0] for b in boxes(data)]
    assert kinds.index("moov") < kinds.index("mdat")  # playable while downloading
    times = frames_of(data)
    assert times == pytest.approx([i * FRAME_MS / 1000 for i in range(SPEC.frame_count)])
    if FFPROBE:
        assert ffprobe_count(data, tmp_path / "clip.mp4") == SPEC.frame_count


def test_clip_holds_the_fragments_starting_in_the_range(sample: SampleStream) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_CLIP")
    # From inside the first fragment to the start of the third: fragments 2 and 3 start
    # in the range (a fragment starting before StartTimestamp is not included).
    start = sample.first_ms + 1
    end = sample.records[2].producer_timestamp_ms
    data = am.get_clip(StreamName=sample.name, ClipFragmentSelector=clip_range(start, end))[
        "Payload"
    ].read()
    assert len(frames_of(data)) == len(sample.fragments[1].frames) + len(sample.fragments[2].frames)
    # By server timestamp: all three arrived within the range.
    server = clip_range(
        sample.records[0].server_timestamp_ms,
        sample.records[-1].server_timestamp_ms,
        "SERVER_TIMESTAMP",
    )
    data = am.get_clip(StreamName=sample.name, ClipFragmentSelector=server)["Payload"].read()
    assert len(frames_of(data)) == sample.frame_count


def test_clip_limits_200_fragments_and_100_mb(
    sample: SampleStream, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's clip holds "the first 100 MB or the first 200 fragments"."""
    kv = client("kinesisvideo", emu.endpoint_url)
    kv.create_stream(StreamName="many", DataRetentionInHours=1)
    base = time.time_ns() // 1_000_000 - 60_000
    key_frame = sample.fragments[0]
    one_frame = key_frame.__class__(
        tags=(),
        tracks=key_frame.tracks,
        cluster_timecode=key_frame.cluster_timecode,
        frames=key_frame.frames[:1],
    )
    put_fragments(
        emu.endpoint_url,
        "many",
        sample.tracks,
        [shifted(one_frame, base + 40 * i) for i in range(205)],
    )
    am = archived_client(emu, "many", "GET_CLIP")
    whole = clip_range(base, base + 40 * 210)
    assert (
        len(frames_of(am.get_clip(StreamName="many", ClipFragmentSelector=whole)["Payload"].read()))
        == 200
    )
    size = emu.store.sync.list_fragments("many", limit=1).fragments[0].size
    monkeypatch.setattr(clip, "MAX_CLIP_BYTES", size * 3 + size // 2)
    assert (
        len(frames_of(am.get_clip(StreamName="many", ClipFragmentSelector=whole)["Payload"].read()))
        == 3
    )


def test_clip_errors(sample: SampleStream, emu: Emulator) -> None:
    am = archived_client(emu, sample.name, "GET_CLIP")

    def code(**kwargs: Any) -> str:
        with pytest.raises(ClientError) as info:
            am.get_clip(**kwargs)
        return str(info.value.response["Error"]["Code"])

    first = sample.first_ms
    assert (
        code(StreamName=sample.name, ClipFragmentSelector=clip_range(first, first))
        == "InvalidArgumentException"
    )
    assert (
        code(StreamName=sample.name, ClipFragmentSelector=clip_range(first, first + 90_000_000))
        == "InvalidArgumentException"
    )
    assert (
        code(StreamName=sample.name, ClipFragmentSelector=clip_range(1000, 2000))
        == "ResourceNotFoundException"
    )
    assert (
        code(StreamName="nobody", ClipFragmentSelector=clip_range(1000, 2000))
        == "ResourceNotFoundException"
    )
    client("kinesisvideo", emu.endpoint_url).create_stream(
        StreamName="clip-no-archive", DataRetentionInHours=0
    )
    assert (
        code(StreamName="clip-no-archive", ClipFragmentSelector=clip_range(1000, 2000))
        == "NoDataRetentionException"
    )


# --- GetImages ------------------------------------------------------------------------------


def decode_image(content: str) -> Image:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(content), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, dtype=np.uint8)


def difference(image: Image, index: int) -> float:
    expected = render_frame(SPEC, index)
    if expected.shape != image.shape:
        size = (image.shape[1], image.shape[0])
        expected = np.asarray(cv2.resize(expected, size, interpolation=cv2.INTER_AREA), np.uint8)
    return float(np.mean(cv2.absdiff(image, expected)))


def assert_boxes(image: Image, index: int) -> None:
    """The coloured boxes are where the sample drew them in frame ``index``."""
    scale_x = image.shape[1] / SPEC.width
    scale_y = image.shape[0] / SPEC.height
    for box in ground_truth(SPEC, index):
        x = int((box.x + box.width / 2) * scale_x)
        y = int((box.y + box.height / 2) * scale_y)
        pixel = image[y, x].astype(int)
        assert np.abs(pixel - np.array(COLOURS[box.label])).max() < 40, (box, pixel)


def all_images(am: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    """Every image of a request, following NextToken; also how many pages it took."""
    images: list[dict[str, Any]] = []
    pages = 0
    token = None
    while True:
        extra: dict[str, str] = {"NextToken": token} if token else {}
        response = am.get_images(**kwargs, **extra)
        images += response["Images"]
        pages += 1
        token = response.get("NextToken")
        if not token:
            return images, pages


def test_images_at_the_sampling_interval_show_the_right_frames(sample: SampleStream) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_IMAGES")
    # From 1 s before the stream to 1 s after it: NO_MEDIA at both ends.
    start = sample.first_ms - 1000
    end = sample.end_ms + 1000
    images, pages = all_images(
        am,
        StreamName=sample.name,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        StartTimestamp=start / 1000,
        EndTimestamp=end / 1000,
        SamplingInterval=200,
        Format="JPEG",
        FormatConfig={"JPEGQuality": "95"},
        MaxResults=10,
    )
    expected_times = list(range(start, end + 1, 200))
    assert [round(i["TimeStamp"].timestamp() * 1000) for i in images] == expected_times
    assert pages == -(-len(expected_times) // 10)
    for image, t in zip(images, expected_times, strict=True):
        if not sample.first_ms <= t < sample.end_ms:
            assert image == {"TimeStamp": image["TimeStamp"], "Error": "NO_MEDIA"}
            continue
        assert "Error" not in image
        picture = decode_image(image["ImageContent"])
        assert picture.shape == (SPEC.height, SPEC.width, 3)
        index = round((t - sample.first_ms) / FRAME_MS)  # the frame nearest to t
        assert_boxes(picture, index)
        neighbours = [
            difference(picture, i) for i in (index - 1, index + 1) if 0 <= i < SPEC.frame_count
        ]
        assert difference(picture, index) < min(neighbours)


def test_images_sizes_formats_and_quality(sample: SampleStream) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_IMAGES")
    t = sample.first_ms + 2480  # frame 62, inside the second fragment
    common = {
        "StreamName": sample.name,
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "StartTimestamp": t / 1000,
        "EndTimestamp": t / 1000,
        "SamplingInterval": 1000,
    }
    png = am.get_images(**common, Format="PNG", WidthPixels=320)["Images"]
    assert len(png) == 1
    raw = base64.b64decode(png[0]["ImageContent"])
    assert raw.startswith(b"\x89PNG")
    picture = decode_image(png[0]["ImageContent"])
    assert picture.shape == (180, 320, 3)  # the aspect ratio kept
    assert_boxes(picture, 62)
    stretched = decode_image(
        am.get_images(**common, Format="JPEG", WidthPixels=100, HeightPixels=300)["Images"][0][
            "ImageContent"
        ]
    )
    assert stretched.shape == (300, 100, 3)
    tall = decode_image(
        am.get_images(**common, Format="JPEG", HeightPixels=90)["Images"][0]["ImageContent"]
    )
    assert tall.shape == (90, 160, 3)
    low = am.get_images(**common, Format="JPEG", FormatConfig={"JPEGQuality": "5"})["Images"][0][
        "ImageContent"
    ]
    high = am.get_images(**common, Format="JPEG", FormatConfig={"JPEGQuality": "100"})["Images"][0][
        "ImageContent"
    ]
    assert base64.b64decode(low).startswith(b"\xff\xd8") and len(low) < len(high) / 2


def test_images_by_server_timestamp_and_paginator(sample: SampleStream) -> None:
    am = archived_client(sample.emulator, sample.name, "GET_IMAGES")
    # The producer uploaded faster than real time: by server timestamp the fragments
    # overlap, and a sampling time belongs to the latest fragment started before it.
    record0 = sample.records[0]
    start = record0.server_timestamp_ms
    end = start + 1000
    paginator = am.get_paginator("get_images")
    pages = list(
        paginator.paginate(
            StreamName=sample.name,
            ImageSelectorType="SERVER_TIMESTAMP",
            StartTimestamp=start / 1000,
            EndTimestamp=end / 1000,
            SamplingInterval=250,
            Format="JPEG",
            PaginationConfig={"PageSize": 2},
        )
    )
    images = [i for page in pages for i in page["Images"]]
    assert len(pages) == 3 and len(images) == 5
    assert all("ImageContent" in i for i in images)
    for image in images:
        t = round(image["TimeStamp"].timestamp() * 1000)
        holder = covering_fragment(sample.records, "SERVER_TIMESTAMP", t)
        assert holder is not None
        index = round(
            (holder.producer_timestamp_ms + t - holder.server_timestamp_ms - sample.first_ms)
            / FRAME_MS
        )
        assert_boxes(decode_image(image["ImageContent"]), index)


def test_images_errors(sample: SampleStream, emu: Emulator) -> None:
    am = archived_client(emu, sample.name, "GET_IMAGES")
    t = sample.first_ms / 1000
    common = {
        "StreamName": sample.name,
        "ImageSelectorType": "PRODUCER_TIMESTAMP",
        "Format": "JPEG",
    }

    def code(**kwargs: Any) -> str:
        with pytest.raises(ClientError) as info:
            am.get_images(**kwargs)
        return str(info.value.response["Error"]["Code"])

    assert (
        code(**common, StartTimestamp=t, EndTimestamp=t + 301, SamplingInterval=1000)
        == "InvalidArgumentException"
    )
    assert (
        code(**common, StartTimestamp=t, EndTimestamp=t + 1, SamplingInterval=100)
        == "InvalidArgumentException"
    )
    assert (
        code(**common, StartTimestamp=t + 1, EndTimestamp=t, SamplingInterval=1000)
        == "InvalidArgumentException"
    )
    assert (
        code(
            **common, StartTimestamp=t, EndTimestamp=t + 1, SamplingInterval=1000, WidthPixels=4000
        )
        == "InvalidArgumentException"
    )
    assert (
        code(
            **common,
            StartTimestamp=t,
            EndTimestamp=t + 1,
            SamplingInterval=1000,
            NextToken="eyJpIjo5OX0=",
        )
        == "InvalidArgumentException"
    )
    bad_quality = {"JPEGQuality": "0"}
    assert (
        code(
            **common,
            StartTimestamp=t,
            EndTimestamp=t + 1,
            SamplingInterval=1000,
            FormatConfig=bad_quality,
        )
        == "InvalidArgumentException"
    )
    client("kinesisvideo", emu.endpoint_url).create_stream(
        StreamName="img-no-archive", DataRetentionInHours=0
    )
    assert (
        code(**{**common, "StreamName": "img-no-archive"}, StartTimestamp=t, EndTimestamp=t + 1)
        == "NoDataRetentionException"
    )
    assert (
        code(**{**common, "StreamName": "nobody"}, StartTimestamp=t, EndTimestamp=t + 1)
        == "ResourceNotFoundException"
    )


def test_image_request_parsing_and_coverage() -> None:
    request = parse_image_request(
        {
            "ImageSelectorType": "SERVER_TIMESTAMP",
            "StartTimestamp": 10,
            "EndTimestamp": 12.5,
            "Format": "PNG",
            "MaxResults": 100,
        }
    )
    assert (request.interval_ms, request.jpeg_quality, request.page_size) == (3000, 80, 25)
    assert request.sample_count == 1 and request.page() == [10_000]
    with pytest.raises(InvalidArgumentError, match="JPEGQuality"):
        parse_image_request(
            {
                "ImageSelectorType": "SERVER_TIMESTAMP",
                "StartTimestamp": 1,
                "EndTimestamp": 2,
                "Format": "JPEG",
                "FormatConfig": {"Quality": "5"},
            }
        )
    records = [record(1, 1000, 2000), record(2, 2500, 2000), record(3, 6000, 1000)]
    holder = covering_fragment(records, "PRODUCER_TIMESTAMP", 2600)
    assert holder is not None and holder.fragment_number.endswith("2")  # the later start wins
    assert covering_fragment(records, "PRODUCER_TIMESTAMP", 4600) is None  # a gap: NO_MEDIA
    assert covering_fragment(records, "PRODUCER_TIMESTAMP", 999) is None


def test_g711_audio_is_left_out_of_mp4_and_refused_by_hls(
    emu: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("g711") / "mulaw.mov"
    write_clip(path, Clip(audio="pcm_mulaw", frames=50))
    stream = upload_file(emu, path, "g711", fragment_duration_ms=1000)
    assert stream.tracks[1].codec_id == "A_MS/ACM" and stream.track_frames(2) > 0
    selector = clip_range(stream.first_ms, stream.records[-1].producer_timestamp_ms)
    am = archived_client(emu, "g711", "GET_CLIP")
    data = am.get_clip(StreamName="g711", ClipFragmentSelector=selector)["Payload"].read()
    with av.open(io.BytesIO(data)) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert sum(1 for _ in container.decode(video=0)) == 50
    dash = archived_client(emu, "g711", "GET_DASH_STREAMING_SESSION_URL")
    url = dash.get_dash_streaming_session_url(
        StreamName="g711", PlaybackMode="ON_DEMAND", DASHFragmentSelector=selector
    )["DASHStreamingSessionURL"]
    with urllib.request.urlopen(url) as response:
        mpd = response.read().decode()
    assert mpd.count("<AdaptationSet") == 1 and 'contentType="video"' in mpd
    hls = archived_client(emu, "g711", "GET_HLS_STREAMING_SESSION_URL")
    with pytest.raises(ClientError) as info:
        hls.get_hls_streaming_session_url(StreamName="g711")
    assert info.value.response["Error"]["Code"] == "UnsupportedStreamMediaTypeException"
