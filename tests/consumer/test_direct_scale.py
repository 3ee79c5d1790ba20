"""DirectScaler: swscale into numpy planes gives PyAV's pixels, bit for bit, and writes
nothing else; FrameBatcher's batches are the same with it and without it."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import av
import numpy as np
import pytest
from av.video.frame import VideoFrame

from kvs_toolkit.consumer import FragmentDecoder, FrameBatcher, direct_scale
from kvs_toolkit.consumer.direct_scale import DirectScaler

from .media import read_fragments

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux", reason="the direct path finds PyAV's libraries in /proc"
)
SENTINEL = 0x5A


@pytest.fixture(scope="module")
def decoded(get_media: bytes) -> list[VideoFrame]:
    """Pictures as FragmentDecoder's FFmpeg gives them (640x360 H.264 of a real capture)."""
    fragment = read_fragments(get_media)[0]
    codec = av.CodecContext.create("h264", "r")
    codec.extradata = fragment.tracks[0].codec_private
    frames: list[VideoFrame] = []
    for frame in fragment.frames[:3]:
        frames.extend(codec.decode(av.Packet(frame.data)))
    assert frames
    return frames


def synthetic(format: str, width: int, height: int, **colour: object) -> VideoFrame:
    """A noisy picture of ``format``, tagged with ``colour`` (colorspace, color_range)."""
    rng = np.random.default_rng(width * height)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=format)
    for name, value in colour.items():
        setattr(frame, name, value)
    return frame


def embedded(height: int, width: int, *, extra_columns: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three float planes, each rows of a wider buffer with a sentinel all around."""
    floats = np.empty((3, height + 2, width + extra_columns + 2), np.float32)
    floats.view(np.uint8)[...] = SENTINEL
    return floats, [floats[i, 1 : height + 1, 1 : width + 1] for i in range(3)]


def pyav_planes(picture: VideoFrame, width: int, height: int) -> Iterator[np.ndarray]:
    planar = picture.reformat(width=width, height=height, format="gbrpf32le",
                              interpolation="FAST_BILINEAR", threads=1)  # fmt: skip
    for plane in planar.planes:
        rows = np.frombuffer(memoryview(plane), np.float32).reshape(height, -1)
        yield rows[:, :width]


def test_the_installed_pyav_is_one_whose_frames_are_read() -> None:
    """A PyAV upgrade fails here until its frame layout is checked (see direct_scale)."""
    assert DirectScaler.create() is not None, (
        f"PyAV {av.__version__}: add its major to CHECKED_PYAV_MAJORS once av/frame.pxd "
        "still declares ``AVFrame *ptr`` first"
    )


@pytest.mark.parametrize(
    ("source", "size", "extra_columns"),
    [
        ("decoded", (640, 360), 0),  # a whole slot row: the batcher's usual case
        ("decoded", (320, 180), 0),
        ("decoded", (200, 112), 56),  # a letterbox region: strided rows
        ("decoded", (633, 355), 7),  # not a multiple of 8: swscale writes whole blocks
        ("yuvj420p", (160, 96), 16),  # full-range JPEG YUV
        ("bt709", (160, 96), 0),
        ("yuv420p10le", (96, 64), 32),
        ("nv12", (128, 72), 8),
    ],
)
def test_direct_pixels_are_pyavs_bit_for_bit_and_nothing_else_is_written(
    decoded: list[VideoFrame], source: str, size: tuple[int, int], extra_columns: int
) -> None:
    width, height = size
    if source == "decoded":
        pictures = decoded
    elif source == "bt709":
        pictures = [synthetic("yuv420p", 350, 200, colorspace=1, color_range=1)]
    else:
        pictures = [synthetic(source, 350, 200)]
    scaler = DirectScaler.create()
    assert scaler is not None
    for picture in pictures:
        floats, (red, green, blue) = embedded(height, width, extra_columns=extra_columns)
        before = floats.view(np.uint8).copy()
        written = scaler.scale_into(picture, (green, blue, red), "gbrpf32le",
                                    interpolation="FAST_BILINEAR", threads=1)  # fmt: skip
        inside = np.zeros(floats.shape, bool)
        inside[:, 1 : height + 1, 1 : width + 1] = True
        changed = (floats.view(np.uint8) != before).reshape(*floats.shape, 4).any(axis=-1)
        assert not (changed & ~inside).any(), "swscale wrote outside the planes"
        if not written:
            assert not changed.any()  # refused: the caller's planes are untouched
            assert (width % 8 or extra_columns) and source == "decoded", (
                f"direct path refused {source} {size}"
            )
            continue
        green_expected, blue_expected, red_expected = pyav_planes(picture, width, height)
        for ours, theirs in ((red, red_expected), (green, green_expected), (blue, blue_expected)):
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_an_unchecked_pyav_layout_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_scale, "CHECKED_PYAV_MAJORS", frozenset({0}))
    assert direct_scale._libraries.__wrapped__() is None


@pytest.mark.parametrize(
    ("size", "options"),
    [
        (640, {}),
        ((416, 256), {"channel_order": "BGR"}),
        ((640, 200), {}),  # pads left and right: the picture is a strided region of the rows
        (320, {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}),
        (320, {"scale": 1.0}),
    ],
)
def test_batches_are_the_same_with_and_without_the_direct_path(
    get_media: bytes, monkeypatch: pytest.MonkeyPatch, size: int | tuple[int, int],
    options: dict[str, object],
) -> None:  # fmt: skip
    fragment = read_fragments(get_media)[0]

    def batches(batcher: FrameBatcher) -> np.ndarray:
        decoder = FragmentDecoder(fps=4, fit=batcher)
        out = [b.tensor.copy() for b in map(batcher.add, decoder.decode_all([fragment])) if b]
        last = batcher.flush()
        return np.concatenate(out + ([last.tensor.copy()] if last else []))

    direct = FrameBatcher(size, batch_size=3, **options)  # type: ignore[arg-type]
    ours = batches(direct)
    assert direct._direct is not None  # the direct path was taken
    with monkeypatch.context() as patched:
        patched.setattr(DirectScaler, "create", classmethod(lambda cls: None))
        copying = FrameBatcher(size, batch_size=3, **options)  # type: ignore[arg-type]
        theirs = batches(copying)
        assert copying._direct is None
    assert ours.shape == theirs.shape and ours.shape[0] >= 4
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
