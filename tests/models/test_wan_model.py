"""The causal Wan DiT (models/wan) against diffusers' WanTransformer3DModel and the KV cache.

* Same weights (diffusers names renamed to the original Wan names) → same flow prediction over a
  full bidirectional sequence, with one timestep per video and with one timestep per frame.
* A chunked stream through ``stream.kvcache`` equals one dense forward with a block-causal
  sink + window mask.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from framestream.kernels.rope import wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.wan import (
    WAN_PRESETS,
    CausalWanModel,
    TextConditioning,
    WanConfig,
    wan_config,
)
from framestream.stream.kvcache import (
    CacheGeometry,
    CacheView,
    FrameWindowConfig,
    KVCacheManager,
    build_step,
    frame_positions,
)

CFG = wan_config("tiny")
ATOL = 1e-4  # float32; the observed max error vs diffusers is ~1e-6 (see test output)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter ~ N(0, 0.05²), so no weight, bias or norm scale is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


# Reverse of diffusers' scripts/convert_wan_to_diffusers.py rename table (reference §6.4).
# Applied in order as regex substitutions; diffusers' norm2 is the original norm3 (the affine
# cross-attention LayerNorm); diffusers' norm3 and norm_out have no parameters.
DIFFUSERS_TO_WAN = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.norm2\.", ".norm3."),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."),
    (r"\.to_k\.", ".k."),
    (r"\.to_v\.", ".v."),
    (r"\.to_out\.0\.", ".o."),
]


def diffusers_to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in DIFFUSERS_TO_WAN:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def tiny_diffusers() -> WanTransformer3DModel:
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=CFG.num_heads,
        attention_head_dim=CFG.head_dim,
        in_channels=CFG.in_channels,
        out_channels=CFG.out_channels,
        text_dim=CFG.text_dim,
        freq_dim=CFG.freq_dim,
        ffn_dim=CFG.ffn_dim,
        num_layers=CFG.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=CFG.eps,
        rope_max_seq_len=1024,
    )
    randomize(model, seed=0)
    return model.eval()


def dense(frames: int, grid: tuple[int, int], batch: int = 1, mask=None) -> DenseAttention:
    """Full attention over ``batch`` sequences of ``frames`` frames at positions (f, h, w)."""
    pos = torch.from_numpy(frame_positions(np.arange(frames), grid)).repeat(batch, 1)
    n = frames * grid[0] * grid[1]
    indptr = tuple(i * n for i in range(batch + 1))
    return DenseAttention(pos, indptr, wan_rope(CFG.head_dim), causal=False, mask=mask)


@pytest.fixture(scope="module")
def pair() -> tuple[WanTransformer3DModel, CausalWanModel]:
    theirs = tiny_diffusers()
    ours = CausalWanModel(CFG).eval()
    ours.load_state_dict(diffusers_to_wan(theirs.state_dict()), strict=True)
    return theirs, ours


# -- configuration and keys --------------------------------------------------------------------


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="tiny"):
        wan_config("nope")
    assert wan_config("wan2.1-t2v-1.3b").head_dim == 128
    with pytest.raises(ValueError, match="num_heads"):
        WanConfig(dim=65, ffn_dim=8, num_heads=2, num_layers=1)


def expected_keys(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    d, pt, ph, pw = cfg.dim, *cfg.patch_size
    keys = {
        "patch_embedding.weight": (d, cfg.in_channels, pt, ph, pw),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.head.weight": (cfg.out_channels * pt * ph * pw, d),
        "head.head.bias": (cfg.out_channels * pt * ph * pw,),
        "head.modulation": (1, 2, d),
    }
    for n in range(cfg.num_layers):
        b = f"blocks.{n}."
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                keys[f"{b}{attn}.{proj}.weight"] = (d, d)
                keys[f"{b}{attn}.{proj}.bias"] = (d,)
            keys[f"{b}{attn}.norm_q.weight"] = (d,)
            keys[f"{b}{attn}.norm_k.weight"] = (d,)
        keys[f"{b}norm3.weight"] = (d,)
        keys[f"{b}norm3.bias"] = (d,)
        keys[f"{b}ffn.0.weight"] = (cfg.ffn_dim, d)
        keys[f"{b}ffn.0.bias"] = (cfg.ffn_dim,)
        keys[f"{b}ffn.2.weight"] = (d, cfg.ffn_dim)
        keys[f"{b}ffn.2.bias"] = (d,)
        keys[f"{b}modulation"] = (1, 6, d)
    return keys


def test_state_dict_uses_original_wan_keys() -> None:
    state = CausalWanModel(CFG).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_keys(CFG)


def test_full_size_builds_on_meta() -> None:
    with torch.device("meta"):
        model = CausalWanModel(WAN_PRESETS["wan2.1-t2v-1.3b"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected_keys(model.config)
    params = sum(p.numel() for p in model.parameters())
    assert 1.41e9 < params < 1.43e9  # reference §0: ≈1.419 B


# -- equivalence with diffusers ------------------------------------------------------------------


def run_both(pair, timesteps: list[float], seed: int = 1):
    """Ours with one timestep per frame; diffusers with each frame's t repeated per token (its
    Wan2.2-TI2V path), or a scalar when all frames share t (its Wan2.1 path)."""
    theirs, ours = pair
    gen = torch.Generator().manual_seed(seed)
    frames, h, w = len(timesteps), 8, 8
    x = torch.randn(1, CFG.in_channels, frames, h, w, generator=gen)
    context = torch.randn(1, CFG.text_len, CFG.text_dim, generator=gen)
    t = torch.tensor([timesteps])
    tokens_per_frame = (h // 2) * (w // 2)
    per_token = t.repeat_interleave(tokens_per_frame, dim=1)
    t_theirs = t[:, 0] if len(set(timesteps)) == 1 else per_token
    with torch.no_grad():
        expected = theirs(x, t_theirs, context, return_dict=False)[0]
        got = ours(x, t, ours.encode_text(context), dense(frames, (h // 2, w // 2)))
    return got, expected


@pytest.mark.parametrize(
    "timesteps", [[937.5] * 3, [0.0] * 3, [1000.0, 500.0, 0.0]], ids=["t937", "t0", "per-frame"]
)
def test_matches_diffusers(pair, timesteps) -> None:
    got, expected = run_both(pair, timesteps)
    assert got.shape == expected.shape == (1, CFG.out_channels, 3, 8, 8)
    err = (got - expected).abs().max().item()
    print(f"max |ours - diffusers| at t={timesteps}: {err:.3e} (output std {expected.std():.3f})")
    assert err < ATOL


def test_per_frame_timesteps_are_per_frame(pair) -> None:
    """Changing one frame's t changes the result, and equal per-frame t equals the scalar path
    (both checked against diffusers above); here: ours is not blind to the per-frame values."""
    a, _ = run_both(pair, [1000.0, 500.0, 0.0])
    b, _ = run_both(pair, [1000.0, 500.0, 250.0])
    assert (a - b).abs().max() > 1e-3


def test_batch_is_packed_in_order(pair) -> None:
    """Two streams in one forward (different latents, timesteps, prompts) equal two forwards."""
    _, ours = pair
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, CFG.in_channels, 2, 4, 6, generator=gen)
    t = torch.tensor([[800.0, 800.0], [100.0, 300.0]])
    context = torch.randn(2, CFG.text_len, CFG.text_dim, generator=gen)
    with torch.no_grad():
        both = ours(x, t, ours.encode_text(context), dense(2, (2, 3), batch=2))
        for i in range(2):
            one = ours(
                x[i : i + 1], t[i : i + 1], ours.encode_text(context[i : i + 1]), dense(2, (2, 3))
            )
            torch.testing.assert_close(both[i : i + 1], one, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="timestep"):
        ours(x, t[:, :1], ours.encode_text(context), dense(2, (2, 3), batch=2))


def test_bf16_parameters_run_close_to_float32(pair) -> None:
    _, ours = pair
    low = CausalWanModel(CFG).to(torch.bfloat16).eval()
    low.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, CFG.in_channels, 2, 4, 4, generator=gen)
    t = torch.tensor([[700.0, 700.0]])
    context = torch.randn(1, CFG.text_len, CFG.text_dim, generator=gen)
    with torch.no_grad():
        ref = ours(x, t, ours.encode_text(context), dense(2, (2, 2)))
        got = low(x, t, low.encode_text(context), dense(2, (2, 2)))
    assert got.dtype == torch.bfloat16
    assert (got.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_init_weights_gives_a_nonzero_head() -> None:
    model = CausalWanModel(CFG)
    model.init_weights(torch.Generator().manual_seed(0))
    assert model.head.head.weight.abs().sum() > 0
    text = model.encode_text(torch.randn(1, CFG.text_len, CFG.text_dim))
    assert text.k.shape == (CFG.num_layers, 1, CFG.text_len, CFG.num_heads, CFG.head_dim)
    empty = TextConditioning.make_empty(CFG, batch=1, dtype=torch.float32)
    assert empty.k.shape == text.k.shape and empty.v.shape == text.v.shape
    with torch.no_grad():
        out = model(torch.randn(1, 16, 1, 4, 4), torch.full((1, 1), 500.0), text, dense(1, (2, 2)))
    assert out.abs().max() > 0


# -- chunked streaming through the KV cache --------------------------------------------------


def visible_frames(chunk: int, chunk_frames: int = 3, sink: int = 3, window: int = 9) -> set[int]:
    """Frames that chunk ``chunk`` attends to under LongLive's sink + window (own chunk included)::

    chunk 4 (frames 12-14), sink 3, window 9:
    frame   0 1 2 | 3 4 5 | 6 7 8 | 9 10 11 | 12 13 14
            sink  | evicted| ----- window (9 frames) -----
    """
    end = (chunk + 1) * chunk_frames
    return set(range(min(sink, end))) | set(range(max(sink, end - window), end))


def test_chunked_cache_matches_block_causal_dense() -> None:
    """Five 3-frame chunks through the rolling cache equal one dense forward per chunk.

    Cache path, as LongLive streams: for each chunk, ``begin_chunk(3)`` → plan → ``CacheView``;
    one forward of the *noisy* chunk at its denoising timestep (the output compared; it also
    writes the chunk's noisy K/V into its slots), then a second forward of the *clean* chunk at
    t=0 through the same view, which overwrites those slots with clean K/V (the cache refresh).

    Dense reference for chunk c: one sequence of all frames so far, the earlier frames' clean
    latents at t=0 and chunk c's noisy latents at its timestep (per-frame timesteps), with a
    block-causal mask: every chunk's tokens see the sink frames, the window frames retained when
    *that* chunk was generated, and their own chunk bidirectionally. Earlier chunks' rows then
    reproduce, layer by layer, exactly the K/V their t=0 refresh wrote into the cache, so chunk
    c's output must match. From chunk 4 on the window has evicted frames 3-5, which the mask
    hides too.
    """
    torch.manual_seed(0)
    model = CausalWanModel(CFG).eval()
    randomize(model, seed=4)
    grid, tpf, chunk = (4, 4), 16, 3
    num_chunks = 5
    frames = num_chunks * chunk
    gen = torch.Generator().manual_seed(5)
    clean = torch.randn(1, CFG.in_channels, frames, 8, 8, generator=gen)
    noisy = torch.randn(1, CFG.in_channels, frames, 8, 8, generator=gen)
    t_denoise = [1000.0, 937.5, 833.3, 625.0, 500.0]
    text = model.encode_text(torch.randn(1, CFG.text_len, CFG.text_dim, generator=gen))
    rope = wan_rope(CFG.head_dim)

    geometry = CacheGeometry(CFG.num_layers, CFG.num_heads, CFG.head_dim, torch.float32)
    manager = KVCacheManager()
    manager.add_pool(geometry, block_size=tpf, capacity_bytes=32 * tpf * geometry.bytes_per_token)
    policy = manager.open(
        geometry,
        FrameWindowConfig(grid=grid, sink_frames=3, window_frames=9, positions="absolute"),
    )
    pool = manager.pool(geometry)

    worst = 0.0
    for c in range(num_chunks):
        s = c * chunk
        ranges = policy.begin_chunk(chunk)
        retained = set(policy.sink_frames().tolist()) | set(policy.window_frames().tolist())
        assert retained == visible_frames(c)
        view = CacheView(pool, build_step([policy.cache.plan(ranges)], False, "cpu"), rope)
        with torch.no_grad():
            t = torch.full((1, chunk), t_denoise[c])
            got = model(noisy[:, :, s : s + chunk], t, text, view)
            model(clean[:, :, s : s + chunk], torch.zeros(1, chunk), text, view)  # refresh

            n = s + chunk
            see = torch.zeros(n, n, dtype=torch.bool)
            for q in range(c + 1):
                rows = slice(q * chunk, (q + 1) * chunk)
                see[rows, sorted(visible_frames(q))] = True
            mask = see.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)
            x = torch.cat([clean[:, :, :s], noisy[:, :, s:n]], dim=2)
            t_all = torch.tensor([[0.0] * s + [t_denoise[c]] * chunk])
            ref = model(x, t_all, text, dense(n, grid, mask=mask))[:, :, s:n]
            if c == num_chunks - 1:  # the eviction matters: seeing frames 3-5 changes the output
                see[s:n, 3:6] = True
                leaky = see.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)
                wrong = model(x, t_all, text, dense(n, grid, mask=leaky))[:, :, s:n]
                assert (wrong - ref).abs().max() > 1e-3
        err = (got - ref).abs().max().item()
        worst = max(worst, err)
        assert err < 1e-4, f"chunk {c}: max error {err:.3e}"
    print(f"max |cache - dense| over {num_chunks} chunks: {worst:.3e}")
    assert not math.isnan(worst)
    policy.cache.close()
