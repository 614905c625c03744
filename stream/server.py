"""The WebSocket front: a thin asyncio layer over :mod:`stream.protocol` and the engine.

One port serves both HTTP and the WebSocket endpoint::

    GET /ws                       WebSocket (docs/protocol.md)
    GET /healthz                  200 ok, 503 draining while shutting down
    GET /metrics                  Prometheus text
    GET /recordings/<id>.mp4      finished recordings
    GET /toyworld/feed.mp4        a toy-world video to watch (?seed=&seconds=; stream.toyfeed)
    GET /, /<file>                the browser page (static_dir), when configured

Each connection is a :class:`stream.connection.ConnectionHandler`. A refused message gets an
``error`` reply and the connection goes on. Messages between
``max_message_bytes`` and twice that get ``message_too_large``; larger ones make websockets
close the connection with 1009 (message too big), since it never buffers them.

Exceptions: :class:`ValueError` for a bad :class:`ServerConfig`; protocol refusals are
:class:`~stream.protocol.ProtocolError` (see that module).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import ipaddress
import logging
import mimetypes
import re
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from framestream.models.toyworld.embedded import DEFAULT_PRESET
from framestream.stream import protocol
from framestream.stream.backend import SessionBackend, cache_pools, describe_pipeline
from framestream.stream.connection import ConnectionHandler
from framestream.stream.delivery import Recorder
from framestream.stream.metrics import CONTENT_TYPE, ServiceCounters, render_metrics
from framestream.stream.protocol import ProtocolError
from framestream.stream.ratelimit import RateLimiter
from framestream.stream.session import Session
from framestream.stream.toyfeed import parse_feed_request, toyworld_mp4
from framestream.stream.version import __version__
from framestream.stream.web import response, static_file

__all__ = ["Server", "ServerConfig", "build_server", "serve"]

logger = logging.getLogger(__name__)
# websockets' own log; at DEBUG it traces every frame and request line, tokens included
# (hello, /?token=), so its DEBUG records are dropped even when the root logger is at DEBUG
_WIRE_LOGGER = logging.getLogger("framestream.stream.server.wire")
_WIRE_LOGGER.addFilter(lambda record: record.levelno >= logging.INFO)

# <session>-<128 random bits>: a recording's URL is its capability; ids alone are guessable
_RECORDING = re.compile(r"/recordings/([0-9]{1,10}-[0-9a-f]{32})\.mp4")


@dataclass(frozen=True)
class ServerConfig:
    """Every limit of the server, with safe defaults."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see Server.port)
    # required in hello when set; mandatory off loopback; never in a repr (nor so in logs)
    token: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] | None = None  # None: same-origin, localhost, no Origin
    preset: str = DEFAULT_PRESET  # the model preset the server runs (session.start may name it)
    max_connections: int = 64
    max_sessions_per_connection: int = 4
    max_message_bytes: int = 1 << 20  # refused with message_too_large; websockets closes > 2x
    max_frame_pixels: int = 1920 * 1080
    max_messages_per_second: float = 200.0  # token bucket per connection, 1 s of burst
    max_messages_per_second_total: float = 2000.0  # the same, over all connections
    max_session_starts_per_second: float = 20.0  # session.start over all connections
    open_timeout: float = 10.0  # WebSocket handshake
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0  # closing handshake, and draining sessions at shutdown
    write_limit: int = 1 << 15  # bytes buffered per connection before a send waits
    max_queue: int = 16  # received messages buffered per connection
    encode_workers: int = 2  # threads encoding frames, shared by all sessions
    max_pending_record_frames: int = 64  # per recording; more are dropped when the disk lags
    session_open_timeout: float = 60.0  # waiting for the engine to admit a session
    static_dir: Path | None = None  # the browser page, served at /
    record_dir: Path | None = None  # None: a temporary folder
    max_recordings: int = 256  # finished recordings kept (and served); the oldest are deleted
    toyworld_feed_max_seconds: int = 600  # longest /toyworld/feed.mp4 (about 1 MB a minute)

    def __post_init__(self) -> None:
        if not _is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host={self.host!r} is not a loopback address: configure a token "
                "(--token or STREAM_TOKEN) to serve beyond this machine"
            )
        for name in (
            "max_connections",
            "max_sessions_per_connection",
            "max_message_bytes",
            "max_frame_pixels",
            "max_messages_per_second",
            "max_messages_per_second_total",
            "max_session_starts_per_second",
            "open_timeout",
            "close_timeout",
            "write_limit",
            "max_queue",
            "encode_workers",
            "max_pending_record_frames",
            "max_recordings",
            "session_open_timeout",
            "toyworld_feed_max_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.allowed_origins is not None:
            object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        self.message_limiter = RateLimiter(config.max_messages_per_second_total)
        self.session_start_limiter = RateLimiter(config.max_session_starts_per_second)
        self.draining = False
        self.encoders = ThreadPoolExecutor(config.encode_workers, thread_name_prefix="encode")
        self._tmp: tempfile.TemporaryDirectory | None = None
        if config.record_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="stream-recordings-")
            self.record_dir = Path(self._tmp.name)
        else:
            self.record_dir = Path(config.record_dir)
            self.record_dir.mkdir(parents=True, exist_ok=True)
        # finished and servable: URL name -> file, oldest first
        self._recordings: collections.OrderedDict[str, Path] = collections.OrderedDict()
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
        client = ConnectionHandler(self, ws)
        self._clients.add(client)
        self.counters.connections += 1
        try:
            await client.run()
        finally:
            self.counters.connections -= 1
            self._clients.discard(client)

    def welcome(self) -> dict[str, Any]:
        config = self.config
        return {
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

    def resolve_size(self, pipeline: str, params: dict[str, Any]) -> tuple[int, int]:
        """The session's (height, width): from params, else the pipeline's default size."""
        default = describe_pipeline(self.engine.pipelines[pipeline]).default_size
        size = []
        for name, fallback in zip(("height", "width"), default, strict=True):
            value = params.get(name, fallback)
            if value is None:
                value = fallback
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % 16:
                raise ProtocolError(
                    "invalid_message", f"params.{name} must be a positive multiple of 16"
                )
            size.append(value)
        height, width = size
        if height * width > self.config.max_frame_pixels:
            raise ProtocolError(
                "frame_too_large",
                f"{width}x{height} is over max_frame_pixels={self.config.max_frame_pixels}",
            )
        return height, width

    def open_recording(self, session: Session) -> Recorder:
        """A recorder for ``session`` under an unguessable name; ``OSError`` (or PyAV's errors)
        when the recording folder cannot take it. Failures later are posted to the session."""

        def failed(reason: str) -> None:
            message = f"the recording stopped ({reason}); the session goes on without it"
            session.post(
                {
                    "type": "error",
                    "code": "recording_failed",
                    "message": message,
                    "session": session.id,
                }
            )

        name = f"{session.id}-{secrets.token_hex(16)}"
        path = self.record_dir / f"{name}.mp4"
        return Recorder(path, session.fps, self.config.max_pending_record_frames, failed)

    async def finish_recording(self, recorder: Recorder) -> str | None:
        """Complete the MP4 and serve it; returns its URL path, or None if it failed (the
        partial file is deleted). Beyond ``max_recordings`` the oldest are deleted."""
        await asyncio.shield(asyncio.wrap_future(recorder.close()))
        if recorder.failure is not None:
            with contextlib.suppress(OSError):  # the folder itself may be what failed
                recorder.path.unlink(missing_ok=True)
            return None
        if recorder.frames_dropped:
            logger.warning(
                "%s: recording dropped %d frames (disk too slow)",
                recorder.path.name,
                recorder.frames_dropped,
            )
        name = recorder.path.stem
        self._recordings[name] = recorder.path
        while len(self._recordings) > self.config.max_recordings:
            _, oldest = self._recordings.popitem(last=False)
            with contextlib.suppress(OSError):
                oldest.unlink(missing_ok=True)
        return f"/recordings/{name}.mp4"

    # -- HTTP ------------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            if self.draining:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n")
            if not self._origin_allowed(request.headers.get("Origin")):
                return response(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n")
            if self.counters.connections >= self.config.max_connections:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many connections\n")
            return None
        if path == "/healthz":
            if self.draining:
                return response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n")
            return response(http.HTTPStatus.OK, b"ok\n")
        if path == "/metrics":
            return response(http.HTTPStatus.OK, self.metrics().encode(), CONTENT_TYPE)
        if path == "/toyworld/feed.mp4":
            query = request.path.partition("?")[2]
            try:
                feed = parse_feed_request(query, self.config.toyworld_feed_max_seconds)
            except ValueError as error:
                return response(http.HTTPStatus.BAD_REQUEST, f"{error}\n".encode())
            return response(
                http.HTTPStatus.OK, await asyncio.to_thread(toyworld_mp4, feed), "video/mp4"
            )
        if match := _RECORDING.fullmatch(path):
            file = self._recordings.get(match.group(1))
            if file is not None:
                return response(
                    http.HTTPStatus.OK, await asyncio.to_thread(file.read_bytes), "video/mp4"
                )
        elif self.config.static_dir is not None:
            file = static_file(Path(self.config.static_dir), path)
            if file is not None:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                return response(http.HTTPStatus.OK, await asyncio.to_thread(file.read_bytes), kind)
        return response(http.HTTPStatus.NOT_FOUND, b"not found\n")

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
