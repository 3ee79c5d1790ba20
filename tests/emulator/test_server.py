"""The Emulator object, its lifecycles, route registration and run_forever."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kvs_toolkit.emulator import (
    DEFAULT_ROUTE_INSTALLERS,
    EMULATOR,
    Emulator,
    FragmentMeta,
)
from kvs_toolkit.emulator.context import json_response, read_json
from kvs_toolkit.emulator.errors import ResourceNotFoundError
from kvs_toolkit.errors import EmulatorError

from .conftest import CREDENTIALS, ClientFactory
from .helpers import raw_post

ROOT = Path(__file__).resolve().parents[2]


def test_thread_mode_lifecycle(make_client: ClientFactory) -> None:
    emu = Emulator()
    with pytest.raises(EmulatorError):
        _ = emu.endpoint_url
    with emu:
        data_dir = emu.data_dir
        assert data_dir.is_dir()
        assert emu.endpoint_url.startswith("http://127.0.0.1:")
        assert not emu.endpoint_url.endswith(":0")
        client = make_client("kinesisvideo", emu.endpoint_url)
        client.create_stream(StreamName="s")
    assert not data_dir.exists()  # the temporary data directory is removed
    with pytest.raises(EmulatorError):
        _ = emu.endpoint_url


def test_async_mode() -> None:
    async def main() -> None:
        async with Emulator(credentials=None) as emu:
            assert emu.loop is asyncio.get_running_loop()
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    emu.endpoint_url + "/createStream", json={"StreamName": "a"}
                ) as response,
            ):
                assert response.status == 200
                assert (await response.json())["StreamARN"].endswith(tuple("0123456789"))
                assert "x-amzn-RequestId" in response.headers
            stream = await emu.store.get_stream("a")
            assert stream.status == "ACTIVE"

    asyncio.run(main())


def test_port_in_use_is_an_emulator_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmulatorError, match="cannot listen"), Emulator(port=port):
            pass


def test_given_data_dir_is_kept(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path / "data") as emu:
        emu.store.sync.create_stream("s", region="us-east-1", account_id="1")
    assert (tmp_path / "data" / "index.sqlite3").exists()


def test_recovery_finishes_transitions(tmp_path: Path, make_client: ClientFactory) -> None:
    with Emulator(data_dir=tmp_path) as emu:
        store = emu.store.sync
        store.create_stream("creating", region="us-east-1", account_id="1", status="CREATING")
        store.create_stream("deleting", region="us-east-1", account_id="1", retention_hours=1)
        record = store.append_fragment("deleting", b"x", FragmentMeta(0, 1))
        store.begin_delete("deleting")
    with Emulator(data_dir=tmp_path) as emu:
        assert emu.store.sync.get_stream("creating").status == "ACTIVE"
        with pytest.raises(ResourceNotFoundError):
            emu.store.sync.get_stream("deleting")
        assert not (tmp_path / record.path).exists()


def test_retention_sweep_runs(tmp_path: Path) -> None:
    with Emulator(data_dir=tmp_path, retention_sweep_interval=0.05) as emu:
        store = emu.store.sync
        store.create_stream("s", region="us-east-1", account_id="1", retention_hours=1)
        store.append_fragment("s", b"old", FragmentMeta(0, 1, server_timestamp_ms=1_000_000))
        deadline = asyncio.run(_wait_until_empty(emu))
        assert deadline


async def _wait_until_empty(emu: Emulator) -> bool:
    for _ in range(200):
        if emu.store.sync.earliest_fragment("s") is None:
            return True
        await asyncio.sleep(0.02)
    return False


async def _echo_stream(request: web.Request) -> web.Response:
    ctx = request.app[EMULATOR]
    stream = await ctx.resolve_stream(await read_json(request))
    return json_response({"Name": stream.name, "Endpoint": ctx.endpoint_url})


def _install_echo(app: web.Application) -> None:
    app.router.add_post("/echoStream", _echo_stream)


def test_extra_route_installers(make_client: ClientFactory) -> None:
    installers = [*DEFAULT_ROUTE_INSTALLERS, _install_echo]
    with Emulator(route_installers=installers, credentials=CREDENTIALS) as emu:
        client = make_client("kinesisvideo", emu.endpoint_url)
        client.create_stream(StreamName="routed")
        # Unsigned: SigV4 applies to added routes too.
        assert raw_post(emu.endpoint_url, "/echoStream", b'{"StreamName":"routed"}').status == 403
    with Emulator(route_installers=installers) as emu:
        emu.store.sync.create_stream("routed", region="us-east-1", account_id="1")
        response = raw_post(emu.endpoint_url, "/echoStream", b'{"StreamName":"routed"}')
        assert response.status == 200
        assert response.json() == {"Name": "routed", "Endpoint": emu.endpoint_url}
        missing = raw_post(emu.endpoint_url, "/echoStream", b'{"StreamName":"other"}')
        assert missing.status == 404


def _start_cli(
    data_dir: Path | None, tmpdir: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    code = (
        "import sys; from kvs_toolkit.emulator import run_forever; "
        "run_forever('127.0.0.1', 0, sys.argv[1] if len(sys.argv) > 1 else None, "
        "{'AKIDTEST': 'secret'}, on_ready=lambda emu: print(emu.endpoint_url, flush=True))"
    )
    args = [sys.executable, "-c", code] + ([str(data_dir)] if data_dir else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_forever(tmp_path: Path, make_client: ClientFactory, signum: int) -> None:
    process, line = _start_cli(tmp_path)
    try:
        url = line.strip()
        assert line.endswith("\n")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        client = make_client("kinesisvideo", url)
        client.create_stream(StreamName="cli")
        client.close()
        process.send_signal(signum)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == ""  # exactly one line in all
    assert (tmp_path / "index.sqlite3").exists()


def test_run_forever_temp_dir_removed(tmp_path: Path, make_client: ClientFactory) -> None:
    process, line = _start_cli(None, tmpdir=tmp_path)
    try:
        client = make_client("kinesisvideo", line.strip())
        client.create_stream(StreamName="tmp")
        client.close()
        assert [p.name.startswith("kvs-emulator-") for p in tmp_path.iterdir()] == [True]
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert list(tmp_path.iterdir()) == []
