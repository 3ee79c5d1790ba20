#!/usr/bin/env python3
"""Save one JPEG every S seconds of a live Kinesis Video Streams stream.

    python consumers/save_snapshots.py --stream my-stream --every 10 --out snapshots/
    python consumers/save_snapshots.py --stream test --endpoint-url http://127.0.0.1:4567 \\
        --every 1 --start earliest --checkpoint snapshots.sqlite3   # the local emulator

Only the frames that are kept are converted to images (the decoder's time-based
sampling), so this costs little CPU. With ``--checkpoint`` a restart continues after
the last fragment whose snapshots were all saved. The AWS options are ``kvs
consume``'s (``--profile``, ``--region``, ``--endpoint-url``, ``--max-attempts``).
Ctrl-C (or SIGTERM) stops after the fragment in progress; a second one exits at once.
Exit status: 0, 2 when it could not run (one line on stderr), 130/143 after a second
signal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from kvs_toolkit import KvsError, Pipeline, open_stream
from kvs_toolkit.cli.common import (
    EXIT_OK,
    GracefulStop,
    aws_from_args,
    configure_logging,
    fail,
)
from kvs_toolkit.cli.options import (
    add_live_stream_options,
    positive_float,
    positive_int,
    program_parser,
)
from kvs_toolkit.consumer import DecodedFrame, StartSelector, open_checkpoint_store

PROGRAM = "save_snapshots"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = program_parser((__doc__ or "").split("\n\n")[0])
    add_live_stream_options(parser)
    parser.add_argument(
        "--every", type=positive_float, default=10.0, metavar="S",
        help="seconds of video between snapshots (default 10)",
    )  # fmt: skip
    parser.add_argument("--out", default="snapshots", metavar="DIR", help="folder for the JPEGs")
    parser.add_argument(
        "--checkpoint", metavar="PATH",
        help="resume after the last saved fragment: a SQLite file, a .json file or dynamodb:TABLE",
    )  # fmt: skip
    parser.add_argument("--max-snapshots", type=positive_int, metavar="N", help="stop after N")
    return parser.parse_args(argv)


def save_snapshots(args: argparse.Namespace) -> int:
    aws = aws_from_args(args)
    aws.check()  # a missing region or credentials: one line, before any request
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = open_checkpoint_store(args.checkpoint) if args.checkpoint else None
    saved = store.load(args.stream) if store is not None else None
    start = StartSelector.from_checkpoint(saved) if saved is not None else args.start

    def save(frame: DecodedFrame) -> None:
        path = out / f"{args.stream}-{frame.datetime:%Y%m%dT%H%M%S.%f}.jpg"
        if not cv2.imwrite(str(path), frame.image):
            raise KvsError(f"cannot write {path}")
        print(path, flush=True)

    with open_stream(
        args.stream, aws=aws, start=start, fps=1 / args.every, idle_exit_s=args.idle_exit
    ) as stream:
        pipeline = Pipeline(
            stream.source,
            decoder=stream.decoder,
            on_frame=save,
            checkpoints=store,  # saved once every snapshot of a fragment is written
            checkpoint_key=args.stream,
            max_frames=args.max_snapshots,
        )
        stop = GracefulStop(PROGRAM, pipeline.stop, "stopping after the fragment in progress")
        with stop.installed():
            result = pipeline.run()
    print(f"kvs {PROGRAM}: {result.frames} snapshots in {out}", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args)
    try:
        return save_snapshots(args)
    except (KvsError, ValueError, OSError) as exc:  # ValueError: a bad --start
        return fail(PROGRAM, exc)
    except KeyboardInterrupt:  # Ctrl-C before the two-signal rule was in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
