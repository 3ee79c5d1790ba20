"""Frame handlers the decode-pool tests run in decode processes.

They are pickled and imported there, so they live in a module of their own that
imports nothing heavy (no emulator, no boto3): a process that is started again after
a death is up in a fraction of a second.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvs_toolkit.consumer.frames import DecodedFrame


@dataclass(frozen=True)
class FrameIds:
    """Each frame's (stream, timestamp, image shape, mean grey level, pid): proof that
    it was decoded, and where."""

    def __call__(self, stream: str) -> Callable[[DecodedFrame], Any]:
        def handle(frame: DecodedFrame) -> Any:
            mean = round(float(frame.image.mean()), 3)
            return (stream, frame.timestamp_ns, frame.image.shape, mean, os.getpid())

        return handle


@dataclass(frozen=True)
class DieOnce:
    """:class:`FrameIds`, but the process delivering the ``nth`` frame of ``stream``
    SIGKILLs itself there, once (``marker`` remembers that it happened)."""

    stream: str
    nth: int
    marker: Path

    def __call__(self, stream: str) -> Callable[[DecodedFrame], Any]:
        ids = FrameIds()(stream)
        seen = [0]

        def handle(frame: DecodedFrame) -> Any:
            seen[0] += 1
            if stream == self.stream and seen[0] == self.nth and not self.marker.exists():
                self.marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            return ids(frame)

        return handle


@dataclass(frozen=True)
class AlwaysExit:
    """A handler whose process exits (status 3) at every frame."""

    def __call__(self, stream: str) -> Callable[[DecodedFrame], Any]:
        def handle(frame: DecodedFrame) -> Any:
            os._exit(3)

        return handle
