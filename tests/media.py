"""Real media made at test time with PyAV (libx264 and ffmpeg's muxers)."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
import numpy as np

from kvs_toolkit.getmedia import iter_fragments
from kvs_toolkit.mkv import Fragment


def moving_square_frames(count: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """``count`` RGB frames with a white square moving left to right."""
    frames = []
    for i in range(count):
        image = np.zeros((height, width, 3), dtype=np.uint8)
        image[:, :, 2] = 40 + (i * 3) % 200  # a changing background so frames differ
        x = (i * 7) % max(1, width - 40)
        image[height // 3 : height // 3 + 40, x : x + 40] = 255
        frames.append(image)
    return frames


def encode_matroska(
    count: int = 60,
    *,
    fps: int = 30,
    gop: int = 30,
    width: int = 320,
    height: int = 240,
    codec: str = "libx264",
) -> bytes:
    """An MKV file written by ffmpeg's matroska muxer (an independent producer)."""
    out = io.BytesIO()
    with av.open(out, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        stream.codec_context.gop_size = gop
        stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        for index, image in enumerate(moving_square_frames(count, width, height)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def decode_frame_count(data: bytes, container_format: str | None = None) -> int:
    """How many video frames PyAV decodes from ``data``."""
    with av.open(io.BytesIO(data), format=container_format) as container:
        return sum(1 for _ in container.decode(video=0))


def read_fragments(
    media: Any, stream: str, count: int, selector: dict[str, Any] | None = None
) -> list[Fragment]:
    """The first ``count`` fragments GetMedia gives for ``selector`` (default EARLIEST),
    through a ``kinesis-video-media`` client; the connection is closed after them."""
    response = media.get_media(
        StreamName=stream, StartSelector=selector or {"StartSelectorType": "EARLIEST"}
    )
    out: list[Fragment] = []
    try:
        for fragment in iter_fragments(response["Payload"]):
            out.append(fragment)
            if len(out) == count:
                break
    finally:
        response["Payload"].close()
    return out
