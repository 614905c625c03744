"""One WebSocket connection of the server: its protocol state, its sessions and their tasks.

::

    receiver loop: ws message -> protocol.Connection.receive -> dispatch -> engine / replies
    per session:   sender   OutputQueue.get -> pace (realtime) -> encode (thread pool) -> send
                   events   Session.events -> JSON
                   metrics  every second while running

A refused message gets an ``error`` reply and the connection goes on (a wrong token closes it
with 1008). When the connection ends, every session of it ends and returns its cache blocks.

A handler sees the server only through its :class:`ConnectionContext`: the limits, the backend
running sessions, the counters and limiters shared by all connections, the encoders and the
recordings. Domain refusals from below (:class:`~stream.errors.SessionRefused`,
:class:`~stream.errors.EngineBusy`) become the wire's errors here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from framestream.stream import protocol
from framestream.stream.backend import SessionBackend
from framestream.stream.commentary import Commentary
from framestream.stream.config import ServerConfig
from framestream.stream.delivery import FrameEncoder, InputLatency, Recorder, decode_input_frame
from framestream.stream.errors import EngineBusy, SessionRefused
from framestream.stream.metrics import ServiceCounters
from framestream.stream.pipelines.restyle import fit_frame
from framestream.stream.protocol import FrameFormat, FrameHeader, FrameKind, ProtocolError, encode
from framestream.stream.ratelimit import RateLimiter
from framestream.stream.recordings import Recordings
from framestream.stream.requests import UnderstandingRequest
from framestream.stream.session import Session, SessionState

__all__ = ["ConnectionContext", "ConnectionHandler"]

logger = logging.getLogger(__name__)

# end reasons that are failures -> the error code sent before session.ended{reason: "error"}
_FAILURES = {
    "error": "internal",  # a step failed
    "engine_lost": "engine_lost",  # the engine (a Ray actor) running the session stopped
}


@dataclass(frozen=True, eq=False)
class ConnectionContext:
    """What a connection needs of its server, shared by every connection of it."""

    config: ServerConfig
    backend: SessionBackend
    catalog: protocol.Catalog
    counters: ServiceCounters
    message_limiter: RateLimiter  # every connection's messages together
    session_start_limiter: RateLimiter  # every connection's session.start together
    encoders: Executor  # threads that encode and decode frames
    recordings: Recordings
    draining: Callable[[], bool]  # the server is shutting down
    welcome: Callable[[], dict[str, Any]]  # the welcome message's fields, as of now


@dataclass(eq=False)
class _Stream:
    """Connection-side state of one session."""

    session: Session
    encoder: FrameEncoder
    recorder: Recorder | None = None
    commentary: Commentary | None = None  # the understanding session watching its frames
    tasks: list[asyncio.Task] = field(default_factory=list)
    last_timestamp: float = 0.0  # of the last input frame (understanding, restyle sessions)
    frames_received: int = 0  # input frames taken (understanding, restyle sessions)
    latency: InputLatency | None = None  # restyle sessions: input to output
    paused: bool = False  # a pause was asked: no metrics until a resume is
    stopping: bool = False  # a stop was asked: no more frames are sent


class ConnectionHandler:
    """One connection: its protocol state, sessions and tasks."""

    def __init__(self, context: ConnectionContext, ws: ServerConnection) -> None:
        self.context = context
        self.ws = ws
        self.config = context.config
        self.engine = context.backend
        self.protocol = protocol.Connection(
            self.config.max_message_bytes, self.config.token, context.catalog
        )
        self.limiter = RateLimiter(self.config.max_messages_per_second)
        self.start_limiter = RateLimiter(self.config.max_session_starts_per_second_per_connection)
        self.streams: dict[int, _Stream] = {}
        self.authenticated = False  # said hello (with the token, where one is set)

    # -- receiving -------------------------------------------------------------------------

    async def run(self) -> None:
        self.context.counters.unauthenticated += 1
        deadline = asyncio.create_task(self._hello_deadline(), name="hello-deadline")
        try:
            async for data in self.ws:
                self.context.counters.messages_received += 1
                if refusal := self.rate_limited():
                    await self.send_error(refusal)
                    continue
                request_id = None
                try:
                    message = self.protocol.receive(data)
                    if isinstance(message, protocol.SessionStart):
                        request_id = message.request_id
                    await self.dispatch(message)
                except (ProtocolError, SessionRefused, EngineBusy) as exc:
                    error = _wire_error(exc)
                    await self.send_error(error, request_id or error.request_id)
                    if error.code == "unauthorized":  # no second guess on this connection
                        await self.ws.close(1008, "unauthorized")
        except ConnectionClosed:
            pass
        finally:
            deadline.cancel()
            if not self.authenticated:
                self.context.counters.unauthenticated -= 1
            self.protocol.close()
            await self.close_all("disconnected")

    async def _hello_deadline(self) -> None:
        """Close a connection that has not said hello within ``hello_timeout`` (1008)."""
        await asyncio.sleep(self.config.hello_timeout)
        if not self.authenticated:
            logger.info(
                "closing a connection that sent no hello in %g s", self.config.hello_timeout
            )
            await self.ws.close(1008, "no hello")

    def rate_limited(self) -> ProtocolError | None:
        """The refusal of a message over this connection's or the server's rate, else None."""
        if not self.limiter.allow():
            rate = self.config.max_messages_per_second
            return ProtocolError("rate_limited", f"over {rate:g} messages a second")
        if not self.context.message_limiter.allow():
            rate = self.config.max_messages_per_second_total
            return ProtocolError(
                "rate_limited", f"the server takes at most {rate:g} messages a second in all"
            )
        return None

    async def dispatch(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Hello):
            self.authenticated = True
            self.context.counters.unauthenticated -= 1
            await self.send(encode("welcome", **self.context.welcome()))
        elif isinstance(message, protocol.SessionStart):
            await self.start(message)
        elif isinstance(message, protocol.InputFrame):
            await self.feed(message)
        else:
            stream_ = self.stream(message.session)
            session = stream_.session
            understanding = isinstance(session.request, UnderstandingRequest)
            if isinstance(message, protocol.RestyleUpdate):
                if not session.restyle:
                    raise ProtocolError(
                        "wrong_direction",
                        "only a restyle session (params.restyle) takes restyle.update",
                        session.id,
                    )
                self.engine.set_strength(session, message.strength)
            elif isinstance(message, protocol.PromptUpdate):
                if understanding:
                    raise ProtocolError(
                        "wrong_direction", "understanding sessions take questions", session.id
                    )
                self.engine.switch_prompt(
                    session, message.prompt, message.transition_chunks, message.at_frame
                )
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
                stream_.paused = True
            elif isinstance(message, protocol.Resume):
                self.engine.resume(session)
                stream_.paused = False
            elif isinstance(message, protocol.Stop):
                self.engine.close(session, "stopped")
                stream_.stopping = True

    async def feed(self, message: protocol.InputFrame) -> None:
        """An understanding or restyle session's input frame: checked here, decoded off the
        loop."""
        header = message.header
        stream_ = self.stream(header.session)
        session = stream_.session
        if not isinstance(session.request, UnderstandingRequest) and not session.restyle:
            raise ProtocolError(
                "wrong_direction",
                "this generation session takes no input frames (a restyle one does: "
                "params.restyle)",
                session.id,
            )
        if not math.isfinite(header.timestamp) or header.timestamp < stream_.last_timestamp:
            raise ProtocolError(
                "timestamps_backwards",
                f"frame at {header.timestamp} s after one at {stream_.last_timestamp} s",
                session.id,
            )
        loop = asyncio.get_running_loop()
        decode = decode_input_frame
        if session.restyle:  # cropped and resized here, off the thread that drives the device
            request = session.request
            decode = functools.partial(_restyle_input, height=request.height, width=request.width)
        frame = await loop.run_in_executor(
            self.context.encoders, decode, header, message.payload, self.config.max_frame_pixels
        )
        stream_.last_timestamp = header.timestamp
        self.engine.push_frame(session, header.timestamp, frame)
        stream_.frames_received += 1

    def stream(self, session_id: int) -> _Stream:
        stream_ = self.streams.get(session_id)
        if stream_ is None or stream_.session.finished:
            raise ProtocolError(
                "unknown_session", f"no session {session_id} on this connection", session_id
            )
        return stream_

    async def start(self, message: protocol.SessionStart) -> None:
        config = self.config
        if self.context.draining():
            raise ProtocolError("server_shutdown", "the server is stopping")
        # a commentary is a session of its own: it counts
        running = sum(1 + (s.commentary is not None) for s in self.streams.values())
        if running + 1 + (message.commentary is not None) > config.max_sessions_per_connection:
            raise ProtocolError(
                "too_many_sessions",
                f"a connection runs at most {config.max_sessions_per_connection} sessions"
                + (" (a commentary counts as one)" if message.commentary is not None else ""),
            )
        if not self.start_limiter.allow():
            rate = config.max_session_starts_per_second_per_connection
            raise ProtocolError(
                "rate_limited", f"a connection starts at most {rate:g} sessions a second"
            )
        if not self.context.session_start_limiter.allow():
            rate = config.max_session_starts_per_second
            raise ProtocolError(
                "rate_limited", f"the server starts at most {rate:g} sessions a second"
            )
        if isinstance(message.request, UnderstandingRequest):
            await self.start_understanding(message)
            return
        output, request = message.output, message.request
        session = await self._open(message.pipeline, request, output.realtime)
        commentary = None
        if message.commentary is not None:
            commentary = await self._attach_commentary(session, message.commentary, output)
        recorder = None
        if output.record:
            try:
                recorder = self.context.recordings.open(session)
            except (OSError, av.FFmpegError) as exc:
                logger.error("session %d: cannot open its recording: %r", session.id, exc)
                self.engine.close(session, "disconnected")  # never announced: nobody to tell
                if commentary is not None:
                    commentary.close()
                raise ProtocolError(
                    "recording_failed", "the server cannot write a recording now"
                ) from None
        encoder = FrameEncoder(output.format, session.fps, output.quality)
        stream_ = _Stream(session, encoder, recorder, commentary)
        if request.restyle is not None:
            stream_.latency = InputLatency()
        self.streams[session.id] = stream_
        try:
            session.output.set_tap(_taps(recorder, commentary))
            started: dict[str, Any] = {}
            if commentary is not None:
                started["commentary"] = {
                    "pipeline": commentary.understanding.pipeline,
                    "fps": commentary.sample_fps,
                }
            if request.restyle is not None:
                started["restyle"] = {
                    "strength": request.restyle.strength,
                    "input_lead_frames": session.input_lead_frames,
                }
            await self.send(
                encode(
                    "session.started",
                    session=session.id,
                    pipeline=session.pipeline,
                    fps=session.fps,
                    width=request.width,
                    height=request.height,
                    format=output.format.name.lower(),
                    request_id=message.request_id,
                    **started,
                )
            )
        finally:
            # the tasks own the session from here on, even if the reply could not be sent
            stream_.tasks = [
                asyncio.create_task(self.deliver(stream_), name=f"send-{session.id}"),
                asyncio.create_task(self.forward_events(session), name=f"events-{session.id}"),
                asyncio.create_task(self.report(stream_), name=f"metrics-{session.id}"),
            ]
            if commentary is not None:
                stream_.tasks.append(
                    asyncio.create_task(commentary.relay(), name=f"commentary-{session.id}")
                )
        logger.info(
            "session %d started: %s %dx%d %s",
            session.id,
            session.pipeline,
            request.width,
            request.height,
            output.format.name,
        )

    async def _attach_commentary(
        self,
        session: Session,
        commentary: protocol.CommentaryRequest,
        output: protocol.OutputOptions,
    ) -> Commentary:
        """Admit the understanding session that watches ``session``; refused, the generation
        session is closed unannounced and the refusal (its code, the message saying it was the
        commentary's) answers the ``session.start``. It is paced as its generation session
        (a background one's commentary is background too)."""
        try:
            watcher = await self._open(commentary.pipeline, commentary.request, output.realtime)
        except (SessionRefused, ProtocolError) as exc:
            self.engine.close(session, "disconnected")  # never announced: nobody to tell
            error = _wire_error(exc)
            raise ProtocolError(error.code, f"commentary: {error.message}") from None
        except BaseException:
            self.engine.close(session, "disconnected")
            raise
        # an understanding session's fps is its feed's sampling rate
        return Commentary(self.engine, session, watcher, float(watcher.fps))

    async def _open(self, pipeline: str, request: Any, realtime: bool = True) -> Session:
        """Ask the backend for a session, within the server's ``session_open_timeout``."""
        try:
            return await asyncio.wait_for(
                self.engine.open_session(pipeline, request, realtime),
                self.config.session_open_timeout,
            )
        except TimeoutError:
            logger.error(
                "%s session not admitted within %g s (session_open_timeout): the engine is busy",
                pipeline,
                self.config.session_open_timeout,
            )
            raise ProtocolError(
                "internal", "the engine did not admit the session in time"
            ) from None

    async def start_understanding(self, message: protocol.SessionStart) -> None:
        """A feed in, captions out: no frames to encode, pace or record."""
        session = await self._open(message.pipeline, message.request)
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
                asyncio.create_task(self.report(stream_), name=f"metrics-{session.id}"),
            ]
        logger.info("session %d started: %s", session.id, session.pipeline)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def send_error(
        self, error: ProtocolError, request_id: str | None = None, count: bool = True
    ) -> None:
        if count:
            self.context.counters.errors[error.code] += 1
        fields: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.session is not None:
            fields["session"] = error.session
        if request_id is not None:
            fields["request_id"] = request_id
        with contextlib.suppress(ConnectionClosed):
            await self.send(encode("error", **fields))

    async def deliver(self, stream_: _Stream) -> None:
        """The session's sender: paced frames (a restyle session's as soon as they are made:
        its input paces them), then ``session.ended``."""
        session, encoder = stream_.session, stream_.encoder
        paced = session.realtime and not session.restyle
        loop = asyncio.get_running_loop()
        t0, first = 0.0, -1
        try:
            while (frame := await session.output.get()) is not None:
                if session.finished or stream_.stopping:
                    break  # stopped: what is still buffered is not wanted any more
                if paced:
                    now = loop.time()
                    if first < 0:
                        t0, first = now, frame.index
                    due = t0 + (frame.index - first) / session.fps
                    if now - due > 2 / session.fps:  # late (a pause, a slow step): re-anchor
                        t0, first, due = now, frame.index, now
                    if due > now:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(session.ended.wait(), due - now)
                        if session.finished or stream_.stopping:
                            break
                payload = await loop.run_in_executor(self.context.encoders, encoder.encode, frame)
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
                if stream_.latency is not None:
                    stream_.latency.sent(frame.input_arrival, time.monotonic())
                session.stats.frames_sent += 1
                self.context.counters.frames_sent += 1
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
            recording = await self.context.recordings.finish(stream_.recorder)
            if recording is not None:  # else recording_failed was posted when it failed
                fields["recording"] = recording
        if stream_.commentary is not None:
            stream_.commentary.close()
        for task in stream_.tasks[1:]:  # events, metrics, commentary: flushed here, in order
            task.cancel()
        await asyncio.gather(*stream_.tasks[1:], return_exceptions=True)
        await asyncio.sleep(0)  # let events posted at the end (call_soon) land
        if stream_.commentary is not None:
            stream_.commentary.drain()
        while not session.events.empty():
            await self.send(_json(session.events.get_nowait()))
        if (code := _FAILURES.get(session.end_reason)) is not None:
            error = ProtocolError(code, session.end_message or "step failed", session.id)
            await self.send_error(error, count=False)  # the engine counted it
            fields["reason"] = "error"
        if session.end_reason != "disconnected":
            await self.send(encode("session.ended", **fields))
        self.streams.pop(session.id, None)
        logger.info("session %d ended: %s", session.id, session.end_reason)

    async def forward_events(self, session: Session) -> None:
        with contextlib.suppress(ConnectionClosed):
            while not session.finished:
                event = await session.events.get()
                await self.send(_json(event))

    async def report(self, stream_: _Stream) -> None:
        """Every second while the session runs and is not paused: generation, delivery rate,
        step time and queue depth (restyle: also input frames taken and skipped, and the
        input-to-output latency); understanding, frames taken, captions made and step time."""
        session = stream_.session
        sent, last = session.stats.frames_sent, time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            while not session.finished:
                await asyncio.sleep(1.0)
                now, total = time.monotonic(), session.stats.frames_sent
                fps, sent, last = (total - sent) / max(now - last, 1e-6), total, now
                if stream_.paused or session.state is not SessionState.RUNNING:
                    continue
                steps = _snapshot(session.stats.step_seconds)
                step_ms = round(1000 * sorted(steps)[len(steps) // 2], 2) if steps else None
                if isinstance(session.request, UnderstandingRequest):
                    fields = {
                        "frames_received": stream_.frames_received,
                        "captions": session.stats.steps,
                    }
                else:
                    fields = {
                        "frames_sent": total,
                        "frames_dropped": session.stats.frames_dropped,
                        "fps": round(fps, 2),
                        "queue": len(session.output),
                    }
                    if stream_.commentary is not None:
                        fields["captions"] = stream_.commentary.captions
                    if stream_.latency is not None:
                        fields["frames_received"] = stream_.frames_received
                        fields["frames_skipped"] = session.stats.input_skipped
                        fields["latency_ms"] = stream_.latency.percentiles()
                await self.send(encode("metrics", session=session.id, step_ms=step_ms, **fields))

    # -- teardown --------------------------------------------------------------------------

    async def close_all(self, reason: str) -> None:
        """End every session of this connection and cancel its tasks (frees cache blocks)."""
        streams = list(self.streams.values())
        for stream_ in streams:
            try:
                self.engine.close(stream_.session, reason)
            except EngineBusy:  # the engine's command queue is full: leave it to shutdown
                logger.warning("session %d: could not queue its close", stream_.session.id)
            if stream_.commentary is not None:
                stream_.commentary.close()
        for stream_ in streams:
            for task in stream_.tasks:
                task.cancel()
        for stream_ in streams:
            await asyncio.gather(*stream_.tasks, return_exceptions=True)
            if stream_.recorder is not None:
                await self.context.recordings.finish(stream_.recorder)
        self.streams.clear()


def _restyle_input(
    header: FrameHeader, payload: bytes, max_pixels: int, *, height: int, width: int
) -> np.ndarray:
    """A restyle session's input frame, decoded and fitted to the session's size."""
    return fit_frame(decode_input_frame(header, payload, max_pixels), height, width)


def _taps(recorder: Recorder | None, commentary: Commentary | None) -> Any:
    """The output queue's tap: the recorder's, the commentary's, both, or none."""
    taps = [tap for tap in (recorder and recorder.add, commentary and commentary.tap) if tap]
    if len(taps) < 2:
        return taps[0] if taps else None

    def both(frames: list) -> None:
        for tap in taps:
            tap(frames)

    return both


def _wire_error(exc: ProtocolError | SessionRefused | EngineBusy) -> ProtocolError:
    """The ``error`` reply of a refusal from the protocol or from below it."""
    if isinstance(exc, SessionRefused):
        return ProtocolError(exc.reason, exc.message)
    if isinstance(exc, EngineBusy):
        return ProtocolError("rate_limited", str(exc))
    return exc


def _json(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def _snapshot(values: Any) -> list[float]:
    """A copy of a deque the engine thread appends to."""
    for _ in range(8):
        with contextlib.suppress(RuntimeError):  # mutated during iteration
            return list(values)
    return []
