"""The front's side of a cluster: a :class:`~stream.backend.SessionBackend` whose sessions run on
engine actors, so the WebSocket server in front of it is the one of a single device.

::

    connection ──open_session──> router: least-loaded engine that is up ──open──> EngineActor
               ──switch/pause/stop/frames──> per engine: one batch in flight ──apply──>
    Session.output / events <── per engine: take (long poll, credits) <── frames, events, ends

One pump per engine keeps one ``take`` in flight: it carries the room of every session's queue
here (its credit) and comes back with at most that many frames per session as soon as a step
lands, or empty after ``poll_seconds``. Commands go in batches, one batch in flight per engine,
so they arrive in the order the client sent them.

When an engine's actor dies, the pump's call fails: that engine's sessions end at once with
``engine_lost`` (the client starts a new session, placed on an engine that is up), and the
pump keeps calling every ``retry_seconds``. Ray restarts the actor; its first report carries a
new incarnation and the engine takes new sessions again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ray.exceptions import RayActorError, RayError

from framestream.stream.backend import PipelineInfo
from framestream.stream.cluster.config import ClusterConfig
from framestream.stream.cluster.messages import Action, Command, EngineInfo, EngineReport, Opened
from framestream.stream.cluster.router import EngineLoad, placement, refusal
from framestream.stream.engine import EngineStats
from framestream.stream.errors import EngineBusy, SessionRefused
from framestream.stream.kvcache import PoolStats
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.session import OutputFrame, OutputQueue, Session, SessionState

__all__ = ["ClusterEngine", "EngineStatus"]

logger = logging.getLogger(__name__)

_FLUSH_SECONDS = 5.0  # at shutdown, for the engines to take the last commands (the lease
# closes whatever they miss)
_FULL = ("too_many_sessions", "cache_full", "compute_full")  # another engine may not refuse


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """One engine as this front sees it (for logs, /metrics and tests)."""

    index: int
    up: bool
    incarnation: str  # changes when Ray restarts the actor
    node: str
    pid: int
    gpus: str
    sessions: int | None  # on it, from every front (its load); None before its first report
    here: int  # of them, this front's


@dataclass(eq=False)
class _Route:
    """A session of this front, on the engine that admitted it."""

    session: Session  # the front's: server-wide id, queues on this loop
    remote: _Remote
    engine_session: int  # the engine's id for it
    incarnation: str  # of the engine that admitted it
    dropped_here: int = 0  # frames this front's queue dropped (the engine's are reported)


@dataclass(eq=False)
class _Remote:
    """An engine actor and what this front knows of it."""

    index: int
    actor: Any  # a Ray actor handle of EngineActor
    info: EngineInfo  # as its current incarnation answered describe()
    incarnation: str
    up: bool = True
    reported: int | None = None  # sessions on it, every front's, as of its last report
    opening: int = 0  # opens of this front in flight to it
    routes: dict[int, _Route] = field(default_factory=dict)  # by the engine's session id
    commands: list[Command] = field(default_factory=list)  # not yet sent
    pending: asyncio.Event = field(default_factory=asyncio.Event)  # commands wait
    stats: EngineStats | None = None  # its latest
    pools: list[PoolStats] = field(default_factory=list)

    def load(self) -> EngineLoad:
        sessions = max(self.reported or 0, len(self.routes)) + self.opening
        return EngineLoad(self.index, self.up, sessions, self.info.config.max_sessions)


class ClusterEngine:
    """Sessions on engine actors. Create with :meth:`connect`; the server starts and stops it.

    Args:
        engines: each actor handle with its ``describe()`` answer; all must serve the same
            pipelines with the same limits.
        config: the cluster's settings (polling, retries).
    """

    def __init__(
        self, engines: Sequence[tuple[Any, EngineInfo]], config: ClusterConfig | None = None
    ) -> None:
        if not engines:
            raise ValueError("a cluster front needs at least one engine")
        first = engines[0][1]
        for index, (_, info) in enumerate(engines):
            if info.pipelines != first.pipelines or info.config != first.config:
                raise ValueError(
                    f"engine {index} serves {sorted(info.pipelines)} with {info.config}, engine "
                    f"0 {sorted(first.pipelines)} with {first.config}: start them alike"
                )
        self.pipelines: dict[str, PipelineInfo] = dict(first.pipelines)
        self.config = first.config
        self.cluster = config or ClusterConfig()
        self.front_id = uuid.uuid4().hex
        self._remotes = [
            _Remote(index, actor, info, info.incarnation)
            for index, (actor, info) in enumerate(engines)
        ]
        self._routes: dict[int, _Route] = {}  # by the front's session id
        self._ids = itertools.count(1)
        self._errors: collections.Counter[str] = collections.Counter()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    @classmethod
    async def connect(
        cls, actors: Sequence[Any], config: ClusterConfig | None = None
    ) -> ClusterEngine:
        """A front over ``actors``, once every one has loaded its models."""
        config = config or ClusterConfig()
        try:
            infos = await asyncio.wait_for(
                asyncio.gather(*(actor.describe.remote() for actor in actors)),
                config.start_timeout,
            )
        except TimeoutError:
            raise TimeoutError(
                f"the {len(actors)} engines did not all start within {config.start_timeout} s "
                "(are there free GPUs for them? see `ray status`)"
            ) from None
        return cls(list(zip(actors, infos, strict=True)), config)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the cluster front is already started")
        loop = asyncio.get_running_loop()
        for remote in self._remotes:
            self._tasks.append(loop.create_task(self._pump(remote), name=f"take-{remote.index}"))
            self._tasks.append(
                loop.create_task(self._send_commands(remote), name=f"apply-{remote.index}")
            )
        logger.info(
            "front %s over %d engines: %s",
            self.front_id[:8],
            len(self._remotes),
            ", ".join(f"{r.info.node}/gpu {r.info.gpus or '-'}" for r in self._remotes),
        )

    async def shutdown(self, reason: str = "server_shutdown") -> None:
        """End this front's sessions with ``reason`` (on the engines too) and stop polling
        (idempotent). The engines go on serving other fronts."""
        if self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        flushes = []
        for remote in self._remotes:
            closes = [Command(n, Action.CLOSE, (reason,)) for n in remote.routes]
            for route in list(remote.routes.values()):
                self._finish(route, reason, "the server is stopping")
            if remote.up and (remote.commands or closes):
                flushes.append(remote.actor.apply.remote(self.front_id, remote.commands + closes))
            remote.commands = []
        if flushes:
            with contextlib.suppress(TimeoutError, RayError):
                await asyncio.wait_for(asyncio.gather(*flushes), _FLUSH_SECONDS)

    # -- sessions --------------------------------------------------------------------------

    async def open_session(
        self,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool = True,
    ) -> Session:
        """Admit a session on the least-loaded engine that takes it; raises
        :class:`SessionRefused`: ``too_many_sessions`` when every engine is full,
        ``engine_lost`` when none is up, or the engine's own refusal (``cache_full``...)."""
        if self._stopping:
            raise SessionRefused("server_shutdown", "the server is stopping")
        if pipeline not in self.pipelines:
            raise SessionRefused(
                "unknown_pipeline",
                f"unknown pipeline {pipeline!r}; known: {sorted(self.pipelines)}",
            )
        full: Opened | None = None
        for index in placement([remote.load() for remote in self._remotes]):
            remote = self._remotes[index]
            if not remote.up:  # went down while an earlier engine was asked
                continue
            remote.opening += 1
            try:
                opened = await self._open_on(remote, pipeline, request, realtime)
            except RayActorError as exc:
                self._lose(remote, exc)
                continue
            finally:
                remote.opening -= 1
            if opened.session is not None:
                return self._admit(remote, opened, pipeline, request, realtime)
            if opened.code not in _FULL:
                raise SessionRefused(opened.code or "internal", opened.message)
            full = opened
        if full is not None and full.code in ("cache_full", "compute_full"):
            reason = full.code
            raise SessionRefused(reason, f"no engine can admit the session: {full.message}")
        raise refusal([remote.load() for remote in self._remotes])

    def switch_prompt(
        self,
        session: Session,
        prompt: str,
        transition_chunks: int = 0,
        at_frame: int | None = None,
    ) -> None:
        self._send(session, Action.PROMPT, prompt, transition_chunks, at_frame)

    def set_strength(self, session: Session, strength: float) -> None:
        self._send(session, Action.STRENGTH, strength)

    def push_frame(self, session: Session, timestamp: float, frame: Any) -> None:
        self._send(session, Action.FRAME, timestamp, frame)

    def ask(self, session: Session, question: str) -> None:
        self._send(session, Action.QUESTION, question)

    def pause(self, session: Session) -> None:
        self._send(session, Action.PAUSE)
        if session.state is SessionState.RUNNING:  # as the engine will, for this front's metrics
            session.state = SessionState.PAUSED

    def resume(self, session: Session) -> None:
        self._send(session, Action.RESUME)
        if session.state is SessionState.PAUSED:
            session.state = SessionState.RUNNING

    def close(self, session: Session, reason: str = "stopped") -> None:
        """End a session (idempotent): it ends here when its engine reports it ended, at once
        when its engine is down."""
        route = self._routes.get(session.id)
        if route is None:
            return
        if not route.remote.up:
            self._finish(route, reason, None)
            return
        self._send(session, Action.CLOSE, reason)

    # -- what it runs ----------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """The engines' totals (every front's sessions) as last reported, and this front's
        commands not yet sent and sessions lost with their engine."""
        sessions: collections.Counter[str] = collections.Counter()
        errors = collections.Counter(self._errors)
        totals = dict.fromkeys(
            ("frames_generated", "frames_dropped", "steps", "pending_commands", "inputs"), 0
        )
        steps: list[float] = []
        degraded, late, load = False, 0, 0.0
        for remote in self._remotes:
            totals["pending_commands"] += len(remote.commands)
            stats = remote.stats
            if stats is None:
                continue
            sessions.update(stats.sessions)
            errors.update(stats.errors)
            steps.extend(stats.step_seconds)
            totals["frames_generated"] += stats.frames_generated
            totals["frames_dropped"] += stats.frames_dropped
            totals["steps"] += stats.steps
            totals["pending_commands"] += stats.pending_commands
            totals["inputs"] += stats.pending_input_frames
            degraded |= stats.health != "ok"
            late += stats.late_steps
            load = max(load, stats.load)
        return EngineStats(
            sessions=dict(sessions),
            frames_generated=totals["frames_generated"],
            frames_dropped=totals["frames_dropped"],
            steps=totals["steps"],
            step_seconds=tuple(steps),
            errors=dict(errors),
            pending_commands=totals["pending_commands"],
            pending_input_frames=totals["inputs"],
            health="degraded" if degraded else "ok",  # some engine misses its deadlines
            late_steps=late,
            load=load,  # of the busiest engine
        )

    def cache_pools(self) -> list[PoolStats]:
        """Every engine's cache pools, as last reported."""
        return [pool for remote in self._remotes for pool in remote.pools]

    def status(self) -> list[EngineStatus]:
        return [
            EngineStatus(
                r.index,
                r.up,
                r.incarnation,
                r.info.node,
                r.info.pid,
                r.info.gpus,
                None if r.reported is None else r.load().sessions,
                len(r.routes),
            )
            for r in self._remotes
        ]

    def engine_of(self, session_id: int) -> int | None:
        """The index of the engine running this front's session ``session_id``."""
        route = self._routes.get(session_id)
        return None if route is None else route.remote.index

    # -- internals -------------------------------------------------------------------------

    async def _open_on(
        self,
        remote: _Remote,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool,
    ) -> Opened:
        """``open`` on one engine; if the caller gives up meanwhile (its timeout, a dropped
        connection) a session the engine admits anyway is closed when the answer comes."""
        call = asyncio.ensure_future(
            remote.actor.open.remote(self.front_id, pipeline, request, realtime)
        )
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._abandon(remote, done))
            raise

    def _abandon(self, remote: _Remote, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        opened: Opened = done.result()
        if opened.session is not None and remote.up:
            remote.commands.append(Command(opened.session, Action.CLOSE, ("disconnected",)))
            remote.pending.set()

    def _admit(
        self,
        remote: _Remote,
        opened: Opened,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool,
    ) -> Session:
        assert opened.session is not None
        queue = OutputQueue(self.config.output_queue_frames, asyncio.get_running_loop())
        session = Session(next(self._ids), pipeline, request, queue, opened.fps, realtime)
        session.input_lead_frames = opened.input_lead_frames
        session.state = SessionState.RUNNING
        route = _Route(session, remote, opened.session, opened.incarnation)
        remote.routes[opened.session] = route
        self._routes[session.id] = route
        logger.info(
            "session %d on engine %d (its session %d)", session.id, remote.index, opened.session
        )
        return session

    def _send(self, session: Session, action: Action, *args: Any) -> None:
        route = self._routes.get(session.id)
        if route is None:
            return  # ended: nothing left to steer
        remote = route.remote
        if len(remote.commands) >= self.config.max_pending_commands:
            raise EngineBusy("the engine's command queue is full")
        remote.commands.append(Command(route.engine_session, action, args))
        remote.pending.set()

    async def _send_commands(self, remote: _Remote) -> None:
        """One batch in flight per engine, so commands arrive in the order they were sent."""
        while True:
            await remote.pending.wait()
            remote.pending.clear()
            batch, remote.commands = remote.commands, []
            if not batch:
                continue
            try:
                await remote.actor.apply.remote(self.front_id, batch)
            except RayActorError:
                pass  # the pump sees the engine go and ends its sessions
            except RayError:
                logger.exception("engine %d: commands failed", remote.index)

    async def _pump(self, remote: _Remote) -> None:
        """Keep one ``take`` in flight to ``remote``; mark it down and back up as it goes."""
        capacity = self.config.output_queue_frames
        while True:
            credits = {n: capacity - len(r.session.output) for n, r in remote.routes.items()}
            try:
                report = await remote.actor.take.remote(
                    self.front_id, credits, self.cluster.poll_seconds
                )
                if report.incarnation != remote.incarnation:  # Ray restarted it
                    remote.info = await remote.actor.describe.remote()
            except RayActorError as exc:
                self._lose(remote, exc)
                await asyncio.sleep(self.cluster.retry_seconds)
                continue
            except RayError:
                logger.exception("engine %d: take failed", remote.index)
                await asyncio.sleep(self.cluster.retry_seconds)
                continue
            self._receive(remote, report)

    def _receive(self, remote: _Remote, report: EngineReport) -> None:
        if report.incarnation != remote.incarnation:
            self._end_older(remote, report.incarnation, "the engine restarted")
            remote.incarnation = report.incarnation
        if not remote.up:
            remote.up = True
            logger.warning("engine %d is back (%s)", remote.index, report.incarnation[:8])
        remote.reported = report.sessions
        if report.stats is not None:
            remote.stats = report.stats
            remote.pools = report.pools or []
        for update in report.updates:
            route = remote.routes.get(update.session)
            if route is None:
                continue  # ended here already (its engine went down and came back)
            session = route.session
            if update.frames:
                frames = _rebased(update.frames, time.monotonic() - update.made_at)
                route.dropped_here += session.output.put(frames)
            stats = session.stats
            stats.input_skipped = update.input_skipped
            stats.frames_generated = update.frames_generated
            stats.frames_dropped = update.frames_dropped + route.dropped_here
            stats.steps = update.steps
            stats.step_seconds.clear()
            stats.step_seconds.extend(update.step_seconds)
            for event in update.events:
                session.post({**event, "session": session.id})
            if update.ended is not None:
                self._finish(route, *update.ended)

    def _lose(self, remote: _Remote, exc: Exception) -> None:
        """The engine's actor died (or is restarting): end its sessions, take none until it
        answers again."""
        if remote.up:
            logger.error("engine %d lost: %s", remote.index, _first_line(exc))
        remote.up = False
        remote.commands = []  # for sessions that are gone
        lost = [r for r in remote.routes.values() if r.incarnation == remote.incarnation]
        self._end_lost(lost, f"engine {remote.index} stopped ({type(exc).__name__})")

    def _end_older(self, remote: _Remote, incarnation: str, why: str) -> None:
        lost = [r for r in remote.routes.values() if r.incarnation != incarnation]
        self._end_lost(lost, f"engine {remote.index}: {why}")

    def _end_lost(self, routes: list[_Route], why: str) -> None:
        for route in routes:
            self._errors["engine_lost"] += 1
            self._finish(route, "engine_lost", f"{why}; start a new session (it runs elsewhere)")

    def _finish(self, route: _Route, reason: str, message: str | None) -> None:
        route.remote.routes.pop(route.engine_session, None)
        self._routes.pop(route.session.id, None)
        route.session.finish(reason, message)


def _rebased(frames: list[OutputFrame], offset: float) -> list[OutputFrame]:
    """Frames whose input arrival (a restyle session's, on the engine host's monotonic clock)
    is moved onto this host's: ``offset`` is this clock minus that one, measured as the
    update's age here (so the update's own travel is left out of the latency)."""
    return [
        f if f.input_arrival is None else replace(f, input_arrival=f.input_arrival + offset)
        for f in frames
    ]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
