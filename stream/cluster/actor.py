"""One engine as a Ray actor: the local :class:`~stream.engine.Engine` and its pipelines on the
device Ray reserved for it, serving the sessions of any number of fronts.

::

    front ──open/apply──> EngineActor (asyncio actor) ──commands──> Engine (device thread)
          <────take───── per front: frames up to its credits, events, ends <── Session queues

The actor is a plain class; :mod:`stream.cluster.launch` makes it remote with its resources and
``max_restarts``. A restarted actor runs ``__init__`` again (the models are loaded anew) under a
new ``incarnation``: fronts end the sessions of the old one with ``engine_lost``.

Backpressure crosses the hop unchanged: a front asks for at most as many frames per session as
its own queue has room for (its *credit*), so frames wait in the engine's queue, which drops the
oldest for a slow client and holds benchmark sessions back, exactly as on one device. A front
that stops polling for ``lease_seconds`` (it crashed, or its host went away) has its sessions
closed, so a lost front costs the engine nothing for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from framestream.stream.backend import cache_pools, describe_pipeline
from framestream.stream.cluster.messages import (
    Action,
    Command,
    EngineInfo,
    EngineReport,
    Opened,
    SessionUpdate,
)
from framestream.stream.engine import Engine, EngineConfig, Pipeline
from framestream.stream.errors import EngineBusy, SessionRefused
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.session import Session

__all__ = ["EngineActor"]

logger = logging.getLogger(__name__)

_TICK = 0.02  # seconds between looks for events and ends while a take waits (frames wake it)
_STATS_SECONDS = 1.0  # engine stats and pools go to each front at most this often


@dataclass(eq=False)
class _Front:
    """A front this engine serves, known by its polls."""

    last_seen: float  # time.monotonic() of its last call
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set when its frames arrive
    stats_at: float = -float("inf")  # when it last got the engine's stats


@dataclass(eq=False)
class _Hosted:
    session: Session
    front: str


class EngineActor:
    """An engine on the actor's device (run it with ``ray.remote``; see launch.py).

    Args:
        build: loads the models and returns the pipelines (e.g. ``partial(build_pipelines,
            spec)``); called again at every restart.
        config: the engine's limits.
        lease_seconds: close the sessions of a front that has not polled for this long.
    """

    def __init__(
        self,
        build: Callable[[], Mapping[str, Pipeline]],
        config: EngineConfig,
        lease_seconds: float = 30.0,
    ) -> None:
        pipelines = build()
        self._engine = Engine(pipelines, config)
        self._engine.start()
        self._lease = lease_seconds
        self._info = EngineInfo(
            pipelines={name: describe_pipeline(p) for name, p in pipelines.items()},
            config=config,
            incarnation=uuid.uuid4().hex,
            node=socket.gethostname(),
            pid=os.getpid(),
            gpus=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
        self._fronts: dict[str, _Front] = {}
        self._hosted: dict[int, _Hosted] = {}  # by the engine's session id
        self._reaper: asyncio.Task | None = None
        logger.info("engine %s up: %s", self._info.incarnation[:8], sorted(pipelines))

    def describe(self) -> EngineInfo:
        return self._info

    async def open(
        self,
        front: str,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool,
    ) -> Opened:
        """Admit a session for ``front``; a refusal is a result, never an exception."""
        waker = self._front(front)
        self._watch_fronts()
        try:
            session = await self._engine.open_session(pipeline, request, realtime)
        except SessionRefused as exc:
            return Opened(None, self._info.incarnation, code=exc.reason, message=exc.message)
        self._hosted[session.id] = _Hosted(session, front)
        # wake the front's waiting take as soon as a step's frames land (from the device thread)
        session.output.set_tap(lambda _frames: session.output.call_soon(waker.wake.set))
        return Opened(session.id, self._info.incarnation, session.fps, session.input_lead_frames)

    def apply(self, front: str, commands: list[Command]) -> None:
        """Apply a front's commands in their order (each reaches the engine between steps)."""
        self._front(front)
        for command in commands:
            hosted = self._hosted.get(command.session)
            if hosted is None or hosted.front != front:
                continue  # ended meanwhile: its end is on its way to the front
            session = hosted.session
            try:
                self._apply(session, command)
            except EngineBusy as exc:  # the engine's command queue is full
                event = {"type": "error", "code": "rate_limited", "message": str(exc)}
                session.post({**event, "session": session.id})

    async def take(self, front: str, credits: dict[int, int], wait: float) -> EngineReport:
        """News of ``front``'s sessions: at most ``credits[id]`` frames each; waits up to
        ``wait`` seconds for some when there is none."""
        waker = self._front(front)
        self._watch_fronts()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            updates = await self._collect(front, credits)
            remaining = deadline - loop.time()
            if updates or remaining <= 0:
                break
            waker.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wake.wait(), min(remaining, _TICK))
        live = sum(not hosted.session.finished for hosted in self._hosted.values())
        report = EngineReport(self._info.incarnation, live, updates)
        now = time.monotonic()
        if now - waker.stats_at >= _STATS_SECONDS:
            waker.stats_at = now
            report.stats = self._engine.stats()
            report.pools = cache_pools(self._engine)
        return report

    # -- internals -------------------------------------------------------------------------

    def _front(self, front: str) -> _Front:
        known = self._fronts.get(front)
        if known is None:
            known = self._fronts[front] = _Front(time.monotonic())
            logger.info("front %s connected", front[:8])
        known.last_seen = time.monotonic()
        return known

    def _watch_fronts(self) -> None:
        """Start the reaper of silent fronts (on the actor's loop, which __init__ has not)."""
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def _apply(self, session: Session, command: Command) -> None:
        engine, args = self._engine, command.args
        match command.action:
            case Action.PROMPT:
                engine.switch_prompt(session, *args)
            case Action.QUESTION:
                engine.ask(session, *args)
            case Action.PAUSE:
                engine.pause(session)
            case Action.RESUME:
                engine.resume(session)
            case Action.CLOSE:
                engine.close(session, *args)
            case Action.FRAME:
                engine.push_frame(session, *args)
            case Action.STRENGTH:
                engine.set_strength(session, *args)

    async def _collect(self, front: str, credits: dict[int, int]) -> list[SessionUpdate]:
        updates = []
        for hosted in [h for h in self._hosted.values() if h.front == front]:
            update = await _drain(hosted.session, credits.get(hosted.session.id, 0))
            if update is not None:
                updates.append(update)
                if update.ended is not None:
                    del self._hosted[hosted.session.id]
        return updates

    async def _reap(self) -> None:
        """Close the sessions of fronts that stopped polling."""
        while True:
            await asyncio.sleep(min(1.0, self._lease / 4))
            now = time.monotonic()
            for front, known in list(self._fronts.items()):
                if now - known.last_seen <= self._lease:
                    continue
                orphans = [h for h in self._hosted.values() if h.front == front]
                logger.warning(
                    "front %s silent for %.0f s: closing its %d sessions",
                    front[:8],
                    now - known.last_seen,
                    len(orphans),
                )
                try:
                    for hosted in orphans:
                        self._engine.close(hosted.session, "disconnected")
                        del self._hosted[hosted.session.id]
                except EngineBusy:  # the engine's command queue is full: next round
                    continue
                del self._fronts[front]


async def _drain(session: Session, credit: int) -> SessionUpdate | None:
    """A session's news: up to ``credit`` frames, its events, its end; None when it has none."""
    frames = []
    ended = None
    if session.ended.is_set():  # set on this loop after the events posted before the end
        ended = (session.end_reason or "stopped", session.end_message)
    else:
        while len(frames) < credit and len(session.output):
            frame = await session.output.get()  # returns at once: a frame is there
            assert frame is not None
            frames.append(frame)
    events = []
    while not session.events.empty():
        events.append(session.events.get_nowait())
    if not frames and not events and ended is None:
        return None
    stats = session.stats
    return SessionUpdate(
        session.id,
        frames,
        events,
        stats.frames_generated,
        stats.frames_dropped,
        stats.steps,
        _recent(stats.step_seconds),
        ended,
        stats.input_skipped,
        time.monotonic(),
    )


def _recent(values: Any) -> list[float]:
    """A copy of a deque the engine thread appends to."""
    for _ in range(8):
        with contextlib.suppress(RuntimeError):  # mutated during iteration
            return list(values)
    return []
