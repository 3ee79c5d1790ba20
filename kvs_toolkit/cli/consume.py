"""``kvs consume``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kvs_toolkit.consumer.run import add_consume_arguments

    add_consume_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.consumer.run import cmd_consume

    return cmd_consume(args)
