"""Commentary of a generation session: an understanding session that watches its frames.

::

    engine thread: generation chunk -> OutputQueue.put -> tap -> every 1/sample_fps s of video
                   -> backend.push_frame(understanding session)   (no round trip via the client)
    loop:          understanding.events (caption) -> relay -> generation.events as a
                   ``caption`` of the generation session, stamped with its frame indices

Both sessions are admitted by the backend like any other (session limit, compute, cache), so a
commentary costs what an understanding session costs. The frames are the generated ones, all of
them (the tap sees them before a slow client's drops), stamped with the video's own timestamps;
generation runs ahead of playback, so a caption usually arrives before its frames are shown.
The connection owns the pair: ending the generation session closes its commentary.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from framestream.stream.backend import SessionBackend
from framestream.stream.errors import EngineBusy
from framestream.stream.session import OutputFrame, Session

__all__ = ["Commentary", "SampleClock"]

logger = logging.getLogger(__name__)

_EPSILON = 1e-9  # timestamps are index / fps: a sample time may land a rounding error early


class SampleClock:
    """Which frames of a video to hand an understanding feed that samples ``fps`` a second:
    the first at or after each sample time (the feed would keep only one of every slot's
    frames anyway, so the rest need not cross to it)."""

    def __init__(self, fps: float) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._next = 0.0  # video seconds

    def due(self, timestamp: float) -> bool:
        if timestamp + _EPSILON < self._next:
            return False
        self._next = (math.floor(timestamp * self.fps + _EPSILON) + 1) / self.fps
        return True


class Commentary:
    """The understanding session attached to one generation session.

    Args:
        backend: runs both sessions.
        generation: the session whose frames are watched.
        understanding: the session that watches them (already admitted).
        sample_fps: frames per second of video handed over (the understanding pipeline's own
            sampling rate: more would be thrown away by its feed).
    """

    def __init__(
        self,
        backend: SessionBackend,
        generation: Session,
        understanding: Session,
        sample_fps: float,
    ) -> None:
        self.backend = backend
        self.generation = generation
        self.understanding = understanding
        self.sample_fps = sample_fps
        self.frames_lost = 0  # samples the engine's full command queue did not take
        self._clock = SampleClock(sample_fps)  # touched only by the producer's thread
        self._closing = False

    @property
    def captions(self) -> int:
        """Seconds of video commented so far."""
        return self.understanding.stats.steps

    def tap(self, frames: list[OutputFrame]) -> None:
        """Hand the frames due at the sample rate to the understanding session (the producer's
        thread; never blocks)."""
        for frame in frames:
            if not self._clock.due(frame.timestamp):
                continue
            try:
                self.backend.push_frame(self.understanding, frame.timestamp, frame.pixels)
            except EngineBusy:  # the commentary skips a sample; the generation goes on
                self.frames_lost += 1

    async def relay(self) -> None:
        """Move the understanding session's captions to the generation session's events until
        it ends; an end the generation session did not cause is told as ``commentary.ended``."""
        events = self.understanding.events
        ended = asyncio.ensure_future(self.understanding.ended.wait())
        get: asyncio.Future | None = None
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({get, ended}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    self._relay_one(get.result())
                    continue
                break
        finally:  # cancelled with its generation session, or the commentary ended
            for waiter in (get, ended):
                if waiter is not None:
                    waiter.cancel()
            await asyncio.gather(*(w for w in (get, ended) if w), return_exceptions=True)
        self.drain()
        if not self._closing:
            self._post(self._ended_event())

    def drain(self) -> None:
        """Relay the captions waiting now (the loop's thread), e.g. before ``session.ended``."""
        while not self.understanding.events.empty():
            self._relay_one(self.understanding.events.get_nowait())

    def close(self) -> None:
        """End the understanding session (idempotent); its last captions may still be relayed."""
        if self._closing:
            return
        self._closing = True
        try:
            self.backend.close(self.understanding, "stopped")
        except EngineBusy:  # the engine's queue is full: its shutdown or a later close ends it
            logger.warning("session %d: could not queue its commentary's close", self.generation.id)

    def _relay_one(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "caption":
            self._post(self.caption_event(event))
        elif kind == "error":  # a frame the feed refused: the commentary goes on, say so
            logger.warning("session %d: commentary: %s", self.generation.id, event.get("message"))

    def caption_event(self, caption: dict[str, Any]) -> dict[str, Any]:
        """An understanding session's ``caption`` as its generation session's: the same
        seconds, plus the first frame of them and the first frame after them."""
        fps = self.generation.fps
        start, end = float(caption["start"]), float(caption["end"])
        return {
            "type": "caption",
            "session": self.generation.id,
            "start": start,
            "end": end,
            "frame": math.ceil(start * fps - _EPSILON),
            "end_frame": math.ceil(end * fps - _EPSILON),
            "text": caption["text"],
            "lag": caption["lag"],
        }

    def _ended_event(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "commentary.ended",
            "session": self.generation.id,
            "reason": self.understanding.end_reason,
        }
        if self.understanding.end_message:
            event["message"] = self.understanding.end_message
        return event

    def _post(self, event: dict[str, Any]) -> None:
        events = self.generation.events
        if events.full():  # as Session.post: the oldest goes for a client that far behind
            events.get_nowait()
        events.put_nowait(event)
