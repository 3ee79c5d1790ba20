from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real GetMedia captures (Apache-2.0, from the AWS parser library; see the README there).
CAPTURES = ROOT / "tests" / "data" / "kvs-getmedia"


@pytest.fixture(scope="session")
def captures() -> Path:
    # In the repository: a missing folder is a broken checkout, not a reason to skip.
    if not CAPTURES.is_dir():
        pytest.fail(f"GetMedia captures missing from the checkout: {CAPTURES}")
    return CAPTURES


@pytest.fixture
def no_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS variables, no config files, no instance metadata: a fresh machine."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = "mkvtoolnix" if name.startswith("mkv") else "ffmpeg"
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def splits(data: bytes, seed: int, *, trailing: bool = False) -> list[bytes]:
    """``data`` cut at random points (chunks of 1 byte to 4 KiB)."""
    rng = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 7, 64, 1000, 4096))
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


def feed_three_ways(
    make: Callable[[], Any], data: bytes, *, bytewise: bool = True
) -> list[Sequence[Any]]:
    """Results of feeding ``data`` whole, one byte at a time, and in random splits.

    ``make()`` returns a fresh parser with ``feed`` and ``close``; each result is the
    list of everything ``feed``/``close`` returned.
    """
    results = []
    ways: list[list[bytes]] = [[data], splits(data, 1), splits(data, 2)]
    if bytewise:
        ways.insert(1, [data[i : i + 1] for i in range(len(data))])
    for chunks in ways:
        parser = make()
        out: list[Any] = []
        for chunk in chunks:
            out.extend(parser.feed(chunk))
        out.extend(parser.close())
        results.append(out)
    return results
