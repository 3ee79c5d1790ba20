"""Decoding large frames reuses their buffers instead of faulting in fresh pages for
each one (kvs_toolkit.memory), in a fresh process, as a consumer starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvs_toolkit.memory import FRAME_BUFFER_THRESHOLD
from kvs_toolkit.samples import SampleSpec, write_sample

# A 1920x1080 BGR frame is 6,220,800 bytes: 1,519 pages of 4 KiB.
PAGES_PER_FRAME = 1920 * 1080 * 3 // 4096

# Run in a clean interpreter: which way glibc goes depends on what the process
# allocated before, so the test process's own history must not decide it.
DECODE_SCRIPT = """
import resource, sys
from pathlib import Path
from kvs_toolkit.consumer import FragmentDecoder
from kvs_toolkit.mkv import FragmentReader

reader = FragmentReader()
fragments = reader.feed(Path(sys.argv[1]).read_bytes()) + reader.close()
decoder = FragmentDecoder()
faults = []
for frame in decoder.decode_all(fragments):
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    del frame
later = faults[10:]
print((later[-1] - later[0]) / (len(later) - 1))
"""


@pytest.fixture(scope="module")
def full_hd_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SampleSpec(width=1920, height=1080, fps=30, seconds=1)
    return write_sample(tmp_path_factory.mktemp("memory") / "full-hd.mkv", spec)


def faults_per_frame(clip: Path, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, str(clip)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
    reason="glibc's allocator only",
)


@glibc_only
def test_decoding_full_hd_frames_does_not_fault_in_each_frames_pages(full_hd_clip: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    per_frame = faults_per_frame(full_hd_clip, env)
    # Fresh pages for every BGR frame would be >= 1,519 faults a frame; reused buffers
    # leave the decoder's own bookkeeping (tens).
    assert per_frame < PAGES_PER_FRAME / 4, f"{per_frame:.0f} page faults per frame"


@glibc_only
def test_the_users_malloc_settings_win(full_hd_clip: Path) -> None:
    # With the user's own threshold (1 MiB: frames are mapped afresh each time), the
    # decoder leaves it alone, and each frame faults its pages in again.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    assert faults_per_frame(full_hd_clip, env) >= PAGES_PER_FRAME


@glibc_only
@pytest.mark.parametrize(("setting", "expected"), [
    (None, "True True"),  # set once, and the second call says so without setting again
    ("MALLOC_TRIM_THRESHOLD_", "False False"),
])  # fmt: skip
def test_reuse_frame_buffers_reports_what_it_did(setting: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    if setting is not None:
        env[setting] = str(FRAME_BUFFER_THRESHOLD)
    code = (
        "from kvs_toolkit.memory import reuse_frame_buffers as r; "
        "print(r(), r(), r.cache_info().misses)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [*expected.split(), "1"]
