"""Option types and option groups shared by ``kvs`` commands and the programs in
producers/ and consumers/: one spelling and one unit for each option everywhere
(seconds, bytes with K/M/G suffixes, confidence 0..1)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Final, Literal

from kvs_toolkit.cli.common import (
    EXIT_SIGNAL,
    add_global_options,
    aws_from_args,
    is_second_request,
)

if TYPE_CHECKING:
    from kvs_toolkit.aws import AwsAccess

__all__ = [
    "add_iot_arguments",
    "fraction",
    "parse_size",
    "parse_start_time",
    "parse_tags",
    "positive_float",
    "positive_int",
    "positive_seconds",
    "producer_aws_from_args",
    "program_parser",
    "stop_event_on_signals",
]

_SIZE_UNITS: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912: bytes, with an optional K/M/G/T suffix (powers of 1024)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in _SIZE_UNITS else ""
    number = cleaned[: len(cleaned) - len(unit)]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a size is a number of bytes with an optional K, M, G or T suffix, not {text!r}"
        ) from None
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return int(value)


def parse_tags(pairs: list[str] | None) -> dict[str, str]:
    """``["site=porch", "cam=1"]`` -> ``{"site": "porch", "cam": "1"}``."""
    tags: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--tag takes KEY=VALUE, not {pair!r}")
        tags[name] = value
    return tags


def parse_start_time(text: str) -> int | Literal["source"]:
    """``--start-time``: "source", or an ISO 8601 time (UTC unless it says) as epoch ms."""
    from kvs_toolkit.producer.sources import iso_time_ms

    if text == "source":
        return "source"
    try:
        return iso_time_ms(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time (2026-11-26T08:00:00Z) or 'source': {text!r}"
        ) from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def fraction(text: str) -> float:
    """A confidence or share between 0 and 1 (the unit of every ``--min-confidence``)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


# --- credentials ----------------------------------------------------------------------
_IOT_OPTIONS: Final = (
    ("iot_credentials_endpoint", "--iot-credentials-endpoint"),
    ("iot_cert", "--iot-cert"),
    ("iot_key", "--iot-key"),
    ("iot_role_alias", "--iot-role-alias"),
)


def add_iot_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--iot-*`` options (the AWS IoT credentials provider, for devices)."""
    group = parser.add_argument_group(
        "IoT credentials",
        "default: botocore's chain (environment, --profile or AWS_PROFILE, instance or "
        "container role); with --iot-credentials-endpoint, --iot-cert, --iot-key and "
        "--iot-role-alias: temporary credentials from the AWS IoT credentials provider, "
        "refreshed before they expire",
    )
    group.add_argument(
        "--iot-credentials-endpoint",
        metavar="HOST",
        help="the account's IoT credentials endpoint "
        "(aws iot describe-endpoint --endpoint-type iot:CredentialProvider)",
    )
    group.add_argument("--iot-cert", metavar="PEM", help="the device's X.509 certificate")
    group.add_argument("--iot-key", metavar="PEM", help="the device certificate's private key")
    group.add_argument(
        "--iot-ca",
        metavar="PEM",
        help="CA of the endpoint's certificate (default: the system's, which has Amazon Root CA 1)",
    )
    group.add_argument("--iot-role-alias", metavar="ALIAS", help="IoT role alias")
    group.add_argument(
        "--iot-thing-name",
        metavar="NAME",
        help="IoT thing the certificate is attached to (default: the stream name, as kvssink does)",
    )


def producer_aws_from_args(args: argparse.Namespace) -> AwsAccess:
    """AWS access for a producer: the IoT credentials provider's credentials when the
    ``--iot-*`` options are given (fetched now, so a wrong certificate fails before any
    upload), else the global options' chain. Resolved now: a missing region or
    credentials fail before the source is opened."""
    from kvs_toolkit.errors import CredentialsError

    given = {name: getattr(args, name, None) for name, _ in _IOT_OPTIONS}
    extra = [getattr(args, "iot_ca", None), getattr(args, "iot_thing_name", None)]
    if not any(given.values()) and not any(extra):
        aws = aws_from_args(args)
        aws.check()
        return aws
    missing = [flag for name, flag in _IOT_OPTIONS if not given[name]]
    if missing:
        raise CredentialsError(
            "the AWS IoT credentials provider needs --iot-credentials-endpoint, --iot-cert, "
            f"--iot-key and --iot-role-alias together: missing {', '.join(missing)}"
        )
    thing_name = getattr(args, "iot_thing_name", None) or getattr(args, "stream", None)
    if not thing_name:
        raise CredentialsError("--iot-thing-name is needed (there is no stream name to use)")
    from kvs_toolkit.producer.credentials import IotCredentialsProvider

    provider = IotCredentialsProvider(
        str(given["iot_credentials_endpoint"]),
        cert_file=str(given["iot_cert"]),
        key_file=str(given["iot_key"]),
        role_alias=str(given["iot_role_alias"]),
        thing_name=thing_name,
        ca_file=getattr(args, "iot_ca", None),
    )
    aws = aws_from_args(args, credentials_override=provider.credentials())
    aws.check()
    return aws


def program_parser(description: str) -> argparse.ArgumentParser:
    """A parser for a program in producers/ or consumers/ with the global options of
    ``kvs`` (``--debug``, ``-v``, ``--profile``, ``--region``, ``--endpoint-url``,
    ``--max-attempts``) and ``--version``."""
    from kvs_toolkit import __version__

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--version", action="version", version=f"kvs-toolkit {__version__}")
    add_global_options(parser, suppress=False)
    return parser


def add_live_stream_options(parser: argparse.ArgumentParser) -> None:
    """``--stream``, ``--start`` and ``--idle-exit``: the options every program in
    consumers/ reads a live stream with, spelled as ``kvs consume`` spells them."""
    parser.add_argument("--stream", required=True, help="stream name")
    parser.add_argument(
        "--start", default="now", help="now (default), earliest, fragment:N, producer:TIME"
    )
    parser.add_argument(
        "--idle-exit", type=positive_float, metavar="S", help="stop after S s without a fragment"
    )


def stop_event_on_signals(program: str, waiting: str) -> asyncio.Event:
    """The two-signal rule on the running event loop: the first SIGINT/SIGTERM sets the
    returned event and says ``waiting`` (what the program now waits for, and how long at
    most); a second one exits at once with 130/143 (the first delivered twice is one
    request: ``REPEAT_SIGNAL_WINDOW_S``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    first: list[tuple[signal.Signals, float]] = []

    def on_signal(received: signal.Signals) -> None:
        first_signal, first_at = first[0] if first else (None, 0.0)
        second = is_second_request(first_signal, first_at, received)
        if second is False:
            return
        if second:
            sys.stderr.write(f"\n{program}: {received.name} again: exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_SIGNAL.get(received, 128 + int(received)))
        first.append((received, time.monotonic()))
        sys.stderr.write(f"\n{program}: {received.name}: {waiting} (send it again to exit now)\n")
        sys.stderr.flush()
        stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
    return stop
