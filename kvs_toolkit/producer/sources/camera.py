"""A local camera through OpenCV (V4L2 on Linux), encoded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Protocol

from kvs_toolkit.errors import SourceError
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.sources.base import (
    ArrivalClock,
    FixedRateClock,
    FrameClock,
    FrameSource,
    SourceOptions,
    contiguous,
    register_source,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvs_toolkit.producer.encoder import Encoder

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Camera


class _Capture(Protocol):
    def isOpened(self) -> bool: ...  # OpenCV's name
    def read(self) -> tuple[bool, npt.NDArray[np.uint8] | None]: ...
    def set(self, prop: int, value: float) -> bool: ...
    def get(self, prop: int) -> float: ...
    def release(self) -> None: ...


def _open_capture(device: int | str) -> _Capture:
    import cv2

    if isinstance(device, int):
        capture: _Capture = cv2.VideoCapture(device, cv2.CAP_V4L2)  # type: ignore[assignment]
    else:
        capture = cv2.VideoCapture(device)  # type: ignore[assignment]
    return capture


class CameraSource(FrameSource):
    """Frames from an OpenCV ``VideoCapture`` (a V4L2 camera), encoded with :class:`Encoder`.

    ``device`` is a camera index (``0`` for /dev/video0) or a path/URL OpenCV opens.
    ``width``/``height``/``fps`` of the options are asked of the camera; the encoder
    uses what the camera actually delivers. Timestamps: the wall clock at capture, or
    ``clock="fps"`` for even spacing from the first frame.
    """

    def __init__(
        self,
        device: int | str,
        options: SourceOptions | None = None,
        *,
        capture_factory: Callable[[int | str], _Capture] = _open_capture,
    ) -> None:
        super().__init__(f"camera {device}")
        self.device = device
        self.options = options or SourceOptions()
        self._capture_factory = capture_factory
        self.encoder: Encoder | None = None
        self.captured = 0

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        import cv2

        capture = self._capture_factory(self.device)
        try:
            if not capture.isOpened():
                raise SourceError(f"cannot open {self.description}")
            opts = self.options
            for prop, value in (
                (cv2.CAP_PROP_FRAME_WIDTH, opts.width),
                (cv2.CAP_PROP_FRAME_HEIGHT, opts.height),
                (cv2.CAP_PROP_FPS, opts.fps),
            ):
                if value:
                    capture.set(prop, float(value))
            reported = capture.get(cv2.CAP_PROP_FPS)
            fps = opts.fps or (reported if 0 < reported <= 240 else 30.0)
            clock: FrameClock = FixedRateClock(fps) if opts.clock == "fps" else ArrivalClock()
            while True:
                ok, image = capture.read()
                if not ok or image is None:
                    log.info("%s: no more frames after %d", self.description, self.captured)
                    break
                timestamp = clock()
                self.captured += 1
                yield from self._encode(image, timestamp, fps)
            if self.encoder is not None:
                yield from self.encoder.flush()
        finally:
            capture.release()

    def _encode(
        self, image: npt.NDArray[np.uint8], timestamp: int, fps: float
    ) -> list[EncodedFrame]:
        height, width = image.shape[:2]
        if self.encoder is None:
            self.encoder = self.options.encoder_for(width, height, fps)
        if (width, height) != (self.encoder.width, self.encoder.height):
            # odd sizes: yuv420p needs even sides, drop the last row/column
            image = contiguous(image[: self.encoder.height, : self.encoder.width])
        frames = self.encoder.encode(image, timestamp)
        if frames and self._tracks is None:
            self._set_tracks([self.encoder.track()])
        return frames


@register_source("camera")
def _camera_source(spec: str, options: SourceOptions) -> FrameSource:
    device = spec.partition(":")[2] or "0"
    return CameraSource(int(device) if device.isdigit() else device, options)
