"""The documentation's examples, run against an emulator, so a doc that drifts from the
code fails the build.

Which blocks run (the marker convention):

* every fenced ``python`` block of the checked files runs, in order, as a script;
* a fenced ``sh`` block runs (with ``bash -euo pipefail``) when the line just before its
  opening fence is ``<!-- runnable -->``; ``<!-- runnable: needs ffmpeg -->`` also names
  programs it needs (the test fails, never skips, when they are missing: CI installs them);
* other blocks (``make demo``, a long-running ``kvs emulator``, AWS-only commands) are
  shown, not run; Python that must not run here (two WebRTC peers, which the project's
  tests run only inside a loopback-only network namespace) is fenced ``py``.

Per file: one in-process emulator and one temporary working directory shared by that
file's blocks in document order (a later block may use what an earlier one made). The
files are independent of each other, so two of them run at a time (their examples spend
much of their time waiting: real-time uploads, ``timeout``): each file's test waits for
its own file's run and fails with that file's first failing block. The
text ``http://127.0.0.1:4567`` is replaced by the emulator's URL. The environment is a
fresh machine's: no ``AWS_*`` variables, no AWS config or credentials files, ``HOME`` and
``XDG_STATE_HOME`` in the temporary directory; the venv's ``python`` and ``kvs`` first on
the PATH; ``samples/`` of the repository linked into the working directory (the examples
run from the repository root). Long-running examples bound themselves in the text
(``--duration``, ``--max-frames``, ``--idle-exit``, ``-t``), so they stay honest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from kvs_toolkit.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "samples" / "README.md",
]
PLACEHOLDER_URL = "http://127.0.0.1:4567"
BLOCK_TIMEOUT_S = 60.0
# documents run at a time (the CI machine has 2 cores)
PARALLEL_DOCUMENTS = 2

_FENCE = re.compile(r"^```(\w*)[^\n]*$")
_MARKER = re.compile(r"^<!--\s*runnable(?::\s*needs\s+(?P<needs>[\w\s,.-]+?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    needs: tuple[str, ...]


def runnable_blocks(text: str) -> list[Block]:
    """The blocks of a Markdown text that the test runs, in document order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    previous = ""
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        language, start = match.group(1), index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index] != "```":
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"line {start + 1}: unclosed code block")
        index += 1
        marker = _MARKER.match(previous)
        previous = ""
        if marker is not None and language != "sh":
            raise ValueError(f"line {start + 1}: the runnable marker applies to sh blocks")
        if language == "python" or marker is not None:
            needs = (
                tuple(re.split(r"[\s,]+", marker["needs"].strip()))
                if marker and marker["needs"]
                else ()
            )
            blocks.append(Block(language, "\n".join(body) + "\n", start + 1, needs))
    return blocks


def _fresh_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        XDG_STATE_HOME=str(home / "state"),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p),
        PYTHONUNBUFFERED="1",
    )
    if "AWS_CA_BUNDLE" in os.environ:  # a system setting, not a credential
        env["AWS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"]
    return env


def _with_examples() -> list[Path]:
    return [d for d in DOCUMENTS if runnable_blocks(d.read_text(encoding="utf-8"))]


def run_examples(document: Path, tmp_path: Path) -> None:
    """Run ``document``'s blocks in order against a fresh emulator; fail at the first
    block that exits non-zero, prints a traceback or runs too long."""
    blocks = runnable_blocks(document.read_text(encoding="utf-8"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "samples").symlink_to(ROOT / "samples")
    env = _fresh_environment(tmp_path)
    with Emulator() as emulator:
        for block in blocks:
            missing = [tool for tool in block.needs if shutil.which(tool) is None]
            assert not missing, f"{document.name}:{block.line} needs {missing} (install them)"
            code = block.code.replace(PLACEHOLDER_URL, emulator.endpoint_url)
            if block.language == "python":
                script = work / f"_example_{block.line}.py"
                script.write_text(code, encoding="utf-8")
                command = [sys.executable, script.name]
            else:
                command = ["bash", "-euo", "pipefail", "-c", code]
            try:
                done = subprocess.run(
                    command,
                    check=False,
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"{document.name}:{block.line}: still running after {exc.timeout} s")
            assert done.returncode == 0, (
                f"{document.name}:{block.line} exited {done.returncode}\n--- block\n{code}"
                f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
            )
            assert "Traceback" not in done.stderr, f"{document.name}:{block.line}\n{done.stderr}"


@pytest.fixture(scope="module")
def example_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[None]]]:
    """Every selected document's examples, started at once, two documents at a time
    (in test order), each in its own emulator and folder: document -> its run."""
    selected: list[Path] = [
        cast(Path, item.callspec.params["document"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_examples_run"
        and item.path == Path(__file__)
    ]
    with ThreadPoolExecutor(max_workers=PARALLEL_DOCUMENTS, thread_name_prefix="docs") as pool:
        runs = {
            document: pool.submit(
                run_examples, document, tmp_path_factory.mktemp(f"docs-{document.stem}")
            )
            for document in dict.fromkeys(selected)
        }
        try:
            yield runs
        finally:
            for run in runs.values():
                run.cancel()  # those not started yet (a test stopped early)


@pytest.mark.slow
@pytest.mark.parametrize("document", _with_examples(), ids=lambda d: str(d.relative_to(ROOT)))
def test_examples_run(document: Path, example_runs: dict[Path, Future[None]]) -> None:
    example_runs[document].result()  # re-raises the run's failure here


def test_the_readme_quick_starts_are_all_run() -> None:
    """The README's examples cannot quietly stop being checked (a lost marker)."""
    blocks = runnable_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sum(b.language == "sh" for b in blocks) >= 3
    assert sum(b.language == "python" for b in blocks) >= 2
    assert all(PLACEHOLDER_URL in b.code for b in blocks if "kvs produce" in b.code)


def test_marker_convention() -> None:
    text = (
        "<!-- runnable -->\n```sh\necho a\n```\n\n```sh\nnot run\n```\n"
        "<!-- runnable: needs ffmpeg, curl -->\n\n```sh\necho b\n```\n"
        "```python\nprint(1)\n```\n```text\nshown\n```\n"
    )
    blocks = runnable_blocks(text)
    assert [(b.language, b.code, b.needs) for b in blocks] == [
        ("sh", "echo a\n", ()),
        ("sh", "echo b\n", ("ffmpeg", "curl")),
        ("python", "print(1)\n", ()),
    ]
    with pytest.raises(ValueError, match="applies to sh blocks"):
        runnable_blocks("<!-- runnable -->\n```text\nx\n```\n")
    with pytest.raises(ValueError, match="unclosed"):
        runnable_blocks("```sh\nx\n")
