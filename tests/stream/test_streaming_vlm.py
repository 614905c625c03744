"""StreamingVLM on the tiny model: the feed's sampling, a 600-second stream within the policy's
bound, batched decode equal to streams decoded alone, questions joining the next round."""

from __future__ import annotations

import numpy as np
import pytest

from models.qwen_vl import tiny_qwen_vl
from stream.kvcache import KVCacheManager
from stream.pipelines.feed import FrameFeed, TimestampsBackwardsError
from stream.pipelines.streaming_vlm import (
    StreamingVLMPipeline,
    UnderstandingConfig,
    UnderstandingRequest,
)

FRAME = (56, 84)  # 2 x 3 merged vision tokens a second on the tiny model


@pytest.fixture(scope="module")
def model():
    return tiny_qwen_vl()


def pipeline(model, **config) -> StreamingVLMPipeline:
    return StreamingVLMPipeline(model, KVCacheManager(), 64 << 20, UnderstandingConfig(**config))


def feed_second(pipe, state, second: int, rng) -> None:
    for j in range(2):
        pipe.push_frame(state, second + j / 2, rng.integers(0, 255, FRAME + (3,), dtype=np.uint8))


def finish_round(pipe, states) -> list:
    captions = []
    while decoding := [s for s in states if s.decoding]:
        captions += [c for c in pipe.decode(decoding) if c is not None]
    return captions


def frame(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def test_feed_samples_the_last_frame_at_or_before_each_slot() -> None:
    feed = FrameFeed(fps=2)
    for t, v in [(0.0, 0), (0.2, 1), (0.5, 2), (0.7, 3), (0.9, 4)]:
        feed.push(t, frame(v))
    assert not feed.ready()
    feed.push(1.1, frame(5))
    chunk = feed.take()
    assert chunk.second == 0 and [f[0, 0, 0] for f in chunk.frames] == [0, 2]
    assert feed.take() is None
    with pytest.raises(TimestampsBackwardsError):
        feed.push(1.0, frame(6))


def test_feed_keeps_the_newest_seconds_and_bounded_memory() -> None:
    feed = FrameFeed(fps=2, max_buffered_seconds=3)
    for i in range(30 * 20):  # 20 s at 30 fps, nothing taken
        feed.push(i / 30, frame(i % 256))
    # one frame per sample interval: the kept seconds, the one arriving, and the slot-0 frame
    assert len(feed._frames) <= (3 + 1) * 2 + 1
    assert feed.skipped_seconds == 16 and feed.next_second == 16
    assert [feed.take().second for _ in range(3)] == [16, 17, 18]
    assert feed.lag_seconds < 1


def test_600_seconds_stay_within_the_policy_bound(model) -> None:
    pipe = pipeline(model, max_new_tokens=6)
    state = pipe.open(UnderstandingRequest("Say what moves.", "earlier: a red ball"))
    rng = np.random.default_rng(0)
    bound = pipe._policy.worst_case_blocks(pipe.pool.block_size)
    sizes, captions = [], []
    for second in range(600):
        feed_second(pipe, state, second, rng)
        if second:  # second k is complete once a frame of k + 1 has arrived
            pipe.prefill(state)
            captions += finish_round(pipe, [state])
            sizes.append(len(state.cache.cache))
            assert pipe.pool.stats().used_blocks <= bound
            assert len(state.cache.rounds) <= 16
    assert [c.start for c in captions] == [float(s) for s in range(599)]
    assert all(c.end == c.start + 1 for c in captions)
    # the previous text fills (512 + 512 tokens at ~5 a second), then everything is flat
    assert state.cache.cache.length("prev_head") == 512
    assert state.cache.cache.length("prev_tail") == 512
    assert max(sizes[-200:]) - min(sizes[-200:]) <= 6 + 2  # only the reply lengths vary
    pipe.close(state)
    assert pipe.pool.stats().used_blocks == 0


def test_batched_decode_equals_streams_alone(model) -> None:
    requests = [UnderstandingRequest(f"Watch stream {i}.", "") for i in range(4)]

    def run(batched: bool) -> list[list[str]]:
        pipe = pipeline(model)
        states = [pipe.open(r) for r in requests]
        rngs = [np.random.default_rng(i) for i in range(4)]
        texts: list[list[str]] = [[] for _ in states]
        for second in range(6):
            for state, rng in zip(states, rngs, strict=True):
                feed_second(pipe, state, second, rng)
            if not second:
                continue
            groups = [states] if batched else [[s] for s in states]
            for group in groups:
                for state in group:
                    pipe.prefill(state)
                for state, caption in zip(group, _ordered(pipe, group), strict=True):
                    texts[states.index(state)].append(caption.text)
        return texts

    assert run(batched=True) == run(batched=False)


def _ordered(pipe, states):
    """Finish a round of ``states`` together; their captions in the order of ``states``."""
    done = {}
    while decoding := [s for s in states if s.decoding]:
        for state, caption in zip(decoding, pipe.decode(decoding), strict=True):
            if caption is not None:
                done[id(state)] = caption
    return [done[id(s)] for s in states]


def test_a_question_joins_the_next_round(model) -> None:
    pipe = pipeline(model, max_new_tokens=4)
    rng = np.random.default_rng(1)
    lengths = []
    for question in (None, "what colour is the ball?"):
        state = pipe.open(UnderstandingRequest("Say what moves.", ""))
        for second in range(3):
            feed_second(pipe, state, second, rng)
        pipe.prefill(state)
        finish_round(pipe, [state])
        if question:
            pipe.ask(state, question)
        pipe.prefill(state)
        lengths.append(state.cache.cache.length(f"r{state.cache.rounds[-1]}.reply"))
        assert not state.questions
        pipe.close(state)
    asked = len(model.tokenizer.encode(" what colour is the ball?", add_special_tokens=False))
    assert lengths[1] - lengths[0] in (asked, asked - 1)  # the question's tokens, in the round
