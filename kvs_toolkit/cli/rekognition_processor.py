"""``kvs rekognition-processor``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kvs_toolkit.analysis.processors import add_processor_arguments

    add_processor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kvs_toolkit.analysis.processors import cmd_rekognition_processor

    return cmd_rekognition_processor(args)
