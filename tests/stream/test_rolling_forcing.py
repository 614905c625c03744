"""Rolling Forcing on the tiny preset: a window pass through the cache equals a dense
recomputation, exact exit order and counts over 100 steps with flat memory, prompt switches,
the first block out after the window passes alone."""

from __future__ import annotations

from dataclasses import replace

import av
import numpy as np
import pytest
import torch

from framestream.cli.main import main
from framestream.kernels.rope import apply_rope
from framestream.models.registry import load_wan_models
from framestream.models.schedule import FlowSchedule, opening_schedule
from framestream.stream.kvcache import KVCacheManager, frame_positions
from framestream.stream.pipelines.rolling_forcing import (
    RollingForcingConfig,
    RollingForcingPipeline,
)
from framestream.stream.requests import GenerationRequest

SIZE = {"height": 32, "width": 32}  # 2 x 2 tokens per latent frame
TPF = 4


@pytest.fixture(scope="module")
def tiny():
    return load_wan_models("tiny")


def pipeline(tiny, **config) -> RollingForcingPipeline:
    return RollingForcingPipeline(
        tiny, KVCacheManager(), 16 << 20, RollingForcingConfig(**config), TPF
    )


class PublishedCache:
    """The published loop's attention, written plainly: every clean frame's K/V kept per
    layer, each pass reading what ``wan/modules/causal_model.py`` reads (``max_attention_size``
    = 21 frames): a window pass the sink, the newest clean frames up to the span and the
    window, placed back to back; a block's clean pass the newest 21 clean frames, itself
    included, at their true distances."""

    def __init__(self, rope, tpf: int) -> None:
        self.rope, self.tpf = rope, tpf
        self.kv: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}  # frame -> layer

    def window(self, clean: list[int], window_frames: int) -> PublishedPass:
        sink, history = clean[:3], clean[3:]
        recent = history[len(history) - max(21 - 3 - window_frames, 0) :]
        context = sink + recent
        return PublishedPass(self, context, list(range(len(context) + window_frames)), None)

    def clean_pass(self, clean: list[int], block: list[int]) -> PublishedPass:
        context = [f for f in clean[-21:] if f not in block]
        return PublishedPass(self, context, context + block, block)


class PublishedPass:
    def __init__(self, cache: PublishedCache, context, positions, writes) -> None:
        self.cache, self.context, self.writes = cache, context, writes
        self.pos = torch.from_numpy(frame_positions(np.asarray(positions), (2, 2)))

    def attend(self, layer, q, k, v):
        tpf, kv = self.cache.tpf, self.cache.kv
        if self.writes is not None:  # the block's clean K/V, kept per frame
            for i, frame in enumerate(self.writes):
                part = slice(i * tpf, (i + 1) * tpf)
                kv.setdefault(frame, {})[layer] = (k[part], v[part])
        keys = torch.cat([*(kv[f][layer][0] for f in self.context), k])
        values = torch.cat([*(kv[f][layer][1] for f in self.context), v])
        n_q = q.shape[0]
        qr = apply_rope(q, self.pos[-n_q:], self.cache.rope).transpose(0, 1)
        kr = apply_rope(keys, self.pos, self.cache.rope).transpose(0, 1)
        out = torch.nn.functional.scaled_dot_product_attention(
            qr, kr, values.float().transpose(0, 1)
        )
        return out.transpose(0, 1).to(q.dtype)


def published_blocks(pipe, state, blocks: int) -> list[torch.Tensor]:
    """The published rolling loop's exiting blocks, on ``pipe``'s model, text and noise (the
    same generator, drawn in the same order as the pipeline draws it)."""
    dit, levels_all = pipe.models.dit, list(range(5))
    cache, window, clean, exited = PublishedCache(pipe.models.rope, TPF), None, [], []
    entered = 0
    while len(exited) < blocks:
        if window is None or window.shape[2] < 15:
            fresh = pipe._noise(state, 3)
            window = fresh if window is None else torch.cat([window, fresh], 2)
            entered += 3
        n = window.shape[2] // 3
        levels = levels_all[5 - n :]
        sigma = torch.tensor([pipe._sigmas[i] for i in levels]).repeat_interleave(3)
        timestep = torch.tensor([pipe._timesteps[i] for i in levels]).repeat_interleave(3)
        velocity = dit(window, timestep[None], state.text, cache.window(clean, window.shape[2]))
        x0 = FlowSchedule.to_x0(window, velocity, sigma[None, None, :, None, None])
        if n == 5:
            block = x0[:, :, :3]
            frames = list(range(entered - 15, entered - 12))
            clean += frames
            dit(block, torch.zeros(1, 3), state.text, cache.clean_pass(clean, frames))
            exited.append(block)
            x0, levels = x0[:, :, 3:], levels[1:]
        lower = torch.tensor([pipe._sigmas[i - 1] for i in levels]).repeat_interleave(3)
        noise = torch.randn(x0.shape, generator=state.generator)
        window = FlowSchedule.add_noise(x0, noise, lower[None, None, :, None, None])
    return exited


def test_every_block_equals_the_published_loop(tiny) -> None:
    """Twelve blocks out, past the seventh, after which a block's clean pass no longer reads
    the sink: each exiting block equals the published loop's, written plainly above."""
    pipe = pipeline(tiny)
    ours = pipe.open(GenerationRequest("a red ball", seed=2, **SIZE))
    theirs = pipe.open(GenerationRequest("a red ball", seed=2, **SIZE))
    with torch.inference_mode():
        expected = published_blocks(pipe, theirs, 12)
        for block in expected:
            torch.testing.assert_close(pipe.denoise(ours), block, rtol=1e-5, atol=1e-5)
    # between steps the cache holds the sink, the 21 frames the last clean pass read (the next
    # reads the newest 18 of them) and the window's 4 remaining blocks
    assert len(ours.cache.frames("history")) == 21 and len(ours.cache.frames("window")) == 12


def test_recache_equals_each_clean_pass_replayed_in_order(tiny) -> None:
    """The recache's one forward, each retained block a sequence reading blocks written by the
    same forward, leaves the K/V that replaying the blocks' clean passes one by one would."""
    pipes = [pipeline(tiny) for _ in range(2)]
    states = [p.open(GenerationRequest("a red ball", seed=4, **SIZE)) for p in pipes]
    with torch.inference_mode():
        for p, s in zip(pipes, states, strict=True):
            for _ in range(9):  # 9 blocks out: the history no longer holds block 1
                p.denoise(s)
            s.text = tiny.dit.encode_text(tiny.encode_prompt("a blue cube"))
        pipes[0]._recache(states[0])
        state, frames = states[1], 0
        for write, context in state.cache.clean_passes():
            block = state.clean[:, :, frames : frames + 3]
            frames += 3
            view = pipes[1]._view(state, write, context)
            tiny.dit(block, torch.zeros(1, 3), state.text, view)
    for name in ("sink", "history"):
        kv = [
            p.pool.kv[:, :, torch.from_numpy(s.cache.cache.slots(name)).long()]
            for p, s in zip(pipes, states, strict=True)
        ]
        torch.testing.assert_close(kv[0], kv[1], rtol=1e-5, atol=1e-5)


def test_100_steps_exact_exit_order_and_flat_memory(tiny) -> None:
    """The cache is full from step 7 on (sink, 21 history frames, the window) and every later
    step repeats the same exit, eviction and re-layout: steps 7 to 99 are 93 of them."""
    steps = 100
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=0, **SIZE))
    firsts, total, used = [], 0, set()
    for step in range(steps):
        chunk = pipe.step(state)
        assert len(chunk) == (9 if step == 0 else 12)
        firsts.append(chunk.first_index)
        total += len(chunk)
        np.testing.assert_array_equal(state.cache.frames("sink"), [0, 1, 2])
        if step:
            used.add(pipe.pool.stats().used_blocks)
            exited = 3 * step  # the block that left at this step starts at frame 3 * step
            np.testing.assert_array_equal(  # the newest 21 clean frames after the sink
                state.cache.frames("history"), np.arange(max(exited - 18, 3), exited + 3)
            )
        np.testing.assert_array_equal(
            state.cache.frames("window"), np.arange(3 * step + 3, 3 * step + 15)
        )
    assert total == 9 + 12 * (steps - 1) == state.frames_emitted
    assert firsts == [0, *range(9, total, 12)]
    assert state.passes == steps + 4  # 4 ramp-up passes before the first block exits
    # sink, history, 4 window blocks between steps, one frame a block: the most is reached once
    # the history holds 21 frames, and stays
    assert max(used) == 3 + 21 + 12 and len(used) == 7
    write, context = state.cache.window_pass()
    positions = state.cache.cache.plan(write, context).kv_pos[:, 0]
    assert positions.max() == 3 + 3 + 15 - 1  # contiguous: never grows with the stream
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

    for p, s in zip(pipes, states, strict=True):
        p.window_step(s)  # runs the cache pass of the block that exited at the switch

    def clean_kv(p, s, name):
        slots = torch.from_numpy(s.cache.cache.slots(name)).long()
        return p.pool.kv[:, :, slots]

    # the sink keeps the old prompt's K/V unless recached; the block that exited at the switch
    # was cached under the new prompt either way (the newest block's pass has not run yet)
    sink_same = torch.equal(
        clean_kv(pipes[0], control, "sink"), clean_kv(pipes[1], switched, "sink")
    )
    assert sink_same is not recache
    block = 3 * TPF
    at_switch = slice(-2 * block, -block)
    assert not torch.equal(
        clean_kv(pipes[0], control, "history")[:, :, at_switch],
        clean_kv(pipes[1], switched, "history")[:, :, at_switch],
    )


class PassCounter:
    """Counts the DiT's forwards and the query frames of each."""

    def __init__(self, dit: torch.nn.Module) -> None:
        self.frames: list[int] = []
        self._hook = dit.register_forward_pre_hook(
            lambda _, args: self.frames.append(args[0].shape[2])
        )

    def remove(self) -> None:
        self._hook.remove()


def test_first_block_leaves_after_the_window_passes_alone(tiny) -> None:
    """The first block is handed out after its 5 window passes, before its clean cache pass,
    which the published loop runs first (6 passes); that pass opens the next step (the blocks
    after it equal the published loop's: test_every_block_equals_the_published_loop)."""
    pipe = pipeline(tiny)
    ours = pipe.open(GenerationRequest("a red ball", seed=5, **SIZE))
    theirs = pipe.open(GenerationRequest("a red ball", seed=5, **SIZE))
    counter = PassCounter(tiny.dit)
    try:
        with torch.inference_mode():
            published = published_blocks(pipe, theirs, 1)
            published_passes = len(counter.frames)
            counter.frames.clear()
            first = pipe.denoise(ours)
            first_passes = list(counter.frames)
            counter.frames.clear()
            pipe.denoise(ours)
            second_passes = list(counter.frames)
    finally:
        counter.remove()
    assert published_passes == 6
    assert first_passes == [3, 6, 9, 12, 15]  # the ramp-up's window passes only
    assert second_passes == [3, 15]  # the first block's cache pass, then the window pass
    torch.testing.assert_close(first, published[0], rtol=1e-5, atol=1e-5)


def test_first_block_reads_the_noise_of_the_last_block_to_enter(tiny) -> None:
    """Why the first block cannot leave before the window is full: attention inside the
    window is full, so its x0 changes with the fresh noise of the fifth block."""
    pipe = pipeline(tiny)
    states = [pipe.open(GenerationRequest("a red ball", seed=6, **SIZE)) for _ in range(2)]
    with torch.inference_mode():
        for state in states:
            for _ in range(4):
                assert pipe.window_step(state) is None
        states[1].generator = torch.Generator().manual_seed(7)  # only the fifth block's noise
        first, other = (pipe.window_step(state) for state in states)
    assert not torch.allclose(first, other)


def test_a_recache_replaces_the_pending_cache_pass(tiny) -> None:
    """A switch with recache runs the recache and the window pass: the recache rewrites the
    block that just exited, so its own cache pass would be lost work."""
    pipe = pipeline(tiny)
    state = pipe.open(GenerationRequest("a red ball", seed=8, **SIZE))
    for _ in range(3):
        pipe.step(state)
    pipe.switch_prompt(state, "a blue cube")
    counter = PassCounter(tiny.dit)
    try:
        pipe.denoise(state)
    finally:
        counter.remove()
    retained = state.cache.cache.length("sink") + state.cache.cache.length("history")
    # the recache covers the blocks retained before this step's exit: 3 of them
    assert counter.frames == [retained // TPF - 3, 15]


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
