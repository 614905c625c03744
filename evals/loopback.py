"""A real server on a loopback port, run on its own thread and event loop, so that synchronous
drivers (hypothesis examples, atheris inputs, a soak's sampler) can talk to it over real sockets
while it keeps serving.

    with ServerThread(ServerConfig(port=0), engine) as served:
        ws = websockets.sync.client.connect(served.url)
        served.call(lambda server: len(server.sessions()))  # runs on the server's loop
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine
from framestream.stream.server import Server, build_server

__all__ = ["ServerThread"]

T = TypeVar("T")


class ServerThread:
    """Serve ``engine`` with ``config`` on a background thread until :meth:`stop`.

    Args:
        config: the server's settings (``port=0`` picks a free port; see :attr:`url`).
        engine: a fresh engine; the server starts it and shuts it down.
        start_timeout: seconds to wait for the server to listen.
    """

    def __init__(self, config: ServerConfig, engine: Engine, start_timeout: float = 60.0) -> None:
        self._config = config
        self._engine = engine
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started: Future[Server] = Future()
        self._thread = threading.Thread(target=self._run, name="loopback-server", daemon=True)
        self.server: Server | None = None

    def start(self) -> ServerThread:
        self._thread.start()
        self.server = self._started.result(self._start_timeout)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None, "start() first"
        return self.server.url

    def call(self, function: Callable[[Server], T], timeout: float = 30.0) -> T:
        """``function(server)`` on the server's loop (its state is only safe to read there)."""
        assert self._loop is not None and self.server is not None, "start() first"
        server = self.server

        async def run() -> T:
            return function(server)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the server down gracefully (sessions end, connections close 1001)."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the server did not stop within {timeout} s")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = build_server(self._config, self._engine)
            await server.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            raise
        self._started.set_result(server)
        try:
            await self._stop.wait()
        finally:
            await server.close()
