"""The WebSocket front: a thin asyncio layer over :mod:`stream.protocol` and the engine.

One port serves both HTTP and the WebSocket endpoint::

    GET /ws                       WebSocket (docs/protocol.md)
    GET /healthz                  200 ok, 503 draining while shutting down
    GET /metrics                  Prometheus text
    GET /recordings/<id>.mp4      finished recordings
    GET /toyworld/feed.mp4        a toy-world video to watch (?seed=&seconds=; stream.toyfeed)
    GET /, /<file>                the browser page (static_dir), when configured
    GET /favicon.ico              the page's favicon.svg (unless it has a favicon.ico)

Each connection is a :class:`stream.connection.ConnectionHandler`. A refused message gets an
``error`` reply and the connection goes on. Messages between
``max_message_bytes`` and twice that get ``message_too_large``; larger ones make websockets
close the connection with 1009 (message too big), since it never buffers them.

Exceptions: :class:`ValueError` for a bad :class:`~stream.config.ServerConfig`; refusals are
answered on the connection (:mod:`stream.connection`, :mod:`stream.errors`).
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import mimetypes
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from framestream.stream import protocol
from framestream.stream.backend import SessionBackend, cache_pools, describe_pipeline
from framestream.stream.config import ServerConfig
from framestream.stream.connection import ConnectionContext, ConnectionHandler
from framestream.stream.metrics import CONTENT_TYPE, ServiceCounters, render_metrics
from framestream.stream.ratelimit import RateLimiter
from framestream.stream.recordings import Recordings
from framestream.stream.session import Session
from framestream.stream.toyfeed import ToyFeeds, byte_range, parse_feed_request
from framestream.stream.version import __version__
from framestream.stream.web import response, static_file
from framestream.stream.welcome import model_sources, realtime_sizes

__all__ = ["Server", "build_server", "serve"]

logger = logging.getLogger(__name__)
# websockets' own log; at DEBUG it traces every frame and request line, tokens included
# (hello, /?token=), so its DEBUG records are dropped even when the root logger is at DEBUG
_WIRE_LOGGER = logging.getLogger("framestream.stream.server.wire")
_WIRE_LOGGER.addFilter(lambda record: record.levelno >= logging.INFO)

_RECORDING = re.compile(r"/recordings/([^/]{1,64})\.mp4")
_FAVICON = "/favicon.svg"  # served for /favicon.ico when the page has no .ico


class Server:
    """The service on one port. Create with :func:`build_server`; ``async with`` or
    :meth:`start` / :meth:`close`. The server owns the engine: it starts and shuts it down.
    ``engine`` is any :class:`~stream.backend.SessionBackend`: the local
    :class:`~stream.engine.Engine` of one device, or a :class:`~stream.cluster.ClusterEngine`
    over engines on a Ray cluster."""

    def __init__(self, config: ServerConfig, engine: SessionBackend) -> None:
        self.config = config
        self.engine = engine
        self.counters = ServiceCounters()
        self.draining = False
        self.encoders = ThreadPoolExecutor(config.encode_workers, thread_name_prefix="encode")
        self.recordings = Recordings(
            config.record_dir, config.max_recordings, config.max_pending_record_frames
        )
        self.feeds = ToyFeeds(config.toyworld_feed_max_waiting)
        # the models never change; the sizes follow the device's timing, so _welcome reads them
        self._models = model_sources(engine.pipelines)
        catalog = protocol.Catalog(
            {name: describe_pipeline(p) for name, p in engine.pipelines.items()},
            config.preset,
            config.max_frame_pixels,
        )
        self.context = ConnectionContext(
            config=config,
            backend=engine,
            catalog=catalog,
            counters=self.counters,
            message_limiter=RateLimiter(config.max_messages_per_second_total),
            session_start_limiter=RateLimiter(config.max_session_starts_per_second),
            encoders=self.encoders,
            recordings=self.recordings,
            draining=lambda: self.draining,
            welcome=self._welcome,  # read at each hello: a re-timed device changes sizes
        )
        self._clients: set[ConnectionHandler] = set()
        self._ws: Any = None
        self._close_task: asyncio.Task | None = None
        self.port = config.port

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine and listen."""
        config = self.config
        self.engine.start()
        self._ws = await ws_serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            compression=None,  # frames are compressed already; deflate would only cost CPU
            open_timeout=config.open_timeout,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            max_size=2 * config.max_message_bytes,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            server_header=f"stream/{__version__}",
            logger=_WIRE_LOGGER,
        )
        self.port = self._ws.sockets[0].getsockname()[1]
        logger.info("listening on ws://%s:%d/ws", config.host, self.port)

    @property
    def url(self) -> str:
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}/ws"

    async def close(self) -> None:
        """Drain and stop (idempotent): refuse new work, end sessions with ``server_shutdown``
        so clients get ``session.ended``, close connections with 1001, finish recordings."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def wait_closed(self) -> None:
        while self._close_task is None:
            await asyncio.sleep(0.1)
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        logger.info("shutting down")
        self.draining = True
        if self._ws is not None:
            self._ws.server.close()  # stop accepting; open connections stay for session.ended
        await self.engine.shutdown("server_shutdown")
        senders = [
            task
            for client in list(self._clients)
            for s in client.streams.values()
            for task in s.tasks[:1]
        ]
        if senders:
            await asyncio.wait(senders, timeout=self.config.close_timeout)
        if self._ws is not None:
            self._ws.close()  # 1001 to every open connection, then waits for the handlers
            await self._ws.wait_closed()
        self.encoders.shutdown(wait=False)
        self.feeds.close()
        logger.info("shut down")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def sessions(self) -> list[Session]:
        """The live sessions of every connection."""
        return [s.session for c in list(self._clients) for s in list(c.streams.values())]

    # -- connections -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        client = ConnectionHandler(self.context, ws)
        self._clients.add(client)
        self.counters.connections += 1
        try:
            await client.run()
        finally:
            self.counters.connections -= 1
            self._clients.discard(client)

    def _welcome(self) -> dict[str, Any]:
        config = self.config
        welcome: dict[str, Any] = {
            "version": protocol.PROTOCOL_VERSION,
            "server": f"stream/{__version__}",
            "pipelines": sorted(self.engine.pipelines),
            "limits": {
                "max_message_bytes": config.max_message_bytes,
                "max_sessions_per_connection": config.max_sessions_per_connection,
                "max_frame_pixels": config.max_frame_pixels,
                "output_queue_frames": self.engine.config.output_queue_frames,
            },
        }
        # optional: only what this server can tell (a cluster's remote pipelines say neither)
        pipelines = self.engine.pipelines
        scheduler = self.engine.config.scheduler
        if sizes := realtime_sizes(pipelines, scheduler, config.max_frame_pixels):
            welcome["sizes"] = sizes
        if self._models:
            welcome["models"] = self._models
        return welcome

    # -- HTTP ------------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if request.method != "GET":  # websockets parses any method; this server answers GET
            return response(
                http.HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n", extra=(("Allow", "GET"),)
            )
        if path == "/ws":
            if self.draining:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n")
            origins = request.headers.get_all("Origin")
            if len(origins) > 1:
                return response(http.HTTPStatus.BAD_REQUEST, b"more than one Origin header\n")
            if not self._origin_allowed(origins[0] if origins else None):
                return response(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n")
            if self.counters.connections >= self.config.max_connections:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n")
            if self.counters.unauthenticated >= self.config.max_unauthenticated_connections:
                # a share of the connections is kept for clients that said hello
                return response(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections before hello\n"
                )
            return None
        if path == "/healthz":
            if self.draining:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n")
            # degraded: serving, but realtime sessions miss their deadlines (still 200: the
            # server works, it is overloaded; /metrics says how much)
            health = self.engine.stats().health
            return response(http.HTTPStatus.OK, f"{health}\n".encode())
        if path == "/metrics":
            return response(http.HTTPStatus.OK, self.metrics().encode(), CONTENT_TYPE)
        if path == "/toyworld/feed.mp4":
            return await self._toy_feed(request)
        if match := _RECORDING.fullmatch(path):
            file = self.recordings.find(match.group(1))
            if file is not None:
                return response(
                    http.HTTPStatus.OK, await asyncio.to_thread(file.read_bytes), "video/mp4"
                )
        elif self.config.static_dir is not None:
            root = Path(self.config.static_dir)
            file = static_file(root, path)
            if file is None and path == "/favicon.ico":  # browsers ask for it on their own
                file = static_file(root, _FAVICON)
            if file is not None:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                return response(http.HTTPStatus.OK, await asyncio.to_thread(file.read_bytes), kind)
        return response(http.HTTPStatus.NOT_FOUND, b"not found\n")

    async def _toy_feed(self, request: Request) -> Response:
        try:
            feed, token = parse_feed_request(
                request.path.partition("?")[2], self.config.toyworld_feed_max_seconds
            )
        except ValueError as error:
            return response(http.HTTPStatus.BAD_REQUEST, f"{error}\n".encode())
        if self.config.token is not None and not hmac.compare_digest(
            (token or "").encode(), self.config.token.encode()
        ):
            return response(http.HTTPStatus.UNAUTHORIZED, b"a valid token is required\n")
        # answered before the handshake timeout would close the connection without a word
        data = await self.feeds.get(feed, wait_seconds=0.7 * self.config.open_timeout)
        if data is None:
            retry = (("Retry-After", "5"),)
            return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"busy rendering\n", extra=retry)
        ranges = (("Accept-Ranges", "bytes"),)
        try:
            asked = request.headers.get_all("Range")
            if len(asked) > 1:
                raise ValueError("one Range header at most")
            part = byte_range(asked[0] if asked else None, len(data))
        except ValueError as error:
            extra = (*ranges, ("Content-Range", f"bytes */{len(data)}"))
            status = http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE
            return response(status, f"{error}\n".encode(), extra=extra)
        if part is None:
            return response(http.HTTPStatus.OK, data, "video/mp4", ranges)
        start, stop = part
        extra = (*ranges, ("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}"))
        return response(http.HTTPStatus.PARTIAL_CONTENT, data[start:stop], "video/mp4", extra)

    def metrics(self) -> str:
        pools = cache_pools(self.engine)
        return render_metrics(self.counters, self.engine.stats(), pools, self.engine.pipelines)

    def _origin_allowed(self, origin: str | None) -> bool:
        if self.config.allowed_origins is not None:
            return origin in self.config.allowed_origins or (
                origin is None and None in self.config.allowed_origins
            )
        if origin is None:
            return True  # not a browser
        hosts = {self.config.host, "localhost", "127.0.0.1", "[::1]"}
        return origin in {f"{s}://{h}:{self.port}" for s in ("http", "https") for h in hosts}


def build_server(config: ServerConfig, engine: SessionBackend) -> Server:
    """A server for ``engine`` (not yet listening; ``await server.start()`` or ``async with``)."""
    return Server(config, engine)


async def serve(
    config: ServerConfig, engine: SessionBackend, stop: asyncio.Event | None = None
) -> None:
    """Run the service until ``stop`` is set (forever when None), then shut down gracefully."""
    server = build_server(config, engine)
    await server.start()
    try:
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await server.close()
