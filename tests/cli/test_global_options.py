"""What every command shares: global options anywhere on the line, ``kvs --version``,
and help that loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvs_toolkit import __version__
from kvs_toolkit.emulator import Emulator
from tests.cli.conftest import Kvs

HEAVY = ("av", "cv2", "numpy", "kvs_toolkit.analysis")


@pytest.mark.parametrize(
    "where",
    [
        ("--endpoint-url", "{url}", "streams", "list"),
        ("streams", "list", "--endpoint-url", "{url}"),
        ("streams", "--endpoint-url", "{url}", "list"),
        ("--max-attempts", "2", "streams", "list", "--endpoint-url={url}", "-v"),
    ],
    ids=["before", "after", "between", "mixed"],
)
def test_global_options_before_and_after_the_command(
    kvs: Kvs, emulator: Emulator, where: tuple[str, ...]
) -> None:
    created = kvs("streams", "create", "anywhere", "--endpoint-url", emulator.endpoint_url)
    assert created.returncode in (0, 2), created.stderr  # 2: made by an earlier case
    result = kvs(*(word.format(url=emulator.endpoint_url) for word in where))
    assert result.returncode == 0, result.stderr
    assert "anywhere" in result.stdout.split()


def test_an_option_given_twice_keeps_the_last(kvs: Kvs, emulator: Emulator) -> None:
    # before: a dead endpoint; after the command: the emulator (argparse keeps the last)
    result = kvs("--endpoint-url", "http://127.0.0.1:9", "streams", "list",
                 "--endpoint-url", emulator.endpoint_url)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_version(kvs: Kvs) -> None:
    result = kvs("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"kvs-toolkit {__version__} (Python ")


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("produce",),
        ("consume",),
        ("streams",),
        ("clip",),
        ("images",),
    ],
    ids=["kvs", "produce", "consume", "streams", "clip", "images"],
)
def test_help_loads_nothing_heavy(kvs: Kvs, command: tuple[str, ...]) -> None:
    script = (
        "import json, sys\n"
        "from kvs_toolkit.cli import main\n"
        "try:\n"
        f"    main({[*command, '--help']!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        f"heavy = [m for m in sys.modules if m in {HEAVY!r}"
        f" or m.startswith({tuple(name + '.' for name in HEAVY)!r})]\n"
        "print(json.dumps(sorted(heavy)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=kvs.env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: kvs" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
