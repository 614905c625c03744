"""The engine: one per device, owning its pipelines and running every session's steps on one
device thread. What runs next is :class:`~stream.scheduler.Scheduler`'s decision; the engine
executes it (the split of vLLM v1: the scheduler touches no tensor, the engine decides nothing)::

    commands (open, switch, strength, frames, questions, pause, resume, close) drained
                 between steps; a switch with ``at_frame`` waits in its session until the
                 chunk it starts
    schedule():  the scheduler's plan: a generation step, a batched understanding prefill,
                 batched decode steps, or a short sleep (see stream.scheduler for the order);
                 a restyle session is eligible once its next chunk's input frames are all in
    execute():   pipeline.step_async(state) (one chunk: 12 frames for LongLive), or the
                 batched VLM prefill (vision tower + the second's round, packed over the
                 streams), or the batched decode step
    update():    frames -> the session's OutputQueue (bounded, oldest dropped); captions ->
                 the session's events; the scheduler's pacing; stats

A generation step's frames are awaited one turn late: ``step_async`` queues the chunk's DiT and
then its VAE decode on a stream of its own, and the engine collects the previous chunk's frames
only after it has queued the next unit of work, so on CUDA one chunk's decode runs beside the
next chunk's DiT. At most one chunk is in flight; it is collected before the engine sleeps.

A step that raises ends only its own session(s) (error ``internal``); the others go on. A
batched step that raises ends every session in it; a batched prefill also reports a stream whose
own round failed, which ends that session alone.
Admission: the session limit, the scheduler's compute budget (``compute_full``) and the cache
manager's worst case (``CacheFullError`` -> ``cache_full``). Requests arrive validated
(:mod:`stream.protocol`); refusals are :class:`SessionRefused`, a full command queue
:class:`EngineBusy`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from framestream.stream.errors import EngineBusy, InputError, SessionRefused
from framestream.stream.kvcache import CacheFullError
from framestream.stream.memory import release_free_memory
from framestream.stream.pipelines.base import FrameChunk, PendingChunk
from framestream.stream.pipelines.feed import TimestampsBackwardsError
from framestream.stream.pipelines.streaming_vlm import Caption
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.scheduler import (
    Entry,
    Scheduler,
    SchedulerConfig,
    StepCost,
    Understanding,
)
from framestream.stream.session import OutputFrame, OutputQueue, Session, SessionState

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerationPipeline",
    "Pipeline",
    "UnderstandingPipeline",
]

logger = logging.getLogger(__name__)


class GenerationPipeline(Protocol):
    """What the engine needs of a generation pipeline (LongLive, Rolling Forcing)."""

    kind: str  # "generation"

    @property
    def config(self) -> Any: ...  # has .fps

    def open(self, request: GenerationRequest) -> Any: ...
    def step_cost(self, request: GenerationRequest) -> StepCost | None: ...  # None: unknown
    def calibrate(self) -> None: ...  # time a step on this device, for step_cost
    def step_async(self, state: Any) -> PendingChunk: ...
    def switch_prompt(self, state: Any, prompt: str, transition_chunks: int = 0) -> None: ...
    def close(self, state: Any) -> None: ...
    # a restyle stream (request.restyle set): its input feed, and what it says of its pacing
    def push_frame(
        self, state: Any, timestamp: float, frame: Any, arrival: float | None = None
    ) -> None: ...  # arrival: time.monotonic() the frame came, for its latency
    def input_ready(self, state: Any) -> bool: ...  # the next chunk's input slots are all in
    def input_arrival(self, state: Any) -> float | None: ...  # monotonic time they were
    def set_strength(self, state: Any, strength: float) -> None: ...  # from the next chunk
    def input_lead_frames(self, strength: float) -> int: ...  # restyle: input held ahead


class UnderstandingPipeline(Protocol):
    """What the engine needs of an understanding pipeline (StreamingVLM)."""

    kind: str  # "understanding"

    # has .fps (sampled frames per second of feed), .max_prefill_tokens (one batched prefill)
    @property
    def config(self) -> Any: ...

    def open(self, request: UnderstandingRequest) -> Any: ...
    def step_cost(self, request: UnderstandingRequest) -> StepCost | None: ...  # a second's
    def calibrate(self) -> None: ...
    def push_frame(self, state: Any, timestamp: float, frame: Any) -> None: ...
    def ask(self, state: Any, question: str) -> None: ...
    def ready(self, state: Any) -> bool: ...
    def is_decoding(self, state: Any) -> bool: ...
    def prefill_tokens(self, state: Any) -> int: ...  # at most, for its next round
    def prefill(self, states: list[Any]) -> list[Exception | None]: ...  # per stream: its error
    def decode(self, states: list[Any]) -> list[Caption | None]: ...
    def close(self, state: Any) -> None: ...


Pipeline = GenerationPipeline | UnderstandingPipeline


@dataclass(frozen=True)
class EngineConfig:
    """Limits and pacing of one engine."""

    max_sessions: int = 8  # sessions alive at once on this device
    output_queue_frames: int = 96  # undelivered frames kept per session (oldest dropped)
    lookahead_seconds: float = 1.5  # how far ahead of playback a session is generated
    max_pending_commands: int = 1024  # commands from connections not yet applied
    max_pending_switches: int = 64  # prompt switches per session waiting for their frame
    input_queue_frames: int = 16  # input frames waiting per session (oldest dropped)
    max_load: float = 0.9  # device time realtime sessions may claim together (compute_full)
    max_step_seconds: float = 1.0  # a longer step is refused (under lookahead_seconds)
    late_seconds: float = 0.5  # a realtime step this far past its deadline is late (degraded)
    reply_slice_seconds: float = 0.5  # a reply's decode steps before an overdue chunk cuts in
    # a pipeline re-timed on an idle device before it refuses by compute, at most this often
    recalibrate_seconds: float = 60.0

    def __post_init__(self) -> None:
        limits = (
            self.max_sessions,
            self.output_queue_frames,
            self.input_queue_frames,
            self.max_pending_switches,
        )
        if min(limits) <= 0 or self.lookahead_seconds <= 0 or self.max_pending_commands <= 0:
            raise ValueError(f"engine limits must be positive: {self}")
        if self.recalibrate_seconds < 0:
            raise ValueError(f"recalibrate_seconds must be >= 0, got {self.recalibrate_seconds}")
        _ = self.scheduler  # its own checks of the pacing and admission limits

    @property
    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            lookahead_seconds=self.lookahead_seconds,
            output_queue_frames=self.output_queue_frames,
            max_load=self.max_load,
            max_step_seconds=self.max_step_seconds,
            late_seconds=self.late_seconds,
            reply_slice_seconds=self.reply_slice_seconds,
        )


@dataclass(frozen=True, slots=True)
class EngineStats:
    sessions: dict[str, int]  # live sessions per pipeline
    frames_generated: int
    frames_dropped: int
    steps: int
    step_seconds: tuple[float, ...]  # recent step durations
    errors: dict[str, int]  # ended-with-error counts per code
    pending_commands: int  # connection commands not yet applied
    pending_input_frames: int  # input frames waiting in the sessions' inboxes
    health: str = "ok"  # "degraded" while realtime sessions miss their deadlines
    late_steps: int = 0  # realtime steps that came late, since the start
    load: float = 0.0  # the device time admitted realtime sessions claim together


@dataclass(frozen=True, slots=True)
class _Switch:
    """A prompt switch not yet applied."""

    prompt: str
    transition_chunks: int
    at_frame: int | None  # the first chunk starting at or after this frame takes it; None: next


@dataclass(eq=False)
class _Live:
    """Engine-side state of a session (touched only by the engine thread)."""

    session: Session
    pipeline: Pipeline
    state: Any
    entry: Entry  # its scheduling, shared with the scheduler
    # switches waiting for their frame, in the order they came: one never overtakes another, so
    # prompt.applied follows the order of the prompt.update messages
    switches: collections.deque[_Switch] = field(default_factory=collections.deque)
    # generation: the index of the first frame of its next chunk (one past the chunk launched
    # last; a restyle session's chunks may skip input slots, so not a count of frames made)
    next_frame: int = 0


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A generation chunk queued on the device whose frames are not yet collected."""

    live: _Live
    pending: PendingChunk
    started: float  # perf_counter at its launch


class Engine:
    """Runs sessions of named pipelines on one device thread.

    Args:
        pipelines: pipeline name -> pipeline (sharing the device's models and cache manager).
        config: limits and pacing.
        clock: a monotonic clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        pipelines: Mapping[str, Pipeline],
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipelines = dict(pipelines)
        self.config = config or EngineConfig()
        self._clock = clock
        self.scheduler = Scheduler(self.config.scheduler, clock)
        self._groups = {id(p): i for i, p in enumerate(self.pipelines.values())}
        # id(pipeline) -> when it was last timed; warm-up timed them all just before
        self._calibrated = {id(p): clock() for p in self.pipelines.values()}
        self._live: dict[int, _Live] = {}
        self._commands: collections.deque[Callable[[], None]] = collections.deque()
        # session id -> (timestamp, frame, time.monotonic() it arrived) input frames not yet
        # pushed (guarded by _wakeup)
        self._inboxes: dict[int, collections.deque[tuple[float, Any, float]]] = {}
        self._wakeup = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._in_flight: _InFlight | None = None
        self._frames_generated = 0
        self._frames_dropped = 0
        self._steps = 0
        self._step_seconds: collections.deque[float] = collections.deque(maxlen=1024)
        self._errors: collections.Counter[str] = collections.Counter()
        # stats() runs on the server's loop while the device thread updates these
        self._stats_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._thread = threading.Thread(target=self._run, name="stream-engine", daemon=True)
        self._thread.start()

    async def shutdown(self, reason: str = "server_shutdown") -> None:
        """End every session with ``reason`` and stop the device thread (idempotent)."""
        if self._thread is None or self._stopping:
            return
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for live in list(self._live.values()):
                self._end(live, reason, "the server is stopping")
            self._stopping = True
            loop.call_soon_threadsafe(done.set_result, None)

        self._submit(stop)
        await done
        await asyncio.to_thread(self._thread.join)

    # -- commands (any thread, applied by the engine thread between steps) -----------------

    async def open_session(
        self,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool = True,
    ) -> Session:
        """Admit and start a session; raises :class:`SessionRefused` with the reason."""
        if pipeline not in self.pipelines:
            raise SessionRefused(
                "unknown_pipeline",
                f"unknown pipeline {pipeline!r}; known: {sorted(self.pipelines)}",
            )
        target = self.pipelines[pipeline]
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        session = Session(
            next(self._ids),
            pipeline,
            request,
            OutputQueue(self.config.output_queue_frames, loop),
            target.config.fps,
            realtime,
        )

        group = self._groups[id(target)]

        def open_() -> None:
            cost = target.step_cost(request)
            admission = self.scheduler.admit(cost, realtime, group)
            if admission is not None and self._recalibrate(target):
                cost = target.step_cost(request)
                admission = self.scheduler.admit(cost, realtime, group)
            if len(self._live) >= self.config.max_sessions:
                limit = self.config.max_sessions
                error = SessionRefused("too_many_sessions", f"the server runs at most {limit}")
            elif admission is not None:
                error = SessionRefused(admission.reason, admission.message)
            else:
                try:
                    state = target.open(request)
                except CacheFullError as exc:
                    error = SessionRefused("cache_full", str(exc))
                except Exception as exc:  # the caller must hear back, never wait for nothing
                    logger.exception("session %d: open failed", session.id)
                    error = SessionRefused("internal", f"the session could not open: {exc!r:.200}")
                else:
                    entry = Entry(
                        session.id,
                        target.kind,
                        group,
                        session.fps,
                        realtime,
                        cost,
                        queued_frames=session.output.__len__,
                        input_paced=session.restyle,
                    )
                    self.scheduler.add(entry)
                    with self._stats_lock:
                        self._live[session.id] = _Live(session, target, state, entry)
                    session.state = SessionState.RUNNING
                    if session.restyle:
                        strength = request.restyle.strength
                        session.input_lead_frames = target.input_lead_frames(strength)
                    loop.call_soon_threadsafe(self._hand_over, result, session)
                    return
            loop.call_soon_threadsafe(_reject, result, error)

        self._submit(open_)
        return await result

    def _recalibrate(self, pipeline: Pipeline) -> bool:
        """Time ``pipeline`` again before refusing a session by compute, when the device runs
        nothing (a step timed at warm-up on a busy machine reads slow for as long as the
        server runs) and its last timing is older than ``recalibrate_seconds`` (a client
        asking for too much again and again costs the device one step now and then)."""
        now = self._clock()
        last = self._calibrated.get(id(pipeline), now)
        if self._live or now - last < self.config.recalibrate_seconds:
            return False
        self._calibrated[id(pipeline)] = now
        try:
            pipeline.calibrate()
        except Exception:  # the old timing stands; the refusal goes out as it was
            logger.exception("re-timing a pipeline failed")
            return False
        logger.info("re-timed a pipeline on the idle device before admitting a session")
        return True

    def _hand_over(self, result: asyncio.Future, session: Session) -> None:
        """Give the opened session to its caller, or close it if the caller has gone."""
        if result.done():  # cancelled while the engine was opening it
            self.close(session, "disconnected")
        else:
            result.set_result(session)

    def switch_prompt(
        self,
        session: Session,
        prompt: str,
        transition_chunks: int = 0,
        at_frame: int | None = None,
    ) -> None:
        """Switch a generation session's prompt at its next chunk, or, with ``at_frame``, at the
        first chunk whose first frame index is at or after it (chunk boundaries only: a frame
        inside a chunk waits for the next one), so no chunk starting at or after ``at_frame`` is
        made under the old prompt, however far ahead the session runs. A switch asked for a
        frame already generated (or in flight) lands at the next chunk. Switches apply in the
        order they came; ``prompt.applied`` says where each one landed."""

        def switch() -> None:
            live = self._live.get(session.id)
            if live is None:
                return
            if len(live.switches) >= self.config.max_pending_switches:
                limit = self.config.max_pending_switches
                message = f"{limit} prompt switches already wait for their frame (refused)"
                session.post(_error_event(session, "rate_limited", message))
                return
            live.switches.append(_Switch(prompt, transition_chunks, at_frame))
            self._apply_switches(live)

        self._submit(switch)

    def _apply_switches(self, live: _Live) -> None:
        """Apply the waiting switches due at the session's next chunk, in order."""
        frame = live.next_frame
        while live.switches and (
            live.switches[0].at_frame is None or live.switches[0].at_frame <= frame
        ):
            switch = live.switches.popleft()
            live.pipeline.switch_prompt(live.state, switch.prompt, switch.transition_chunks)
            live.session.post(
                {
                    "type": "prompt.applied",
                    "session": live.session.id,
                    "prompt": switch.prompt,
                    "frame": frame,
                    "transition_chunks": switch.transition_chunks,
                }
            )

    def set_strength(self, session: Session, strength: float) -> None:
        """Change a restyle session's strength from its next chunk; ``restyle.applied`` says
        from which frame."""

        def set_() -> None:
            live = self._live.get(session.id)
            if live is None:
                return
            try:
                live.pipeline.set_strength(live.state, strength)
            except ValueError as exc:  # the protocol checked it: a pipeline's stricter range
                session.post(_error_event(session, "invalid_message", str(exc)))
                return
            event = {
                "type": "restyle.applied",
                "session": session.id,
                "strength": strength,
                "frame": live.next_frame,
                "input_lead_frames": live.pipeline.input_lead_frames(strength),
            }
            session.post(event)

        self._submit(set_)

    def push_frame(self, session: Session, timestamp: float, frame: Any) -> None:
        """Feed an understanding or restyle session one uint8 ``[H, W, 3]`` frame.

        Frames wait for the engine thread in the session's inbox of ``input_queue_frames``;
        when it is full the oldest is dropped (the newest win, as in the feed itself), so a
        busy engine never holds more decoded frames than that per session.
        """
        with self._wakeup:
            inbox = self._inboxes.setdefault(
                session.id, collections.deque(maxlen=self.config.input_queue_frames)
            )
            inbox.append((timestamp, frame, time.monotonic()))
            if len(inbox) > 1:
                return  # its drain is queued already
        try:
            self._submit(lambda: self._drain_inbox(session))
        except EngineBusy:
            with self._wakeup:
                self._inboxes.pop(session.id, None)
            raise

    def _drain_inbox(self, session: Session) -> None:
        with self._wakeup:
            inbox = self._inboxes.pop(session.id, ())
        live = self._live.get(session.id)
        if live is None:
            return
        for timestamp, frame, arrival in inbox:
            try:
                if live.entry.input_paced:  # its latency counts from the frame's arrival here
                    live.pipeline.push_frame(live.state, timestamp, frame, arrival)
                else:
                    live.pipeline.push_frame(live.state, timestamp, frame)
            except TimestampsBackwardsError as exc:
                session.post(_error_event(session, "timestamps_backwards", str(exc)))
            except (InputError, ValueError) as exc:
                session.post(_error_event(session, "bad_frame", str(exc)))
            except Exception as exc:  # the frame is lost, the session goes on: say so
                logger.exception("session %d: push_frame failed", session.id)
                session.post(_error_event(session, "bad_frame", f"not taken: {exc!r:.200}"))

    def ask(self, session: Session, question: str) -> None:
        """A question for an understanding session, answered in its next round."""

        def ask() -> None:
            live = self._live.get(session.id)
            if live is not None:
                live.pipeline.ask(live.state, question)

        self._submit(ask)

    def pause(self, session: Session) -> None:
        def pause() -> None:
            live = self._live.get(session.id)
            if live is not None and session.state is SessionState.RUNNING:
                session.state = SessionState.PAUSED
                self.scheduler.pause(live.entry)
                # the first frame (or second understood) the pause holds back; a step in
                # flight still lands
                if live.pipeline.kind == "understanding":
                    frame = session.stats.steps
                else:
                    frame = live.next_frame
                session.post({"type": "session.paused", "session": session.id, "frame": frame})

        self._submit(pause)

    def resume(self, session: Session) -> None:
        def resume() -> None:
            live = self._live.get(session.id)
            if live is not None and session.state is SessionState.PAUSED:
                self.scheduler.resume(live.entry)
                session.state = SessionState.RUNNING
                session.post({"type": "session.resumed", "session": session.id})

        self._submit(resume)

    def close(self, session: Session, reason: str = "stopped") -> None:
        """End a session and return its cache blocks (idempotent)."""

        def close() -> None:
            live = self._live.get(session.id)
            if live is not None:
                self._end(live, reason, None)

        self._submit(close)

    def stats(self) -> EngineStats:
        """A consistent snapshot; safe from any thread."""
        with self._wakeup:
            commands = len(self._commands)
            inputs = sum(len(inbox) for inbox in self._inboxes.values())
        with self._stats_lock:
            per_pipeline = collections.Counter(
                live.session.pipeline for live in self._live.values()
            )
            return EngineStats(
                sessions=dict(per_pipeline),
                frames_generated=self._frames_generated,
                frames_dropped=self._frames_dropped,
                steps=self._steps,
                step_seconds=tuple(self._step_seconds),
                errors=dict(self._errors),
                pending_commands=commands,
                pending_input_frames=inputs,
                health=self.scheduler.health().value,
                late_steps=self.scheduler.late_steps(),
                load=self.scheduler.load(),
            )

    def _record_step(self, seconds: float, frames: int = 0, dropped: int = 0) -> None:
        with self._stats_lock:
            self._steps += 1
            self._step_seconds.append(seconds)
            self._frames_generated += frames
            self._frames_dropped += dropped

    def _submit(self, command: Callable[[], None]) -> None:
        with self._wakeup:
            if len(self._commands) >= self.config.max_pending_commands:
                raise EngineBusy("the engine's command queue is full")
            self._commands.append(command)
            self._wakeup.notify()

    # -- the device thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # a bug of ours must not stop every session of the device
                logger.exception("engine loop")

    def _turn(self) -> None:
        """Drain the commands, then one unit of work (or a short wait)."""
        with self._wakeup:
            commands = list(self._commands)
            self._commands.clear()
        for command in commands:
            try:
                command()
            except Exception:  # one bad command must not drop the ones behind it
                logger.exception("engine command")
        if self._stopping:
            return
        plan = self.scheduler.schedule(self._understanding(), self._inputs())
        if plan.generation is not None:
            self._execute(self._live[plan.generation.id])
            return
        if plan.prefill:
            self._prefill([self._live[entry.id] for entry in plan.prefill])
        for group in plan.decode:
            self._decode([self._live[entry.id] for entry in group])
        self._collect()  # after understanding work, which the decode ran beside; before a sleep
        if plan.sleep:
            with self._wakeup:
                if not self._commands:
                    self._wakeup.wait(timeout=plan.sleep)

    def _understanding(self) -> dict[int, Understanding]:
        """What each understanding stream's pipeline says of it this turn (host state only)."""
        out = {}
        for live in self._live.values():
            pipeline = live.pipeline
            if pipeline.kind == "understanding":
                decoding = pipeline.is_decoding(live.state)
                ready = not decoding and pipeline.ready(live.state)
                tokens = pipeline.prefill_tokens(live.state) if ready else 0
                limit = pipeline.config.max_prefill_tokens
                out[live.session.id] = Understanding(ready, decoding, tokens, limit)
        return out

    def _inputs(self) -> dict[int, float]:
        """Each restyle stream whose next chunk's input is all in: when it became so."""
        out = {}
        for live in self._live.values():
            if live.entry.input_paced and live.pipeline.input_ready(live.state):
                arrival = live.pipeline.input_arrival(live.state)
                out[live.session.id] = self._clock() if arrival is None else arrival
        return out

    def _prefill(self, lives: list[_Live]) -> None:
        """One batched prefill; a raise ends every session in it, a stream's error its own."""
        start = time.perf_counter()
        try:
            errors = lives[0].pipeline.prefill([live.state for live in lives])
            if len(errors) != len(lives):
                raise RuntimeError(f"prefill answered {len(errors)} streams of {len(lives)}")
        except Exception as exc:
            self._fail(lives, exc)
            return
        elapsed = time.perf_counter() - start
        self._record_step(elapsed)
        for live, error in zip(lives, errors, strict=True):
            if error is None:
                live.session.stats.step_seconds.append(elapsed)
            else:
                self._fail([live], error)

    def _decode(self, lives: list[_Live]) -> None:
        """One batched decode step of one understanding pipeline; finished replies ->
        captions."""
        start = time.perf_counter()
        try:
            captions = lives[0].pipeline.decode([live.state for live in lives])
        except Exception as exc:
            self._fail(lives, exc)
            return
        self._record_step(time.perf_counter() - start)
        for live, caption in zip(lives, captions, strict=True):
            if caption is not None:
                session = live.session
                session.stats.steps += 1
                session.post(
                    {
                        "type": "caption",
                        "session": session.id,
                        "start": caption.start,
                        "end": caption.end,
                        "text": caption.text,
                        "lag": round(caption.lag, 3),
                    }
                )

    def _fail(self, lives: list[_Live], exc: Exception) -> None:
        for live in lives:
            logger.error("session %d: step failed: %r", live.session.id, exc, exc_info=exc)
            with self._stats_lock:
                self._errors["internal"] += 1
            self._end(live, "error", f"step failed: {type(exc).__name__}: {exc}")

    def _execute(self, live: _Live) -> None:
        """Queue the session's next chunk, then collect the chunk queued before it."""
        start = time.perf_counter()
        try:
            self._apply_switches(live)  # a switch waiting for this chunk's first frame
            pending = live.pipeline.step_async(live.state)
        except Exception as exc:  # one session's failure must not stop the others
            self._fail([live], exc)
            pending = None
        self._collect()
        if pending is not None and live.session.id in self._live:
            self.scheduler.launched(live.entry, len(pending))
            live.next_frame = pending.first_index + len(pending)
            self._in_flight = _InFlight(live, pending, start)

    def _collect(self) -> None:
        """Wait for the chunk in flight, if any, and hand its frames to its session."""
        if self._in_flight is None:
            return
        live, pending, start = (
            self._in_flight.live,
            self._in_flight.pending,
            self._in_flight.started,
        )
        self._in_flight = None
        try:
            chunk = pending.result()
        except Exception as exc:
            if live.session.id in self._live:
                self._fail([live], exc)
            return
        if live.session.id in self._live:  # not closed while its frames were decoded
            self._update(live, chunk, time.perf_counter() - start)

    def _update(self, live: _Live, chunk: FrameChunk, elapsed: float) -> None:
        session = live.session
        self.scheduler.collected(live.entry, len(chunk))
        height, width = chunk.frames.shape[1:3]
        session.height, session.width = height, width
        arrivals = chunk.input_arrivals
        frames = [
            OutputFrame(
                chunk.first_index + i,
                float(t),
                chunk.frames[i],
                None if arrivals is None else float(arrivals[i]),
            )
            for i, t in enumerate(chunk.timestamps)
        ]
        # counted before they are published: a reader woken by a frame finds it counted
        session.stats.frames_generated += len(frames)
        session.stats.steps += 1
        session.stats.step_seconds.append(elapsed)
        dropped = session.output.put(frames)
        session.stats.frames_dropped += dropped
        if session.restyle:
            session.stats.input_skipped = live.state.restyle.skipped_frames
        self._record_step(elapsed, len(frames), dropped)

    def _end(self, live: _Live, reason: str, message: str | None) -> None:
        session = live.session
        self.scheduler.remove(session.id)
        with self._stats_lock:
            del self._live[session.id]
        try:
            live.pipeline.close(live.state)
        except Exception:
            logger.exception("session %d: close failed", session.id)
        session.finish(reason, message)
        if not self._live:
            release_free_memory()  # what the last session's steps left, back to the system


def _error_event(session: Session, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "session": session.id}


def _reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
