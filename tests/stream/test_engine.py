"""The engine with stand-in pipelines (test doubles): admission refusals, deadline pacing,
pause/resume, a failing step that ends only its own session, batched understanding prefill
(within max_prefill_tokens, a failing stream or batch ending only its own sessions) and decode."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.errors import SessionRefused
from framestream.stream.kvcache import CacheFullError
from framestream.stream.pipelines.base import FrameChunk, PendingChunk
from framestream.stream.pipelines.streaming_vlm import Caption
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.scheduler import StepCost


@dataclass
class _Config:
    fps: float = 16.0
    max_prefill_tokens: int = 1 << 20


class FakeGeneration:
    """Makes 12-frame chunks of its seed's value; a prompt of "boom" fails its steps."""

    kind = "generation"

    def __init__(
        self,
        admit: int = 100,
        cost: StepCost | None = None,
        recalibrated_cost: StepCost | None = None,
    ) -> None:
        self.config = _Config()
        self.admit = admit
        self.cost = cost
        self.recalibrated_cost = recalibrated_cost  # what calibrate() measures
        self.calibrations = 0
        self.open_states: list[dict] = []
        self.closed = 0

    def step_cost(self, request) -> StepCost | None:
        return self.cost

    def calibrate(self) -> None:
        self.calibrations += 1
        self.cost = self.recalibrated_cost or self.cost

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

    def step_async(self, state) -> PendingChunk:
        return PendingChunk.ready(self.step(state))

    def switch_prompt(self, state, prompt, transition_chunks=0) -> None:
        state["switches"].append(prompt)

    def close(self, state) -> None:
        self.closed += 1


@dataclass
class _VLMState:
    instruction: str = ""
    seconds: list[int] = field(default_factory=list)
    decoding: bool = False
    tokens: int = 0
    second: int = 0


class FakeUnderstanding:
    """A second is ready per pushed frame; a round is 100 prefill tokens and a reply three decode
    steps long. An instruction of "boom" fails its stream's rounds, "crash" its whole batch's."""

    kind = "understanding"

    def __init__(self, max_prefill_tokens: int = 1 << 20) -> None:
        self.config = _Config(fps=2, max_prefill_tokens=max_prefill_tokens)
        self.batches: list[int] = []  # streams per decode step
        self.prefills: list[int] = []  # streams per prefill
        self.closed = 0
        self.lock = threading.Lock()

    def open(self, request):
        return _VLMState(request.instruction)

    def step_cost(self, request) -> StepCost | None:
        return None

    def push_frame(self, state, timestamp, frame) -> None:
        state.seconds.append(int(timestamp))

    def ask(self, state, question) -> None:
        pass

    def ready(self, state) -> bool:
        return bool(state.seconds) and not state.decoding

    def is_decoding(self, state) -> bool:
        return state.decoding

    def prefill_tokens(self, state) -> int:
        return 100

    def prefill(self, states) -> list:
        self.prefills.append(len(states))
        if any(state.instruction == "crash" for state in states):
            raise RuntimeError("the batch fell over")
        errors = []
        for state in states:
            second = state.seconds.pop(0)
            if state.instruction == "boom":
                errors.append(ValueError("the round fell over"))
                continue
            state.second, state.decoding, state.tokens = second, True, 0
            errors.append(None)
        return errors

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
        self.closed += 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def frames_of(session, count: int) -> list:
    return [await asyncio.wait_for(session.output.get(), 10) for _ in range(count)]


def test_refusals_have_their_codes() -> None:
    async def main():
        engine = Engine({"gen": FakeGeneration(admit=1)}, EngineConfig(max_sessions=2))
        engine.start()
        try:
            with pytest.raises(SessionRefused) as unknown:
                await engine.open_session("nope", GenerationRequest("x"))
            assert unknown.value.reason == "unknown_pipeline"
            await engine.open_session("gen", GenerationRequest("a"))
            with pytest.raises(SessionRefused) as full:
                await engine.open_session("gen", GenerationRequest("b"))
            assert full.value.reason == "cache_full"
        finally:
            await engine.shutdown()

    run(main())


def test_session_limit() -> None:
    async def main():
        engine = Engine({"gen": FakeGeneration()}, EngineConfig(max_sessions=1))
        engine.start()
        try:
            first = await engine.open_session("gen", GenerationRequest("a"))
            with pytest.raises(SessionRefused) as refused:
                await engine.open_session("gen", GenerationRequest("b"))
            assert refused.value.reason == "too_many_sessions"
            engine.close(first)
            await first.ended.wait()
            await engine.open_session("gen", GenerationRequest("b"))  # room again
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
            session = await engine.open_session("gen", GenerationRequest("a"))
            await asyncio.sleep(0.5)
            # frame 0 at t0; chunks while the next deadline is <= 1.5 s ahead: 36 frames
            assert session.stats.frames_generated == 36
        finally:
            await engine.shutdown()

    run(main())


class _Waits:
    """Stands in for a chunk's CUDA event: logs when the engine waits for the chunk."""

    def __init__(self, log: list, chunk: int) -> None:
        self.log, self.chunk = log, chunk

    def synchronize(self) -> None:
        self.log.append(("wait", self.chunk))


class LoggedGeneration(FakeGeneration):
    """Logs each chunk's launch and the engine's wait for its frames."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, int]] = []

    def step_async(self, state) -> PendingChunk:
        chunk = self.step(state)
        n = chunk.first_index // len(chunk)
        self.log.append(("launch", n))
        return PendingChunk(chunk.frames, chunk.first_index, chunk.fps, _Waits(self.log, n))


def test_a_chunk_is_awaited_after_the_next_is_launched_and_before_a_sleep() -> None:
    """The decode of chunk n runs beside the DiT of chunk n + 1; the frames in flight count
    towards the lookahead, and the last chunk is collected before the engine sleeps."""

    async def main():
        pipeline = LoggedGeneration()
        engine = Engine({"gen": pipeline}, EngineConfig(lookahead_seconds=1.5), clock=lambda: 100.0)
        engine.start()
        try:
            session = await engine.open_session("gen", GenerationRequest("a"))
            frames = await frames_of(session, 36)
            assert [f.index for f in frames] == list(range(36))
            await asyncio.sleep(0.3)
            assert session.stats.frames_generated == 36  # the lookahead, as without overlap
            assert pipeline.log == [
                ("launch", 0),
                ("launch", 1),
                ("wait", 0),
                ("launch", 2),
                ("wait", 1),
                ("wait", 2),
            ]
        finally:
            await engine.shutdown()

    run(main())


def test_a_failing_step_ends_only_its_session() -> None:
    async def main():
        pipeline = FakeGeneration()
        engine = Engine({"gen": pipeline})
        engine.start()
        try:
            good = await engine.open_session("gen", GenerationRequest("a", 7), realtime=False)
            bad = await engine.open_session("gen", GenerationRequest("boom"), realtime=False)
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
            session = await engine.open_session("gen", GenerationRequest("a"), realtime=False)
            await frames_of(session, 24)
            engine.pause(session)
            paused = await asyncio.wait_for(session.events.get(), 5)
            assert paused["type"] == "session.paused"
            await asyncio.sleep(0.2)
            paused_at = session.stats.frames_generated
            assert paused["frame"] == paused_at  # a step in flight landed, no other
            await asyncio.sleep(0.3)
            assert session.stats.frames_generated == paused_at
            engine.switch_prompt(session, "b", 2)
            applied = await asyncio.wait_for(session.events.get(), 5)
            assert applied["type"] == "prompt.applied" and applied["frame"] == paused_at
            engine.resume(session)
            resumed = await asyncio.wait_for(session.events.get(), 5)
            assert resumed == {"type": "session.resumed", "session": session.id}
            await frames_of(session, 24)
            assert pipeline.open_states[0]["switches"] == ["b"]
            assert session.stats.frames_generated > paused_at
        finally:
            await engine.shutdown()
        assert session.end_reason == "server_shutdown"

    run(main())


class SwitchRecorder(FakeGeneration):
    """Notes the first frame of the chunk each switch is applied before."""

    def __init__(self) -> None:
        super().__init__()
        self.switched_at: list[tuple[str, int]] = []

    def switch_prompt(self, state, prompt, transition_chunks=0) -> None:
        super().switch_prompt(state, prompt, transition_chunks)
        self.switched_at.append((prompt, state["frames"]))


async def _events(session, count: int) -> list[dict]:
    return [await asyncio.wait_for(session.events.get(), 10) for _ in range(count)]


def test_a_switch_at_a_frame_waits_for_the_chunk_that_starts_there() -> None:
    """Chunks of 12 frames start at 0, 12, 24, ...: a switch asked for a boundary lands on it,
    one inside a chunk at the next boundary; one behind it waits its turn; one asked for a frame
    already made lands at the next chunk."""

    async def main():
        pipeline = SwitchRecorder()
        engine = Engine({"gen": pipeline}, EngineConfig(output_queue_frames=24))
        engine.start()
        try:
            session = await engine.open_session("gen", GenerationRequest("a"), realtime=False)
            engine.switch_prompt(session, "b", at_frame=48)
            engine.switch_prompt(session, "c", 1, at_frame=50)
            engine.switch_prompt(session, "d")  # no frame: right after the one before it
            await frames_of(session, 84)
            applied = await _events(session, 3)
            assert [(e["prompt"], e["frame"]) for e in applied] == [("b", 48), ("c", 60), ("d", 60)]
            assert applied[1]["transition_chunks"] == 1
            assert pipeline.switched_at == [("b", 48), ("c", 60), ("d", 60)]
            assert session.stats.frames_generated >= 84
            engine.switch_prompt(session, "e", at_frame=12)  # long past: at the next chunk
            (late,) = await _events(session, 1)
            assert late["frame"] == pipeline.switched_at[-1][1] > 60
            assert late["frame"] % 12 == 0
        finally:
            await engine.shutdown()

    run(main())


def test_a_realtime_session_runs_ahead_only_to_a_waiting_switch() -> None:
    """A realtime session generates its lookahead ahead of playback (36 frames while the clock
    stands still); a switch asked beyond that lands on its chunk once playback moves on, not
    wherever generation has got to."""

    async def main():
        now = [100.0]
        pipeline = SwitchRecorder()
        engine = Engine(
            {"gen": pipeline}, EngineConfig(lookahead_seconds=1.5), clock=lambda: now[0]
        )
        engine.start()
        try:
            session = await engine.open_session("gen", GenerationRequest("a"))
            await frames_of(session, 36)
            engine.switch_prompt(session, "b", at_frame=48)
            now[0] += 2.0  # two seconds of playback: room for chunks 36 and 48
            await frames_of(session, 24)
            (applied,) = await _events(session, 1)
            assert applied["frame"] == 48 and pipeline.switched_at == [("b", 48)]
        finally:
            await engine.shutdown()

    run(main())


def test_switches_waiting_for_their_frame_are_bounded() -> None:
    async def main():
        engine = Engine({"gen": FakeGeneration()}, EngineConfig(max_pending_switches=2))
        engine.start()
        try:
            session = await engine.open_session("gen", GenerationRequest("a"), realtime=False)
            for prompt in ("b", "c", "d"):
                engine.switch_prompt(session, prompt, at_frame=10**6)
            (refused,) = await _events(session, 1)
            assert refused["type"] == "error" and refused["code"] == "rate_limited"
            assert "2 prompt switches" in refused["message"]
        finally:
            await engine.shutdown()
        with pytest.raises(ValueError, match="positive"):
            EngineConfig(max_pending_switches=0)

    run(main())


def test_understanding_decode_steps_are_batched() -> None:
    async def main():
        pipeline = FakeUnderstanding()
        engine = Engine({"vlm": pipeline})
        engine.start()
        try:
            sessions = [await engine.open_session("vlm", UnderstandingRequest()) for _ in range(3)]
            for session in sessions:
                engine.push_frame(session, 0.0, np.zeros((2, 2, 3), np.uint8))
            captions = []
            for session in sessions:
                event = await asyncio.wait_for(session.events.get(), 10)
                captions.append((event["type"], event["start"], event["text"]))
            assert captions == [("caption", 0, "s0")] * 3
            # the replying streams decode together (the prefills may catch one, two or three)
            assert max(pipeline.batches) >= 2 and sum(pipeline.batches) == 9
            assert sum(pipeline.prefills) == 3
        finally:
            await engine.shutdown()

    run(main())


class HeldUnderstanding(FakeUnderstanding):
    """No stream is ready until ``release`` is set: the frames of every stream are in first."""

    def __init__(self, max_prefill_tokens: int = 1 << 20) -> None:
        super().__init__(max_prefill_tokens)
        self.release = threading.Event()

    def ready(self, state) -> bool:
        return self.release.is_set() and super().ready(state)


async def _open_fed(engine: Engine, pipeline: str, instructions: list[str]) -> list:
    """Sessions of ``pipeline``, each fed one second, its frame taken by the engine thread."""
    sessions = [await engine.open_session(pipeline, UnderstandingRequest(i)) for i in instructions]
    for session in sessions:
        engine.push_frame(session, 0.0, np.zeros((2, 2, 3), np.uint8))
    while (stats := engine.stats()).pending_input_frames or stats.pending_commands:
        await asyncio.sleep(0.01)
    return sessions


async def _caption(session) -> dict:
    event = await asyncio.wait_for(session.events.get(), 10)
    assert event["type"] == "caption", event
    return event


def test_understanding_prefills_are_batched_within_max_prefill_tokens() -> None:
    async def main():
        pipeline = HeldUnderstanding(max_prefill_tokens=250)  # two 100-token rounds a prefill
        engine = Engine({"vlm": pipeline})
        engine.start()
        try:
            sessions = await _open_fed(engine, "vlm", [f"watch {i}" for i in range(5)])
            pipeline.release.set()
            for session in sessions:
                assert (await _caption(session))["start"] == 0
            # every waiting stream in one turn, split by the bound: 2 + 2 + 1, then decode
            assert pipeline.prefills == [2, 2, 1]
            assert pipeline.batches[0] == 5 and sum(pipeline.batches) == 15
        finally:
            await engine.shutdown()

    run(main())


def test_a_failing_stream_in_a_batched_prefill_ends_only_its_session() -> None:
    async def main():
        pipeline = HeldUnderstanding()
        engine = Engine({"vlm": pipeline})
        engine.start()
        try:
            good, bad, other = await _open_fed(engine, "vlm", ["a", "boom", "b"])
            pipeline.release.set()
            await asyncio.wait_for(bad.ended.wait(), 10)
            assert bad.end_reason == "error" and "round fell over" in bad.end_message
            assert [(await _caption(s))["text"] for s in (good, other)] == ["s0", "s0"]
            assert pipeline.prefills == [3] and pipeline.batches[0] == 2
            assert engine.stats().errors == {"internal": 1}
            assert pipeline.closed == 1  # the failed stream gave its cache back
            engine.push_frame(good, 1.0, np.zeros((2, 2, 3), np.uint8))  # and the rest go on
            assert (await _caption(good))["start"] == 1
        finally:
            await engine.shutdown()

    run(main())


def test_a_batched_prefill_that_raises_ends_the_sessions_in_it_only() -> None:
    async def main():
        pipeline, neighbour = HeldUnderstanding(), FakeUnderstanding()
        generation = FakeGeneration()
        engine = Engine({"vlm": pipeline, "vlm2": neighbour, "gen": generation})
        engine.start()
        try:
            video = await engine.open_session("gen", GenerationRequest("a", 3), realtime=False)
            (apart,) = await _open_fed(engine, "vlm2", ["c"])
            batch = await _open_fed(engine, "vlm", ["a", "crash", "b"])
            pipeline.release.set()
            for session in batch:
                await asyncio.wait_for(session.ended.wait(), 10)
                assert session.end_reason == "error" and "batch fell over" in session.end_message
            assert pipeline.prefills == [3] and pipeline.closed == 3
            assert engine.stats().errors == {"internal": 3}
            assert (await _caption(apart))["text"] == "s0"  # another pipeline's stream goes on
            frames = await frames_of(video, 24)  # and so does generation
            assert all(int(f.pixels[0, 0, 0]) == 3 for f in frames)
        finally:
            await engine.shutdown()

    run(main())


def test_an_idle_device_is_timed_again_before_it_refuses_by_compute() -> None:
    """A step timed at warm-up on a busy machine reads slow: before refusing by compute an idle
    engine re-times the pipeline, at most once per recalibrate_seconds, never while it runs
    sessions."""
    slow, fast = StepCost(5.0, 0.75), StepCost(0.3, 0.75)

    async def main():
        now = [100.0]
        pipeline = FakeGeneration(cost=slow, recalibrated_cost=fast)
        config = EngineConfig(recalibrate_seconds=60.0)
        engine = Engine({"gen": pipeline}, config, clock=lambda: now[0])
        engine.start()
        try:
            with pytest.raises(SessionRefused):  # timed just now, at warm-up
                await engine.open_session("gen", GenerationRequest("a"))
            assert pipeline.calibrations == 0
            now[0] += 61.0
            first = await engine.open_session("gen", GenerationRequest("a"))
            assert pipeline.calibrations == 1  # re-timed: 0.3 s a step fits
            pipeline.recalibrated_cost = slow
            pipeline.cost = StepCost(0.6, 0.75)  # 80 % beside the first's 40 %: refused
            now[0] += 120.0
            with pytest.raises(SessionRefused):
                await engine.open_session("gen", GenerationRequest("b"))
            assert pipeline.calibrations == 1  # a session runs: its numbers stand
            engine.close(first)
        finally:
            await engine.shutdown()

    run(main())
