"""Frames handed in by user code (numpy images), encoded."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Final, Literal

from kvs_toolkit.errors import SourceError
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.sources.base import (
    ArrivalClock,
    FrameSource,
    SourceOptions,
    contiguous,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from kvs_toolkit.producer.encoder import Encoder

log = logging.getLogger(__name__)
# How often a blocked put_frame looks whether the upload ended.
_HAND_OVER_POLL_S: Final = 0.2


# ---------------------------------------------------------------------------------------
# Frames from user code

_END: Final = None


class NumpySource(FrameSource):
    """Images handed in by user code, encoded with :class:`Encoder`.

    Call :meth:`put_frame` from any thread with each image (and optionally its
    timestamp in absolute ms; default: now), then :meth:`finish`. Iteration (in the
    producer's thread) yields the encoded frames. Encoding runs in the caller's thread,
    and ``put_frame`` blocks while ``max_pending`` frames wait for the uploader.
    """

    def __init__(
        self,
        fps: float = 30.0,
        options: SourceOptions | None = None,
        *,
        pixel_format: Literal["bgr24", "rgb24"] = "bgr24",
        max_pending: int = 256,
    ) -> None:
        super().__init__("numpy frames")
        self.fps = fps
        self.options = options or SourceOptions()
        self.pixel_format: Literal["bgr24", "rgb24"] = pixel_format
        self.encoder: Encoder | None = None
        self._queue: queue.Queue[EncodedFrame | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._clock = ArrivalClock()
        self._finished = False

    def put_frame(self, image: npt.NDArray[np.uint8], timestamp_ms: int | None = None) -> None:
        """Encode one image (BGR by default) and queue it for upload."""
        with self._lock:
            if self._finished:
                raise SourceError("put_frame() after finish()")
            if self.encoder is None:
                height, width = image.shape[:2]
                self.encoder = self.options.encoder_for(width, height, self.fps)
            if image.shape[:2] != (self.encoder.height, self.encoder.width):
                image = contiguous(image[: self.encoder.height, : self.encoder.width])
            timestamp = self._clock() if timestamp_ms is None else timestamp_ms
            frames = self.encoder.encode(image, timestamp, pixel_format=self.pixel_format)
            if frames and self._tracks is None:
                self._set_tracks([self.encoder.track()])
            for frame in frames:
                self._hand_over(frame)

    def _hand_over(self, frame: EncodedFrame | None) -> None:
        # Wait for room, but not for an upload that ended (abandon()): user code
        # putting frames must not hang on a dead uploader.
        while True:
            try:
                self._queue.put(frame, timeout=_HAND_OVER_POLL_S)
                return
            except queue.Full:
                if self._closed:
                    raise SourceError(f"{self.description}: the upload ended") from None

    def finish(self) -> None:
        """No more frames: flush the encoder and end the iteration."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if self._closed:
                return  # nobody reads any more: nothing to flush into
            if self.encoder is not None:
                for frame in self.encoder.flush():
                    self._hand_over(frame)
            self._hand_over(_END)

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item
