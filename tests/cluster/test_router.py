"""Placement of new sessions: up engines with room, least loaded first, and a refusal that
says whether the engines are full or down."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")  # stream.cluster needs it

from framestream.stream.cluster.router import EngineLoad, placement, refusal


def loads(*sessions: int, capacity: int = 2, down: tuple[int, ...] = ()) -> list[EngineLoad]:
    return [EngineLoad(i, i not in down, n, capacity) for i, n in enumerate(sessions)]


def test_least_loaded_first_ties_by_index() -> None:
    assert placement(loads(0, 0, 0)) == [0, 1, 2]
    assert placement(loads(1, 0, 1)) == [1, 0, 2]
    # by fraction of capacity: 3 of 8 is lighter than 1 of 2
    mixed = [EngineLoad(0, True, 1, 2), EngineLoad(1, True, 3, 8)]
    assert placement(mixed) == [1, 0]


def test_full_and_down_engines_are_skipped() -> None:
    assert placement(loads(2, 1, 0, down=(2,))) == [1]
    assert placement(loads(2, 2)) == []


def test_the_refusal_says_full_or_down() -> None:
    full = refusal(loads(2, 2, 0, down=(2,)))
    assert full.reason == "too_many_sessions"
    assert "all 2 engines are full (4 sessions in all, 1 down)" in full.message
    down = refusal(loads(0, 1, down=(0, 1)))
    assert down.reason == "engine_lost" and "none of the 2 engines is up" in down.message
