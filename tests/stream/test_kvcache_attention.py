"""Attention through the cache manager equals dense attention over exactly the retained tokens at
their re-based positions.

Every forward writes fresh random K/V through :class:`CacheView`; the test keeps its own record
of the latest K/V of every token (by id), derives the retained tokens and their positions from
the policy's *published semantics* (not from the cache's bookkeeping), and recomputes attention
densely in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from framestream.kernels.rope import RopeSpec, mrope, rope_1d, wan_rope
from framestream.stream.kvcache import (
    CacheGeometry,
    CacheView,
    FrameWindowConfig,
    KVCacheManager,
    RollingWindowConfig,
    StreamingVLMConfig,
    TokenWindowConfig,
    build_step,
)
from framestream.stream.kvcache.vlm_window import RoundTokens

LAYERS = 2


def rotate64(x: torch.Tensor, pos: np.ndarray, rope: RopeSpec) -> torch.Tensor:
    """float64 rotation written from the pair definition, independent of kernels.rope."""
    x = x.double()
    out = x.clone()
    d = x.shape[-1]
    for j in range(d // 2):
        a, b = (2 * j, 2 * j + 1) if rope.interleaved else (j, j + d // 2)
        angle = torch.from_numpy(pos[:, int(rope.axis[j])].astype(np.float64)) * float(
            rope.inv_freq[j]
        )
        cos, sin = angle.cos()[:, None], angle.sin()[:, None]
        out[..., a] = x[..., a] * cos - x[..., b] * sin
        out[..., b] = x[..., b] * cos + x[..., a] * sin
    return out


def dense_attention(q, q_pos, k, v, kv_pos, rope, causal) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    qr, kr = rotate64(q, q_pos, rope), rotate64(k, kv_pos, rope)
    kr, vv = kr.repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", qr, kr) / math.sqrt(q.shape[-1])
    if causal:
        nq, nk = q.shape[0], k.shape[0]
        keep = torch.arange(nk)[None, :] <= torch.arange(nq)[:, None] + nk - nq
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv)


class Harness:
    """Runs forwards of one session through CacheView and records every token's latest K/V."""

    def __init__(self, session, rope: RopeSpec, heads: tuple[int, int], seed: int) -> None:
        self.session, self.rope = session, rope
        self.hq, self.hkv = heads
        self.gen = torch.Generator().manual_seed(seed)
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, write, ids, context=None, causal=False) -> list[torch.Tensor]:
        cache = self.session.cache
        plan = cache.plan(write, context)
        view = CacheView(cache.pool, build_step([plan], causal, "cpu"), self.rope)
        n, d = len(plan.q_pos), self.rope.head_dim
        q = torch.randn(n, self.hq, d, generator=self.gen)
        ks = torch.randn(LAYERS, n, self.hkv, d, generator=self.gen)
        vs = torch.randn(LAYERS, n, self.hkv, d, generator=self.gen)
        outs = [view.attend(layer, q, ks[layer], vs[layer]) for layer in range(LAYERS)]
        for i, token in enumerate(ids):
            self.kv[int(token)] = (ks[:, i], vs[:, i])
        self.last = (q, plan.q_pos)
        return outs

    def check(self, outs, kv_ids, kv_pos, causal=False, extra_q=None) -> None:
        """Compare with dense attention over ``kv_ids`` (retained, then the step's own) at
        ``kv_pos``. ``extra_q`` ``(q, q_pos)``: queries the cache did not compute, placed
        before the step's own in the reference; its rows for the step's queries must not move."""
        q, q_pos = self.last
        if extra_q is not None:
            q, q_pos = torch.cat([extra_q[0], q]), np.concatenate([extra_q[1], q_pos])
        for layer in range(LAYERS):
            k = torch.stack([self.kv[int(t)][0][layer] for t in kv_ids])
            v = torch.stack([self.kv[int(t)][1][layer] for t in kv_ids])
            want = dense_attention(q, q_pos, k, v, kv_pos, self.rope, causal)[-len(outs[layer]) :]
            torch.testing.assert_close(outs[layer].double(), want, rtol=1e-4, atol=1e-4)


def frame_pos(frames, grid, t_of) -> np.ndarray:
    h, w = grid
    return np.array([(t_of(f), r, c) for f in frames for r in range(h) for c in range(w)])


def make(block_size: int, hkv: int, d: int) -> tuple[KVCacheManager, CacheGeometry]:
    geometry = CacheGeometry(LAYERS, hkv, d, torch.float32)
    m = KVCacheManager()
    m.add_pool(geometry, block_size, 8 << 20)
    return m, geometry


@pytest.mark.parametrize(("heads", "d", "grid"), [((4, 2), 16, (2, 2)), ((3, 3), 32, (1, 3))])
def test_longlive_chunks_and_recache_match_dense(heads, d, grid) -> None:
    tpf = grid[0] * grid[1]
    m, geometry = make(block_size=tpf, hkv=heads[1], d=d)
    config = FrameWindowConfig(grid=grid, sink_frames=3, window_frames=9, positions="contiguous")
    h = Harness(m.open(geometry, config), wan_rope(d), heads, seed=d)
    ids_of = lambda frames: [f * tpf + j for f in frames for j in range(tpf)]  # noqa: E731
    for chunk in range(30):
        ranges = h.session.begin_chunk(3)
        new = list(range(3 * chunk, 3 * chunk + 3))
        for _ in range(2):  # a denoising pass, then the t=0 refresh, overwrite the same slots
            outs = h.forward(ranges, ids_of(new))
        sink = [0, 1, 2]
        window = list(range(max(3, 3 * chunk - 6), 3 * chunk + 3))
        old = [f for f in window if f not in new]
        retained = (sink if chunk else []) + old + new
        t_of = {f: i for i, f in enumerate(sink + [f for f in window])}.__getitem__
        h.check(outs, ids_of(retained), frame_pos(retained, grid, t_of))
    # a prompt switch with the last 12 frames held, sink kept: only the 9 window frames are
    # queries; the reference also computes the 3 evicted frames' queries, as a 12-frame recache
    # would, and the window's rows (the only K/V it keeps) are the same
    ranges = h.session.recache(12, refresh_sink=False)
    window = list(range(81, 90))
    outs = h.forward(ranges, ids_of(window))
    t_of = {**{f: f - 81 + 3 for f in range(78, 90)}, 0: 0, 1: 1, 2: 2}.__getitem__
    np.testing.assert_array_equal(h.last[1], frame_pos(window, grid, t_of))
    evicted = (
        torch.randn(3 * tpf, heads[0], d, generator=h.gen),
        frame_pos(range(78, 81), grid, t_of),
    )
    kv_frames = [0, 1, 2, *window]
    h.check(outs, ids_of(kv_frames), frame_pos(kv_frames, grid, t_of), extra_q=evicted)
    slots = torch.from_numpy(h.session.cache.slots("window")).long()
    for layer in range(LAYERS):  # the window's slots hold exactly its new K/V
        k_cache, v_cache = h.session.cache.pool.layer_kv(layer)
        written = [h.kv[t] for t in ids_of(window)]
        torch.testing.assert_close(k_cache[slots], torch.stack([k[layer] for k, _ in written]))
        torch.testing.assert_close(v_cache[slots], torch.stack([v[layer] for _, v in written]))


def test_rolling_forcing_window_and_cache_pass_match_dense() -> None:
    grid, tpf, d = (1, 2), 2, 16
    m, geometry = make(block_size=2, hkv=1, d=d)
    config = RollingWindowConfig(grid=grid)
    h = Harness(m.open(geometry, config), wan_rope(d), (2, 1), seed=1)
    ids_of = lambda frames: [f * tpf + j for f in frames for j in range(tpf)]  # noqa: E731
    clean: list[int] = []  # frames that exited, in order
    for _ in range(16):
        if h.session.window_blocks < 5:
            h.session.enter_block()
        window = h.session.frames("window").tolist()
        write, context = h.session.window_pass()
        outs = h.forward(write, ids_of(window), context=context)
        sink, recent = clean[:3], clean[3:][len(clean[3:]) - (21 - 3 - len(window)) :]
        frames = sink + recent + window
        h.check(
            outs, ids_of(frames), frame_pos(frames, grid, {f: i for i, f in enumerate(frames)}.get)
        )
        if h.session.window_blocks == 5:
            write, context = h.session.exit_block()
            block = window[:3]
            clean += block
            outs = h.forward(write, ids_of(block), context=context)
            frames = clean[-21:]  # the newest 21 clean frames, the block last, true distances
            last = int(h.last[1][-1, 0])  # where the plan placed the block's last frame
            placed = {f: last - (frames[-1] - f) for f in frames}
            h.check(outs, ids_of(frames), frame_pos(frames, grid, placed.get))
    assert clean == list(range(len(clean))) and len(clean) == 36


@pytest.mark.parametrize("heads", [(4, 1), (2, 2)])
def test_streaming_llm_decode_matches_dense(heads) -> None:
    d = 16
    m, geometry = make(block_size=8, hkv=heads[1], d=d)
    h = Harness(
        m.open(geometry, TokenWindowConfig(sink_tokens=4, window_tokens=20)),
        rope_1d(d),
        heads,
        seed=7,
    )
    token = 0
    for step in range(40):
        n = 5 if step % 4 == 0 else 1  # prefill-like chunks between single-token decode steps
        ranges = h.session.append(n)
        new = list(range(token, token + n))
        token += n
        outs = h.forward(ranges, new, causal=True)
        retained = [*range(min(4, token)), *range(max(4, token - 20), token)]
        h.check(outs, retained, np.repeat(np.arange(len(retained))[:, None], 3, 1), causal=True)


def test_streaming_vlm_after_evictions_matches_recomputation() -> None:
    """Rounds of text, vision and replies through 12 evictions (folds included): every step
    attends to the K/V of exactly the tokens the policy says it keeps, at Qwen2.5-VL's rope
    index over them."""
    d = 16
    m, geometry = make(block_size=4, hkv=2, d=d)
    config = StreamingVLMConfig(
        text_rounds=3,
        vision_seconds=3,
        prev_sink_tokens=4,
        prev_window_tokens=5,
        max_prefix_tokens=8,
        max_round_text_tokens=16,
        max_vision_tokens=6,
    )
    h = Harness(m.open(geometry, config), mrope(d, sections=(2, 3, 3)), (4, 2), seed=3)
    next_id = 0
    vision_at: dict[int, tuple[int, int, int]] = {}  # a pad's (t, h, w) in its block

    def text(n: int) -> list[int]:
        nonlocal next_id
        next_id += n
        return list(range(next_id - n, next_id))

    def vision(grid_hw) -> list[int]:
        hh, ww = grid_hw
        pads = text(hh * ww)
        vision_at.update({pads[r * ww + c]: (0, r, c) for r in range(hh) for c in range(ww)})
        return [*text(1), *pads, *text(1)]

    def positions(seq) -> np.ndarray:
        """Qwen2.5-VL rope index over the retained sequence: text steps by one, a vision block
        starts at the cursor on every axis and text resumes after its largest index."""
        pos, cursor, i = [], 0, 0
        while i < len(seq):
            if seq[i] not in vision_at:
                pos.append((cursor,) * 3)
                cursor, i = cursor + 1, i + 1
                continue
            j = i
            while (
                j < len(seq) and seq[j] in vision_at and (j == i or vision_at[seq[j]] != (0, 0, 0))
            ):
                pos.append(tuple(cursor + x for x in vision_at[seq[j]]))
                j += 1
            cursor = max(max(p) for p in pos[i:j]) + 1
            i = j
        return np.array(pos)

    ranges = h.session.start(text(3), text(8), text(2))
    outs = h.forward(ranges, h.session.token_ids(ranges), causal=True)
    close: list[int] = []
    for second in range(12):
        tokens = RoundTokens(text(1), text(2), text(1), vision((2, 3)), text(1), text(2), (1, 2, 3))
        ranges = h.session.begin_round(tokens, close)
        outs = h.forward(ranges, h.session.token_ids(ranges), causal=True)
        for token in text(second % 3):
            outs = h.forward([h.session.append_reply([token])], [token], causal=True)
        close = text(1)  # the reply's <|im_end|>, fed with the next round
        seq = h.session.retained()[0].tolist()
        h.check(outs, seq, positions(seq), causal=True)
