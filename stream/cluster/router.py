"""Where a new session goes: the front's placement policy, pure and synchronous.

A session stays on the engine that admitted it for its whole life (its KV cache lives there);
only new sessions are placed. Engines are tried least loaded first (sessions over capacity,
ties by index, so equal engines fill evenly); one that is down or full is skipped, and when
none is left the refusal says which of the two it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from framestream.stream.errors import SessionRefused

__all__ = ["EngineLoad", "placement", "refusal"]


@dataclass(frozen=True, slots=True)
class EngineLoad:
    engine: int  # index among the front's engines
    up: bool  # answering (not dead or restarting)
    sessions: int  # live on it (every front's, as last reported) plus this front's opening
    capacity: int  # its max_sessions


def placement(loads: Sequence[EngineLoad]) -> list[int]:
    """The engines to try for a new session, best first."""
    open_ = [load for load in loads if load.up and load.sessions < load.capacity]
    open_.sort(key=lambda load: (load.sessions / load.capacity, load.engine))
    return [load.engine for load in open_]


def refusal(loads: Sequence[EngineLoad]) -> SessionRefused:
    """Why no engine can take a new session (``placement`` found none, or all refused)."""
    up = [load for load in loads if load.up]
    if not up:
        return SessionRefused(
            "engine_lost",
            f"none of the {len(loads)} engines is up (restarting?); start the session again "
            "in a few seconds",
        )
    capacity = sum(load.capacity for load in up)
    down = f", {len(loads) - len(up)} down" if len(up) < len(loads) else ""
    return SessionRefused(
        "too_many_sessions",
        f"all {len(up)} engines are full ({capacity} sessions in all{down}); try again later",
    )
