"""The frame queue's policies when full (see :mod:`kvs_toolkit.consumer.frame_queue`),
in a module of their own so command-line parsing does not load numpy."""

from typing import Final, Literal

__all__ = ["QUEUE_POLICIES", "QueuePolicy"]

QueuePolicy = Literal["block", "drop-to-keyframe"]
QUEUE_POLICIES: Final[tuple[QueuePolicy, ...]] = ("block", "drop-to-keyframe")
