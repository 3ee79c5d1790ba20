"""The ``kvs`` command: one entry point, one subcommand per task.

Each command is a module of this package with ``add_arguments(parser)`` and
``run(args) -> int``; only the module of the command being run is imported, so
``kvs produce -`` on a Raspberry Pi loads neither PyAV nor the analysis stack, and
``kvs --help`` loads nothing but argparse. Global options (``--debug``, ``-v``,
``--profile``, ``--region``, ``--endpoint-url``, ``--max-attempts``) are accepted
before or after the command name. All printing, status lines and exit codes of the
project live in this package (see :mod:`kvs_toolkit.cli.common` for the exit codes).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import Final, NamedTuple

from kvs_toolkit.cli.common import (
    EXIT_SIGNAL,
    add_global_options,
    configure_logging,
    fail,
)

__all__ = ["COMMANDS", "build_parser", "main"]


class Command(NamedTuple):
    name: str
    module: str  # kvs_toolkit.cli.<module>
    help: str


#: The commands, in the order ``kvs --help`` lists them.
COMMANDS: Final = (
    Command("produce", "produce", "upload a video file, URL, camera:N or - (stdin) to a stream"),
    Command(
        "consume", "consume", "read a stream (live, archive, HLS or a file), decode and analyse"
    ),
    Command(
        "streams",
        "streams",
        "create, list, describe, delete streams; change retention and tags",
    ),
    Command("clip", "clip", "save a time range of a stream as an MP4 file (GetClip)"),
    Command("images", "images", "save JPEG/PNG images of a time range of a stream (GetImages)"),
    Command("inspect", "inspect", "show the fragments, frames and tags of an MKV/GetMedia file"),
    Command(
        "fleet",
        "fleet",
        "read many streams in one process, shared with other processes through DynamoDB "
        "leases (run, status)",
    ),
    Command("emulator", "emulator", "run the local KVS emulator in the foreground"),
    Command("demo", "demo", "run the end-to-end demo on the embedded emulator"),
    Command(
        "rekognition-processor",
        "rekognition_processor",
        "manage Rekognition Video stream processors and read their results",
    ),
    Command("webrtc", "webrtc", "WebRTC: signaling channels, a master and a viewer"),
)
_BY_NAME: Final = {command.name: command for command in COMMANDS}


def _version() -> str:
    from kvs_toolkit import __version__

    return f"kvs-toolkit {__version__} (Python {sys.version.split()[0]})"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of subcommands are added only for ``command`` (all of
    them when None), so building it imports only that command's module."""
    parser = argparse.ArgumentParser(
        prog="kvs",
        description="Amazon Kinesis Video Streams from Python, and a local KVS emulator.",
        epilog="'kvs COMMAND --help' shows a command's options. Exit codes: 0 done, "
        "1 not everything delivered, 2 could not run (usage, input, credentials, region, "
        "endpoint), 130/143 a second Ctrl-C/SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=_version())
    add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in COMMANDS:
        child = sub.add_parser(
            entry.name, help=entry.help, description=entry.help, conflict_handler="resolve"
        )
        add_global_options(child, suppress=True)
        if command is None or command == entry.name:
            module = importlib.import_module(f"kvs_toolkit.cli.{entry.module}")
            module.add_arguments(child)
            child.set_defaults(handler=module.run)
    return parser


def _command_of(arguments: Sequence[str]) -> str | None:
    # The first word that names a command: global options before it may take values
    # (--region us-east-1), so a value cannot be told from a command name otherwise.
    return next((word for word in arguments if word in _BY_NAME), None)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # no command on the line (``kvs --help``): the command table is all that is needed
    parser = build_parser(_command_of(arguments) or "")
    args = parser.parse_args(arguments)
    configure_logging(args)
    from kvs_toolkit.errors import KvsError

    try:
        status: int = args.handler(args)
    except KvsError as exc:
        return fail(args.command, exc)
    except KeyboardInterrupt:
        return EXIT_SIGNAL[signal.SIGINT]
    return status


if __name__ == "__main__":
    sys.exit(main())
