"""``kvs demo`` end to end, as a user runs it, with a short sample."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import cv2


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvs_toolkit.cli",
            "demo",
            "--output",
            str(output),
            "--seconds",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5/5 results" in result.stdout
    summary = json.loads((output / "summary.json").read_text())
    assert (
        summary["fragments_sent"]
        == summary["fragments_acked"]
        == summary["fragments_received"]
        == 2
    )
    assert summary["frames_decoded"] == 100
    # the motion detector finds the sample's moving squares where the ground truth says
    assert summary["ground_truth_objects_present"] > 0
    assert summary["ground_truth_objects_found"] >= 0.9 * summary["ground_truth_objects_present"]
    assert summary["fragment_tags"] == {
        "camera": "sample-moving-squares",
        "site": "kvs-toolkit-demo",
    }
    records = [json.loads(line) for line in (output / "detections.jsonl").read_text().splitlines()]
    assert len(records) == summary["frames_analysed"] == 20
    assert {"fragment_number", "producer_timestamp", "detections"} <= set(records[0])
    for picture in ("contact-sheet.png", "timeline.png"):
        image = cv2.imread(str(output / picture))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 500
    # nothing left behind: the demo's process has exited and its emulator port is closed
    port = int(result.stdout.split("emulator at http://127.0.0.1:")[1].split()[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
