"""Deterministic sample videos with known ground truth, for the demo, tests and replay.

Each frame shows moving coloured boxes at positions that are a pure function of the
frame index, plus a visible clock. :func:`ground_truth` gives the boxes of any frame, so
detections can be checked against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Box:
    label: str
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class SampleSpec:
    width: int = 640
    height: int = 360
    fps: int = 25
    seconds: float = 10.0
    codec: str = "h264"  # h264, hevc or mjpeg
    gop_seconds: float = 2.0

    @property
    def frame_count(self) -> int:
        return round(self.fps * self.seconds)


# label, colour (BGR), size as a fraction of the frame height, speed in px/s, row
_OBJECTS = (
    ("red-square", (40, 40, 220), 0.22, 0.35, 0.30),
    ("green-square", (60, 200, 60), 0.16, 0.55, 0.68),
)
_BACKGROUND = (48, 40, 32)


def ground_truth(spec: SampleSpec, index: int) -> list[Box]:
    """The boxes visible in frame ``index``: where a detector should find something."""
    t = index / spec.fps
    boxes = []
    for n, (label, _colour, size, speed, row) in enumerate(_OBJECTS):
        side = max(8, int(spec.height * size))
        travel = spec.width - side
        # bounce between the edges: a triangle wave over the travel distance
        period = 2 * travel
        pos = (speed * spec.width * t + n * travel // 2) % period
        x = int(pos if pos <= travel else period - pos)
        y = int(spec.height * row - side / 2)
        boxes.append(Box(label, x, y, side, side))
    return boxes


def render_frame(spec: SampleSpec, index: int) -> Image:
    """Frame ``index`` as a BGR image."""
    image = np.empty((spec.height, spec.width, 3), dtype=np.uint8)
    image[:] = _BACKGROUND
    for box, (_label, colour, *_rest) in zip(ground_truth(spec, index), _OBJECTS, strict=True):
        cv2.rectangle(
            image, (box.x, box.y), (box.x + box.width - 1, box.y + box.height - 1), colour, -1
        )
    seconds = index / spec.fps
    clock = f"{int(seconds // 60):02d}:{seconds % 60:06.3f}  #{index}"
    scale = spec.height / 480
    cv2.putText(
        image, clock, (8, spec.height - 12), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235),
        max(1, int(2 * scale)), cv2.LINE_AA,
    )  # fmt: skip
    return image


_ENCODERS = {"h264": "libx264", "hevc": "libx265", "mjpeg": "mjpeg"}


def write_sample(path: Path, spec: SampleSpec) -> Path:
    """Encode the sample with PyAV into ``path`` (container from the suffix: .mkv, .mp4)."""
    encoder = _ENCODERS[spec.codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=spec.fps)
        stream.width = spec.width
        stream.height = spec.height
        stream.pix_fmt = "yuvj420p" if spec.codec == "mjpeg" else "yuv420p"
        stream.time_base = Fraction(1, spec.fps)
        gop = max(1, round(spec.fps * spec.gop_seconds))
        stream.codec_context.gop_size = gop
        if encoder == "libx264":
            stream.codec_context.options = {
                "preset": "veryfast",
                "bf": "0",
                "keyint": str(gop),
                "min-keyint": str(gop),
                "sc_threshold": "0",
            }
        elif encoder == "libx265":
            stream.codec_context.options = {
                "preset": "ultrafast",
                "x265-params": (
                    f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:log-level=error"
                ),
            }
        for index in range(spec.frame_count):
            frame = av.VideoFrame.from_ndarray(render_frame(spec, index), format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, spec.fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_ground_truth(path: Path, spec: SampleSpec) -> Path:
    """One JSON line per frame: index, timestamp and the boxes."""
    with path.open("w") as out:
        for index in range(spec.frame_count):
            boxes = [asdict(b) for b in ground_truth(spec, index)]
            out.write(json.dumps({"frame": index, "t": index / spec.fps, "boxes": boxes}) + "\n")
    return path
