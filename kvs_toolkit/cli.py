"""The ``kvs`` command: one entry point, one subcommand per task."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kvs_toolkit.errors import KvsError

Handler = Callable[[argparse.Namespace], int]
# Exit status for invalid input or a usage error (argparse uses 2 as well).
EXIT_INVALID = 2


def _cmd_inspect(args: argparse.Namespace) -> int:
    from kvs_toolkit.inspect import inspect_stream, read_chunks, to_json, to_table

    if args.file == "-":
        result = inspect_stream(read_chunks(sys.stdin.buffer))
    else:
        try:
            with open(args.file, "rb") as stream:
                result = inspect_stream(read_chunks(stream))
        except OSError as exc:
            print(f"kvs inspect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return EXIT_INVALID
    print(to_json(result) if args.json else to_table(result))
    if result.error is not None:
        print(f"kvs inspect: {args.file}: {result.error}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _cmd_emulator(args: argparse.Namespace) -> int:
    from kvs_toolkit.emulator.server import run_forever

    credentials: dict[str, str] = {}
    for pair in args.verify_sigv4 or ():
        access_key, sep, secret = pair.partition(":")
        if not sep or not access_key or not secret:
            print("kvs emulator: --verify-sigv4 takes ACCESS_KEY:SECRET_KEY", file=sys.stderr)
            return EXIT_INVALID
        credentials[access_key] = secret
    run_forever(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        credentials=credentials or None,
        rate_limits=args.rate_limits,
        advertised_url=args.advertised_url,
        region=args.region,
    )
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from kvs_toolkit.producer.run import cmd_produce

    return cmd_produce(args)


def _cmd_consume(args: argparse.Namespace) -> int:
    from kvs_toolkit.consumer.run import cmd_consume

    return cmd_consume(args)


def _cmd_rekognition_processor(args: argparse.Namespace) -> int:
    from kvs_toolkit.analysis.processors import cmd_rekognition_processor

    return cmd_rekognition_processor(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from kvs_toolkit.demo import run_demo

    return run_demo(args)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvs", description="Amazon Kinesis Video Streams from Python."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser(
        "inspect", help="show the fragments, frames and tags of a GetMedia capture or MKV file"
    )
    inspect.add_argument("file", help="MKV file or GetMedia capture ('-' for stdin)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=_cmd_inspect)

    emulator = sub.add_parser("emulator", help="run the local KVS emulator in the foreground")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=4567, help="0 picks a free port")
    emulator.add_argument("--data-dir", help="where fragments persist (default: a temp dir)")
    emulator.add_argument(
        "--verify-sigv4",
        action="append",
        metavar="ACCESS_KEY:SECRET_KEY",
        help="check SigV4 signatures against these credentials (repeatable)",
    )
    emulator.add_argument(
        "--rate-limits",
        action="store_true",
        help="refuse calls over the service's per-stream TPS limits (PutMedia and "
        "GetMedia 5/s, GetClip 1/s) with ClientLimitExceededException",
    )
    emulator.add_argument(
        "--advertised-url",
        help="the URL GetDataEndpoint and HLS/DASH session URLs answer (behind a proxy, "
        "in a container; default: the bound address and port)",
    )
    emulator.add_argument(
        "--region",
        default="us-east-1",
        help="the emulator's region; with --verify-sigv4 the credential scope must name it",
    )
    emulator.set_defaults(handler=_cmd_emulator)

    from kvs_toolkit.producer.run import add_produce_arguments

    produce = sub.add_parser(
        "produce", help="upload a video file, URL, camera:N or - (Annex-B stdin) to a stream"
    )
    add_produce_arguments(produce)
    produce.set_defaults(handler=_cmd_produce)

    consume = sub.add_parser(
        "consume", help="read a stream (live, archive or file) and decode frames to JSON lines"
    )
    # The consumer's arguments import the consumer (PyAV, OpenCV, boto3: ~40 MB of RSS);
    # another command, e.g. `kvs produce -` on a Raspberry Pi, must not pay for them.
    if command in (None, "consume"):
        from kvs_toolkit.consumer.run import add_consume_arguments

        add_consume_arguments(consume)
    consume.set_defaults(handler=_cmd_consume)

    processor = sub.add_parser(
        "rekognition-processor",
        help="create/start/stop/describe/list/delete Rekognition Video stream processors, "
        "or read their results",
    )
    if command in (None, "rekognition-processor"):  # imports the analysis package
        from kvs_toolkit.analysis.processors import add_processor_arguments

        add_processor_arguments(processor)
    processor.set_defaults(handler=_cmd_rekognition_processor)

    demo = sub.add_parser("demo", help="run the end-to-end demo on the embedded emulator")
    demo.add_argument("--output", default="demo-output", help="folder for the demo's results")
    demo.add_argument("--seconds", type=float, default=10.0, help="length of the sample video")
    demo.add_argument(
        "--serve", action="store_true", help="leave the emulator running at the end (Ctrl-C stops)"
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except KvsError as exc:
        print(f"kvs {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
