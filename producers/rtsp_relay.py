#!/usr/bin/env python3
"""Relay an IP camera (RTSP, RTMP or HTTP URL) into a Kinesis Video Streams stream.

H.264 and H.265 are relayed without re-encoding (the camera already did the work; the
relay costs little CPU); other video (MJPEG) is encoded to H.264. AAC or G.711 audio
goes along unless ``--no-audio``. RTSP is read over TCP.

    python producers/rtsp_relay.py rtsp://user:pass@192.168.1.20:554/stream1 \\
        --stream porch-cam --tag site=porch
    python producers/rtsp_relay.py http://127.0.0.1:8000/live.ts --stream test \\
        --endpoint-url http://127.0.0.1:4567 --create-stream      # the local emulator

The camera's feed drops (a reboot, Wi-Fi, a power cut): the relay opens it again, after
a back-off that doubles from ``--retry-delay`` up to ``--max-retry-delay`` while the
camera stays away, and never more than ``--max-attempts-per-minute`` times a minute.
Each feed is one upload session; every session ends with its last fragment flushed and
acknowledged. ``--give-up-after N`` exits (status 2) after N failed attempts in a row;
by default the relay keeps trying, as a systemd service should. The AWS options are
``kvs produce``'s (``--profile``, ``--region``, ``--endpoint-url``, ``--max-attempts``
for the AWS endpoint, ``--iot-*``). Ctrl-C (or SIGTERM) flushes and exits; a second one
exits at once. Exit status: 0 when everything sent was acknowledged, 1 when something
was not, 2 when it could not run or gave up (one line on stderr), 130/143 after a
second signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from kvs_toolkit import KvsError, Producer
from kvs_toolkit.cli.common import (
    EXIT_INCOMPLETE,
    EXIT_INVALID,
    EXIT_OK,
    StatusLine,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_iot_arguments,
    parse_tags,
    positive_int,
    positive_seconds,
    producer_aws_from_args,
    program_parser,
    stop_event_on_signals,
)
from kvs_toolkit.errors import SourceError
from kvs_toolkit.producer.fragmenter import EncodedFrame
from kvs_toolkit.producer.sources import FrameSource, SourceOptions, UrlSource, redact_url

PROGRAM = "rtsp_relay"
CLOSE_TIMEOUT_S = 30.0
log = logging.getLogger(PROGRAM)

_WINDOW_S = 60.0  # --max-attempts-per-minute counts attempts in this window


class AttemptLimiter:
    """At most ``per_minute`` connection attempts in any 60 s: how long to wait first.

    The back-off alone does not bound a camera that accepts the connection and drops
    it a second later (each short session resets the back-off); this does.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, not {per_minute}")
        self.per_minute = per_minute
        self.clock = clock
        self.attempts: deque[float] = deque(maxlen=per_minute)

    def wait_s(self) -> float:
        """Seconds until another attempt is allowed (0: now)."""
        if len(self.attempts) < self.per_minute:
            return 0.0
        return max(0.0, self.attempts[0] + _WINDOW_S - self.clock())

    def record(self) -> None:
        self.attempts.append(self.clock())


def backoff_s(failures: int, first_s: float, max_s: float) -> float:
    """Delay before the next attempt: ``first_s`` after a feed that delivered frames and
    ended (``failures`` 0), doubling with each failed attempt in a row, up to ``max_s``."""
    return min(first_s * 2.0**failures, max_s)


class FeedSession(FrameSource):
    """One connection to the camera, whose loss ends the session instead of failing it.

    A read error after the tracks are known (the feed dropped) ends the iteration and
    is kept in :attr:`dropped`: ``produce()`` then flushes, waits for the last acks and
    returns the session's stats. Failing to open (no camera, 404, no video) still raises.
    """

    def __init__(self, feed: FrameSource) -> None:
        super().__init__(feed.description)
        self.feed = feed
        self.dropped: SourceError | None = None

    def _frames(self) -> Generator[EncodedFrame, None, None]:
        try:
            self._tracks = self.feed.tracks  # (the feed logs them)
            try:
                yield from self.feed
            except SourceError as exc:
                self.dropped = exc
        finally:
            self.feed.close()


@dataclass
class Totals:
    sessions: int = 0
    attempts: int = 0
    frames: int = 0
    fragments: int = 0
    acked: int = 0
    gave_up: str | None = None  # why the relay gave up on the camera
    not_acknowledged: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    parser.add_argument("url", help="rtsp://, rtsps://, rtmp://, http(s):// or srt:// URL")
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument(
        "--tag", action="append", metavar="KEY=VALUE",
        help="persistent fragment metadata on every fragment (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-audio", action="store_true", help="relay the video only")
    parser.add_argument(
        "--fragment-duration", type=positive_seconds, default=2.0, metavar="SECONDS",
        help="target fragment length (fragments start at the camera's key frames)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-delay", type=positive_seconds, default=1.0, metavar="SECONDS",
        help="first back-off after the camera is lost",
    )  # fmt: skip
    parser.add_argument(
        "--max-retry-delay", type=positive_seconds, default=30.0, metavar="SECONDS",
        help="back-off bound",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts-per-minute", type=positive_int, default=6, metavar="N",
        help="camera connections a minute at most (--max-attempts is the AWS endpoint's)",
    )  # fmt: skip
    parser.add_argument(
        "--give-up-after", type=int, default=0, metavar="N",
        help="exit after N failed camera attempts in a row (default 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=positive_seconds, metavar="SECONDS", help="stop after this long"
    )
    parser.add_argument("--create-stream", action="store_true")
    add_iot_arguments(parser)
    args = parser.parse_args(argv)
    if args.max_retry_delay < args.retry_delay:
        parser.error("need --retry-delay <= --max-retry-delay")
    return args


async def relay(args: argparse.Namespace) -> Totals:
    """Sessions until stopped (signal, ``--duration``) or ``--give-up-after``."""
    aws = producer_aws_from_args(args)  # a missing region or credentials: fail now
    tags = parse_tags(args.tag)
    options = SourceOptions(
        audio=not args.no_audio, fragment_duration_ms=round(args.fragment_duration * 1000)
    )
    camera = redact_url(args.url)
    stop = stop_event_on_signals(
        f"kvs {PROGRAM}",
        f"flushing the last fragment and waiting up to {CLOSE_TIMEOUT_S:g} s for its "
        "acknowledgements",
    )
    if args.duration is not None:
        asyncio.get_running_loop().call_later(args.duration, stop.set)
    status = StatusLine(every_s=5.0)
    producer = Producer(
        args.stream,
        aws=aws,
        create_stream=args.create_stream,
        tags=tags,
        fragment_duration_ms=options.fragment_duration_ms,
        close_timeout_s=CLOSE_TIMEOUT_S,
        progress=lambda progress: status.show(progress.line(), final=progress.done),
        stop=stop,
    )

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    limiter = AttemptLimiter(args.max_attempts_per_minute)
    totals = Totals()
    failures = 0  # failed attempts in a row
    while not stop.is_set():
        wait = limiter.wait_s()
        if wait > 0:
            log.warning(
                "%s: %d attempts in the last minute: waiting %.1f s before the next",
                camera,
                limiter.per_minute,
                wait,
            )
            await pause(wait)
            continue
        limiter.record()
        totals.attempts += 1
        log.info("%s: connecting (attempt %d)", camera, totals.attempts)
        feed = FeedSession(UrlSource(args.url, options))
        try:
            stats = await producer.upload_async(feed)  # one session: until the feed ends
        except SourceError as exc:
            if stop.is_set():
                break  # stopped while connecting
            failures += 1
            reason = str(exc)  # the source's errors never show the URL's password
        else:
            totals.sessions += 1
            totals.frames += stats.frames
            totals.fragments += stats.fragments
            totals.acked += stats.acked
            if not stats.all_acknowledged:
                totals.not_acknowledged.append(
                    f"session {totals.sessions}: {stats.dropped_fragments} dropped, "
                    f"{stats.unacknowledged} unacknowledged, errors {stats.errors}"
                )
            if stop.is_set():
                break
            # a feed that delivered frames resets the back-off
            failures = 0 if stats.frames else failures + 1
            reason = f"feed lost: {feed.dropped}" if feed.dropped else "the feed ended"
        if args.give_up_after and failures >= args.give_up_after:
            attempts = "attempt" if failures == 1 else "attempts in a row"
            totals.gave_up = f"{camera}: gave up after {failures} failed {attempts} ({reason})"
            break
        delay = backoff_s(failures, args.retry_delay, args.max_retry_delay)
        log.warning("%s: %s; reconnecting in %g s", camera, reason, delay)
        await pause(delay)
    return totals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        totals = asyncio.run(relay(args))
    except (KvsError, argparse.ArgumentTypeError) as exc:
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130
    print(
        f"kvs {PROGRAM}: {totals.sessions} sessions ({totals.attempts} attempts), "
        f"{totals.frames} frames in {totals.fragments} fragments, {totals.acked} acknowledged",
        file=sys.stderr,
    )
    if totals.gave_up:
        return fail(PROGRAM, totals.gave_up, EXIT_INVALID)
    if totals.not_acknowledged:
        print(
            f"kvs {PROGRAM}: not everything was acknowledged: "
            + "; ".join(totals.not_acknowledged),
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
