"""The bounded queue between reading and processing: both policies, with a slow processor."""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.consumer.frame_queue import FragmentDone, FrameQueue, QueueClosed
from kvs_toolkit.consumer.frames import DecodedFrame
from kvs_toolkit.consumer.pipeline import consume
from kvs_toolkit.consumer.readers import FileReader
from kvs_toolkit.mkv import Fragment

from .media import SampleStream

IMAGE = np.zeros((2, 2, 3), np.uint8)


def frame(index: int, keyframe: bool) -> DecodedFrame:
    return DecodedFrame(IMAGE, "bgr24", 1, "1", None, None, index, index, keyframe, index)


def fragment(number: str) -> Fragment:
    from kvs_toolkit.mkv import Tag
    from kvs_toolkit.mkv.model import TAG_FRAGMENT_NUMBER

    return Fragment((Tag(TAG_FRAGMENT_NUMBER, number),), (), 0, ())


def drain(queue: FrameQueue) -> list[int | str]:
    queue.end()
    items: list[int | str] = []
    while (item := queue.get()) is not None:
        items.append(
            f"done {item.fragment.fragment_number}"
            if isinstance(item, FragmentDone)
            else item.timestamp_ns
        )
    return items


def test_drop_to_keyframe_keeps_the_newest_group_of_pictures() -> None:
    queue = FrameQueue(4, "drop-to-keyframe")
    for index, key in enumerate([True, False, False, True]):
        queue.put_frame(frame(index, key))
    queue.put_done(fragment("1"))
    queue.put_frame(frame(4, False))  # full: frames 0-2 are older than key frame 3
    assert queue.dropped == 3
    queue.put_frame(frame(5, False))
    queue.put_frame(frame(6, False))
    queue.put_frame(frame(7, False))  # full, and no key frame newer than 3: 7 is dropped
    assert queue.dropped == 4
    queue.put_done(fragment("2"))
    queue.put_done(fragment("3"))  # consecutive markers collapse into the newest
    queue.put_frame(frame(8, True))  # full: an arriving key frame empties the queue
    assert queue.dropped == 8
    assert queue.max_depth == 4
    # Frames 3-6 went too, so markers 1 and 3 became neighbours and collapsed.
    assert drain(queue) == ["done 3", 8]


def test_after_dropping_a_frame_the_frames_that_depend_on_it_go_until_a_key_frame() -> None:
    """Frames arrive one by one (the decoder streams them): a slot freed mid-GOP must
    not admit a P-frame whose reference was just dropped."""
    queue = FrameQueue(2, "drop-to-keyframe")
    queue.put_frame(frame(0, True))
    queue.put_frame(frame(1, False))
    queue.put_frame(frame(2, False))  # full, no newer key frame: 2 is dropped
    assert queue.get() is not None  # the processor takes frame 0: a slot is free
    queue.put_frame(frame(3, False))  # would decode from the dropped 2: dropped too
    assert queue.dropped == 2 and queue.depth == 1
    queue.put_frame(frame(4, True))  # a key frame starts over
    assert queue.dropped == 2 and queue.depth == 2
    queue.put_frame(frame(5, False))  # full: frame 1 is older than key frame 4
    assert queue.dropped == 3
    assert drain(queue) == [4, 5]


def test_block_waits_for_the_processor_and_close_wakes_the_reader() -> None:
    queue = FrameQueue(2, "block")
    queue.put_frame(frame(0, True))
    queue.put_frame(frame(1, False))
    blocked = threading.Thread(target=queue.put_frame, args=(frame(2, False),))
    blocked.start()
    time.sleep(0.05)
    assert blocked.is_alive() and queue.depth == 2  # waiting for room
    assert queue.get() is not None
    blocked.join(2)
    assert not blocked.is_alive() and queue.depth == 2 and queue.dropped == 0
    errors: list[BaseException] = []

    def put() -> None:
        try:
            queue.put_frame(frame(3, False))
        except QueueClosed as exc:
            errors.append(exc)

    waiting = threading.Thread(target=put)
    waiting.start()
    time.sleep(0.05)
    queue.close()
    waiting.join(2)
    assert len(errors) == 1


def test_queue_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="the queue size must be at least 1, not 0"):
        FrameQueue(0)
    with pytest.raises(ValueError, match="queue policy must be one of block, drop-to-keyframe"):
        FrameQueue(1, "drop-oldest")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["block", "drop-to-keyframe"])
def test_consume_with_a_slow_processor(
    h264_sample: SampleStream, tmp_path: Path, policy: str
) -> None:
    capture = tmp_path / "capture.mkv"
    capture.write_bytes(h264_sample.data)
    total = h264_sample.frame_count
    numbers = [f.fragment_number for f in h264_sample.fragments]
    done: list[str | None] = []
    out = io.StringIO()

    # far slower than decoding; for drop-to-keyframe also slower than the stream itself
    # (the sample is 25 fps: 40 ms a frame), else nothing is dropped
    delay = 0.01 if policy == "block" else 0.1

    def slow(_frame: DecodedFrame) -> None:
        time.sleep(delay)

    result = consume(
        FileReader(capture),
        FragmentDecoder(),
        out,
        on_frame=slow,
        on_fragment_done=lambda f: done.append(f.fragment_number),
        queue_size=5,
        queue_policy=policy,  # type: ignore[arg-type]
    )
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert result.frames == len(records)
    assert result.max_queue_depth <= 5
    assert done[-1] == numbers[-1]  # the last fragment is checkpointable
    stamps = [r["timestamp"] for r in records]
    assert stamps == sorted(stamps)
    if policy == "block":
        assert result.dropped_frames == 0 and len(records) == total
        assert done == numbers
    else:
        assert result.dropped_frames > 0
        assert len(records) + result.dropped_frames == total
        # After every gap the processor resumes at a key frame.
        spacing = min(b - a for a, b in itertools.pairwise(stamps))
        for previous, record in itertools.pairwise(records):
            if record["timestamp"] - previous["timestamp"] > spacing * 1.5:
                assert record["keyframe"], record


def test_drop_to_keyframe_drops_nothing_when_the_processor_keeps_up() -> None:
    """GetMedia hands over a 2 s fragment of 30 fps video in one burst; a processor that
    needs 5 ms a frame keeps up with the stream and must lose no frame (the old policy
    dropped whenever the 8-frame queue was full)."""
    queue = FrameQueue(8, "drop-to-keyframe")
    interval_ns = 33_333_333
    processed: list[int] = []

    def processor() -> None:
        while (item := queue.get()) is not None:
            if isinstance(item, DecodedFrame):
                time.sleep(0.005)
                processed.append(item.index)

    worker = threading.Thread(target=processor)
    worker.start()
    for index in range(120):  # two fragments, each put at once
        queue.put_frame(
            DecodedFrame(IMAGE, "bgr24", 1, "1", None, None, index * interval_ns,
                         index * interval_ns, index % 60 == 0, index)
        )  # fmt: skip
    queue.end()
    worker.join()
    assert queue.dropped == 0
    assert processed == list(range(120))


def test_drop_to_keyframe_drops_when_the_processor_is_slower_than_the_stream() -> None:
    queue = FrameQueue(4, "drop-to-keyframe")
    interval_ns = 10_000_000  # 100 fps
    processed: list[int] = []

    def processor() -> None:
        while (item := queue.get()) is not None:
            if isinstance(item, DecodedFrame):
                time.sleep(0.05)  # 20 fps
                processed.append(item.index)

    worker = threading.Thread(target=processor)
    worker.start()
    for index in range(60):
        queue.put_frame(
            DecodedFrame(IMAGE, "bgr24", 1, "1", None, None, index * interval_ns,
                         index * interval_ns, index % 10 == 0, index)
        )  # fmt: skip
    queue.end()
    worker.join()
    assert queue.dropped > 0
    assert len(processed) + queue.dropped == 60
