"""`kvs produce -` on a Raspberry Pi imports only what it uses (issue 5: under 80 MB RSS).

PyAV and OpenCV cost ~40 MB of resident memory and numpy ~15 MB; the Annex-B
pass-through path needs none of them (its start-code search runs in ``re``), so they must
stay out until a source or encoder that needs them is opened.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
from kvs_toolkit.cli import build_parser
build_parser("produce").parse_args(["produce", "-", "--stream", "s", "--fps", "30"])
import kvs_toolkit.producer.run
from kvs_toolkit.producer.sources import open_source, SourceOptions
open_source("-", SourceOptions(fps=30))
print(",".join(m for m in ("av", "cv2", "numpy", "kvs_toolkit.consumer", "kvs_toolkit.analysis")
               if m in sys.modules))
"""


def test_stdin_producer_imports_neither_pyav_nor_opencv_nor_numpy() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == ""


def test_other_commands_still_get_their_arguments() -> None:
    from kvs_toolkit.cli import build_parser

    args = build_parser("consume").parse_args(["consume", "--stream", "s", "--fps", "2"])
    assert args.fps == 2
    full = build_parser().format_help()
    assert "rekognition-processor" in full and "consume" in full
