"""StreamingVLM on the tiny model: the feed's sampling, a long stream within the policy's
bound, batched decode and batched prefill equal to streams run alone, prefill forwards split by
max_prefill_tokens, a failing round left out of its batch, questions joining the next round,
sampled replies that replay from their seed whatever their batch, the repetition penalty's
token set, decode graphs equal to the plain decode (greedy and sampled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.models import qwen_vl_tiny
from framestream.models.qwen_vl_tiny import tiny_qwen_vl, toy_config, toy_qwen_vl
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.feed import FrameFeed, TimestampsBackwardsError
from framestream.stream.pipelines.sampling import GREEDY, PUBLISHED
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline, UnderstandingConfig
from framestream.stream.requests import UnderstandingRequest

FRAME = (56, 84)  # 2 x 3 merged vision tokens a second on the tiny model


@pytest.fixture(scope="module")
def model():
    return tiny_qwen_vl()


def pipeline(model, **config) -> StreamingVLMPipeline:
    return StreamingVLMPipeline(model, KVCacheManager(), 64 << 20, UnderstandingConfig(**config))


def feed_second(pipe, state, second: int, rng, size: tuple[int, int] = FRAME) -> None:
    for j in range(2):
        pipe.push_frame(state, second + j / 2, rng.integers(0, 255, size + (3,), dtype=np.uint8))


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


def test_a_long_stream_stays_within_the_policy_bound(model) -> None:
    """The previous text fills from the replies the rounds evict, then everything is flat. Its
    caps here are 128 + 127 tokens (512 + 511 by default: full after ~350 seconds), so that it
    is full after ~100 seconds and the last 200 of 320 seconds check the flat stretch."""
    pipe = pipeline(model, max_new_tokens=6, prev_sink_tokens=128, prev_window_tokens=128)
    seconds = 320
    state = pipe.open(UnderstandingRequest("Say what moves.", "earlier: a red ball"))
    rng = np.random.default_rng(0)
    bound = pipe._policy.worst_case_blocks(pipe.pool.block_size)
    sizes, captions = [], []
    for second in range(seconds):
        feed_second(pipe, state, second, rng)
        if second:  # second k is complete once a frame of k + 1 has arrived
            pipe.prefill(state)
            captions += finish_round(pipe, [state])
            sizes.append(len(state.cache.cache))
            assert pipe.pool.stats().used_blocks <= bound
            assert len(state.cache.rounds) <= 16
    assert [c.start for c in captions] == [float(s) for s in range(seconds - 1)]
    assert all(c.end == c.start + 1 for c in captions)
    # the previous text fills (128 + 127 tokens at ~3 a second), then everything is flat
    assert state.cache.cache.length("prev_head") == 128
    assert state.cache.cache.length("prev_tail") == 127
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


# three frame sizes: 2x3, 2x2 and 3x4 merged vision tokens a second, so rounds differ in length
SIZES = [FRAME, (56, 56), (84, 112)]


def cached_kv(pipe, state) -> tuple[torch.Tensor, np.ndarray]:
    """The stream's K/V ``[layers, 2, tokens, kv_heads, head_dim]`` and positions, in order."""
    cache = state.cache.cache
    names = cache.segment_names
    slots = np.concatenate([cache.slots(n) for n in names])
    positions = np.concatenate([cache.positions(n) for n in names])
    return pipe.pool.kv[:, :, torch.from_numpy(slots.astype(np.int64))].clone(), positions


def run_streams(
    model, batched: bool, seconds: int = 5, poison: bool = False, **config
) -> list[list[tuple]]:
    """Per stream, per second: (K/V, positions, caption) once the second's reply is done;
    ``poison`` fills the pool with NaN but for its null block first."""
    pipe = pipeline(model, max_new_tokens=8, **config)
    if poison:
        pipe.pool.kv[:, :, pipe.pool.block_size :] = float("nan")
    states = [pipe.open(UnderstandingRequest(f"Watch stream {i}.", "")) for i in range(3)]
    rngs = [np.random.default_rng(i) for i in range(3)]
    out: list[list[tuple]] = [[] for _ in states]
    for second in range(seconds):
        for state, rng, size in zip(states, rngs, SIZES, strict=True):
            feed_second(pipe, state, second, rng, size)
        if second == 2:
            pipe.ask(states[1], "what colour is the ball?")  # one round longer than the others
        if not second:
            continue
        if batched:
            assert pipe.prefill(states) == [None] * 3
            captions = _ordered(pipe, states)
        else:
            captions = []
            for state in states:
                pipe.prefill(state)
                captions += _ordered(pipe, [state])
        for i, state in enumerate(states):
            # the reply decoded after the prefill is in the cache too: its K/V checks it
            out[i].append((*cached_kv(pipe, state), captions[i].text))
    return out


def assert_same_streams(first: list, second: list, tolerance: float) -> None:
    """Two :func:`run_streams` results: the same words and positions, K/V within ``tolerance``."""
    for stream_a, stream_b in zip(first, second, strict=True):
        for (kv_a, pos_a, text_a), (kv_b, pos_b, text_b) in zip(stream_a, stream_b, strict=True):
            assert text_a == text_b
            np.testing.assert_array_equal(pos_a, pos_b)
            torch.testing.assert_close(kv_a, kv_b, rtol=tolerance, atol=tolerance)


def test_batched_prefill_equals_streams_alone(model) -> None:
    alone, together = run_streams(model, batched=False), run_streams(model, batched=True)
    assert_same_streams(alone, together, 1e-4)


def test_no_round_reads_cache_memory_it_did_not_write(model) -> None:
    """The pool is left uninitialised but for its null block: over NaN everywhere else, batched
    rounds cache the same K/V and say the same words."""
    clean, poisoned = (run_streams(model, batched=True, poison=p) for p in (False, True))
    assert_same_streams(clean, poisoned, 0)


def test_the_next_token_of_a_batched_prefill_is_its_own(model) -> None:
    tokens = {}
    for batched in (False, True):
        pipe = pipeline(model)
        states = [pipe.open(UnderstandingRequest(f"Watch stream {i}.", "")) for i in range(3)]
        for i, (state, size) in enumerate(zip(states, SIZES, strict=True)):
            for second in range(2):
                feed_second(pipe, state, second, np.random.default_rng(i), size)
        if batched:
            pipe.prefill(states)
        else:
            for state in states:
                pipe.prefill(state)
        tokens[batched] = [(s.next_token, s.second, s.rounds, s.vision_tokens) for s in states]
    assert tokens[True] == tokens[False]
    assert [t[3] for t in tokens[True]] == [6, 4, 12]


def test_one_vision_call_per_frame_size(model, monkeypatch) -> None:
    """Streams of one frame size share a vision-tower call; another size gets its own (the
    tower pads a call's videos to its largest frame)."""
    videos = []
    original = model.embed

    def embed(ids, pixels=None, grids=None):
        videos.append(0 if grids is None else len(grids))
        return original(ids, pixels, grids)

    pipe = pipeline(model)
    sizes = [FRAME, (56, 56), FRAME, FRAME]
    states = [pipe.open(UnderstandingRequest(f"Watch stream {i}.", "")) for i in range(4)]
    for i, (state, size) in enumerate(zip(states, sizes, strict=True)):
        for second in range(2):
            feed_second(pipe, state, second, np.random.default_rng(i), size)
    monkeypatch.setattr(model, "embed", embed)
    assert pipe.prefill(states) == [None] * 4
    assert sorted(videos) == [1, 3]


def test_max_prefill_tokens_splits_a_burst_into_forwards(model, monkeypatch) -> None:
    forwards = []
    original = StreamingVLMPipeline._prefill_forward

    def counted(self, states, rounds):
        forwards.append(sum(len(r.ids) for r in rounds))
        return original(self, states, rounds)

    monkeypatch.setattr(StreamingVLMPipeline, "_prefill_forward", counted)
    unbounded = run_streams(model, batched=True, seconds=3)
    assert len(forwards) == 2  # one forward a second
    forwards.clear()
    bounded = run_streams(model, batched=True, seconds=3, max_prefill_tokens=60)
    assert len(forwards) > 2 and max(forwards) <= 60
    for stream_a, stream_b in zip(unbounded, bounded, strict=True):
        for (kv_a, _, text_a), (kv_b, _, text_b) in zip(stream_a, stream_b, strict=True):
            assert text_a == text_b
            torch.testing.assert_close(kv_a, kv_b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        UnderstandingConfig(max_prefill_tokens=0)


def test_prefill_tokens_bounds_the_round(model, monkeypatch) -> None:
    lengths = []
    original = StreamingVLMPipeline._prefill_forward

    def measured(self, states, rounds):
        lengths.append(len(rounds[0].ids))
        return original(self, states, rounds)

    monkeypatch.setattr(StreamingVLMPipeline, "_prefill_forward", measured)
    pipe = pipeline(model)
    state = pipe.open(UnderstandingRequest("Say what moves.", ""))
    bounds = []
    for second in range(4):
        feed_second(pipe, state, second, np.random.default_rng(0))
        if second:
            bounds.append(pipe.prefill_tokens(state))
            pipe.prefill(state)
            finish_round(pipe, [state])
    # before the first round: the policy's worst case of vision; then the measured 6 tokens
    assert bounds[0] == 160 + pipe._policy.max_vision_tokens
    # then the last reply's end (1 or 2 tokens) + the text budget + the measured 6 tokens
    assert state.vision_tokens == 6 and all(b - 160 - 6 in (1, 2) for b in bounds[1:])
    assert all(n <= bound for n, bound in zip(lengths, bounds, strict=True))


def test_a_failing_round_is_left_out_and_the_others_go_on(model, monkeypatch) -> None:
    """A stream whose preparation raises gets its exception back; the batch runs without it."""
    original = model.video_inputs

    def video_inputs(frames, **kwargs):
        if frames[0].shape[:2] == SIZES[1]:
            raise RuntimeError("the vision preprocessing fell over")
        return original(frames, **kwargs)

    pipe = pipeline(model)
    states = [pipe.open(UnderstandingRequest(f"Watch stream {i}.", "")) for i in range(3)]
    for second in range(2):
        for i, (state, size) in enumerate(zip(states, SIZES, strict=True)):
            feed_second(pipe, state, second, np.random.default_rng(i), size)
    monkeypatch.setattr(model, "video_inputs", video_inputs)
    errors = pipe.prefill(states)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], RuntimeError) and "fell over" in str(errors[1])
    assert [s.decoding for s in states] == [True, False, True]
    assert [c.start for c in _ordered(pipe, [states[0], states[2]])] == [0.0, 0.0]
    pipe.close(states[1])
    feed_second(pipe, states[0], 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="twice"):  # misuse raises before anything runs
        pipe.prefill([states[0], states[0]])
    with pytest.raises(ValueError, match="ready"):  # stream 2's next second is incomplete
        pipe.prefill([states[0], states[2]])
    assert states[0].feed.ready() and not states[0].decoding
    # one stream (not a list): its exception is raised, as before batching
    lone = pipe.open(UnderstandingRequest())
    for second in range(2):
        feed_second(pipe, lone, second, np.random.default_rng(5), SIZES[1])
    with pytest.raises(RuntimeError, match="fell over"):
        pipe.prefill(lone)
    for state in (states[0], states[2], lone):
        pipe.close(state)
    assert pipe.pool.stats().used_blocks == 0


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
        cache, rid = state.cache.cache, state.cache.rounds[-1]
        lengths.append(
            sum(cache.length(n) for n in cache.segment_names if n.startswith(f"r{rid}."))
        )
        assert not state.questions
        pipe.close(state)
    asked = len(model.tokenizer.encode(" what colour is the ball?", add_special_tokens=False))
    assert lengths[1] - lengths[0] in (asked, asked - 1)  # the question's tokens, in the round


def run_sampled(model, seeds: list[int], batched: bool, seconds: int = 4, **request) -> list:
    """Per stream, its captions over ``seconds``, with the published sampler."""
    pipe = pipeline(model, max_new_tokens=6, sampling=PUBLISHED)
    states = [
        pipe.open(UnderstandingRequest(f"Watch stream {i}.", "", seed=seed, **request))
        for i, seed in enumerate(seeds)
    ]
    texts: list[list[str]] = [[] for _ in states]
    for second in range(seconds):
        for i, state in enumerate(states):
            feed_second(pipe, state, second, np.random.default_rng(i))
        if not second:
            continue
        for group in [states] if batched else [[s] for s in states]:
            pipe.prefill(group)
            for state, caption in zip(group, _ordered(pipe, group), strict=True):
                texts[states.index(state)].append(caption.text)
    for state in states:
        pipe.close(state)
    return texts


def test_sampled_captions_replay_from_the_seed_whatever_the_batch(model) -> None:
    together = run_sampled(model, [1, 2, 3], batched=True)
    assert together == run_sampled(model, [1, 2, 3], batched=False)
    other = run_sampled(model, [4, 2, 3], batched=True)  # stream 0 draws other noise
    assert other[1:] == together[1:] and other[0] != together[0]
    greedy = run_sampled(model, [1, 2, 3], batched=True, temperature=0.0, repetition_penalty=1)
    assert greedy != together


def test_a_greedy_request_equals_the_greedy_pipeline(model) -> None:
    """temperature 0 and penalty 1 on a published-default pipeline: the plain argmax, as the
    greedy default gives."""
    asked = run_sampled(model, [5, 6], batched=True, temperature=0.0, repetition_penalty=1)
    pipe = pipeline(model, max_new_tokens=6)
    assert pipe.config.sampling == GREEDY
    states = [pipe.open(UnderstandingRequest(f"Watch stream {i}.", "")) for i in range(2)]
    texts: list[list[str]] = [[], []]
    for second in range(4):
        for i, state in enumerate(states):
            feed_second(pipe, state, second, np.random.default_rng(i))
        if second:
            pipe.prefill(states)
            for i, caption in enumerate(_ordered(pipe, states)):
                texts[i].append(caption.text)
    assert asked == texts


def test_the_penalty_covers_what_the_cache_holds(model) -> None:
    """After each prefill a stream's penalty row is the set of ids its cache holds (evicted
    ones gone: the published ``input_ids``); each token fed joins it."""
    pipe = pipeline(model, max_new_tokens=5, text_rounds=2, vision_seconds=2, sampling=PUBLISHED)
    state = pipe.open(UnderstandingRequest("Say what moves.", "earlier: a red ball"))
    row = pipe._presence.table[state.presence_row]
    rng = np.random.default_rng(0)
    for second in range(8):
        feed_second(pipe, state, second, rng)
        if not second:
            continue
        pipe.prefill(state)
        held = set(state.cache.retained()[0].tolist())
        assert set(row.nonzero().flatten().tolist()) == held
        while state.decoding:
            fed = state.next_token
            pipe.decode([state])
            if state.decoding:  # it was fed (a reply's end is not)
                assert bool(row[fed])
    pipe.close(state)


def test_sampler_fields_out_of_range_refuse_the_stream(model) -> None:
    pipe = pipeline(model)
    with pytest.raises(ValueError, match="top_k"):
        pipe.open(UnderstandingRequest(top_k=0))
    assert pipe.pool.stats().used_blocks == 0 and pipe.pool.stats().reserved_blocks == 0


@pytest.fixture(scope="module")
def toy_model():
    return toy_qwen_vl()  # heads of 32: the Triton decode kernel's smallest


@pytest.fixture(scope="module")
def two_layer_toy_model():
    """toy_qwen_vl() with 2 text layers instead of 4 (heads of 32 still): every kernel of a
    step runs in Triton's interpreter off CUDA, a layer at a time."""

    def two_layers(tokenizer):
        config = toy_config(tokenizer)
        text = config.text_config
        text.num_hidden_layers, text.layer_types = 2, text.layer_types[:2]
        return config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qwen_vl_tiny, "toy_config", two_layers)
        model = toy_qwen_vl()
    assert len(model.decoder.layers) == 2
    return model


@pytest.mark.parametrize("sampling", [GREEDY, PUBLISHED], ids=["greedy", "sampled"])
def test_decode_graphs_static_step_equals_the_plain_decode(two_layer_toy_model, sampling) -> None:
    """The graphs' static, padded step (run eagerly off CUDA) gives the plain decode's replies
    and cache: three streams, so the bucket of four carries a padding sequence. Two steps (a
    reply of three tokens, the first from the prefill): the second refills the bucket the first
    left, which is all a longer reply repeats (each step costs seconds in Triton's
    interpreter)."""
    _compare_decode_graphs(two_layer_toy_model, max_new_tokens=3, sampling=sampling)


@pytest.mark.gpu
def test_captured_decode_graphs_equal_the_plain_decode() -> None:
    """On CUDA the steps are captured and replayed (the bucket of four with a padding
    sequence, reused for every token)."""
    _compare_decode_graphs(toy_qwen_vl(device="cuda"), max_new_tokens=8)


@pytest.mark.gpu
def test_captured_decode_graphs_sample_as_the_plain_decode() -> None:
    """The published sampler inside the captured step (penalty rows, top-k, seeded noise read
    from static buffers) draws what the eager decode draws."""
    _compare_decode_graphs(toy_qwen_vl(device="cuda"), max_new_tokens=8, sampling=PUBLISHED)


@pytest.mark.gpu
def test_decode_graphs_captured_at_warm_up_equal_the_plain_decode() -> None:
    """Every bucket captured on padding alone before any stream exists, then replayed."""
    _compare_decode_graphs(toy_qwen_vl(device="cuda"), max_new_tokens=8, warm_up=True)


def _compare_decode_graphs(
    model, max_new_tokens: int, warm_up: bool = False, sampling=GREEDY
) -> None:
    def run(**config) -> list[tuple]:
        pipe = pipeline(
            model,
            max_new_tokens=max_new_tokens,
            attention_backend="auto",
            sampling=sampling,
            **config,
        )
        if warm_up:
            pipe.warm_up()
        states = [
            pipe.open(UnderstandingRequest(f"Watch stream {i}.", "", seed=i)) for i in range(3)
        ]
        for i, state in enumerate(states):
            feed_second(pipe, state, 0, np.random.default_rng(i), SIZES[i])
            feed_second(pipe, state, 1, np.random.default_rng(i), SIZES[i])
        assert pipe.prefill(states) == [None] * 3
        captions = _ordered(pipe, states)
        if config.get("decode_graphs", True):  # the three streams stepped in the bucket of four
            assert 4 in pipe._graphs._buckets
        return [(*cached_kv(pipe, s), c.text) for s, c in zip(states, captions, strict=True)]

    for (kv_a, pos_a, text_a), (kv_b, pos_b, text_b) in zip(
        run(), run(decode_graphs=False), strict=True
    ):
        assert text_a == text_b
        np.testing.assert_array_equal(pos_a, pos_b)
        torch.testing.assert_close(kv_a, kv_b, rtol=1e-5, atol=1e-5)


def test_decode_graphs_only_with_a_graph_safe_backend(toy_model) -> None:
    assert pipeline(toy_model, attention_backend="triton")._graphs is not None
    assert pipeline(toy_model, attention_backend="torch")._graphs is None
    assert pipeline(toy_model, attention_backend="triton", decode_graphs=False)._graphs is None
    with pytest.raises(ValueError, match="max_graph_batch"):
        UnderstandingConfig(max_graph_batch=0)


def test_warm_up_runs_a_round_so_the_first_second_meets_no_new_vision_grid(model) -> None:
    """warm_up() runs the prefill path (prompt, frames, vision tower, round, reply) of a
    throwaway stream at each warm frame size: a real stream's first second of that grid is then
    no first use (cold_vision_grids, which a new grid does move), nothing of the throwaway
    stream is left in the pool, and the real stream's captions are those of a cold pipeline."""
    height, width = FRAME
    request = UnderstandingRequest("Say what moves.", "", seed=5)

    def first_captions(pipe) -> list[str]:
        state = pipe.open(request)
        rng = np.random.default_rng(1)
        texts = []
        for second in range(4):
            feed_second(pipe, state, second, rng)
            if second:
                pipe.prefill(state)
                texts += [c.text for c in finish_round(pipe, [state])]
        pipe.close(state)
        return texts

    cold = pipeline(model, sampling=PUBLISHED, warm_frames=((width, height),))
    warm = pipeline(model, sampling=PUBLISHED, warm_frames=((width, height),))
    warm.warm_up()
    assert warm.cold_vision_grids == 1  # the warm-up's own
    assert warm.pool.stats().used_blocks == warm.pool.stats().reserved_blocks == 0
    assert first_captions(warm) == first_captions(cold)
    assert warm.cold_vision_grids == 1 and cold.cold_vision_grids == 1
    state = warm.open(request)
    feed_second(warm, state, 0, np.random.default_rng(2), (2 * height, width))
    feed_second(warm, state, 1, np.random.default_rng(2), (2 * height, width))
    warm.prefill(state)
    assert warm.cold_vision_grids == 2  # another grid: the counter sees it
    finish_round(warm, [state])
    warm.close(state)
