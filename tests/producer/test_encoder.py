"""The low-latency encoder: key-frame interval, no B-frames, AVCC out, colours intact."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from kvs_toolkit import bitstream
from kvs_toolkit.producer.encoder import EncodeError, Encoder, available_encoder
from tests.producer.media import check_fragments, decode_counts, needs_x265, package


def solid(bgr: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = bgr
    return image


def noisy(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_key_frame_every_fragment_and_one_frame_in_one_frame_out() -> None:
    encoder = Encoder(64, 48, 10, fragment_duration_ms=1000)
    assert encoder.gop == 10
    frames = []
    for index in range(35):
        out = encoder.encode(noisy(index), 5_000 + index * 100)
        assert len(out) == 1  # zerolatency, no B-frames: nothing is held back
        frames += out
    assert encoder.flush() == []
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 10, 20, 30]
    assert [f.timestamp_ms for f in frames] == [5_000 + i * 100 for i in range(35)]
    for frame in frames:  # AVCC: 4-byte lengths that cover the payload exactly
        assert bitstream.split_length_prefixed(frame.data)
    track = encoder.track()
    assert (track.codec_id, track.width, track.height) == ("V_MPEG4/ISO/AVC", 64, 48)
    assert bitstream.parse_avcc(track.codec_private).sps
    packaged = package([track], frames)
    check_fragments(packaged)
    assert len(packaged.fragments) == 4
    assert decode_counts(packaged.body) == (35, 0)


@pytest.mark.parametrize("pixel_format", ["bgr24", "rgb24"])
def test_colours_survive_the_conversion(pixel_format: str) -> None:
    encoder = Encoder(64, 48, 10)
    blue_bgr = (200, 30, 20)
    image = solid(blue_bgr if pixel_format == "bgr24" else blue_bgr[::-1])
    frames = encoder.encode(image, 0, pixel_format=pixel_format)  # type: ignore[arg-type]
    body = package([encoder.track()], frames).body
    with av.open(io.BytesIO(body)) as container:
        decoded = next(container.decode(video=0)).to_ndarray(format="bgr24")
    assert np.abs(decoded.mean(axis=(0, 1)) - np.array(blue_bgr)).max() < 8


def test_timestamps_that_stand_still_are_nudged_forward() -> None:
    encoder = Encoder(64, 48, 30)
    first = encoder.encode(noisy(0), 1_000)
    second = encoder.encode(noisy(1), 1_000)
    assert second[0].timestamp_ms == first[0].timestamp_ms + 1


def test_auto_picks_a_working_encoder() -> None:
    # FFmpeg builds list h264_v4l2m2m even with no device; auto must not pick it then
    name = available_encoder("h264", "auto")
    assert name in ("libx264", "h264_v4l2m2m")
    Encoder(64, 48, 10, encoder="auto")


def test_bitrate_is_honoured_roughly() -> None:
    encoder = Encoder(160, 96, 25, bitrate=100_000, fragment_duration_ms=1000)
    size = sum(len(f.data) for i in range(50) for f in encoder.encode(noisy(i, 160, 96), i * 40))
    assert size * 8 / 2 < 400_000  # 2 s of pure noise, well under 4x the target


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "libx265"}, "does not produce h264"),
        ({"encoder": "nvenc"}, "unknown encoder"),
        ({"width": 63}, "even"),
        ({"fps": 0}, "fps"),
    ],
)
def test_bad_settings_are_encode_errors(kwargs: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"width": 64, "height": 48, "fps": 10, **kwargs}
    with pytest.raises(EncodeError, match=message):
        Encoder(**settings)  # type: ignore[arg-type]


def test_unusable_hardware_encoder_is_an_encode_error() -> None:
    if available_encoder("h264") == "h264_v4l2m2m":
        pytest.skip("this machine has a working V4L2 encoder")
    with pytest.raises(EncodeError, match="h264_v4l2m2m"):
        Encoder(64, 48, 10, encoder="h264_v4l2m2m")


def test_track_before_the_first_frame_is_an_error() -> None:
    with pytest.raises(EncodeError, match="no key frame"):
        Encoder(64, 48, 10).track()


@needs_x265
def test_h265_encoding() -> None:
    encoder = Encoder(64, 48, 10, codec="h265", fragment_duration_ms=500)
    frames = [f for i in range(12) for f in encoder.encode(noisy(i), i * 100)]
    frames += encoder.flush()
    assert len(frames) == 12
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 5, 10]
    track = encoder.track()
    assert track.codec_id == "V_MPEGH/ISO/HEVC"
    assert bitstream.parse_hvcc(track.codec_private).vps
    assert decode_counts(package([track], frames, 500).body) == (12, 0)
