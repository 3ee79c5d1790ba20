"""``kvs webrtc``: channel commands in-process; master and viewer as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from kvs_toolkit.cli import main
from kvs_toolkit.emulator import Emulator
from tests.webrtc.conftest import ACCESS_KEY, REGION, SECRET
from tests.webrtc.media import inside_namespace, read_index, run_in_loopback_namespace, write_clip


@pytest.fixture
def signed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _kvs(emulator: Emulator, *words: str) -> int:
    return main(["--endpoint-url", emulator.endpoint_url, "--region", REGION, "webrtc", *words])


def test_channel_commands(
    emulator: Emulator, signed_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _kvs(emulator, "channel", "create", "front", "--ttl", "30", "--tag", "a=b") == 0
    arn = capsys.readouterr().out.strip()
    assert arn.startswith("arn:aws:kinesisvideo:us-east-1:") and "/front/" in arn
    assert _kvs(emulator, "channel", "create", "back") == 0
    capsys.readouterr()
    assert _kvs(emulator, "channel", "describe", "front") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["ChannelARN"] == arn
    assert described["SingleMasterConfiguration"] == {"MessageTtlSeconds": 30}
    assert described["MediaStorageConfiguration"] == {"Status": "DISABLED"}
    # global options are taken after the action too
    words = ["webrtc", "channel", "list", "--prefix", "fr", "--endpoint-url"]
    assert main([*words, emulator.endpoint_url, "--region", REGION]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [c["ChannelName"] for c in listed] == ["front"]
    assert _kvs(emulator, "channel", "delete", "front") == 0
    assert _kvs(emulator, "channel", "describe", "front") == 2
    assert "ResourceNotFoundException" in capsys.readouterr().err
    assert _kvs(emulator, "channel", "create", "x", "--ttl", "500") == 2


@pytest.mark.loopback_namespace
@pytest.mark.parametrize("model", [None, "motion"])
def test_master_and_viewer_commands(
    request: pytest.FixtureRequest, tmp_path: Path, model: str | None
) -> None:
    if not inside_namespace():
        run_in_loopback_namespace(request.node.nodeid)
        return
    clip = write_clip(tmp_path / "clip.mp4", 60)
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    with Emulator(credentials={ACCESS_KEY: SECRET}) as emulator:
        ca = str(emulator.data_dir / "signaling" / "tls" / "ca.pem")
        common = ["--endpoint-url", emulator.endpoint_url, "--region", REGION, "webrtc"]
        kvs = [sys.executable, "-m", "kvs_toolkit.cli", *common]
        subprocess.run([*kvs, "channel", "create", "cam"], env=env, check=True, timeout=60)
        master = subprocess.Popen(
            [*kvs, "master", "--channel", "cam", "--loopback", "--ca-file", ca, str(clip)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out = tmp_path / "frames.jsonl"
            frames = tmp_path / "frames"
            viewer = subprocess.run(
                [
                    *kvs,
                    "viewer",
                    "--channel",
                    "cam",
                    "--loopback",
                    "--ca-file",
                    ca,
                    "--out",
                    str(out),
                    "--frames-dir",
                    str(frames),
                    *([] if model is None else ["--model", model]),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert viewer.returncode == 0, viewer.stderr
            _, master_err = master.communicate(timeout=60)
        finally:
            master.kill()
        assert master.returncode == 0, master_err
        assert "60 frames read" in master_err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 60
    if model is not None:
        # the consumer's analysis records: the moving gradient is motion in the frames
        # after the detector's background warm-up (about 25 frames)
        assert {r["model"] for r in records} == {"motion-average"}
        assert all(r["stream_name"] == "cam" for r in records)
        assert sum(bool(r["detections"]) for r in records) >= 25
        assert "60 frames analysed" in viewer.stderr
        return
    assert [r["index"] for r in records] == list(range(60))
    assert records[0]["width"] == 320 and records[0]["height"] == 240
    indexes = [read_index(cv2.imread(str(frames / r["jpeg"]))) for r in records]
    assert indexes == list(range(60))
