"""Every ``kvs`` command, set up wrongly as users do: no region, no credentials, an
endpoint that does not answer, a profile that does not exist. Each must exit 2 with
one line on stderr (``kvs COMMAND: what is wrong``), no traceback, within a bound.

Besides that line, stderr may hold only the documented notices: the one line saying
placeholder credentials sign requests to a loopback endpoint, and the shared retry
line of :func:`kvs_toolkit.aws.call_with_retry` (``kvs: cannot reach URL (what):
reason; attempt 1/2, next in 0.3 s``), exactly once with ``--max-attempts 2``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kvs_toolkit.cli import COMMANDS
from tests.cli.conftest import Kvs, closed_port

MAX_SECONDS = 30.0
RETRY_LINE = re.compile(r"^kvs: cannot reach \S+ \(.+\): .+; attempt 1/2, next in [\d.]+ s$")
NOTICE = re.compile(r"^kvs: no AWS credentials found: signing requests to the local endpoint ")

Args = Callable[[Path, Path], list[str]]  # (work dir, sample file) -> command line


def _range(command: str, output: str) -> Args:
    return lambda work, _: [command, "--stream", "s", "--start", "0", "--end", "10",
                            "-o", str(work / output)]  # fmt: skip


#: The commands that reach AWS (or the emulator), with a command line that would work.
AWS_COMMANDS: dict[str, Args] = {
    "produce": lambda _, sample: ["produce", str(sample), "--stream", "s", "--fast"],
    "consume": lambda _d, _s: ["consume", "--stream", "s"],
    "streams": lambda _d, _s: ["streams", "list"],
    "clip": _range("clip", "c.mp4"),
    "images": _range("images", "images"),
    "rekognition-processor": lambda _d, _s: ["rekognition-processor", "list"],
    "webrtc": lambda _d, _s: ["webrtc", "channel", "list"],
    "fleet": lambda cwd, _s: ["fleet", "run", "--streams", "s", "--checkpoint", str(cwd / "c")],
}
#: The commands that never reach AWS: what they do instead is tested elsewhere
#: (``inspect`` below; the emulator and the demo in tests/emulator, tests/test_demo.py).
LOCAL_COMMANDS = {"inspect", "emulator", "demo"}
_DEAD = ["--max-attempts", "2", "--endpoint-url"]
CASES: dict[str, tuple[Callable[[], list[str]], str]] = {
    # case: (global options, what the one line must mention)
    "missing-region": (list, "region"),
    "missing-credentials": (lambda: ["--region", "us-east-1"], "credentials"),
    "unreachable-endpoint": (
        lambda: [*_DEAD, f"http://127.0.0.1:{closed_port()}"],
        "after 2 attempts",
    ),
    "wrong-profile": (
        lambda: ["--profile", "no-such-profile", "--region", "us-east-1"],
        "no-such-profile",
    ),
}

XFAILS: dict[tuple[str, str], pytest.MarkDecorator] = {}


def test_the_table_covers_every_command() -> None:
    names = {command.name for command in COMMANDS}
    assert set(AWS_COMMANDS) | LOCAL_COMMANDS == names
    assert not set(AWS_COMMANDS) & LOCAL_COMMANDS


@pytest.mark.parametrize(
    ("command", "case"),
    [
        pytest.param(command, case, id=f"{command}-{case}", marks=XFAILS.get((command, case), ()))
        for command in AWS_COMMANDS
        for case in CASES
    ],
)
def test_set_up_wrongly_is_one_line_and_exit_2(
    kvs: Kvs, sample_file: Path, command: str, case: str
) -> None:
    options, mention = CASES[case]
    result = kvs(*AWS_COMMANDS[command](kvs.cwd, sample_file), *options(), timeout=120)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.seconds < MAX_SECONDS
    lines = result.stderr_lines
    retries = [line for line in lines if RETRY_LINE.match(line)]
    errors = [line for line in lines if not RETRY_LINE.match(line) and not NOTICE.match(line)]
    assert len(errors) == 1, lines
    # "kvs clip: ...", "kvs streams list: ..."
    assert re.match(rf"^kvs {command}( [a-z-]+)?: ", errors[0]), errors
    assert mention in errors[0], errors
    assert len(retries) == (1 if case == "unreachable-endpoint" else 0), lines
    assert result.stdout == ""


@pytest.mark.parametrize("case", CASES)
def test_inspect_never_reaches_aws(kvs: Kvs, sample_file: Path, case: str) -> None:
    """A local command takes the global options and ignores them."""
    options, _ = CASES[case]
    result = kvs("inspect", str(sample_file), *options())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "fragment" in result.stdout.lower()
