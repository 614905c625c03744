"""The engine actor as a plain object on this loop (no Ray), with stand-in pipelines: credits
bound what a front takes, refusals are results, commands apply in order and their events come
back, fronts see only their own sessions, and a silent front's sessions are closed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("ray")  # stream.cluster needs it

import numpy as np

from framestream.models.registry import load_wan_models
from framestream.stream.cluster.actor import EngineActor
from framestream.stream.cluster.front import _rebased
from framestream.stream.cluster.messages import Action, Command, SessionUpdate
from framestream.stream.engine import EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.requests import GenerationRequest, RestyleRequest
from framestream.stream.session import OutputFrame
from tests.stream.test_engine import FakeGeneration

PARAMS = GenerationRequest("a red ball", 3)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


@contextlib.asynccontextmanager
async def hosting(lease_seconds: float = 30.0, **limits) -> AsyncIterator[EngineActor]:
    config = EngineConfig(**{"max_sessions": 4, "output_queue_frames": 24, **limits})
    actor = EngineActor(lambda: {"gen": FakeGeneration(admit=2)}, config, lease_seconds)
    try:
        yield actor
    finally:
        await actor._engine.shutdown()  # Ray ends the process instead


async def news(actor: EngineActor, front: str, session: int, credit: int = 96) -> SessionUpdate:
    """The next update of ``session`` for ``front``."""
    while True:
        report = await actor.take(front, {session: credit}, 1.0)
        for update in report.updates:
            if update.session == session:
                return update


def test_a_front_takes_at_most_its_credit_and_the_engine_holds_the_rest() -> None:
    async def main():
        async with hosting() as actor:
            opened = await actor.open("f", "gen", PARAMS, False)
            assert opened.session is not None and opened.fps == 16.0
            assert opened.incarnation == actor.describe().incarnation
            first = await news(actor, "f", opened.session, credit=5)
            assert [f.index for f in first.frames] == [0, 1, 2, 3, 4]
            indices = [f.index for f in first.frames]
            while len(indices) < 40:
                update = await news(actor, "f", opened.session, credit=12)
                assert len(update.frames) <= 12
                indices += [f.index for f in update.frames]
            assert indices[:40] == list(range(40))  # in order, nothing lost
            assert update.frames_dropped == 0 and update.steps >= 3
            assert update.frames[0].pixels.shape == (2, 2, 3)

    run(main())


def test_refusals_are_results() -> None:
    async def main():
        async with hosting(max_sessions=3) as actor:
            unknown = await actor.open("f", "nope", PARAMS, True)
            assert unknown.code == "unknown_pipeline"
            for _ in range(2):
                assert (await actor.open("f", "gen", PARAMS, True)).session is not None
            full = await actor.open("f", "gen", PARAMS, True)  # the stand-in admits two
            assert full.session is None and full.code == "cache_full"
            assert (await actor.take("f", {}, 0.0)).sessions == 2

    run(main())


def test_commands_apply_in_order_and_their_events_come_back() -> None:
    async def main():
        async with hosting() as actor:
            session = (await actor.open("f", "gen", PARAMS, True)).session
            actor.apply(
                "f",
                [
                    Command(session, Action.PROMPT, ("a blue ball", 0)),
                    Command(session, Action.PROMPT, ("a green ball", 1)),
                    Command(session, Action.CLOSE, ("stopped",)),
                ],
            )
            events, ended = [], None
            while ended is None:
                update = await news(actor, "f", session)
                events += update.events
                ended = update.ended
            assert [e["prompt"] for e in events] == ["a blue ball", "a green ball"]
            assert {e["session"] for e in events} == {session}  # the engine's id: fronts map it
            assert ended == ("stopped", None)
            assert (await actor.take("f", {session: 96}, 0.0)).sessions == 0

    run(main())


def test_a_failing_step_ends_its_session_with_its_reason() -> None:
    async def main():
        async with hosting() as actor:
            session = (await actor.open("f", "gen", GenerationRequest("boom"), True)).session
            update = await news(actor, "f", session)
            while update.ended is None:
                update = await news(actor, "f", session)
            reason, message = update.ended
            assert reason == "error" and "the model fell over" in message

    run(main())


def test_fronts_see_and_steer_only_their_own_sessions() -> None:
    async def main():
        async with hosting() as actor:
            mine = (await actor.open("a", "gen", PARAMS, True)).session
            theirs = (await actor.open("b", "gen", PARAMS, True)).session
            actor.apply("b", [Command(mine, Action.CLOSE, ("stopped",))])  # not b's to close
            report = await actor.take("b", {mine: 96, theirs: 96}, 1.0)
            assert {u.session for u in report.updates} == {theirs}
            assert (await news(actor, "a", mine)).ended is None
            assert report.sessions == 2  # the load counts every front's

    run(main())


def test_a_silent_front_loses_its_sessions_after_its_lease() -> None:
    async def main():
        async with hosting(lease_seconds=0.4) as actor:
            gone = (await actor.open("gone", "gen", PARAMS, True)).session
            kept = (await actor.open("kept", "gen", PARAMS, True)).session
            async with asyncio.timeout(10):
                while (report := await actor.take("kept", {kept: 96}, 0.1)).sessions > 1:
                    pass
            assert gone not in actor._hosted and kept in actor._hosted
            await asyncio.sleep(0.2)
            assert actor._engine.stats().sessions == {"gen": 1}  # the engine closed it
            assert report.incarnation == actor.describe().incarnation

    run(main())


def test_a_restyle_session_s_input_strength_skips_and_arrivals_travel() -> None:
    """Input frames and strength changes reach a restyle session on its engine; its frames
    come back with their input's arrival (the engine host's clock, rebased on the front's by
    the update's age) and its skipped input with them."""
    models = load_wan_models("tiny")

    def pipelines() -> dict:
        return {"ll": LongLivePipeline(models, KVCacheManager(), 64 << 20)}

    async def main():
        config = EngineConfig(max_sessions=2, output_queue_frames=96)
        actor = EngineActor(pipelines, config, 30.0)
        try:
            request = GenerationRequest("a red ball", 0, 32, 32, RestyleRequest(0.5))
            session = (await actor.open("f", "ll", request, True)).session
            picture = np.zeros((32, 32, 3), np.uint8)
            commands = [Command(session, Action.FRAME, (i / 16, picture)) for i in range(10)]
            actor.apply("f", [*commands, Command(session, Action.STRENGTH, (0.8,))])
            frames, events = [], []
            while len(frames) < 9 or not events:
                update = await news(actor, "f", session)
                frames += update.frames
                events += [e for e in update.events if e["type"] == "restyle.applied"]
                assert update.input_skipped == 0
            assert [f.index for f in frames] == list(range(9))
            assert all(f.input_arrival is not None for f in frames)
            assert all(f.input_arrival <= update.made_at for f in update.frames)
            assert events[0]["strength"] == 0.8 and events[0]["frame"] in (0, 9)
        finally:
            await actor._engine.shutdown()

    run(main())

    pixels = np.zeros((2, 2, 3), np.uint8)
    frames = [OutputFrame(0, 0.0, pixels, 5.0), OutputFrame(1, 0.0625, pixels)]
    assert [f.input_arrival for f in _rebased(frames, 2.0)] == [7.0, None]
