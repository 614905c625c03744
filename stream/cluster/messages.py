"""What crosses between a front and an engine actor: slotted dataclasses that Ray pickles, numpy
frames out of band (one copy into the object store, read in place on the same node)::

    front (ClusterEngine)                          EngineActor
    describe()                               ──>   EngineInfo
    open(front, pipeline, params, realtime)  ──>   Opened: the engine's session id, or a refusal
    apply(front, [Command, ...])             ──>   applied in order, between engine steps
    take(front, credits, wait)               ──>   EngineReport: a SessionUpdate per session
                                                   with news (a step's frames, events, its end)

Session ids here are the engine's own; the front maps them to its server-wide ids.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from framestream.stream.backend import PipelineInfo
from framestream.stream.engine import EngineConfig, EngineStats
from framestream.stream.kvcache import PoolStats
from framestream.stream.session import OutputFrame

__all__ = ["Action", "Command", "EngineInfo", "EngineReport", "Opened", "SessionUpdate"]


class Action(enum.Enum):
    """What a :class:`Command` does to its session, and the ``args`` it carries."""

    PROMPT = "prompt"  # (prompt, transition_chunks, at_frame or None)
    QUESTION = "question"  # (text,)
    PAUSE = "pause"  # ()
    RESUME = "resume"  # ()
    CLOSE = "close"  # (reason,)
    FRAME = "frame"  # (timestamp in seconds, uint8 [H, W, 3])
    STRENGTH = "strength"  # (restyle strength,)


@dataclass(frozen=True, slots=True)
class Command:
    session: int  # the engine's session id
    action: Action
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Opened:
    """The answer to ``open``: a session, or a refusal with a protocol error code."""

    session: int | None  # the engine's session id; None when refused
    incarnation: str = ""  # of the engine that opened it
    fps: float = 0.0  # the session's nominal frame rate
    input_lead_frames: int | None = None  # restyle: as Session.input_lead_frames
    code: str | None = None  # refusal: a reason of stream.errors.SessionRefused
    message: str = ""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """An engine as a front sees it once it has started (its models loaded)."""

    pipelines: dict[str, PipelineInfo]
    config: EngineConfig
    incarnation: str  # new at every (re)start: sessions of an older incarnation are gone
    node: str  # host name
    pid: int  # of the actor's process
    gpus: str  # CUDA_VISIBLE_DEVICES that Ray gave the actor ("" on CPUs)


@dataclass(slots=True)
class SessionUpdate:
    """News of one session since the front's last ``take``."""

    session: int  # the engine's session id
    frames: list[OutputFrame]  # in index order; at most the front's credit for the session
    events: list[dict[str, Any]]  # prompt.applied, caption, error: with the engine's session id
    frames_generated: int  # totals of the session on the engine
    frames_dropped: int  # frames the engine's own queue dropped (the front was full)
    steps: int
    step_seconds: list[float]  # the recent step durations, newest last
    ended: tuple[str, str | None] | None = None  # (reason, message) once it has ended
    input_skipped: int = 0  # restyle: input slots the engine skipped
    # time.monotonic() on the engine's host when the update was made: a restyle frame's
    # input_arrival (that host's clock) is rebased on the front's by its age at that moment
    made_at: float = 0.0


@dataclass(slots=True)
class EngineReport:
    """The answer to ``take``."""

    incarnation: str
    sessions: int  # live sessions on the engine, of every front: the router's load
    updates: list[SessionUpdate] = field(default_factory=list)
    stats: EngineStats | None = None  # at most once a second per front (step times are long)
    pools: list[PoolStats] | None = None  # with stats: the engine's cache pools
