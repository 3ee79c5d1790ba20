"""Clips shared by the producer tests (encoded once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.producer.media import Clip, write_clip

ClipFactory = Callable[[str, Clip], Path]
DEFAULT_CLIP = Clip()


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> ClipFactory:
    """``make_clip("name.mp4", Clip(...))``: the clip's path, written once per session."""
    folder = tmp_path_factory.mktemp("clips")
    made: dict[tuple[str, Clip], Path] = {}

    def make(name: str, clip: Clip = DEFAULT_CLIP) -> Path:
        key = (name, clip)
        if key not in made:
            path = folder / f"{len(made)}-{name}"
            write_clip(path, clip)
            made[key] = path
        return made[key]

    return make
