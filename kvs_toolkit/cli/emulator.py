"""``kvs emulator``: the local KVS emulator in the foreground."""

from __future__ import annotations

import argparse
import sys
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
        "--advertised-url",
        metavar="URL",
        help="the URL GetDataEndpoint and HLS/DASH session URLs give out (behind a proxy, "
        "in a container); default: the bound address and port",
    )
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="refuse calls over the service's per-stream TPS limits (PutMedia and "
        "GetMedia 5/s, GetClip 1/s) with ClientLimitExceededException",
    )


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.emulator.server import Emulator, run_forever

    credentials: dict[str, str] = {}
    for pair in args.verify_sigv4 or ():
        access_key, sep, secret = pair.partition(":")
        if not sep or not access_key or not secret:
            return fail("emulator", "--verify-sigv4 takes ACCESS_KEY:SECRET_KEY")
        credentials[access_key] = secret

    def ready(emulator: Emulator) -> None:
        # stdout: exactly the endpoint URL (scripts read the first line); the rest on stderr
        print(emulator.endpoint_url, flush=True)
        print(f"kvs emulator: web page {emulator.endpoint_url}/", file=sys.stderr)
        ca_file = Path(emulator.data_dir) / "signaling" / "tls" / "ca.pem"
        if ca_file.is_file():
            print(
                f"kvs emulator: WebRTC signaling over wss:// is signed by the local CA "
                f"{ca_file} (--ca-file or KVS_CA_FILE for kvs webrtc)",
                file=sys.stderr,
            )

    if args.host in ("127.0.0.1", "::1", "localhost"):
        # the WebRTC ingestion peer (JoinStorageSession) gathers loopback candidates, as
        # local masters on this machine do (aioice leaves them out by default)
        from kvs_toolkit.webrtc.ice import LOOPBACK, use_host_addresses

        use_host_addresses(LOOPBACK)
    run_forever(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        credentials=credentials or None,
        rate_limits=args.rate_limits,
        advertised_url=args.advertised_url,
        # the global --region names the emulator's region (the SigV4 scope it accepts)
        region=args.region or "us-east-1",
        on_ready=ready,
    )
    return 0
