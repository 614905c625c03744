"""Rolling Forcing on the tiny preset: a window pass through the cache equals a dense
recomputation, exact exit order and counts over 300 steps with flat memory, prompt switches."""

from __future__ import annotations

from dataclasses import replace

import av
import numpy as np
import pytest
import torch

from framestream.kernels.rope import wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.registry import load_wan_models
from framestream.models.schedule import opening_schedule
from framestream.stream.cli import main
from framestream.stream.kvcache import KVCacheManager, frame_positions
from framestream.stream.pipelines.base import GenerationRequest
from framestream.stream.pipelines.rolling_forcing import (
    RollingForcingConfig,
    RollingForcingPipeline,
)

SIZE = {"height": 32, "width": 32}  # 2 x 2 tokens per latent frame
TPF = 4


@pytest.fixture(scope="module")
def tiny():
    return load_wan_models("tiny")


def pipeline(tiny, **config) -> RollingForcingPipeline:
    return RollingForcingPipeline(
        tiny, KVCacheManager(), 16 << 20, RollingForcingConfig(**config), TPF
    )


def test_window_pass_equals_dense_recomputation(tiny) -> None:
    """With the window full: frames [sink 3 | history 3 | window 15] in one dense forward,
    sink and history clean at t=0 and the window at its levels; each clean block sees what it saw
    when its K/V was cached (sink: itself; a history block: the sink and itself), the window
    sees everything. The exiting block's x0 must match."""
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=2, **SIZE))
    for _ in range(3):
        pipe.step(state)
    while state.cache.window_blocks < 4:  # land just before a pass over a full window
        pipe.window_step(state)
    window_in = torch.cat([state.window, _peek_noise(state, pipe)], dim=2)
    clean = state.clean.clone()
    exited = pipe.window_step(state)  # enters the fresh block drawn above, then exits one

    latents = torch.cat([clean, window_in], dim=2)  # 21 frames
    n_ctx = clean.shape[2]
    sigmas = torch.tensor(pipe._sigmas).repeat_interleave(3)
    timestep = torch.cat([torch.zeros(n_ctx), torch.tensor(pipe._timesteps).repeat_interleave(3)])
    frame_of = np.repeat(np.arange(latents.shape[2]), TPF)
    sees = np.zeros((len(frame_of), len(frame_of)), dtype=bool)
    for q, fq in enumerate(frame_of):
        if fq < 3:
            sees[q] = frame_of < 3
        elif fq < n_ctx:
            sees[q] = (frame_of < 3) | ((frame_of >= 3) & (frame_of < n_ctx))
        else:
            sees[q] = True
    pos = torch.from_numpy(frame_positions(np.arange(latents.shape[2]), (2, 2)))
    n = len(frame_of)
    dense = DenseAttention(
        pos, (0, n), wan_rope(tiny.dit.config.head_dim), False, torch.from_numpy(sees)
    )
    with torch.inference_mode():
        velocity = tiny.dit(latents, timestep[None], state.text, dense)
    x0 = latents[:, :, n_ctx:].float() - sigmas[None, None, :, None, None] * velocity[:, :, n_ctx:]
    torch.testing.assert_close(exited.float(), x0[:, :, :3], rtol=1e-4, atol=1e-4)


def _peek_noise(state, pipe) -> torch.Tensor:
    """The fresh block the next pass will draw, without consuming the stream's generator."""
    saved = state.generator.get_state()
    block = pipe._noise(state, 3)
    state.generator.set_state(saved)
    return block


def test_300_steps_exact_exit_order_and_flat_memory(tiny) -> None:
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=0, **SIZE))
    firsts, total, used = [], 0, set()
    for step in range(300):
        chunk = pipe.step(state)
        assert len(chunk) == (9 if step == 0 else 12)
        firsts.append(chunk.first_index)
        total += len(chunk)
        np.testing.assert_array_equal(state.cache.frames("sink"), [0, 1, 2])
        if step:
            used.add(pipe.pool.stats().used_blocks)
            exited = 3 * step  # the block that left at this step starts at frame 3 * step
            np.testing.assert_array_equal(
                state.cache.frames("history"), np.arange(exited, exited + 3)
            )
        np.testing.assert_array_equal(
            state.cache.frames("window"), np.arange(3 * step + 3, 3 * step + 15)
        )
    assert total == 9 + 12 * 299 == state.frames_emitted
    assert firsts == [0, *range(9, total, 12)]
    assert state.passes == 300 + 4  # 4 ramp-up passes before the first block exits
    assert used == {3 + 3 + 12}  # sink, history, 4 window blocks between steps: one frame a block
    positions = state.cache.cache.positions("window")[:, 0]
    assert positions.max() == 3 + 3 + 12 - 1  # contiguous: never grows with the stream
    pipe.close(state)
    assert pipe.pool.stats().used_blocks == 0


@pytest.mark.parametrize("recache", [True, False])
def test_prompt_switch_mid_window(tiny, recache: bool) -> None:
    """Beside a run without the switch: the window's blocks carry on (same latents at the
    switch), the text is the new prompt's, and the clean sink is rewritten under it only with
    recache."""
    pipes = [pipeline(tiny, recache_on_switch=recache) for _ in range(2)]
    states = [p.open(GenerationRequest("a red ball", seed=9, **SIZE)) for p in pipes]
    for _ in range(4):
        for p, s in zip(pipes, states, strict=True):
            p.step(s)
    control, switched = states
    torch.testing.assert_close(control.window, switched.window, rtol=0, atol=0)
    pipes[1].switch_prompt(switched, "a blue cube")
    for p, s in zip(pipes, states, strict=True):
        p.window_step(s)  # the switch applies at this pass (after its recache)
    new_text = tiny.dit.encode_text(tiny.encode_prompt("a blue cube"))
    torch.testing.assert_close(switched.text.k, new_text.k)
    assert not torch.allclose(control.window, switched.window)  # the window now follows it

    def clean_kv(p, s, name):
        slots = torch.from_numpy(s.cache.cache.slots(name)).long()
        return p.pool.kv[:, :, slots]

    # the sink keeps the old prompt's K/V unless recached; the history now holds the block that
    # just exited, computed under the new prompt either way
    sink_same = torch.equal(
        clean_kv(pipes[0], control, "sink"), clean_kv(pipes[1], switched, "sink")
    )
    assert sink_same is not recache
    assert not torch.equal(
        clean_kv(pipes[0], control, "history"), clean_kv(pipes[1], switched, "history")
    )


def test_fp8_kv_cache_halves_the_session_bytes() -> None:
    """kv_cache_dtype="fp8_e4m3" on bf16 models: sink, history and window passes over FP8 rows,
    the same blocks at half the bytes, frames near the bf16 cache's."""
    tiny16 = load_wan_models("tiny", dtype=torch.bfloat16)
    runs = {}
    for kv_cache_dtype in ("auto", "fp8_e4m3"):
        pipe = pipeline(tiny16, kv_cache_dtype=kv_cache_dtype)
        state = pipe.open(GenerationRequest("a red ball", seed=0, **SIZE))
        frames = [pipe.step(state).frames for _ in range(4)]
        pipe.switch_prompt(state, "a blue cube")  # recaches sink and history
        frames.append(pipe.step(state).frames)
        held = state.cache.cache.num_blocks() * pipe.pool.bytes_per_block
        runs[kv_cache_dtype] = (np.concatenate(frames).astype(np.float32), held, pipe.pool)
        pipe.close(state)
    (bf16, bf16_bytes, bf16_pool), (fp8, fp8_bytes, fp8_pool) = runs["auto"], runs["fp8_e4m3"]
    assert fp8_pool.kv.dtype == torch.float8_e4m3fn
    assert fp8_pool.bytes_per_block * 2 == bf16_pool.bytes_per_block
    assert fp8_bytes * 2 == bf16_bytes > 0
    assert bf16.shape == fp8.shape and np.abs(bf16 - fp8).mean() < 4  # of 255
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8_e4m3"):
        RollingForcingConfig(kv_cache_dtype="e4m3")


def test_stream_generate_rolling_forcing_writes_the_mp4(tmp_path) -> None:
    out = tmp_path / "rolling.mp4"
    argv = [
        "generate",
        "--pipeline",
        "rolling_forcing",
        "--prompt",
        "a red ball",
        "--switch",
        "t=1s:a blue cube",
        "--seconds",
        "3",
        "--out",
        str(out),
        "--height",
        "32",
        "--width",
        "32",
    ]
    assert main(argv) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 48
        assert float(stream.average_rate) == 16.0


def test_opening_takes_only_the_first_pass_by_ode(tiny) -> None:
    opened = replace(tiny, opening=opening_schedule(5, shift=1.0))
    pipe = pipeline(opened)
    seen: list[list[float]] = []
    hook = opened.dit.register_forward_pre_hook(lambda _, args: seen.append(args[1][0].tolist()))
    try:
        state = pipe.open(GenerationRequest("a red ball", seed=1, **SIZE))
        first = pipe.window_step(state)
        opening_calls = list(seen)
        seen.clear()
        pipe.window_step(state)
    finally:
        hook.remove()
        pipe.close(state)
    assert first is None  # the window is still filling
    # the first pass: one block at pure noise, taken by the 5 ODE steps
    assert [t[0] for t in opening_calls] == pytest.approx(list(opened.opening.timesteps))
    # the second pass is one joint forward over two blocks at their published levels
    levels = pipe._timesteps[-2:]
    assert seen == [pytest.approx([levels[0]] * 3 + [levels[1]] * 3)]
