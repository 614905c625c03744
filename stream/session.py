"""A live session as both sides see it: the engine thread produces into it, the connection's
asyncio tasks consume from it.

::

    engine thread                       asyncio loop (connection)
    pipeline.step -> Session.publish ->  OutputQueue (bounded, drops oldest) -> sender task -> ws
                                         Session.events (captions, ended) ------^

Everything the engine thread hands over crosses through :class:`OutputQueue`, which wakes the
loop with ``call_soon_threadsafe``; nothing else is shared.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from framestream.stream.requests import GenerationRequest, UnderstandingRequest

__all__ = ["OutputFrame", "OutputQueue", "Session", "SessionState", "SessionStats"]


class SessionState(enum.IntEnum):
    """Ordered lifecycle; every state after ``RUNNING``/``PAUSED`` is terminal."""

    STARTING = 0
    RUNNING = 1
    PAUSED = 2
    ENDED = 3  # terminal: stopped, disconnected, failed or shut down


@dataclass(frozen=True, slots=True)
class OutputFrame:
    index: int  # frame index in the stream
    timestamp: float  # seconds since the stream's start
    pixels: np.ndarray  # uint8 [H, W, 3]
    input_arrival: float | None = None  # restyle: time.monotonic() its slot's input arrived


@dataclass(slots=True)
class SessionStats:
    frames_generated: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0  # undelivered frames a slow client lost
    input_skipped: int = 0  # restyle: input slots skipped, the feed coming faster than restyled
    steps: int = 0
    step_seconds: collections.deque = field(default_factory=lambda: collections.deque(maxlen=256))


class OutputQueue:
    """Frames from the engine thread to the loop: bounded, the oldest dropped when full."""

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._frames: collections.deque[OutputFrame] = collections.deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._loop = loop
        self._ready = asyncio.Event()
        self._closed = False
        self._tap: Callable[[list[OutputFrame]], None] | None = None
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def put(self, frames: list[OutputFrame]) -> int:
        """Append frames (any thread); returns how many old frames were dropped for them."""
        with self._lock:
            dropped = 0
            for frame in frames:
                if len(self._frames) == self._capacity:
                    self._frames.popleft()
                    dropped += 1
                self._frames.append(frame)
            self.dropped += dropped
            if self._tap is not None:
                self._tap(frames)
        self._wake()
        return dropped

    def set_tap(self, tap: Callable[[list[OutputFrame]], None] | None) -> None:
        """Also hand every frame put from now on, and those still buffered, to ``tap`` (e.g. a
        recorder), in order; it is called on the producer's thread and must not block."""
        with self._lock:
            self._tap = tap
            if tap is not None and self._frames:
                tap(list(self._frames))

    def close(self) -> None:
        """No more frames will come; a waiting ``get`` returns ``None`` once the queue is empty."""
        self._closed = True
        self._wake()

    async def get(self) -> OutputFrame | None:
        """The oldest frame, waiting for one; ``None`` when closed and drained."""
        while True:
            with self._lock:
                if self._frames:
                    return self._frames.popleft()
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the consumer's loop (from any thread)."""
        # a closed loop means nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback)

    def _wake(self) -> None:
        self.call_soon(self._ready.set)


class Session:
    """One stream of one connection.

    Args:
        session_id: unique on the server.
        pipeline: name of the pipeline it runs.
        request: what it started from (validated by the protocol).
        output: where frames go.
        fps: nominal frame rate of the output.
        realtime: pace frames at ``fps`` (False: as fast as they are made, for benchmarks).
    """

    def __init__(
        self,
        session_id: int,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        output: OutputQueue,
        fps: float,
        realtime: bool = True,
    ) -> None:
        self.id = session_id
        self.pipeline = pipeline
        self.request = request
        self.output = output
        self.fps = fps
        self.realtime = realtime
        # restyle: input frames the stream takes in beyond its output (its pipeline says)
        self.input_lead_frames: int | None = None
        self.state = SessionState.STARTING
        self.stats = SessionStats()
        self.end_reason: str | None = None
        self.end_message: str | None = None
        self.ended = asyncio.Event()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self.width = 0
        self.height = 0

    @property
    def restyle(self) -> bool:
        """A restyle session: a generation session paced by the input feed it restyles."""
        return isinstance(self.request, GenerationRequest) and self.request.restyle is not None

    @property
    def finished(self) -> bool:
        return self.state >= SessionState.ENDED

    def post(self, event: dict[str, Any]) -> None:
        """Queue a control message for the client (any thread); the oldest is dropped if the
        client is that far behind."""

        def put() -> None:
            if self.events.full():
                self.events.get_nowait()
            self.events.put_nowait(event)

        self.output.call_soon(put)

    def finish(self, reason: str, message: str | None = None) -> None:
        """Mark the session ended (any thread): no more frames, waiters woken."""
        self.end_reason, self.end_message = reason, message
        self.state = SessionState.ENDED
        self.output.close()
        self.output.call_soon(self.ended.set)
