"""The engine with stand-in pipelines (test doubles): admission refusals, deadline pacing,
pause/resume, a failing step that ends only its own session, batched understanding decode."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from stream.engine import Engine, EngineConfig
from stream.kvcache import CacheFullError
from stream.pipelines.base import FrameChunk
from stream.pipelines.streaming_vlm import Caption
from stream.protocol import ProtocolError


@dataclass
class _Config:
    fps: float = 16.0


class FakeGeneration:
    """Makes 12-frame chunks of its seed's value; a prompt of "boom" fails its steps."""

    kind = "generation"

    def __init__(self, admit: int = 100) -> None:
        self.config = _Config()
        self.admit = admit
        self.open_states: list[dict] = []
        self.closed = 0

    def open(self, request):
        if len(self.open_states) - self.closed >= self.admit:
            raise CacheFullError(needed_bytes=10, available_bytes=0)
        state = {"prompt": request.prompt, "seed": request.seed, "frames": 0, "switches": []}
        self.open_states.append(state)
        return state

    def step(self, state) -> FrameChunk:
        if state["prompt"] == "boom":
            raise RuntimeError("the model fell over")
        frames = np.full((12, 2, 2, 3), state["seed"], dtype=np.uint8)
        chunk = FrameChunk(frames, state["frames"], self.config.fps)
        state["frames"] += 12
        return chunk

    def switch_prompt(self, state, prompt, transition_chunks=0) -> None:
        state["switches"].append(prompt)

    def close(self, state) -> None:
        self.closed += 1


@dataclass
class _VLMState:
    seconds: list[int] = field(default_factory=list)
    decoding: bool = False
    tokens: int = 0
    second: int = 0


class FakeUnderstanding:
    """A second is ready per pushed frame; a reply is three decode steps long."""

    kind = "understanding"

    def __init__(self) -> None:
        self.config = _Config(fps=2)
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def open(self, request):
        return _VLMState()

    def push_frame(self, state, timestamp, frame) -> None:
        state.seconds.append(int(timestamp))

    def ask(self, state, question) -> None:
        pass

    def ready(self, state) -> bool:
        return bool(state.seconds) and not state.decoding

    def is_decoding(self, state) -> bool:
        return state.decoding

    def prefill(self, state) -> None:
        state.second, state.decoding, state.tokens = state.seconds.pop(0), True, 0

    def decode(self, states):
        self.batches.append(len(states))
        out = []
        for state in states:
            state.tokens += 1
            done = state.tokens == 3
            state.decoding = not done
            out.append(
                Caption(state.second, state.second + 1, f"s{state.second}") if done else None
            )
        return out

    def close(self, state) -> None:
        pass


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def frames_of(session, count: int) -> list:
    return [await asyncio.wait_for(session.output.get(), 10) for _ in range(count)]


def test_refusals_have_their_codes() -> None:
    async def main():
        engine = Engine({"gen": FakeGeneration(admit=1)}, EngineConfig(max_sessions=2))
        engine.start()
        try:
            with pytest.raises(ProtocolError) as unknown:
                await engine.open_session("nope", {"prompt": "x"})
            assert unknown.value.code == "unknown_pipeline"
            with pytest.raises(ProtocolError) as invalid:
                await engine.open_session("gen", {"prompt": ""})
            assert invalid.value.code == "invalid_message"
            await engine.open_session("gen", {"prompt": "a"})
            with pytest.raises(ProtocolError) as full:
                await engine.open_session("gen", {"prompt": "b"})
            assert full.value.code == "cache_full"
        finally:
            await engine.shutdown()

    run(main())


def test_session_limit() -> None:
    async def main():
        engine = Engine({"gen": FakeGeneration()}, EngineConfig(max_sessions=1))
        engine.start()
        try:
            first = await engine.open_session("gen", {"prompt": "a"})
            with pytest.raises(ProtocolError) as refused:
                await engine.open_session("gen", {"prompt": "b"})
            assert refused.value.code == "too_many_sessions"
            engine.close(first)
            await first.ended.wait()
            await engine.open_session("gen", {"prompt": "b"})  # room again
        finally:
            await engine.shutdown()

    run(main())


def test_realtime_sessions_stay_within_the_lookahead() -> None:
    """With the clock standing still, a realtime session gets only its lookahead of frames."""

    async def main():
        engine = Engine(
            {"gen": FakeGeneration()},
            EngineConfig(lookahead_seconds=1.5),
            clock=lambda: 100.0,  # frozen: playback never advances
        )
        engine.start()
        try:
            session = await engine.open_session("gen", {"prompt": "a"})
            await asyncio.sleep(0.5)
            # frame 0 at t0; chunks while the next deadline is <= 1.5 s ahead: 36 frames
            assert session.stats.frames_generated == 36
        finally:
            await engine.shutdown()

    run(main())


def test_a_failing_step_ends_only_its_session() -> None:
    async def main():
        pipeline = FakeGeneration()
        engine = Engine({"gen": pipeline})
        engine.start()
        try:
            good = await engine.open_session("gen", {"prompt": "a", "seed": 7}, realtime=False)
            bad = await engine.open_session("gen", {"prompt": "boom"}, realtime=False)
            await asyncio.wait_for(bad.ended.wait(), 10)
            assert bad.end_reason == "error" and "fell over" in bad.end_message
            frames = await frames_of(good, 48)
            assert [f.index for f in frames] == list(range(48))
            assert all(int(f.pixels[0, 0, 0]) == 7 for f in frames)
            assert engine.stats().errors == {"internal": 1}
            assert pipeline.closed == 1  # the failed session gave its cache back
        finally:
            await engine.shutdown()

    run(main())


def test_pause_holds_generation_and_switches_are_applied_between_steps() -> None:
    async def main():
        pipeline = FakeGeneration()
        engine = Engine({"gen": pipeline}, EngineConfig(output_queue_frames=24))
        engine.start()
        try:
            session = await engine.open_session("gen", {"prompt": "a"}, realtime=False)
            await frames_of(session, 24)
            engine.pause(session)
            await asyncio.sleep(0.2)
            paused_at = session.stats.frames_generated
            await asyncio.sleep(0.3)
            assert session.stats.frames_generated == paused_at
            engine.switch_prompt(session, "b", 2)
            applied = await asyncio.wait_for(session.events.get(), 5)
            assert applied["type"] == "prompt.applied" and applied["frame"] == paused_at
            engine.resume(session)
            await frames_of(session, 24)
            assert pipeline.open_states[0]["switches"] == ["b"]
            assert session.stats.frames_generated > paused_at
        finally:
            await engine.shutdown()
        assert session.end_reason == "server_shutdown"

    run(main())


def test_understanding_decode_steps_are_batched() -> None:
    async def main():
        pipeline = FakeUnderstanding()
        engine = Engine({"vlm": pipeline})
        engine.start()
        try:
            sessions = [await engine.open_session("vlm", {}) for _ in range(3)]
            for session in sessions:
                engine.push_frame(session, 0.0, np.zeros((2, 2, 3), np.uint8))
            captions = []
            for session in sessions:
                event = await asyncio.wait_for(session.events.get(), 10)
                captions.append((event["type"], event["start"], event["text"]))
            assert captions == [("caption", 0, "s0")] * 3
            # prefills run one stream at a time, then the replying streams decode together
            assert max(pipeline.batches) >= 2 and sum(pipeline.batches) == 9
        finally:
            await engine.shutdown()

    run(main())
