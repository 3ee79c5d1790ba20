"""``kvs emulator``: the local KVS emulator in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from kvs_toolkit.cli.common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4567, help="0 picks a free port")
    parser.add_argument("--data-dir", help="where fragments persist (default: a temp dir)")
    parser.add_argument(
        "--verify-sigv4",
        action="append",
        metavar="ACCESS_KEY:SECRET_KEY",
        help="check SigV4 signatures against these credentials (repeatable)",
    )
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="refuse calls over the service's per-stream TPS limits (PutMedia and "
        "GetMedia 5/s, GetClip 1/s) with ClientLimitExceededException",
    )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.emulator.server import run_forever

    credentials: dict[str, str] = {}
    for pair in args.verify_sigv4 or ():
        access_key, sep, secret = pair.partition(":")
        if not sep or not access_key or not secret:
            return fail("emulator", "--verify-sigv4 takes ACCESS_KEY:SECRET_KEY")
        credentials[access_key] = secret
    run_forever(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        credentials=credentials or None,
        rate_limits=args.rate_limits,
    )
    return 0
