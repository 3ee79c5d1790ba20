"""The emulator's HTTP server: one aiohttp application for every KVS API.

boto3 works against it unchanged, by endpoint URL::

    with Emulator() as emu:
        kv = boto3.client("kinesisvideo", endpoint_url=emu.endpoint_url, region_name="us-east-1")

Routes come from *route installers*, functions that add routes to the application
(``control.install``, ``archived.install``). More APIs plug in the same way: write a
module with ``install(app)`` and handlers that take the shared
:class:`~kvs_toolkit.emulator.context.EmulatorContext` from ``request.app[EMULATOR]``,
then add it to :data:`DEFAULT_ROUTE_INSTALLERS` or pass it as ``Emulator(route_installers=...)``.

Every request passes two middlewares: errors (a raised
:class:`~kvs_toolkit.emulator.errors.ServiceError` becomes the service's error shape)
and, when credentials are configured, SigV4 verification (except for the web page at
``/`` and ``/_emulator/``, see :mod:`.web`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

from kvs_toolkit.emulator import archived, clip, control, dataplane, hls, signaling
from kvs_toolkit.emulator import web as web_page
from kvs_toolkit.emulator.context import (
    EMULATOR,
    EmulatorConfig,
    EmulatorContext,
    error_response,
    read_body,
)
from kvs_toolkit.emulator.errors import ServiceError, UnknownOperationError
from kvs_toolkit.emulator.events import StreamEvents
from kvs_toolkit.emulator.sigv4 import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    InvalidSignatureError,
    is_hex_sha256,
    verify,
)
from kvs_toolkit.emulator.store import AsyncStore, FragmentRecord, Store
from kvs_toolkit.errors import EmulatorError

__all__ = [
    "DEFAULT_ROUTE_INSTALLERS",
    "Emulator",
    "RouteInstaller",
    "create_app",
    "run_forever",
]

logger = logging.getLogger(__name__)

RouteInstaller = Callable[[web.Application], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Installed into every emulator application, in order.
DEFAULT_ROUTE_INSTALLERS: list[RouteInstaller] = [
    control.install,
    archived.install,
    dataplane.install,
    hls.install,
    clip.install,
    web_page.install,
    signaling.install,
]


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        if exc.status >= 500:
            logger.error("%s %s failed: %s", request.method, request.path, exc)
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(UnknownOperationError(f"No operation at {request.path}."))
    except web.HTTPMethodNotAllowed:
        return error_response(
            UnknownOperationError(f"{request.method} is not an operation at {request.path}.")
        )
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return error_response(ServiceError("The emulator failed to process the request."))


# Paths a browser loads (the page, its API, HLS/DASH players): answered only under the
# emulator's own Host names, so a page elsewhere cannot read streams by DNS rebinding.
_BROWSER_PREFIXES = ("/hls/", "/dash/")


@web.middleware
async def _host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if web_page.is_page_request(request) or request.path.startswith(_BROWSER_PREFIXES):
        try:
            request.app[EMULATOR].check_host(request)
        except ServiceError as exc:  # outermost middleware: answer here
            return error_response(exc)
    return await handler(request)


@web.middleware
async def _sigv4_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[EMULATOR]
    credentials = ctx.config.credentials
    # The web page and its JSON API are a local developer page, served unsigned.
    if credentials is None or web_page.is_page_request(request):
        return await handler(request)
    declared = request.headers.get("x-amz-content-sha256")
    streaming = request.path in ctx.streaming_paths
    # UNSIGNED-PAYLOAD only where the service takes it: the streamed PutMedia body.
    unsigned_ok = streaming and declared == UNSIGNED_PAYLOAD
    if declared is not None and not is_hex_sha256(declared) and not unsigned_ok:
        raise InvalidSignatureError(
            "The 'x-amz-content-sha256' header must be the hex SHA-256 of the payload"
            + (" or UNSIGNED-PAYLOAD." if streaming else ".")
        )
    if streaming:
        # A streaming body is not hashed: the signer used the header, or the hash of
        # the empty string as the C producer does for PutMedia.
        payload_hash = declared or EMPTY_SHA256
    else:
        actual = hashlib.sha256(await read_body(request)).hexdigest()
        if declared is not None and declared != actual:
            raise InvalidSignatureError(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            )
        payload_hash = declared or actual
    raw_path, _, raw_query = request.raw_path.partition("?")
    verify(
        method=request.method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=list(request.headers.items()),
        payload_hash=payload_hash,
        credentials=credentials,
        region=ctx.config.default_region,
    )
    return await handler(request)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))


def create_app(
    context: EmulatorContext, route_installers: Sequence[RouteInstaller] | None = None
) -> web.Application:
    """The aiohttp application of an emulator over ``context``."""
    app = web.Application(middlewares=[_errors_middleware, _sigv4_middleware])
    app[EMULATOR] = context
    app.on_response_prepare.append(_add_request_id)
    for install in DEFAULT_ROUTE_INSTALLERS if route_installers is None else route_installers:
        install(app)
    # First of all, before any installer's middleware (HLS checks session tokens).
    app.middlewares.insert(0, _host_middleware)
    return app


class Emulator:
    """A local Kinesis Video Streams service. Start it as a context manager or with ``await``.

    ``with Emulator() as emu`` runs the server on its own event loop in a background
    thread; ``async with Emulator() as emu`` (or ``await emu.start()`` /
    ``await emu.stop()``) runs it on the current loop. ``data_dir=None`` uses a
    temporary directory removed on stop; a path keeps everything across restarts.
    ``rate_limits=True`` refuses calls over the service's per-stream TPS limits;
    ``idle_timeout`` closes idle and half-sent connections (see :class:`EmulatorConfig`).
    ``default_region`` is the emulator's region (checked in SigV4 credential scopes).

    ``emu.store`` is the :class:`AsyncStore` (on the emulator's loop; ``emu.store.sync``
    is the blocking, thread-safe store), ``emu.events`` the :class:`StreamEvents` that
    GetMedia-style handlers wait on, ``emu.context`` what handlers see.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Mapping[str, str] | None = None,
        *,
        account_id: str = "123456789012",
        default_region: str = "us-east-1",
        state_delay: float = 0.0,
        advertised_url: str | None = None,
        rate_limits: bool = False,
        idle_timeout: float = 30.0,
        retention_sweep_interval: float = 60.0,
        max_streams: int | None = None,
        route_installers: Sequence[RouteInstaller] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.config = EmulatorConfig(
            account_id=account_id,
            default_region=default_region,
            credentials=None if credentials is None else dict(credentials),
            state_delay=state_delay,
            advertised_url=advertised_url,
            rate_limits=rate_limits,
            idle_timeout_s=idle_timeout,
        )
        self._data_dir_arg = None if data_dir is None else Path(data_dir)
        self._retention_sweep_interval = retention_sweep_interval
        self._max_streams = max_streams
        self._route_installers = route_installers
        self._context: EmulatorContext | None = None
        self._runner: web.AppRunner | None = None
        self._temp_dir: str | None = None
        self._data_dir: Path | None = None
        self._endpoint_url: str | None = None
        # Thread mode.
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread_error: BaseException | None = None

    # -- properties --

    @property
    def endpoint_url(self) -> str:
        """``http://HOST:PORT`` with the port actually bound."""
        if self._endpoint_url is None:
            raise EmulatorError("the emulator is not running")
        return self._endpoint_url

    @property
    def advertised_url(self) -> str:
        """What GetDataEndpoint and HLS/DASH session URLs answer (default: the endpoint).

        Settable while running, to point clients at a proxy put in front of the emulator
        after it started (the answer never follows the request's Host header).
        """
        return self.context.data_endpoint()

    @advertised_url.setter
    def advertised_url(self, url: str | None) -> None:
        self.context.advertised_url = url

    @property
    def context(self) -> EmulatorContext:
        if self._context is None:
            raise EmulatorError("the emulator is not running")
        return self._context

    @property
    def store(self) -> AsyncStore:
        return self.context.store

    @property
    def events(self) -> StreamEvents:
        return self.context.events

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EmulatorError("the emulator is not running")
        return self._data_dir

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (for ``run_coroutine_threadsafe`` in thread mode)."""
        if self._loop is None:
            raise EmulatorError("the emulator is not running")
        return self._loop

    # -- async API --

    async def start(self) -> None:
        """Open the data directory, recover unfinished transitions, start serving."""
        if self._runner is not None:
            raise EmulatorError("the emulator is already running")
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._data_dir_arg is None:
            self._temp_dir = tempfile.mkdtemp(prefix="kvs-emulator-")
            self._data_dir = Path(self._temp_dir)
        else:
            self._data_dir = self._data_dir_arg
        try:
            store = await asyncio.to_thread(Store, self._data_dir, max_streams=self._max_streams)
        except BaseException:
            self._remove_temp_dir()
            raise
        events = StreamEvents()

        def on_fragment(record: FragmentRecord) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(events.notify, record)

        store.add_listener(on_fragment)
        context = EmulatorContext(store=AsyncStore(store), events=events, config=self.config)
        self._context = context
        app = create_app(context, self._route_installers)
        # handler_cancellation: a long-lived GetMedia handler is cancelled as soon as its
        # client disconnects, which frees the stream's connection slot at once.
        # keepalive_timeout: aiohttp closes a connection idle (or stuck in a half-sent
        # request head) this long; stalled bodies are refused by read_body.
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=1.0,
            handler_cancellation=True,
            keepalive_timeout=self.config.idle_timeout_s,
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException as exc:
            await runner.cleanup()
            await asyncio.to_thread(context.store.close)
            self._context = None
            self._remove_temp_dir()
            if isinstance(exc, OSError):
                raise EmulatorError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._endpoint_url = f"http://{host}:{port}"
        context.endpoint_url = self._endpoint_url
        await self._recover()
        if self._retention_sweep_interval > 0:
            context.spawn(self._sweep_retention(), name="retention sweep")
        logger.info("KVS emulator at %s, data in %s", self._endpoint_url, self._data_dir)

    async def stop(self) -> None:
        """Stop serving, finish background work, close the store (and remove a temp dir)."""
        runner, context = self._runner, self._context
        if runner is None or context is None:
            return
        self._runner = None
        await context.cancel_tasks()
        await runner.cleanup()
        await asyncio.to_thread(context.store.close)
        self._context = None
        self._endpoint_url = None
        self._remove_temp_dir()
        logger.info("KVS emulator stopped")

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    async def _recover(self) -> None:
        # Finish transitions a previous run left half done.
        context = self.context
        after: str | None = None
        while True:
            streams, more = await context.store.list_streams(after_name=after, limit=1000)
            for stream in streams:
                if stream.status == "CREATING":
                    await context.store.set_status(stream.name, "ACTIVE")
                elif stream.status == "DELETING":
                    await control.finish_delete(context, stream)
            if not more:
                return
            after = streams[-1].name

    async def _sweep_retention(self) -> None:
        while True:
            await asyncio.sleep(self._retention_sweep_interval)
            try:
                await self.context.store.purge_expired()
            except EmulatorError:
                logger.exception("retention sweep failed")

    # -- thread mode --

    def __enter__(self) -> Emulator:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="kvs-emulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._thread_error is not None:
            self._thread.join()
            error, self._thread_error = self._thread_error, None
            if isinstance(error, EmulatorError):
                raise error
            raise EmulatorError(f"the emulator failed to start: {error}") from error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop an emulator started with ``with`` (no-op otherwise)."""
        thread, loop, stop = self._thread, self._loop, self._stop_requested
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None
        if self._thread_error is not None:
            error, self._thread_error = self._thread_error, None
            raise EmulatorError(f"the emulator failed while stopping: {error}") from error

    def _thread_main(self, ready: threading.Event) -> None:
        async def main() -> None:
            self._stop_requested = asyncio.Event()
            try:
                await self.start()
            finally:
                ready.set()
            try:
                await self._stop_requested.wait()
            finally:
                await self.stop()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._thread_error = exc
        finally:
            ready.set()


def run_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    credentials: Mapping[str, str] | None = None,
    *,
    rate_limits: bool = False,
    advertised_url: str | None = None,
    region: str = "us-east-1",
    on_ready: Callable[[Emulator], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (for the CLI): ``on_ready(emulator)`` is called
    once the server accepts connections (the CLI prints the endpoint URL then)."""

    async def serve() -> None:
        emulator = Emulator(
            data_dir=data_dir,
            host=host,
            port=port,
            credentials=credentials,
            rate_limits=rate_limits,
            advertised_url=advertised_url,
            default_region=region,
        )
        await emulator.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                pass
        try:
            if on_ready is not None:
                on_ready(emulator)
            await stop.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
