"""What every ``kvs`` command shares: global options, exit codes, AWS access from the
command line, one-line errors, status lines and the two-signal rule.

Exit codes (the same for every command and for the programs in producers/ and
consumers/):

* 0: done, everything acknowledged / processed;
* 1: ran, but not everything was delivered (fragments dropped or unacknowledged, frames
  dropped by an error);
* 2: could not run: a usage error, bad input, a missing region or credentials, a wrong
  profile, an endpoint that did not answer within ``--max-attempts``;
* 130 / 143: a second SIGINT / SIGTERM cut the graceful stop short.

Signals: the first SIGINT (Ctrl-C) or SIGTERM asks the command to stop gracefully; it
says on stderr what it waits for and for how long at most, then prints its summary and
exits with its normal status. A second signal exits at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Final, TextIO

from kvs_toolkit.retry import DEFAULT_MAX_ATTEMPTS, RetryPolicy

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_INVALID",
    "EXIT_OK",
    "GracefulStop",
    "StatusLine",
    "add_global_options",
    "aws_from_args",
    "configure_logging",
    "fail",
]

EXIT_OK: Final = 0
EXIT_INCOMPLETE: Final = 1
EXIT_INVALID: Final = 2
EXIT_SIGNAL: Final = {signal.SIGINT: 130, signal.SIGTERM: 143}
# The same signal again this soon after the first is the one request delivered twice,
# not a second one: GNU timeout (without --foreground) sends its signal to the command
# and then to its process group, so the command gets it twice within microseconds.
REPEAT_SIGNAL_WINDOW_S: Final = 0.5


def is_second_request(
    first: signal.Signals | None, first_at: float, received: signal.Signals
) -> bool | None:
    """The two-signal rule: None for the first request, False for the first delivered
    twice (see REPEAT_SIGNAL_WINDOW_S), True for a second request (exit at once)."""
    if first is None:
        return None
    return not (received == first and time.monotonic() - first_at < REPEAT_SIGNAL_WINDOW_S)


def _attempts(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, not {text}")
    return value


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after the command name.

    ``suppress``: for subcommand parsers, so an option given before the command is not
    reset to its default by the subcommand's parser.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--debug", action="store_true", default=default(False), help="log everything (debug level)"
    )
    group.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more logging (-vv: debug)"
    )
    group.add_argument(
        "--profile", default=default(None), help="AWS profile from ~/.aws/config (AWS_PROFILE)"
    )
    group.add_argument(
        "--region", default=default(None), help="AWS region (AWS_REGION, AWS_DEFAULT_REGION)"
    )
    group.add_argument(
        "--endpoint-url",
        default=default(None),
        metavar="URL",
        help="the Kinesis Video endpoint, e.g. the emulator's http://127.0.0.1:4567 "
        "(AWS_ENDPOINT_URL_KINESIS_VIDEO, AWS_ENDPOINT_URL); default: AWS",
    )
    group.add_argument(
        "--max-attempts",
        type=_attempts,
        default=default(DEFAULT_MAX_ATTEMPTS),
        metavar="N",
        help=f"give up on an endpoint that does not answer after N attempts "
        f"(default {DEFAULT_MAX_ATTEMPTS}; 0: keep trying)",
    )


def configure_logging(args: argparse.Namespace) -> None:
    """Warnings as ``kvs: message`` lines; ``-v`` info, ``-vv``/``--debug`` everything."""
    verbose = 2 if getattr(args, "debug", False) else min(getattr(args, "verbose", 0), 2)
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("kvs: %(message)s"))
    if verbose < 2:
        # botocore's own warnings (e.g. retries) repeat what our messages say; filtered
        # on this handler, so the library's loggers keep their levels
        handler.addFilter(
            lambda record: not record.name.startswith("botocore") or record.levelno >= logging.ERROR
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def retry_from_args(args: argparse.Namespace) -> RetryPolicy:
    attempts = getattr(args, "max_attempts", DEFAULT_MAX_ATTEMPTS)
    return RetryPolicy(max_attempts=attempts or None)


def aws_from_args(
    args: argparse.Namespace, *, credentials_override: object | None = None
) -> AwsAccess:
    """The :class:`~kvs_toolkit.aws.AwsAccess` of the global options."""
    from kvs_toolkit.aws import AwsAccess

    return AwsAccess(
        region_name=getattr(args, "region", None),
        endpoint_url=getattr(args, "endpoint_url", None),
        profile=getattr(args, "profile", None),
        credentials_override=credentials_override,  # type: ignore[arg-type]
        retry=retry_from_args(args),
    )


def fail(command: str, message: object, status: int = EXIT_INVALID) -> int:
    """Print ``kvs COMMAND: message`` on stderr (one line) and return ``status``."""
    text = " ".join(str(message).split("\n")[0:1]) or type(message).__name__
    print(f"kvs {command}: {text}", file=sys.stderr)
    return status


class StatusLine:
    """Progress on stderr: one line, at most once per ``every_s`` (rewritten on a
    terminal, a line each on a pipe)."""

    def __init__(self, out: TextIO | None = None, every_s: float = 1.0) -> None:
        self.out = out if out is not None else sys.stderr
        self.every_s = every_s
        self._last = 0.0
        self._tty = self.out.isatty()
        self._lock = threading.Lock()

    def show(self, text: str, *, final: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not final and now - self._last < self.every_s:
                return
            self._last = now
            if self._tty:
                self.out.write("\r\x1b[K" + text + ("\n" if final else ""))
            else:
                self.out.write(text + "\n")
            self.out.flush()


class GracefulStop:
    """The two-signal rule for blocking (thread-based) commands.

    The first SIGINT/SIGTERM calls ``on_first`` (ask the work to stop) and prints
    ``waiting`` (what the command now waits for and how long at most); a second one
    exits the process at once with 130/143 (the first delivered twice is one request:
    ``REPEAT_SIGNAL_WINDOW_S``). Use as a context manager around the work;
    the previous handlers come back on exit.
    """

    def __init__(self, command: str, on_first: Callable[[], None], waiting: str) -> None:
        self.command = command
        self.on_first = on_first
        self.waiting = waiting
        self.received: signal.Signals | None = None
        self._received_at = 0.0
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        received = signal.Signals(signum)
        second = is_second_request(self.received, self._received_at, received)
        if second is False:
            return
        if second:
            sys.stderr.write(f"\nkvs {self.command}: {received.name} again: exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_SIGNAL.get(received, 128 + signum))
        self.received, self._received_at = received, time.monotonic()
        sys.stderr.write(
            f"\nkvs {self.command}: {received.name}: {self.waiting} (send it again to exit now)\n"
        )
        sys.stderr.flush()
        self.on_first()

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in EXIT_SIGNAL:
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)  # type: ignore[arg-type]
