"""LongLive on the tiny preset: frame counts, flat memory, determinism, prompt switches,
unbounded positions, and ``stream generate`` writing a real MP4."""

from __future__ import annotations

from dataclasses import replace

import av
import numpy as np
import pytest
import torch

from framestream.cli.main import main
from framestream.evals.random_checkpoint import write_model_folder
from framestream.kernels.rope import apply_rope
from framestream.models.positions import frame_positions
from framestream.models.registry import load_wan_models
from framestream.models.schedule import FlowSchedule, opening_schedule
from framestream.stream.generate import parse_switch
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.requests import GenerationRequest

SIZE = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def tiny():
    return load_wan_models("tiny")


def pipeline(tiny, **config) -> LongLivePipeline:
    # one 32 x 32 latent frame = 2 x 2 tokens = one block
    return LongLivePipeline(tiny, KVCacheManager(), 16 << 20, LongLiveConfig(**config), 4)


def kv_of(pipe: LongLivePipeline, slots: np.ndarray) -> torch.Tensor:
    return pipe.pool.kv[:, :, torch.from_numpy(slots).long()].clone()


def test_a_stream_past_position_1024_keeps_flat_memory_and_exact_frame_count(tiny) -> None:
    """As many chunks as it takes to pass Wan's 1024 temporal positions (342 chunks of 3
    latent frames: 1026 frames), so the window is re-based: memory is flat from the window on,
    every frame is counted, and no position reaches 1024."""
    config = LongLiveConfig()
    chunks = config.max_position // config.chunk_frames + 1  # the first that passes 1024
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=0, **SIZE))
    frames, indices, used = 0, [], set()
    for chunk in range(chunks):
        out = pipe.step(state)
        assert out.frames.shape[1:] == (32, 32, 3) and out.frames.dtype == np.uint8
        assert len(out) == (9 if chunk == 0 else 12)
        indices.append(out.first_index)
        frames += len(out)
        if chunk >= 4:
            used.add(pipe.pool.stats().used_blocks)
            assert state.history.shape[2] == 12
    assert frames == 9 + 12 * (chunks - 1) == state.frames_emitted
    assert indices == [0, *range(9, frames, 12)]
    assert used == {12}  # sink 3 + window 9 frames, one block each, from the window on
    window = state.cache.window_frames()
    np.testing.assert_array_equal(window, np.arange(3 * chunks - 9, 3 * chunks))
    assert window[-1] >= config.max_position  # the stream did pass 1024 frames
    positions = state.cache.cache.positions("window")[:, 0]
    assert positions.max() == 1023  # re-based, never past 1024
    shift = 3 * chunks - config.max_position  # 2
    np.testing.assert_array_equal(np.unique(positions), window - shift)
    np.testing.assert_array_equal(np.unique(state.cache.cache.positions("sink")[:, 0]), [0, 1, 2])
    pipe.close(state)
    assert pipe.pool.stats().used_blocks == 0


def test_same_seed_same_frames_and_other_seed_differs(tiny) -> None:
    pipe = pipeline(tiny)
    runs = []
    for seed in (3, 3, 4):
        state = pipe.open(GenerationRequest("a red ball", seed=seed, **SIZE))
        runs.append(np.concatenate([pipe.step(state).frames for _ in range(3)]))
        pipe.close(state)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("global_sink", [True, False])
def test_prompt_switch_rewrites_exactly_the_recent_window(tiny, global_sink: bool) -> None:
    """Beside a run without the switch: the switch run's cross-attention input is the new
    prompt's, its retained window frames carry new K/V, and its sink is kept (global_sink) or
    re-anchored on recent frames (otherwise)."""
    pipes = [pipeline(tiny, global_sink=global_sink) for _ in range(2)]
    states = [p.open(GenerationRequest("a red ball", seed=5, **SIZE)) for p in pipes]
    for _ in range(5):
        for p, s in zip(pipes, states, strict=True):
            p.step(s)
    pipes[1].switch_prompt(states[1], "a blue cube")
    for p, s in zip(pipes, states, strict=True):
        p.step(s)
    control, switched = states
    new_text = tiny.dit.encode_text(tiny.encode_prompt("a blue cube"))
    torch.testing.assert_close(switched.text.k, new_text.k)
    assert not torch.allclose(control.text.k, switched.text.k)

    cache_c, cache_s = control.cache.cache, switched.cache.cache
    tpf = 4  # 2 x 2 tokens per latent frame at 32 x 32
    retained = slice(0, 6 * tpf)  # the window's 6 frames from before the switch
    old_c = kv_of(pipes[0], cache_c.slots("window")[retained])
    old_s = kv_of(pipes[1], cache_s.slots("window")[retained])
    assert (old_c - old_s).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-6  # every token rewritten
    sink_c, sink_s = kv_of(pipes[0], cache_c.slots("sink")), kv_of(pipes[1], cache_s.slots("sink"))
    if global_sink:
        torch.testing.assert_close(sink_c, sink_s, rtol=0, atol=0)
        np.testing.assert_array_equal(switched.cache.sink_frames(), [0, 1, 2])
    else:
        assert not torch.allclose(sink_c, sink_s)
        np.testing.assert_array_equal(switched.cache.sink_frames(), [3, 4, 5])


class UntrimmedRecache:
    """The recache as a plain dense t=0 forward over every held frame: each frame is a query,
    the keys are ``context`` (the kept sink's cached K/V, or none) then the last ``kept`` frames'
    fresh K/V; records those K/V, which is what the cache keeps of the forward."""

    def __init__(self, rope, q_pos: np.ndarray, kept: int, context_kv, context_pos) -> None:
        self.rope, self.kept, self.context_kv = rope, kept, context_kv
        self.q_pos = torch.from_numpy(q_pos)
        self.kv_pos = torch.cat([torch.from_numpy(context_pos), self.q_pos[-kept:]])
        self.written: list[tuple[torch.Tensor, torch.Tensor]] = []

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = k[-self.kept :], v[-self.kept :]
        self.written.append((k, v))
        keys = torch.cat([self.context_kv[layer, 0], k])
        values = torch.cat([self.context_kv[layer, 1], v])
        qr = apply_rope(q, self.q_pos, self.rope).transpose(0, 1)
        kr = apply_rope(keys, self.kv_pos, self.rope).transpose(0, 1)
        out = torch.nn.functional.scaled_dot_product_attention(qr, kr, values.transpose(0, 1))
        return out.transpose(0, 1).to(q.dtype)


@pytest.mark.parametrize("global_sink", [True, False])
def test_recache_writes_what_a_recache_over_all_held_frames_writes(tiny, global_sink) -> None:
    """The recache computes only the frames whose K/V the cache keeps (the window; with a
    refreshed sink, sink and window); a dense forward over all 12 held frames, the 3 evicted
    ones included, leaves the same K/V in the cache."""
    pipe = pipeline(tiny, global_sink=global_sink)
    state = pipe.open(GenerationRequest("a red ball", seed=7, **SIZE))
    for _ in range(5):
        pipe.step(state)
    cache, grid = state.cache.cache, state.cache.config.grid
    held = state.history.clone()  # clean frames 3..14; sink 0..2, window 6..14
    assert held.shape[2] == 12 and state.cache.frames_seen == 15
    sink_kv, sink_pos = kv_of(pipe, cache.slots("sink")), cache.positions("sink")
    pipe.switch_prompt(state, "a blue cube")
    after_recache: list[torch.Tensor] = []  # pool K/V of what the recache wrote
    forwards = 0

    def snapshot(*_) -> None:
        nonlocal forwards
        forwards += 1
        if forwards == 2:  # the step's first forward is the last chunk's refresh, then the recache
            names = ["window"] if global_sink else ["sink", "window"]
            after_recache.append(kv_of(pipe, np.concatenate([cache.slots(n) for n in names])))

    hook = tiny.dit.register_forward_hook(snapshot)
    try:
        pipe.step(state)
    finally:
        hook.remove()
    computed = 9 if global_sink else 12
    assert after_recache[0].shape[2] == computed * 4  # 2 x 2 tokens per frame

    if global_sink:
        reference = UntrimmedRecache(
            tiny.rope, frame_positions(np.arange(3, 15), grid), 9 * 4, sink_kv, sink_pos
        )
    else:
        empty = sink_kv[:, :, :0]
        reference = UntrimmedRecache(
            tiny.rope, frame_positions(np.arange(3, 15), grid), 12 * 4, empty, sink_pos[:0]
        )
    with torch.inference_mode():
        text = tiny.dit.encode_text(tiny.encode_prompt("a blue cube"))
        tiny.dit(held, torch.zeros(1, 12), text, reference)
    want = torch.stack([torch.stack([k, v]) for k, v in reference.written])
    torch.testing.assert_close(after_recache[0], want, rtol=1e-5, atol=1e-5)


def test_transition_blends_text_over_chunks(tiny) -> None:
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=1, **SIZE))
    pipe.step(state)
    start = state.embedding.clone()
    target = tiny.encode_prompt("a blue cube")
    pipe.switch_prompt(state, "a blue cube", transition_chunks=4)
    for i in range(4):
        pipe.step(state)
        torch.testing.assert_close(state.embedding, torch.lerp(start, target, (i + 1) / 4))
    assert not state.transition and not state.recache_pending


def test_parse_switch() -> None:
    switch = parse_switch("t=4s:a blue cube: close up")
    assert (switch.at_seconds, switch.prompt) == (4.0, "a blue cube: close up")
    assert parse_switch("t=2.5:x").at_seconds == 2.5
    for bad in ("4s:x", "t=4s:", "t=x:y"):
        with pytest.raises(ValueError, match="--switch"):
            parse_switch(bad)


def read_mp4(path) -> tuple[int, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), stream.width, stream.height


def test_fp8_kv_cache_halves_the_session_bytes() -> None:
    """kv_cache_dtype="fp8_e4m3" on bf16 models: the same blocks at half the bytes, through
    chunks, the t=0 refresh and a recache; the frames stay near the bf16 cache's."""
    tiny16 = load_wan_models("tiny", dtype=torch.bfloat16)
    runs = {}
    for kv_cache_dtype in ("auto", "fp8_e4m3"):
        pipe = pipeline(tiny16, kv_cache_dtype=kv_cache_dtype)
        state = pipe.open(GenerationRequest("a red ball", seed=0, **SIZE))
        frames = [pipe.step(state).frames for _ in range(5)]
        pipe.switch_prompt(state, "a blue cube")
        frames.append(pipe.step(state).frames)
        held = state.cache.cache.num_blocks() * pipe.pool.bytes_per_block
        cache = state.cache.cache
        slots = np.concatenate([cache.slots(name) for name in cache.segment_names])
        written = kv_of(pipe, slots)  # the rest of the pool is uninitialised memory
        runs[kv_cache_dtype] = (np.concatenate(frames).astype(np.float32), held, pipe.pool, written)
        pipe.close(state)
    (bf16, bf16_bytes, bf16_pool, _), (fp8, fp8_bytes, fp8_pool, fp8_rows) = (
        runs["auto"],
        runs["fp8_e4m3"],
    )
    assert bf16_pool.kv.dtype == torch.bfloat16 and fp8_pool.kv.dtype == torch.float8_e4m3fn
    assert fp8_pool.bytes_per_block * 2 == bf16_pool.bytes_per_block
    assert fp8_bytes * 2 == bf16_bytes > 0
    assert len(fp8_rows[0, 0]) and not fp8_rows.float().isnan().any()
    assert bf16.shape == fp8.shape and np.abs(bf16 - fp8).mean() < 4  # of 255


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "float8_e4m3fn", "bf16"])
def test_unknown_kv_cache_dtype_is_refused(tmp_path, capsys, kv_cache_dtype: str) -> None:
    with pytest.raises(ValueError, match=f"kv_cache_dtype must be one of .*'{kv_cache_dtype}'"):
        LongLiveConfig(kv_cache_dtype=kv_cache_dtype)
    argv = ["generate", "--prompt", "x", "--out", str(tmp_path / "v.mp4")]
    assert main([*argv, "--kv-cache-dtype", kv_cache_dtype]) == 2
    assert (
        "stream generate: kv_cache_dtype must be one of auto, fp8_e4m3" in capsys.readouterr().err
    )


def test_stream_generate_writes_16_frames_per_second(tmp_path) -> None:
    out = tmp_path / "video.mp4"
    argv = [
        "generate",
        "--prompt",
        "a red ball",
        "--switch",
        "t=1s:a blue cube",
        "--switch",
        "t=2s:a green star",
        "--seconds",
        "3",
        "--out",
        str(out),
        "--height",
        "32",
        "--width",
        "48",
    ]
    assert main(argv) == 0
    assert read_mp4(out) == (48, 16.0, 48, 32)


def test_stream_generate_from_a_model_folder(tmp_path) -> None:
    write_model_folder("tiny", tmp_path / "model", text_layers=2, dtype=torch.float32)
    out = tmp_path / "video.mp4"
    argv = [
        "generate",
        "--prompt",
        "a red ball",
        "--seconds",
        "1",
        "--out",
        str(out),
        "--preset",
        "tiny",  # the folder holds a model of the tiny geometry
        "--model-dir",
        str(tmp_path / "model"),
        "--height",
        "32",
        "--width",
        "32",
    ]
    assert main(argv) == 0
    assert read_mp4(out)[:2] == (16, 16.0)


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys) -> None:
    argv = [
        "generate",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "v.mp4"),
        "--model-dir",
        str(tmp_path / "nowhere"),
    ]
    assert main(argv) == 2  # one line, before any model loads (cli/checks.py)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--model-dir" in lines[0] and "nowhere" in lines[0]


def timesteps_of_each_forward(models) -> tuple[list[float], object]:
    """The first timestep of every DiT forward, recorded by a hook (remove it when done)."""
    seen: list[float] = []
    hook = models.dit.register_forward_pre_hook(lambda _, args: seen.append(float(args[1][0, 0])))
    return seen, hook


def test_opening_takes_the_first_chunk_by_ode_then_the_published_steps(tiny) -> None:
    opened = replace(tiny, opening=opening_schedule(6, shift=1.0))
    plain_pipe, opening_pipe = pipeline(tiny), pipeline(opened)
    seen, hook = timesteps_of_each_forward(tiny)
    try:
        outputs = {}
        for name, pipe in (("plain", plain_pipe), ("opening", opening_pipe)):
            seen.clear()
            state = pipe.open(GenerationRequest("a red ball", seed=5, **SIZE))
            outputs[name] = [pipe.step(state).frames for _ in range(2)]
            outputs[name + " calls"] = list(seen)
            pipe.close(state)
    finally:
        hook.remove()
    published = list(plain_pipe.schedule.timesteps)
    # first chunk: 6 ODE steps in place of the first published one, the other 3; the second
    # step begins with the first chunk's refresh (the second's waits for a third step)
    assert outputs["opening calls"] == pytest.approx(
        [*opened.opening.timesteps, *published[1:], 0.0, *published]
    )
    assert outputs["plain calls"] == pytest.approx([*published, 0.0, *published])
    assert opened.opening.timesteps[0] == published[0] == 1000.0  # both start at pure noise
    assert not np.array_equal(outputs["plain"][0], outputs["opening"][0])


def test_ode_step_keeps_the_noise_of_the_path() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    x_t = FlowSchedule.add_noise(x0, noise, 0.8)
    # with the true x0 an Euler step lands on the same straight path, nearer the data
    torch.testing.assert_close(
        FlowSchedule.ode_step(x_t, x0, 0.8, 0.3), FlowSchedule.add_noise(x0, noise, 0.3)
    )
    assert opening_schedule(4).sigmas == (1.0, 0.75, 0.5, 0.25)
    with pytest.raises(ValueError, match="opening steps"):
        opening_schedule(0)


def test_a_chunk_leaves_before_its_cache_refresh(tiny) -> None:
    """The t=0 forward that writes a chunk's clean K/V runs when the next step begins, so a
    chunk's frames (a new session's first ones too) wait for one forward fewer."""
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=7, **SIZE))
    forwards = []
    hook = tiny.dit.register_forward_hook(lambda *_: forwards.append(1))
    try:
        pipe.step(state)
        first = len(forwards)
        assert state.pending_refresh is not None
        pipe.step(state)
        second = len(forwards) - first
    finally:
        hook.remove()
        pipe.close(state)
    steady = len(pipe.schedule.steps)
    assert second == steady + 1  # the first chunk's refresh, then this chunk's steps
    assert first <= second - 1
