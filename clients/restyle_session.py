"""A restyle session of a :class:`~clients.client.StreamClient`: a generation session whose input
is a video feed (made by :meth:`StreamClient.restyle`). Frames go in, restyled frames come out
with the same indices as the input slots they restyle::

    feed(source) ── newest frame of each 1/fps slot ── send() ──> server (input frames, kind 2)
                    at most max_lead seconds ahead of the frames received
    server ── video frames (kind 1), index i = input slot i ──> frames()
           ── restyle.applied / prompt.applied / metrics / error ──> events

Slot ``i`` is the input's time ``t0 + i / fps`` (``t0`` the first frame's timestamp, ``fps`` the
session's); the server restyles slot ``i`` from the last frame at or before that time, a chunk
of slots at a time, once every slot of the chunk is in (a frame at or after its time arrived).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import AsyncIterable, Iterable
from typing import Any

import numpy as np

from framestream.clients.sessions import ClientLink, GenerationSession, _InputFeed, _resolve_oldest
from framestream.clients.wire import ClientError, FrameHeader, ServerError, SessionEnded

__all__ = ["DEFAULT_STRENGTH", "RestyleSession", "check_strength"]

logger = logging.getLogger(__name__)

DEFAULT_STRENGTH = 0.6  # the server's default (docs/protocol.md, params.restyle)
# errors about an input frame: they answer no update of the session
_INPUT_ERRORS = frozenset({"bad_frame", "frame_too_large", "timestamps_backwards"})
# errors a restyle.update can get (a wrong strength; a session that is not a restyle one)
_UPDATE_ERRORS = frozenset({"invalid_message", "wrong_direction"})

Source = Iterable[tuple[float, np.ndarray]] | AsyncIterable[tuple[float, np.ndarray]]


def check_strength(strength: Any) -> float:
    """``strength`` as the wire takes it: a number with ``0 < strength <= 1``; ValueError
    otherwise."""
    ok = isinstance(strength, int | float) and not isinstance(strength, bool)
    if not ok or not 0 < strength <= 1:  # NaN fails too
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    return float(strength)


class RestyleSession(GenerationSession):
    """One restyle stream: :meth:`send` (or :meth:`feed`) input frames, read restyled ones from
    :meth:`frames`; :meth:`set_strength` and :meth:`switch_prompt` change it mid-stream.

    Attributes (beyond :class:`GenerationSession`'s):
        strength: the strength last applied (``session.started``, then ``restyle.applied``).
        input_lead_frames: input frames the server takes in beyond the frames it has sent at
            that strength (``session.started``, then ``restyle.applied``; 0 when a server does
            not say): :meth:`feed` keeps at least that much ahead.
        frames_sent: input frames sent so far (the next input frame's index).
        frames_received: one past the highest output frame index received (frames the client
            dropped count: it says how far the restyling has come).
        feeding: the task of :meth:`start_feeding`, or ``None``; its result is what
            :meth:`feed` returns.
    """

    def __init__(
        self,
        client: ClientLink,
        started: dict[str, Any],
        max_queued_frames: int,
        max_queued_events: int,
    ) -> None:
        super().__init__(client, started, max_queued_frames, max_queued_events)
        restyle = started.get("restyle")
        self.strength = float(restyle.get("strength", DEFAULT_STRENGTH)) if restyle else 0.0
        self.input_lead_frames = _lead(restyle)
        self.frames_received = 0
        self._input = _InputFeed(self)
        self._strengths: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._progress = asyncio.Event()  # set at each frame received and at the end
        self.feeding: asyncio.Task[int] | None = None

    def __repr__(self) -> str:
        state = self.ended_reason or "running"
        size = f"{self.width}x{self.height}"
        return f"<RestyleSession {self.id} {self.pipeline} {size} s={self.strength:g} {state}>"

    @property
    def frames_sent(self) -> int:
        return self._input.frames_sent

    async def send(
        self,
        pixels: np.ndarray,
        timestamp: float,
        *,
        format: str = "jpeg",
        quality: int = 90,
    ) -> None:
        """Send one input frame, as :meth:`UnderstandingSession.send_frame` does (the same
        checks, formats and errors). Any size: the server crops it to the session's aspect
        and resizes it."""
        await self._input.send(pixels, timestamp, format, quality)

    async def set_strength(self, strength: float, *, wait: bool = True) -> dict[str, Any] | None:
        """Send ``restyle.update``; with ``wait``, return its ``restyle.applied`` message
        (``frame``: the first output frame made at the new strength).

        Raises:
            ValueError: ``strength`` is not in (0, 1].
            ServerError: the server refused the update.
            SessionEnded: the session ended first.
        """
        strength = check_strength(strength)
        self._check_running()
        applied: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            applied = asyncio.get_running_loop().create_future()
            self._strengths.append(applied)
        await self._client._send("restyle.update", session=self.id, strength=strength)
        return await applied if applied is not None else None

    async def feed(
        self,
        source: Source,
        *,
        max_lead: float | None = 1.0,
        frame_seconds: float | None = None,
        pad_seconds: float = 1.0,
        format: str = "jpeg",
        quality: int = 90,
        timeout: float | None = 60.0,
    ) -> int:
        """Send a whole source of ``(timestamp, pixels)`` frames; returns how many output
        frames it covers (indices ``0 .. n - 1``; a frame is ``1 / fps`` long).

        Of each slot only the newest frame is sent (what the server would take), so a source
        faster than the session's fps costs no more. At the end the last frame is sent once
        more, ``pad_seconds`` (at least a chunk, and at least the input the server holds)
        later, so that every chunk up to the last slot's completes and leaves; frames past
        ``n - 1`` restyle that padding.

        Args:
            source: an iterable or async iterable of ``(timestamp, pixels)``, timestamps in
                seconds and never going back.
            max_lead: send at most this many seconds of feed ahead of the frames received (a
                file is sent as fast as the server restyles it; more would wait in the
                server's bounded input queues, which drop the oldest), and never less than
                the input the server holds (:attr:`input_lead_frames` and the frame that
                completes it: a chunk for LongLive, a chunk per window level under the
                strength for Rolling Forcing), else its next chunk could not complete;
                ``None`` for a live source, which paces itself.
            frame_seconds: how long the source's last frame lasts (its frame interval);
                ``None``: one slot.
            pad_seconds: how far after the last frame the padding frame goes.
            format, quality: as :meth:`send`.
            timeout: with ``max_lead``, seconds without a frame received before giving up
                (``TimeoutError``).

        Raises:
            SessionEnded: the session ended before the source did.
        """
        if max_lead is not None and not max_lead > 0:
            raise ValueError(f"max_lead must be positive or None, got {max_lead!r}")
        if not pad_seconds > 0:
            raise ValueError(f"pad_seconds must be positive, got {pad_seconds!r}")
        fps = self.fps
        t0: float | None = None
        pending: tuple[float, np.ndarray] | None = None

        def slot(timestamp: float) -> int:
            assert t0 is not None
            return math.ceil((timestamp - t0) * fps - 1e-9)

        async def put(timestamp: float, pixels: np.ndarray) -> None:
            if max_lead is not None:
                assert t0 is not None
                lead = max(max_lead, (self.input_lead_frames + 1) / fps)
                ahead = timestamp - t0 - lead
                await self._wait(lambda: ahead <= self.frames_received / fps, timeout)
            await self.send(pixels, timestamp, format=format, quality=quality)

        async for timestamp, pixels in _iterate(source):
            if t0 is None:
                t0 = timestamp
            if pending is not None and slot(pending[0]) != slot(timestamp):
                await put(*pending)
            pending = (timestamp, pixels)
        if pending is None or t0 is None:
            return 0
        await put(*pending)
        end = pending[0] + (frame_seconds if frame_seconds is not None else 1 / fps)
        count = max(1, math.ceil((end - t0) * fps - 1e-9))
        pad = max(pad_seconds, (self.input_lead_frames + 1) / fps)  # all it holds completes
        await self.send(pending[1], t0 + (count - 1) / fps + pad, format=format)
        return count

    def start_feeding(self, source: Source, **feed_args: Any) -> asyncio.Task[int]:
        """Run :meth:`feed` as a task (:attr:`feeding`); its failure (the session ended first,
        a bad frame of the source) is logged unless its result is awaited."""
        if self.feeding is not None:
            raise ClientError(f"session {self.id} is fed already")
        task = asyncio.get_running_loop().create_task(
            self.feed(source, **feed_args), name=f"restyle-feed-{self.id}"
        )
        task.add_done_callback(_log_failure)
        self.feeding = task
        return task

    async def wait_received(self, count: int, timeout: float | None = 60.0) -> None:
        """Until frames up to index ``count - 1`` have been received (or dropped here).

        Raises:
            SessionEnded: the session ended first.
            TimeoutError: no frame came for ``timeout`` seconds.
        """
        await self._wait(lambda: self.frames_received >= count, timeout)

    async def _wait(self, condition: Any, timeout: float | None) -> None:
        """Until ``condition()``; SessionEnded if the session ends first, TimeoutError when no
        frame came for ``timeout`` seconds."""
        while not condition():
            self._check_running()
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), timeout)
            except TimeoutError:
                raise TimeoutError(f"no restyled frame for {timeout:g} s") from None

    # -- called by the reader task -----------------------------------------------------------

    def _on_frame(self, header: FrameHeader, payload: bytes) -> None:
        self.frames_received = max(self.frames_received, header.index + 1)
        self._progress.set()
        super()._on_frame(header, payload)

    def _on_event(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "restyle.applied":
            strength = message.get("strength")
            if isinstance(strength, int | float):
                self.strength = float(strength)
            self.input_lead_frames = _lead(message)
            _resolve_oldest(self._strengths, message)
        elif kind == "error" and message.get("code") in _INPUT_ERRORS:
            logger.warning("session %d: input frame refused: %s", self.id, message.get("message"))
            self._queue_event(message)  # it answers no update: waiters stay
            return
        elif kind == "error" and message.get("code") in _UPDATE_ERRORS and self._strengths:
            _resolve_oldest(self._strengths, ServerError.from_message(message))
            self._queue_event(message)
            return
        super()._on_event(message)

    def _queue_event(self, message: dict[str, Any]) -> None:
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(message)

    def _end(self, reason: str, message: str | None) -> None:
        if self.ended:
            return
        super()._end(reason, message)
        self._progress.set()
        while self._strengths:
            _resolve_oldest(self._strengths, SessionEnded(f"session {self.id} ended: {reason}"))


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("%s: %s: %s", task.get_name(), type(exc).__name__, exc)


async def _iterate(source: Source) -> Any:
    """The frames of a sync or async source, as an async iterator."""
    if isinstance(source, AsyncIterable):
        async for item in source:
            yield item
    else:
        for item in source:
            yield item


def _lead(message: dict[str, Any] | None) -> int:
    """A message's ``input_lead_frames`` (0 where it has none)."""
    lead = (message or {}).get("input_lead_frames")
    return lead if isinstance(lead, int) and not isinstance(lead, bool) and lead > 0 else 0
