"""``kvs produce``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kvs_toolkit.producer.run import add_produce_arguments

    add_produce_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.producer.run import cmd_produce

    return cmd_produce(args)
