"""The WebSocket front: a thin asyncio layer over :mod:`stream.protocol` and the engine.

One port serves both HTTP and the WebSocket endpoint::

    GET /ws                       WebSocket (docs/protocol.md)
    GET /healthz                  200 ok, 503 draining while shutting down
    GET /metrics                  Prometheus text
    GET /recordings/<id>.mp4      finished recordings
    GET /, /<file>                the browser page (static_dir), when configured

Per connection::

    receiver loop: ws message -> Connection.receive -> dispatch -> engine commands / replies
    per session:   sender   OutputQueue.get -> pace (realtime) -> encode (thread pool) -> send
                   events   Session.events -> JSON
                   metrics  every second while running

A refused message gets an ``error`` reply and the connection goes on. Messages between
``max_message_bytes`` and twice that get ``message_too_large``; larger ones make websockets
close the connection with 1009 (message too big), since it never buffers them.

Exceptions: :class:`ValueError` for a bad :class:`ServerConfig`; protocol refusals are
:class:`~stream.protocol.ProtocolError` (see that module).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import ipaddress
import json
import logging
import math
import mimetypes
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import stream
from stream import protocol
from stream.delivery import FrameEncoder, Recorder, decode_input_frame, parse_output_params
from stream.engine import Engine
from stream.metrics import CONTENT_TYPE, ServiceCounters, render_metrics
from stream.protocol import FrameFormat, FrameHeader, FrameKind, ProtocolError, encode
from stream.session import Session, SessionState
from stream.web import response, static_file

__all__ = ["Server", "ServerConfig", "build_server", "serve"]

logger = logging.getLogger(__name__)

_RECORDING = re.compile(r"/recordings/([0-9]{1,10})\.mp4")


@dataclass(frozen=True)
class ServerConfig:
    """Every limit of the server, with safe defaults."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see Server.port)
    token: str | None = None  # required in hello when set; mandatory off loopback
    allowed_origins: tuple[str, ...] | None = None  # None: same-origin, localhost, no Origin
    preset: str = "tiny"  # the model preset the server runs (session.start may name it)
    max_connections: int = 64
    max_sessions_per_connection: int = 4
    max_message_bytes: int = 1 << 20  # refused with message_too_large; websockets closes > 2x
    max_frame_pixels: int = 1920 * 1080
    max_messages_per_second: float = 200.0  # token bucket per connection, 1 s of burst
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
            "open_timeout",
            "close_timeout",
            "write_limit",
            "max_queue",
            "encode_workers",
            "max_pending_record_frames",
            "session_open_timeout",
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


class _RateLimiter:
    """Token bucket: ``rate`` messages a second, bursts of one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class _Stream:
    """Connection-side state of one session."""

    session: Session
    encoder: FrameEncoder
    recorder: Recorder | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    last_timestamp: float = 0.0  # of the last input frame (understanding sessions)


class _Client:
    """One connection: its protocol state, sessions and tasks."""

    def __init__(self, server: Server, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.config = server.config
        self.engine = server.engine
        self.protocol = protocol.Connection(self.config.max_message_bytes, self.config.token)
        self.limiter = _RateLimiter(self.config.max_messages_per_second)
        self.streams: dict[int, _Stream] = {}

    # -- receiving -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async for data in self.ws:
                self.server.counters.messages_received += 1
                if not self.limiter.allow():
                    await self.send_error(ProtocolError("rate_limited", "too many messages"))
                    continue
                request_id = None
                try:
                    message = self.protocol.receive(data)
                    if isinstance(message, protocol.SessionStart):
                        request_id = message.request_id
                    await self.dispatch(message)
                except ProtocolError as exc:
                    await self.send_error(exc, request_id or exc.request_id)
                    if exc.code == "unauthorized":  # no second guess on this connection
                        await self.ws.close(1008, "unauthorized")
        except ConnectionClosed:
            pass
        finally:
            self.protocol.close()
            await self.close_all("disconnected")

    async def dispatch(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Hello):
            await self.send(encode("welcome", **self.server.welcome()))
        elif isinstance(message, protocol.SessionStart):
            await self.start(message)
        elif isinstance(message, protocol.InputFrame):
            await self.feed(message)
        else:
            stream_ = self.stream(message.session)
            session = stream_.session
            understanding = self.engine.pipelines[session.pipeline].kind == "understanding"
            if isinstance(message, protocol.PromptUpdate):
                if understanding:
                    raise ProtocolError(
                        "wrong_direction", "understanding sessions take questions", session.id
                    )
                self.engine.switch_prompt(session, message.prompt, message.transition_chunks)
            elif isinstance(message, protocol.Question):
                if not understanding:
                    raise ProtocolError(
                        "wrong_direction",
                        "generation sessions take prompts, not questions",
                        session.id,
                    )
                self.engine.ask(session, message.text)
            elif isinstance(message, protocol.Pause):
                self.engine.pause(session)
            elif isinstance(message, protocol.Resume):
                self.engine.resume(session)
            elif isinstance(message, protocol.Stop):
                self.engine.close(session, "stopped")

    async def feed(self, message: protocol.InputFrame) -> None:
        """An understanding session's input frame: checked here, decoded off the loop."""
        header = message.header
        stream_ = self.stream(header.session)
        session = stream_.session
        if self.engine.pipelines[session.pipeline].kind != "understanding":
            raise ProtocolError(
                "wrong_direction", "generation sessions take no input frames", session.id
            )
        if not math.isfinite(header.timestamp) or header.timestamp < stream_.last_timestamp:
            raise ProtocolError(
                "timestamps_backwards",
                f"frame at {header.timestamp} s after one at {stream_.last_timestamp} s",
                session.id,
            )
        loop = asyncio.get_running_loop()
        frame = await loop.run_in_executor(
            self.server.encoders,
            decode_input_frame,
            header,
            message.payload,
            self.config.max_frame_pixels,
        )
        stream_.last_timestamp = header.timestamp
        self.engine.push_frame(session, header.timestamp, frame)

    def stream(self, session_id: int) -> _Stream:
        stream_ = self.streams.get(session_id)
        if stream_ is None or stream_.session.finished:
            raise ProtocolError(
                "unknown_session", f"no session {session_id} on this connection", session_id
            )
        return stream_

    async def start(self, message: protocol.SessionStart) -> None:
        config, engine = self.config, self.engine
        if self.server.draining:
            raise ProtocolError("server_shutdown", "the server is stopping")
        if message.pipeline not in engine.pipelines:
            raise ProtocolError(
                "unknown_pipeline",
                f"unknown pipeline {message.pipeline!r}; known: {sorted(engine.pipelines)}",
            )
        if message.preset is not None and message.preset != config.preset:
            raise ProtocolError(
                "unknown_pipeline",
                f"this server runs preset {config.preset!r}, not {message.preset!r}",
            )
        if len(self.streams) >= config.max_sessions_per_connection:
            raise ProtocolError(
                "too_many_sessions",
                f"a connection runs at most {config.max_sessions_per_connection} sessions",
            )
        params = message.params
        if engine.pipelines[message.pipeline].kind == "understanding":
            await self.start_understanding(message)
            return
        fmt, quality, realtime, record = parse_output_params(params)
        height, width = self.server.resolve_size(message.pipeline, params)
        try:
            session = await asyncio.wait_for(
                engine.open_session(message.pipeline, params, realtime),
                config.session_open_timeout,
            )
        except TimeoutError:
            raise ProtocolError(
                "internal", "the engine did not admit the session in time"
            ) from None
        stream_ = _Stream(session, FrameEncoder(fmt, session.fps, quality))
        self.streams[session.id] = stream_
        try:
            if record:
                path = self.server.record_dir / f"{session.id}.mp4"
                stream_.recorder = Recorder(path, session.fps, config.max_pending_record_frames)
                session.output.set_tap(stream_.recorder.add)
            await self.send(
                encode(
                    "session.started",
                    session=session.id,
                    pipeline=session.pipeline,
                    fps=session.fps,
                    width=width,
                    height=height,
                    format=fmt.name.lower(),
                    request_id=message.request_id,
                )
            )
        finally:
            # the tasks own the session from here on, even if the reply could not be sent
            stream_.tasks = [
                asyncio.create_task(self.deliver(stream_), name=f"send-{session.id}"),
                asyncio.create_task(self.forward_events(session), name=f"events-{session.id}"),
                asyncio.create_task(self.report(session), name=f"metrics-{session.id}"),
            ]
        logger.info(
            "session %d started: %s %dx%d %s", session.id, session.pipeline, width, height, fmt.name
        )

    async def start_understanding(self, message: protocol.SessionStart) -> None:
        """A feed in, captions out: no frames to encode, pace or record."""
        try:
            session = await asyncio.wait_for(
                self.engine.open_session(message.pipeline, message.params),
                self.config.session_open_timeout,
            )
        except TimeoutError:
            raise ProtocolError(
                "internal", "the engine did not admit the session in time"
            ) from None
        stream_ = _Stream(session, FrameEncoder(FrameFormat.JPEG, session.fps, 85))
        self.streams[session.id] = stream_
        try:
            await self.send(
                encode(
                    "session.started",
                    session=session.id,
                    pipeline=session.pipeline,
                    kind="understanding",
                    fps=session.fps,
                    request_id=message.request_id,
                )
            )
        finally:
            stream_.tasks = [
                asyncio.create_task(self.deliver(stream_), name=f"send-{session.id}"),
                asyncio.create_task(self.forward_events(session), name=f"events-{session.id}"),
            ]
        logger.info("session %d started: %s", session.id, session.pipeline)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def send_error(
        self, error: ProtocolError, request_id: str | None = None, count: bool = True
    ) -> None:
        if count:
            self.server.counters.errors[error.code] += 1
        fields: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.session is not None:
            fields["session"] = error.session
        if request_id is not None:
            fields["request_id"] = request_id
        with contextlib.suppress(ConnectionClosed):
            await self.send(encode("error", **fields))

    async def deliver(self, stream_: _Stream) -> None:
        """The session's sender: paced frames, then ``session.ended``."""
        session, encoder = stream_.session, stream_.encoder
        loop = asyncio.get_running_loop()
        t0, first = 0.0, -1
        try:
            while (frame := await session.output.get()) is not None:
                if session.finished:
                    break  # stopped: what is still buffered is not wanted any more
                if session.realtime:
                    now = loop.time()
                    if first < 0:
                        t0, first = now, frame.index
                    due = t0 + (frame.index - first) / session.fps
                    if now - due > 2 / session.fps:  # late (a pause, a slow step): re-anchor
                        t0, first, due = now, frame.index, now
                    if due > now:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(session.ended.wait(), due - now)
                        if session.finished:
                            break
                payload = await loop.run_in_executor(self.server.encoders, encoder.encode, frame)
                height, width = frame.pixels.shape[:2]
                header = FrameHeader(
                    FrameKind.VIDEO,
                    session.id,
                    frame.index,
                    frame.timestamp,
                    encoder.format,
                    width,
                    height,
                )
                await self.send(header.pack() + payload)
                session.stats.frames_sent += 1
                self.server.counters.frames_sent += 1
            await session.ended.wait()
            await self.finish(stream_)
        except ConnectionClosed:
            pass
        finally:
            encoder.close()

    async def finish(self, stream_: _Stream) -> None:
        """Close the recording, flush events, and tell the client how the session ended."""
        session = stream_.session
        fields: dict[str, Any] = {"session": session.id, "reason": session.end_reason}
        if session.end_message:
            fields["message"] = session.end_message
        if stream_.recorder is not None:
            await self.server.finish_recording(session.id, stream_.recorder)
            fields["recording"] = f"/recordings/{session.id}.mp4"
        for task in stream_.tasks[1:]:  # events and metrics: flushed here, in order
            task.cancel()
        await asyncio.gather(*stream_.tasks[1:], return_exceptions=True)
        await asyncio.sleep(0)  # let events posted at the end (call_soon) land
        while not session.events.empty():
            await self.send(_json(session.events.get_nowait()))
        if session.end_reason == "error":
            error = ProtocolError("internal", session.end_message or "step failed", session.id)
            await self.send_error(error, count=False)  # the engine counted it
        if session.end_reason != "disconnected":
            await self.send(encode("session.ended", **fields))
        self.streams.pop(session.id, None)
        logger.info("session %d ended: %s", session.id, session.end_reason)

    async def forward_events(self, session: Session) -> None:
        with contextlib.suppress(ConnectionClosed):
            while not session.finished:
                event = await session.events.get()
                await self.send(_json(event))

    async def report(self, session: Session) -> None:
        """Every second while the session runs: delivery rate, step time, queue depth."""
        sent, last = session.stats.frames_sent, time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            while not session.finished:
                await asyncio.sleep(1.0)
                now, total = time.monotonic(), session.stats.frames_sent
                fps, sent, last = (total - sent) / max(now - last, 1e-6), total, now
                if session.state is not SessionState.RUNNING:
                    continue
                steps = _snapshot(session.stats.step_seconds)
                step_ms = 1000 * sorted(steps)[len(steps) // 2] if steps else None
                await self.send(
                    encode(
                        "metrics",
                        session=session.id,
                        frames_sent=total,
                        frames_dropped=session.stats.frames_dropped,
                        fps=round(fps, 2),
                        step_ms=None if step_ms is None else round(step_ms, 2),
                        queue=len(session.output),
                    )
                )

    # -- teardown --------------------------------------------------------------------------

    async def close_all(self, reason: str) -> None:
        """End every session of this connection and cancel its tasks (frees cache blocks)."""
        streams = list(self.streams.values())
        for stream_ in streams:
            try:
                self.engine.close(stream_.session, reason)
            except ProtocolError:  # the engine's command queue is full: leave it to shutdown
                logger.warning("session %d: could not queue its close", stream_.session.id)
        for stream_ in streams:
            for task in stream_.tasks:
                task.cancel()
        for stream_ in streams:
            await asyncio.gather(*stream_.tasks, return_exceptions=True)
            if stream_.recorder is not None:
                await self.server.finish_recording(stream_.session.id, stream_.recorder)
        self.streams.clear()


def _json(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def _snapshot(values: Any) -> list[float]:
    """A copy of a deque the engine thread appends to."""
    for _ in range(8):
        with contextlib.suppress(RuntimeError):  # mutated during iteration
            return list(values)
    return []


class Server:
    """The service on one port. Create with :func:`build_server`; ``async with`` or
    :meth:`start` / :meth:`close`. The server owns the engine: it starts and shuts it down."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.counters = ServiceCounters()
        self.draining = False
        self.encoders = ThreadPoolExecutor(config.encode_workers, thread_name_prefix="encode")
        self._tmp: tempfile.TemporaryDirectory | None = None
        if config.record_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="stream-recordings-")
            self.record_dir = Path(self._tmp.name)
        else:
            self.record_dir = Path(config.record_dir)
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self._recordings: set[int] = set()  # finished, servable
        self._clients: set[_Client] = set()
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
            server_header=f"stream/{stream.__version__}",
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
        client = _Client(self, ws)
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
            "server": f"stream/{stream.__version__}",
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
        models = getattr(self.engine.pipelines[pipeline], "models", None)
        default = getattr(models, "default_size", (0, 0))
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

    async def finish_recording(self, session_id: int, recorder: Recorder) -> None:
        try:
            await asyncio.shield(asyncio.wrap_future(recorder.close()))
        except Exception:
            logger.exception("session %d: recording could not be finished", session_id)
            return
        self._recordings.add(session_id)
        if recorder.frames_dropped:
            logger.warning(
                "session %d: recording dropped %d frames (disk too slow)",
                session_id,
                recorder.frames_dropped,
            )

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
        if match := _RECORDING.fullmatch(path):
            if int(match.group(1)) in self._recordings:
                file = self.record_dir / f"{int(match.group(1))}.mp4"
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
        pools, managers = [], {}
        for pipeline in self.engine.pipelines.values():
            manager = getattr(pipeline, "manager", None)
            if manager is not None:
                managers[id(manager)] = manager
        for manager in managers.values():
            pools.extend(manager.stats().values())
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


def build_server(config: ServerConfig, engine: Engine) -> Server:
    """A server for ``engine`` (not yet listening; ``await server.start()`` or ``async with``)."""
    return Server(config, engine)


async def serve(config: ServerConfig, engine: Engine, stop: asyncio.Event | None = None) -> None:
    """Run the service until ``stop`` is set (forever when None), then shut down gracefully."""
    server = build_server(config, engine)
    await server.start()
    try:
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await server.close()
