"""What a device runs next, decided without touching a tensor (the role of vLLM v1's scheduler).

The engine (:mod:`stream.engine`) owns the pipelines and their per-stream state and executes
what :meth:`Scheduler.schedule` returns; the scheduler keeps each session's pacing (its
deadline, what is in flight), its claim on the device's time, and the fairness between
generation and understanding::

    schedule():  1. a realtime generation session past its deadline (its client's playback
                    would otherwise run out of frames)
                 2. every understanding stream with a second of feed waiting (of one pipeline,
                    up to its max_prefill_tokens): one batched prefill
                 3. one decode step for every understanding stream mid-reply, batched
                 4. the realtime generation session with the earliest deadline, while less than
                    ``lookahead_seconds`` ahead
                 5. a background generation session (``realtime: false``): only when nothing
                    realtime is due, so it never delays a realtime one; when its output queue
                    has room (it waits for its consumer rather than dropping frames)
    A restyle session is paced by its input feed, not by a playback clock: it is eligible only
    once its next chunk's input frames are all in, and then due at once, its deadline being the
    moment that input became complete (``inputs`` of :meth:`Scheduler.schedule`), so it is ordered
    among the realtime sessions by how long its input has waited.
    Overdue generation never runs twice in a row while understanding waits: an overloaded
    device slows every stream, it starves none. And a reply under way keeps the device for up
    to ``reply_slice_seconds`` of decode steps before an overdue chunk cuts in: one chunk
    between every two reply tokens would make a caption wait as many chunks as it has tokens
    (the service bench's mixed load showed captions seconds late that way), where a short
    slice costs the generation session only part of its lookahead.

Admission (:meth:`Scheduler.admit`): a session is refused with ``compute_full`` when its step
would take longer than ``max_step_seconds`` (one step must never stall the others longer than
that), or, for a realtime session, when the device's realtime load (the sum over sessions of
step seconds / media seconds a step makes) would pass ``max_load``. The step costs come from
the engine's calibration at warm-up.

Health (:meth:`Scheduler.health`): ``degraded`` while realtime sessions missed their deadlines
by more than ``late_seconds`` within the last ``health_window_seconds`` (a restyle chunk's
deadline: its input's completion, or the session's resume if later, plus one step).
"""

from __future__ import annotations

import collections
import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Admission",
    "Entry",
    "Health",
    "Plan",
    "Scheduler",
    "SchedulerConfig",
    "StepCost",
    "Understanding",
]


_MAX_IDLE_SECONDS = 0.05


@dataclass(frozen=True)
class SchedulerConfig:
    """Pacing and admission limits of one device."""

    lookahead_seconds: float = 1.5  # how far ahead of playback a session is generated
    output_queue_frames: int = 96  # a background session waits while its queue is this full
    max_load: float = 0.9  # the device time realtime sessions may claim together
    # a session whose step takes longer is refused; under lookahead_seconds, so that a background
    # step ends before the realtime sessions it runs beside have played what they have ahead
    max_step_seconds: float = 1.0
    late_seconds: float = 0.5  # a realtime session this far past its deadline is late
    health_window_seconds: float = 10.0  # how long a late step keeps the device degraded
    # how long a reply under way keeps decoding before an overdue generation chunk cuts in;
    # under lookahead_seconds, so that a generation session's frames in hand cover it
    reply_slice_seconds: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "lookahead_seconds",
            "output_queue_frames",
            "max_load",
            "max_step_seconds",
            "late_seconds",
            "health_window_seconds",
            "reply_slice_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class StepCost:
    """What one session asks of the device: a step of ``step_seconds`` makes
    ``media_seconds`` of output (generation) or takes that much of its feed (understanding).
    Sessions whose steps are batched together (understanding streams of one pipeline) cost
    ``batched_seconds`` more a step each beyond the first; None: as much as the first."""

    step_seconds: float
    media_seconds: float
    batched_seconds: float | None = None

    @property
    def load(self) -> float:
        """The share of the device's time the session needs alone to keep up in real time."""
        return self.step_seconds / self.media_seconds

    @property
    def batched_load(self) -> float:
        """Its share beside another session of its group, in the same batched step."""
        seconds = self.step_seconds if self.batched_seconds is None else self.batched_seconds
        return seconds / self.media_seconds


class Health(enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"  # realtime sessions are missing their deadlines


@dataclass(frozen=True, slots=True)
class Admission:
    """A refused admission: the reason the client hears and why."""

    reason: str  # "compute_full"
    message: str


@dataclass(eq=False)
class Entry:
    """The scheduler's view of one live session (host numbers only)."""

    id: int
    kind: str  # "generation" or "understanding"
    group: int  # understanding streams of one group (pipeline) batch together
    fps: float  # generation: frames a second of playback
    realtime: bool  # paced at fps; False: background, as fast as its consumer takes frames
    cost: StepCost | None = None  # None: not calibrated (counts as no load)
    running: bool = True  # False while paused
    t0: float = math.nan  # clock time of frame 0 on the client's clock (set at the first step)
    paused_at: float | None = None
    resumed_at: float = -math.inf  # clock time of its last resume
    frames_generated: int = 0
    in_flight_frames: int = 0  # frames of its chunk still being made
    chunk_frames: int = 1  # frames of its last step
    queued_frames: Callable[[], int] = lambda: 0  # undelivered frames in its output queue
    # restyle: paced by its input feed, not by a playback clock (see Scheduler.schedule)
    input_paced: bool = False
    input_complete: float = math.nan  # clock time its next chunk's input was all in; nan: not yet
    launched_input: float = math.nan  # the same, of the chunk in flight

    def deadline(self) -> float:
        """When its next frame is due on the client's clock; -inf before its first step. An
        input-paced session's is when its next chunk's input was complete, or its last resume
        if that came later (nan: not yet)."""
        if self.input_paced:
            return self.input_complete
        if math.isnan(self.t0):
            return -math.inf
        return self.t0 + (self.frames_generated + self.in_flight_frames) / self.fps


@dataclass(frozen=True, slots=True)
class Understanding:
    """An understanding stream's readiness this turn, as its pipeline reports it."""

    ready: bool  # a second of feed waits and no reply is in progress
    decoding: bool  # mid-reply
    prefill_tokens: int  # at most, for its next round
    max_prefill_tokens: int  # of its pipeline's batched prefill


@dataclass(frozen=True, slots=True)
class Plan:
    """One unit of work: a generation step, a batched prefill, batched decode steps (one per
    group), or nothing for ``sleep`` seconds."""

    generation: Entry | None = None
    prefill: Sequence[Entry] = ()
    decode: Sequence[Sequence[Entry]] = ()
    sleep: float = 0.0


class Scheduler:
    """Decides what runs next on one device; every method is called from the engine's thread
    except :meth:`health` (any thread)."""

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or SchedulerConfig()
        self._clock = clock
        self.entries: dict[int, Entry] = {}
        self._generation_ran_last = False
        self._reply_since: float | None = None  # when the current run of decode steps began
        self._late: collections.deque[float] = collections.deque(maxlen=1024)  # clock times

    # -- admission -------------------------------------------------------------------------

    def load(self) -> float:
        """The realtime load the admitted sessions claim together: in each group the first
        session's whole cost, the others' batched share."""
        total, seen = 0.0, set()
        for entry in self.entries.values():
            if entry.realtime and entry.cost is not None:
                total += entry.cost.batched_load if entry.group in seen else entry.cost.load
                seen.add(entry.group)
        return total

    def admit(self, cost: StepCost | None, realtime: bool, group: int = -1) -> Admission | None:
        """None when a session of ``cost`` (in ``group``) fits beside the admitted ones, else
        the refusal."""
        if cost is None:
            return None
        limit = self.config.max_step_seconds
        if cost.step_seconds > limit:
            return Admission(
                "compute_full",
                f"a step of this session takes about {cost.step_seconds:.1f} s here, over the "
                f"{limit:g} s a step may take (max_step_seconds): choose a smaller size",
            )
        if not realtime:
            return None
        load, room = self.load(), self.config.max_load
        batched = any(e.group == group and e.realtime and e.cost for e in self.entries.values())
        need = cost.batched_load if batched else cost.load
        if load + need > room:
            return Admission(
                "compute_full",
                f"this session needs {need:.0%} of the device to run in real time and "
                f"{max(room - load, 0):.0%} is free (max_load {room:.0%}); choose a smaller size, "
                "start it with realtime false, or try again when a session ends",
            )
        return None

    def add(self, entry: Entry) -> None:
        self.entries[entry.id] = entry

    def remove(self, session_id: int) -> None:
        self.entries.pop(session_id, None)

    # -- pacing ----------------------------------------------------------------------------

    def pause(self, entry: Entry) -> None:
        entry.running, entry.paused_at = False, self._clock()

    def resume(self, entry: Entry) -> None:
        now = self._clock()
        if entry.paused_at is not None and not math.isnan(entry.t0):
            entry.t0 += now - entry.paused_at  # playback stood still too
        entry.running, entry.paused_at, entry.resumed_at = True, None, now

    def launched(self, entry: Entry, frames: int) -> None:
        """A step of ``entry`` making ``frames`` frames is in flight."""
        entry.in_flight_frames = frames
        entry.launched_input = entry.input_complete

    def collected(self, entry: Entry, frames: int) -> None:
        """Its frames arrived: the first chunk anchors its playback clock; an input-paced
        chunk is late when it took more than a step past its input's completion."""
        now = self._clock()
        if entry.input_paced:
            step = entry.cost.step_seconds if entry.cost is not None else 0.0
            waited = now - entry.launched_input - step  # nan (never) compares false
            if entry.realtime and waited > self.config.late_seconds:
                self._late.append(now)
        elif math.isnan(entry.t0):
            entry.t0 = now
        elif entry.realtime and now - entry.deadline() > self.config.late_seconds:
            self._late.append(now)
        entry.in_flight_frames = 0
        entry.frames_generated += frames
        entry.chunk_frames = frames

    def health(self) -> Health:
        window = self._clock() - self.config.health_window_seconds
        late = [t for t in list(self._late) if t >= window]
        return Health.DEGRADED if late else Health.OK

    def late_steps(self) -> int:
        """Realtime steps that were late, since the start."""
        return len(self._late)

    # -- the decision ----------------------------------------------------------------------

    def schedule(
        self,
        understanding: Mapping[int, Understanding],
        inputs: Mapping[int, float] | None = None,
    ) -> Plan:
        """The next unit of work; ``understanding`` holds each understanding stream's status,
        ``inputs`` each input-paced session whose next chunk's input is all in: the clock time
        it became so. An input-paced session absent from ``inputs`` waits for its input (the
        engine wakes when a frame arrives)."""
        now = self._clock()
        inputs = inputs or {}
        for entry in self.entries.values():
            if entry.input_paced:  # input complete before a resume waited for it, not the device
                complete = inputs.get(entry.id)
                entry.input_complete = (
                    math.nan if complete is None else max(complete, entry.resumed_at)
                )
        realtime = self._earliest(now, realtime=True)
        overdue = realtime is not None and realtime.deadline() <= now
        ready = self._ready(understanding)
        decoding = self._decoding(understanding) if not ready else []
        waiting = bool(ready) or bool(decoding)
        ran_generation, self._generation_ran_last = self._generation_ran_last, False
        reply_since, self._reply_since = self._reply_since, None
        holds = bool(decoding) and (
            reply_since is None or now - reply_since < self.config.reply_slice_seconds
        )
        if overdue and not (waiting and ran_generation) and not holds:
            self._generation_ran_last = True
            return Plan(generation=realtime)
        if ready:
            return Plan(prefill=ready)
        if decoding:
            self._reply_since = now if reply_since is None else reply_since
            return Plan(decode=decoding)
        generation = realtime or self._earliest(now, realtime=False)
        if generation is not None:
            self._generation_ran_last = True
            return Plan(generation=generation)
        return Plan(sleep=self._idle_timeout(now))

    def _earliest(self, now: float, realtime: bool) -> Entry | None:
        """The running generation session of that kind with the earliest deadline among those
        due for a step."""
        best, best_deadline = None, math.inf
        for entry in self.entries.values():
            if entry.kind != "generation" or not entry.running or entry.realtime != realtime:
                continue
            deadline = entry.deadline()
            if math.isnan(deadline):
                continue  # input-paced, its next chunk's input not all in
            if realtime and deadline - now > self.config.lookahead_seconds:
                continue
            if not realtime and (
                entry.queued_frames() + entry.in_flight_frames + entry.chunk_frames
                > self.config.output_queue_frames
            ):
                continue  # a background session waits for its consumer instead of dropping
            if deadline < best_deadline:
                best, best_deadline = entry, deadline
        return best

    def _ready(self, understanding: Mapping[int, Understanding]) -> list[Entry]:
        """Understanding streams with a second of feed waiting and no reply in progress: those
        of the first group that has one, in admission order, as many as fit its
        ``max_prefill_tokens`` (at least one); the rest wait for the next turn."""
        batch: list[Entry] = []
        budget = 0
        for entry in self.entries.values():
            status = understanding.get(entry.id)
            if (
                status is None
                or not entry.running
                or not status.ready
                or (batch and entry.group != batch[0].group)
            ):
                continue
            if not batch:
                budget = status.max_prefill_tokens
            elif status.prefill_tokens > budget:
                continue
            batch.append(entry)
            budget -= status.prefill_tokens
        return batch

    def _decoding(self, understanding: Mapping[int, Understanding]) -> list[list[Entry]]:
        """Understanding streams in the middle of a reply, one batch per group."""
        groups: dict[int, list[Entry]] = {}
        for entry in self.entries.values():
            status = understanding.get(entry.id)
            if status is not None and status.decoding:
                groups.setdefault(entry.group, []).append(entry)
        return list(groups.values())

    def _idle_timeout(self, now: float) -> float:
        """Sleep until the earliest realtime session needs its next chunk, or at most
        ``_MAX_IDLE_SECONDS``: background sessions' consumers free room in their queues
        without telling the scheduler. Input-paced sessions are not waited for: their input
        frames wake the engine."""
        waits = [
            e.deadline() - now - self.config.lookahead_seconds
            for e in self.entries.values()
            if e.running and e.realtime and e.kind == "generation" and not e.input_paced
        ]
        return min([_MAX_IDLE_SECONDS, *(w for w in waits if w > 0)])
