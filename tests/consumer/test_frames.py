"""frames.py: the gray format is the same picture at every size."""

from __future__ import annotations

import cv2
import numpy as np

from kvs_toolkit.consumer import FragmentDecoder

from .media import read_fragments


def test_resized_gray_is_the_coded_luma_scaled_not_range_expanded(get_media: bytes) -> None:
    # The capture is limited-range H.264 (yuv420p): gray at its own size is a view of
    # the luma plane, 16-235. Resized it must be that same plane, smaller: swscale left
    # to its defaults stretched it to 0-255 ((Y - 16) * 255 / 219), so one stream gave
    # two different grey scales depending on whether a size was asked.
    fragment = read_fragments(get_media)[0]
    full = FragmentDecoder(format="gray", keyframes_only=True).decode(fragment)[0]
    assert full.shares_decoder_memory and full.image.shape == (360, 640)
    half = FragmentDecoder(format="gray", width=320, height=180, interpolation="AREA",
                           keyframes_only=True).decode(fragment)[0]  # fmt: skip
    assert half.image.shape == (180, 320) and not half.shares_decoder_memory
    expected = cv2.resize(np.ascontiguousarray(full.image), (320, 180),
                          interpolation=cv2.INTER_AREA)  # fmt: skip
    difference = np.abs(half.image.astype(np.int16) - expected.astype(np.int16))
    assert difference.mean() < 1.0, difference.mean()
    assert abs(float(half.image.mean()) - float(full.image.mean())) < 0.5
    # The fit= path (a model input) follows the same rule.
    fitted = FragmentDecoder(format="gray", fit=320, keyframes_only=True).decode(fragment)[0]
    assert np.array_equal(fitted.image, half.image)
