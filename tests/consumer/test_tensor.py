"""FrameBatcher: letterbox/resize into reused buffers, and boxes mapped back exactly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs_toolkit.consumer import (
    FragmentDecoder,
    FrameBatcher,
    LetterboxParams,
    letterbox,
    letterbox_boxes,
    unletterbox_boxes,
)
from kvs_toolkit.consumer.tensor import Layout, TensorDType
from kvs_toolkit.mkv import Fragment

from .media import read_fragments

RED_BGR = (0, 0, 255)


def frame_with_rectangle(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.full((height, width, 3), 30, dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = RED_BGR
    return image


def found_box(channel: np.ndarray) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 (exclusive) of the pixels brighter than half in one channel."""
    ys, xs = np.nonzero(channel > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_letterboxed_rectangle_maps_back_to_its_original_pixels() -> None:
    box = (100, 200, 300, 400)
    image = frame_with_rectangle(1280, 720, box)
    batcher = FrameBatcher(640, layout="NHWC", dtype="uint8", channel_order="BGR")
    batch = batcher([image])
    params = batch.params[0]
    assert (params.scale, params.pad_x, params.pad_y) == (0.5, 0, 140)
    assert (params.resized_width, params.resized_height) == (640, 360)
    canvas = batch.tensor[0]
    assert (canvas[:140] == 114).all() and (canvas[500:] == 114).all()  # YOLO's grey pads
    seen = found_box(canvas[..., 2])
    assert seen == (50, 240, 150, 340)
    assert unletterbox_boxes(np.array([seen]), params).tolist() == [list(map(float, box))]


def test_odd_sizes_round_trip_through_both_mappings() -> None:
    params = LetterboxParams.fit(674, 1280, (416, 416))
    assert params.resized_height == 416 and params.pad_x == (416 - params.resized_width) // 2
    boxes = np.array([[10.0, 20.0, 600.0, 1200.0, 0.9, 3.0]])
    back = unletterbox_boxes(letterbox_boxes(boxes, params), params)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)
    assert back[0, 4:].tolist() == [0.9, 3.0]  # score and class untouched
    clipped = unletterbox_boxes(np.array([[-50, -50, 5000, 5000]]), params)
    assert clipped.tolist() == [[0.0, 0.0, 674.0, 1280.0]]


@given(
    width=st.integers(16, 2000),
    height=st.integers(16, 2000),
    target=st.sampled_from([(320, 320), (640, 640), (640, 384), (300, 500)]),
    fractions=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_box_mappings_are_inverse(
    width: int, height: int, target: tuple[int, int], fractions: list[float]
) -> None:
    params = LetterboxParams.fit(width, height, target)
    assert params.pad_x >= 0 and params.pad_y >= 0
    assert params.pad_x + params.resized_width <= target[0]
    assert params.pad_y + params.resized_height <= target[1]
    box = np.array([[fractions[0] * width, fractions[1] * height,
                     fractions[2] * width, fractions[3] * height]])  # fmt: skip
    np.testing.assert_allclose(unletterbox_boxes(letterbox_boxes(box, params), params), box,
                               atol=1e-6)  # fmt: skip


def test_buffers_are_reused_across_calls() -> None:
    batcher = FrameBatcher(320, batch_size=2)
    one = [frame_with_rectangle(640, 480, (0, 0, 10, 10))] * 2
    first = batcher(one).tensor
    second = batcher([frame_with_rectangle(1280, 720, (5, 5, 50, 50))] * 2).tensor
    assert second is first  # the very same ndarray object
    assert first.shape == (2, 3, 320, 320) and first.dtype == np.float32
    partial = batcher(one[:1]).tensor
    assert partial.base is first or np.shares_memory(partial, first)
    assert partial.shape == (1, 3, 320, 320)
    # Growing happens once; then the bigger buffer is reused.
    grown = batcher(one * 2).tensor
    assert grown.shape[0] == 4 and batcher.capacity == 4
    assert batcher(one * 2).tensor is grown


def test_layouts_orders_and_normalisation() -> None:
    image = frame_with_rectangle(64, 48, (0, 0, 64, 48))  # all red (BGR 0, 0, 255)
    rgb_nchw = FrameBatcher((64, 48))([image]).tensor
    assert rgb_nchw.shape == (1, 3, 48, 64)
    np.testing.assert_allclose(rgb_nchw[0, :, 10, 10], [1.0, 0.0, 0.0])  # R first, /255
    bgr_nhwc = FrameBatcher((64, 48), layout="NHWC", channel_order="BGR")([image]).tensor
    np.testing.assert_allclose(bgr_nhwc[0, 10, 10], [0.0, 0.0, 1.0])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    imagenet = FrameBatcher((64, 48), mean=mean, std=std)([image]).tensor
    expected = (np.array([1.0, 0.0, 0.0]) - mean) / std
    np.testing.assert_allclose(imagenet[0, :, 5, 5], expected, rtol=1e-5)
    as_uint8 = FrameBatcher((64, 48), dtype="uint8")([image]).tensor
    assert as_uint8.dtype == np.uint8 and as_uint8[0, :, 3, 3].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="uint8 tensors take no"):
        FrameBatcher(64, dtype="uint8", mean=mean)


def test_stretch_resize_has_no_padding() -> None:
    image = frame_with_rectangle(200, 100, (50, 25, 150, 75))
    batch = FrameBatcher(100, mode="resize", layout="NHWC", dtype="uint8",
                         channel_order="BGR")([image])  # fmt: skip
    params = batch.params[0]
    assert (params.pad_x, params.pad_y, params.scale_x, params.scale_y) == (0, 0, 0.5, 1.0)
    seen = found_box(batch.tensor[0][..., 2])
    assert unletterbox_boxes(np.array([seen]), params).tolist() == [[50.0, 25.0, 150.0, 75.0]]


def test_letterbox_matches_a_direct_opencv_resize() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    out, params = letterbox(image, 320)
    expected = cv2.resize(image, (320, 180), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(out[params.pad_y : params.pad_y + 180], expected)
    assert (out[: params.pad_y] == 114).all()


def test_decoded_frames_of_a_capture_batch_up(get_media: bytes) -> None:
    fragments: list[Fragment] = read_fragments(get_media)[:1]
    bgr = FragmentDecoder(fps=2).decode(fragments[0])
    gray = FragmentDecoder(format="gray", keyframes_only=True).decode(fragments[0])
    rgb = FragmentDecoder(format="rgb24", keyframes_only=True).decode(fragments[0])
    batcher = FrameBatcher(640, batch_size=len(bgr))
    batch = batcher(bgr)
    assert batch.tensor.shape == (4, 3, 640, 640) and len(batch) == 4
    assert all(p.pad_y == 140 and p.scale == 1.0 for p in batch.params)
    # The first BGR frame and the RGB key frame are the same picture: same tensor.
    from_rgb = FrameBatcher(640)(rgb).tensor
    np.testing.assert_array_equal(from_rgb[0], batch.tensor[0])
    from_gray = FrameBatcher(640)(gray).tensor
    assert np.array_equal(from_gray[0, 0], from_gray[0, 2])  # grey: R = G = B


@pytest.mark.parametrize("capture_name", ["get_media", "output-get-media-equal-timecode.mkv"])
def test_decoder_scaled_frames_give_the_same_geometry_and_close_pixels(
    captures: Path, get_media: bytes, capture_name: str
) -> None:
    data = get_media if capture_name == "get_media" else (captures / capture_name).read_bytes()
    fragment = read_fragments(data)[0]
    full = FragmentDecoder(keyframes_only=True).decode(fragment)[0]
    batcher = FrameBatcher(320, layout="NHWC", dtype="uint8", channel_order="BGR")
    scaled = FragmentDecoder(keyframes_only=True, fit=batcher.size).decode(fragment)[0]
    reference = batcher([full])
    expected_params = reference.params[0]
    reference_canvas = reference.tensor[0].copy()
    batch = batcher([scaled])
    params = batch.params[0]
    # Same placement, reported against the decoded picture's pixels: boxes map back alike.
    assert params == expected_params
    assert (params.source_width, params.source_height) == full.source_size
    assert (scaled.width, scaled.height) == (params.resized_width, params.resized_height)
    box = np.array([[params.pad_x + 10.0, params.pad_y + 20.0, 200.0, params.pad_y + 100.0]])
    assert np.array_equal(unletterbox_boxes(box, params), batch.unletterbox(0, box))
    # No resize in the batcher: the decoder's picture is copied in as it is, then padded.
    canvas = batch.tensor[0]
    y, x = params.pad_y, params.pad_x
    inner = canvas[y : y + params.resized_height, x : x + params.resized_width]
    assert np.array_equal(inner, scaled.image)
    assert (canvas[:y] == 114).all() and (canvas[y + params.resized_height :] == 114).all()
    # swscale's bilinear filter (from YUV; it widens with the shrink factor) against
    # cv2.resize INTER_LINEAR from the full BGR frame: the same picture within a few
    # grey levels (measured: mean 4.8 and 1.6, 99th percentile 23 and 25).
    expected_inner = reference_canvas[y : y + params.resized_height, x : x + params.resized_width]
    difference = np.abs(inner.astype(np.int16) - expected_inner.astype(np.int16))
    assert difference.mean() < 6.0
    assert np.percentile(difference, 99) < 32


def test_float_batches_of_decoder_scaled_frames_match_the_opencv_path(get_media: bytes) -> None:
    fragment = read_fragments(get_media)[0]
    batcher = FrameBatcher(320, batch_size=4)
    full = FragmentDecoder(fps=2).decode(fragment)
    scaled = FragmentDecoder(fps=2, fit=batcher.size).decode(fragment)
    reference = batcher(full)
    expected = reference.tensor.copy()
    batch = batcher(scaled)
    assert batch.params == reference.params and batch.tensor.shape == (4, 3, 320, 320)
    assert np.abs(batch.tensor - expected).mean() < 4.0 / 255  # padding included: equal


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_batches_equal_letterbox_then_numpy_for_every_layout_and_input(
    layout: str, dtype: str, order: str
) -> None:
    # The batcher writes each frame straight into its region of the output and pads a
    # slot only when its geometry changes: check it against the plain definition
    # (letterbox, reorder, transpose, normalise) over changing sizes, gray and colour,
    # frames already at the inner size, and a slot reused with a different geometry.
    rng = np.random.default_rng(11)
    mean, std = (
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if dtype == "float32" else (None, None)
    )
    batcher = FrameBatcher(
        (96, 64), batch_size=3, layout=layout, dtype=dtype, channel_order=order,  # type: ignore[arg-type]
        mean=mean, std=std, pad_value=7,
    )  # fmt: skip
    rounds = [
        [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8),
         rng.integers(0, 256, (90, 60), dtype=np.uint8),  # gray
         rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)],  # already the target size
        [rng.integers(0, 256, (90, 60), dtype=np.uint8),  # slots swap geometry
         rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)],
    ]  # fmt: skip
    for images in rounds:
        batch = batcher(images)
        for index, image in enumerate(images):
            gray_to_bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
            colour = np.asarray(gray_to_bgr, dtype=np.uint8)
            boxed, params = letterbox(colour, (96, 64), pad_value=7)
            assert batch.params[index] == params
            if order == "RGB":
                boxed = boxed[..., ::-1]
            expected: np.ndarray = boxed.transpose(2, 0, 1) if layout == "NCHW" else boxed
            if dtype == "float32":
                shape = (3, 1, 1) if layout == "NCHW" else (3,)
                alpha = (np.float32(1 / 255) / np.asarray(std, np.float32)).reshape(shape)
                beta = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(shape)
                expected = np.multiply(expected, alpha, dtype=np.float32) - beta
            assert np.array_equal(batch.tensor[index], expected), (index, image.shape)


def test_the_batcher_module_loads_opencv_only_when_it_needs_it() -> None:
    # `kvs_toolkit.consumer` imports the module; a process that never batches colour
    # frames (kvs consume without a model) must not pay for OpenCV's import.
    import subprocess
    import sys

    probe = (
        "import sys, numpy as np\n"
        "from kvs_toolkit.consumer.tensor import FrameBatcher\n"
        "batcher = FrameBatcher(32)\n"
        "print('cv2' in sys.modules)\n"
        "batcher([np.zeros((32, 32), np.uint8)])\n"  # gray at the input size: numpy only
        "FrameBatcher(32, layout='NHWC')([np.zeros((32, 32, 3), np.uint8)])\n"
        "print('cv2' in sys.modules)\n"
        "batcher([np.zeros((32, 32, 3), np.uint8)])\n"  # colour planes: cv2.split
        "print('cv2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "False", "True"]


def test_frames_added_one_by_one_equal_a_batch_of_the_list() -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (90, 160, 3), dtype=np.uint8) for _ in range(5)]
    images[3] = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # gray among colour
    expected = FrameBatcher(64, batch_size=5)(images)
    batcher = FrameBatcher(64, batch_size=2)
    batches = [batcher.add(image) for image in images]
    assert [b is None for b in batches] == [True, False, True, False, True]
    assert batcher.pending == 1
    last = batcher.flush()
    assert last is not None and last.tensor.shape == (1, 3, 64, 64)
    assert batcher.pending == 0 and batcher.flush() is None
    # Each full batch was the same buffer (buffers=1): compare as they came.
    batcher = FrameBatcher(64, batch_size=2)
    for start in (0, 2):
        assert batcher.add(images[start]) is None
        batch = batcher.add(images[start + 1])
        assert batch is not None and batch.tensor.shape == (2, 3, 64, 64)
        assert np.array_equal(batch.tensor, expected.tensor[start : start + 2])
        assert batch.params == expected.params[start : start + 2]
    batcher.add(images[4])
    with pytest.raises(ValueError, match="flush"):
        batcher(images[:1])  # would overwrite the frame waiting in slot 0


def test_buffers_let_a_consumer_hold_the_previous_batches() -> None:
    rng = np.random.default_rng(6)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    single = FrameBatcher(32, batch_size=2)
    first = single(images[:2]).tensor
    assert single(images[2:4]).tensor is first  # overwritten: the contract of buffers=1
    rotating = FrameBatcher(32, batch_size=2, buffers=2)
    held = [rotating.add(image) for image in images]
    batches = [b for b in held if b is not None]
    assert len(batches) == 3
    assert batches[0].tensor is not batches[1].tensor
    assert batches[2].tensor is batches[0].tensor  # the third reuses the first buffer
    # The second batch is still intact after the third was written.
    np.testing.assert_array_equal(
        batches[1].tensor, FrameBatcher(32, batch_size=2)(images[2:4]).tensor
    )
    with pytest.raises(ValueError, match="buffers"):
        FrameBatcher(32, buffers=0)


def test_decoder_writes_pictures_straight_into_the_batch(get_media: bytes) -> None:
    fragment = read_fragments(get_media)[0]
    reference = FrameBatcher(320, batch_size=4)
    full = FragmentDecoder(fps=2).decode(fragment)
    expected = reference(full)
    batcher = FrameBatcher(320, batch_size=4)
    decoder = FragmentDecoder(fps=2, fit=batcher)
    assert decoder.fit == (320, 320) and decoder.format == "gray"
    batches = []
    frames = []
    for frame in decoder.iter_decode(fragment):
        frames.append(frame)
        batch = batcher.add(frame)
        if batch is not None:
            batches.append(batch)
    assert len(batches) == 1 and batcher.pending == 0
    batch = batches[0]
    # Same placement as the OpenCV path, reported against the decoded picture.
    assert batch.params == expected.params
    assert all(p.resized_height == 180 and p.pad_y == 70 for p in batch.params)
    # The pads are exactly 114/255; the picture is swscale's (FAST_BILINEAR from YUV to
    # float, no uint8 step) against cv2.resize INTER_LINEAR of the BGR frame: within a
    # grey level or so (measured 0.9 mean), not equal.
    pad = np.float32(114) * np.float32(1 / 255)
    assert (batch.tensor[:, :, :70] == pad).all() and (batch.tensor[:, :, 250:] == pad).all()
    inner = batch.tensor[:, :, 70:250]
    assert inner.min() >= 0.0 and inner.max() <= 1.0
    assert np.abs(inner - expected.tensor[:, :, 70:250]).mean() < 1.5 / 255
    # RGB order: the red channel of the tensor follows the frames' red, not their blue.
    red = full[0].image[..., 2].mean() / 255
    assert abs(float(inner[0, 0].mean()) - red) < 3 / 255
    # The frames carry the luma plane (a view), the same as a gray decode.
    gray = FragmentDecoder(fps=2, format="gray").decode(fragment)
    for ours, theirs in zip(frames, gray, strict=True):
        assert ours.format == "gray" and ours.shares_decoder_memory
        assert np.array_equal(ours.image, theirs.image)
        assert ours.source_size == (640, 360)
    with pytest.raises(ValueError, match="gray frames"):
        FragmentDecoder(fit=batcher, format="rgb24")
    # decode() returns a list: every picture was written over the one before, and the
    # early frames carry only their luma. Refused, not batched as gray.
    listed = FragmentDecoder(fps=2, fit=batcher).decode(fragment)
    with pytest.raises(ValueError, match="overwritten"):
        batcher.add(listed[0])
    assert batcher.add(listed[-1]) is None and batcher.pending == 1  # the last one is there


@pytest.mark.parametrize(("layout", "dtype"), [("NHWC", "uint8"), ("NCHW", "float32")])
def test_a_picture_whose_frame_is_not_added_is_overwritten(
    get_media: bytes, layout: Layout, dtype: TensorDType
) -> None:
    fragment = read_fragments(get_media)[0]
    batcher = FrameBatcher(
        (160, 160),
        batch_size=2,
        layout=layout,
        dtype=dtype,
    )
    frames = FragmentDecoder(fps=2, fit=batcher)
    kept = []
    for n, frame in enumerate(frames.iter_decode(fragment)):
        if n % 2 == 0:  # frames 1 and 3 are left out
            kept.append(batcher.add(frame))
    assert kept[0] is None and kept[1] is not None
    reference = FrameBatcher((160, 160), batch_size=2, layout=layout, dtype=dtype)
    full = FragmentDecoder(fps=2).decode(fragment)
    expected = reference([full[0], full[2]])
    difference = np.abs(kept[1].tensor.astype(np.float32) - expected.tensor.astype(np.float32))
    scale = 255.0 if dtype == "uint8" else 1.0
    assert difference.mean() < 8.0 * scale / 255  # AREA against INTER_LINEAR at 4x
    # The second slot holds frame 2, written over the left-out frame 1's picture.
    slot = kept[1].tensor[1].astype(np.float32)
    other = FrameBatcher((160, 160), layout=layout, dtype=dtype)
    skipped = other([full[1]]).tensor[0].astype(np.float32)
    wanted = expected.tensor[1].astype(np.float32)
    assert np.abs(slot - wanted).mean() < np.abs(slot - skipped).mean()


def test_decoder_written_stretch_batches_fill_the_whole_input(get_media: bytes) -> None:
    fragment = read_fragments(get_media)[0]
    batcher = FrameBatcher((160, 120), mode="resize", mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    decoder = FragmentDecoder(keyframes_only=True, fit=batcher)
    batch = next(b for b in map(batcher.add, decoder.decode(fragment)) if b is not None)
    params = batch.params[0]
    assert (params.pad_x, params.pad_y, params.resized_width, params.resized_height) == (
        0, 0, 160, 120,
    )  # fmt: skip
    reference = FrameBatcher((160, 120), mode="resize", mean=(0.5, 0.4, 0.3),
                             std=(0.2, 0.3, 0.4))  # fmt: skip
    expected = reference(FragmentDecoder(keyframes_only=True).decode(fragment)).tensor
    # Normalised per channel the same way (x / 255 - mean) / std; pixels within ~1 level.
    difference = np.abs(batch.tensor - expected) * np.array([0.2, 0.3, 0.4]).reshape(3, 1, 1)
    assert difference.mean() < 2.0 / 255
