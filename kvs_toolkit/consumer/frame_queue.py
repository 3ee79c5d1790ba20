"""A bounded queue of decoded frames between the reading thread and the processing one.

A slow model must not stall the reader without bound (GetMedia would fall behind the
live edge and, after the service's timeouts, reconnect), nor may frames pile up in
memory. :class:`FrameQueue` holds at most ``maxsize`` frames, and the user picks what
happens when it is full:

* ``block`` - the reader waits until the processor takes a frame. Nothing is lost; the
  reader (and GetMedia) slow down to the processor's pace.
* ``drop-to-keyframe`` - drop only when the processor is really behind. A full queue
  is not enough: GetMedia delivers a fragment's frames in a burst, faster than real
  time, and a processor that keeps up with the stream drains them one frame interval
  apart. So the reader first waits up to two frame intervals (from the frames' own
  timestamps, 1 ms to 1 s) for a slot; only a processor slower than the stream lets
  that pass, and then the queued frames older than the newest key frame (queued or
  arriving) are dropped, so the processor skips to the freshest group of pictures;
  when no newer key frame is queued, the arriving frame is dropped, and so is every
  frame after it until the next key frame (they predict from it), even when a slot
  frees meanwhile. Every dropped frame is counted (:attr:`FrameQueue.dropped`).

Between the frames go *fragment-done* markers: the processor reaches a fragment's
marker only after every frame of it was processed (or dropped), which is when the
fragment may be checkpointed. Markers are never dropped; consecutive markers with no
frame between them collapse into the newest (a later fragment's checkpoint covers the
earlier ones), so the queue's memory stays bounded in both policies.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Final

from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.queue_policy import QUEUE_POLICIES, QueuePolicy
from kvs_toolkit.mkv import Fragment

__all__ = ["QUEUE_POLICIES", "FragmentDone", "FrameQueue", "QueueClosed", "QueuePolicy"]

# Bounds of the frame interval the drop policy waits two of before it drops.
_MIN_INTERVAL_NS: Final = 1_000_000
_MAX_INTERVAL_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class FragmentDone:
    """Every frame of ``fragment`` before this marker was processed or dropped."""

    fragment: Fragment


class QueueClosed(Exception):
    """The other side closed the queue."""


class FrameQueue:
    """Frames and :class:`FragmentDone` markers, at most ``maxsize`` frames (see the
    module docstring for the policies). Thread-safe: one producer, one consumer."""

    def __init__(self, maxsize: int, policy: QueuePolicy = "block") -> None:
        if maxsize < 1:
            raise ValueError(f"the queue size must be at least 1, not {maxsize}")
        if policy not in QUEUE_POLICIES:
            raise ValueError(f"queue policy must be one of {', '.join(QUEUE_POLICIES)}")
        self.maxsize = maxsize
        self.policy: QueuePolicy = policy
        self.dropped = 0
        self.max_depth = 0
        self._items: deque[DecodedFrame | FragmentDone] = deque()
        self._frames = 0
        self._closed = False
        self._ended = False
        # drop-to-keyframe dropped an arriving frame: every frame after it depends on it
        # (until the next key frame), so those go too, even once a slot is free again
        self._skipping_to_keyframe = False
        self._last_timestamp_ns: int | None = None
        self._cond = threading.Condition()

    @property
    def depth(self) -> int:
        """Frames queued now."""
        return self._frames

    def put_frame(self, frame: DecodedFrame) -> None:
        """Queue a frame; blocks (``block``) or drops (``drop-to-keyframe``) when full.
        Raises :class:`QueueClosed` once the consumer closed the queue."""
        with self._cond:
            if self._skipping_to_keyframe:
                if not frame.keyframe:
                    self.dropped += 1
                    return
                self._skipping_to_keyframe = False
            grace_s = self._grace_s(frame)
            if self.policy == "drop-to-keyframe" and self._frames >= self.maxsize:
                # a processor that keeps up frees a slot within a frame interval or so
                self._cond.wait_for(
                    lambda: self._frames < self.maxsize or self._closed, timeout=grace_s
                )
            while self._frames >= self.maxsize:
                if self._closed:
                    raise QueueClosed
                if self.policy == "drop-to-keyframe":
                    if not self._drop_to_keyframe(frame):
                        self.dropped += 1
                        self._skipping_to_keyframe = True
                        return
                    break
                self._cond.wait()
            if self._closed:
                raise QueueClosed
            self._items.append(frame)
            self._frames += 1
            self.max_depth = max(self.max_depth, self._frames)
            self._cond.notify_all()

    def _grace_s(self, frame: DecodedFrame) -> float:
        """Two frame intervals of the stream, from the frames' timestamps (1 ms - 1 s)."""
        last, self._last_timestamp_ns = self._last_timestamp_ns, frame.timestamp_ns
        interval_ns = 0 if last is None else frame.timestamp_ns - last
        return 2 * min(max(interval_ns, _MIN_INTERVAL_NS), _MAX_INTERVAL_NS) / 1e9

    def _drop_to_keyframe(self, arriving: DecodedFrame) -> bool:
        """Drop the queued frames older than the newest key frame; False when there is
        none newer than the oldest queued frame (then the arriving frame is dropped)."""
        newest_key: int | None = None
        if arriving.keyframe:
            newest_key = len(self._items)
        else:
            for position in range(len(self._items) - 1, -1, -1):
                item = self._items[position]
                if isinstance(item, DecodedFrame) and item.keyframe:
                    newest_key = position
                    break
        first_frame = next(
            (i for i, item in enumerate(self._items) if isinstance(item, DecodedFrame)), None
        )
        if newest_key is None or first_frame is None or newest_key <= first_frame:
            return False
        kept: deque[DecodedFrame | FragmentDone] = deque()
        for position, item in enumerate(self._items):
            if isinstance(item, DecodedFrame) and position < newest_key:
                self.dropped += 1
                self._frames -= 1
                continue
            if isinstance(item, FragmentDone) and kept and isinstance(kept[-1], FragmentDone):
                kept[-1] = item  # no frame left between them: the newer marker covers both
                continue
            kept.append(item)
        self._items = kept
        return True

    def put_done(self, fragment: Fragment) -> None:
        """Mark the end of ``fragment``'s frames."""
        with self._cond:
            if self._closed:
                raise QueueClosed
            marker = FragmentDone(fragment)
            if self._items and isinstance(self._items[-1], FragmentDone):
                self._items[-1] = marker
            else:
                self._items.append(marker)
            self._cond.notify_all()

    def end(self) -> None:
        """No more items will come (the reader finished)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def get(self) -> DecodedFrame | FragmentDone | None:
        """The next item, waiting for one; None once the reader ended and all is taken."""
        with self._cond:
            while not self._items:
                if self._ended or self._closed:
                    return None
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, DecodedFrame):
                self._frames -= 1
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """The consumer stops: wake a blocked producer (its next put raises QueueClosed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
