"""Kernels: the paged attention with RoPE in the kernel, beside SDPA, on the workloads' shapes.

Cases (bf16 on CUDA, head dim 128 at full size; small shapes elsewhere)::

    wan_chunk      Wan2.1 chunk     4680 q x 18720 k, 12 heads, full attention
    wan_recache    KV recache      18720 q x 18720 k, 12 heads, full
    rolling_window Rolling Forcing 23400 q x 32760 k, 12 heads, full
    qwen_decode    Qwen2.5-VL-7B   16 sequences x 1 q x ~13k k, 28 q / 4 kv heads, causal
    wan_norms      one Wan2.1 block's norms, modulation and gated residuals over a chunk's
                   4680 tokens x 1536 (not attention: see the end of this docstring)

Each attention case fills a slot pool in random order with un-rotated keys and checks Triton
and ``sdpa_fused`` against the float32 torch twin (:func:`kernels.attention.paged_attention_ref`),
then times, as variants:

* ``triton`` (ours): :func:`kernels.triton_attention.paged_attention_triton`, gather and RoPE
  in the kernel;
* ``sdpa_paged``: :func:`kernels.attention.paged_attention_sdpa`, torch's fused SDPA over keys
  gathered and rotated from the pool by torch ops (the service's chunk path until
  ``sdpa_fused``);
* ``sdpa_fused``: :func:`kernels.triton_gather.paged_attention_sdpa_fused`, the same SDPA over
  keys gathered and rotated by one Triton pass (the service's path for chunks on CUDA);
* ``dense``: SDPA over keys already gathered and rotated, contiguous: the floor without paging
  and rotation;
* ``twin``: the torch twin end to end (float32);
* ``triton_fp8kv`` and ``sdpa_fused_fp8kv``: ``triton`` and ``sdpa_fused`` over the same pool
  stored as FP8 (unscaled e4m3, as ``kv_cache_dtype="fp8_e4m3"`` stores it: half the bytes to
  read), checked against the twin over that FP8 pool; ``fp8kv_rel_diff`` in the config is how
  far the FP8 pool moves the twin's output from the bf16 pool's (rounding, random data);
* ``sage`` (CUDA, where the ``sageattention`` package imports): ``sdpa_fused`` with
  SageAttention's 8-bit kernel inside (:mod:`kernels.sage_attention`), checked against the
  twin at a looser bound (``rel_err_sage_vs_twin`` in the config).

``wan_norms`` times the elementwise work of one block (LayerNorm + modulation twice, RMSNorm
of q and k, RMSNorm of the cross-attention q, the affine LayerNorm, two gated residuals) as the
fused Triton kernels (``fused``, ours: :mod:`kernels.triton_norms`) against their torch twins
(``torch``: :mod:`kernels.norms`, the model's code on CPU).

Times are medians of ``triton.testing.do_bench`` on CUDA, of three wall-clock runs elsewhere
(there Triton runs in its interpreter: ``TRITON_INTERPRET=1`` is set before triton loads); the
small cases of a preset other than the full-size one time one run, a smoke run of each variant.
FLOPs are ``4 * q * k * H * D`` per sequence.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton

from framestream.evals.bench.record import Variant, Workload
from framestream.kernels import norms, sage_attention, triton_norms
from framestream.kernels.attention import (
    AttentionMetadata,
    paged_attention_ref,
    paged_attention_sdpa,
    to_cache_dtype,
    write_kv,
)
from framestream.kernels.rope import RopeSpec, apply_rope, mrope, wan_rope
from framestream.kernels.triton_attention import paged_attention_triton
from framestream.kernels.triton_gather import paged_attention_sdpa_fused

__all__ = ["CASES", "run_kernels"]

CASES = ("wan_chunk", "wan_recache", "rolling_window", "qwen_decode", "wan_norms")
# 8-bit Q.K: the SageAttention papers' own error level on random data is under this
SAGE_TOLERANCE = 5e-2
WAN_GRID = (30, 52)  # latent h x w of one 480x832 Wan frame: 1560 tokens


@dataclass
class Case:
    name: str
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    rope: RopeSpec

    @property
    def flops(self) -> float:
        qi, ki = self.meta.q_indptr_host, self.meta.kv_indptr_host
        pairs = sum((qi[s + 1] - qi[s]) * (ki[s + 1] - ki[s]) for s in range(self.meta.num_seqs))
        return 4.0 * pairs * self.q.shape[1] * self.q.shape[2]

    @property
    def shape(self) -> str:
        m = self.meta
        return (
            f"{m.num_seqs}x({m.max_q_len}q x {m.max_kv_len}k) "
            f"H{self.q.shape[1]}/{self.k_cache.shape[1]} D{self.q.shape[2]}"
        )


def _wan_positions(first_frame: int, frames: int, grid: tuple[int, int]) -> torch.Tensor:
    t, h, w = torch.meshgrid(
        torch.arange(first_frame, first_frame + frames),
        torch.arange(grid[0]),
        torch.arange(grid[1]),
        indexing="ij",
    )
    return torch.stack([t.flatten(), h.flatten(), w.flatten()], 1).to(torch.int32)


def _qwen_positions(num_keys: int, gen: torch.Generator) -> torch.Tensor:
    """M-RoPE positions of a video prompt: text, a t/h/w grid of video tokens, text again."""
    prefix = int(torch.randint(16, 64, (), generator=gen))
    frames, h, w = max(1, (num_keys - 2 * prefix) // (18 * 32)), 18, 32
    video = _wan_positions(0, frames, (h, w)) + prefix
    video = video[: max(0, num_keys - 2 * prefix)]
    start = int(video.max()) + 1 if len(video) else prefix
    suffix = torch.arange(start, start + num_keys - prefix - len(video))
    text = torch.cat([torch.arange(prefix), suffix])[:, None].expand(-1, 3)
    return torch.cat([text[:prefix], video, text[prefix:]]).to(torch.int32)


def _fill_pool(
    kv_pos: list[torch.Tensor],
    q_pos: list[torch.Tensor],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    causal: bool,
    device: torch.device,
    gen: torch.Generator,
):
    """Random bf16 q/k/v, keys at random slots of a pool twice the size, packed metadata."""
    dtype = torch.bfloat16
    num_kv, num_q = sum(len(p) for p in kv_pos), sum(len(p) for p in q_pos)
    num_slots = 2 * num_kv
    k_cache = torch.zeros(num_slots, num_kv_heads, head_dim, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_slots, generator=gen)[:num_kv].to(torch.int32).to(device)
    k = torch.randn(num_kv, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    write_kv(k_cache, v_cache, slots, k, torch.randn(k.shape, generator=gen).to(device, dtype))
    q = torch.randn(num_q, num_q_heads, head_dim, generator=gen).to(device, dtype)
    q_indptr = [0] + torch.tensor([len(p) for p in q_pos]).cumsum(0).tolist()
    kv_indptr = [0] + torch.tensor([len(p) for p in kv_pos]).cumsum(0).tolist()
    meta = AttentionMetadata(
        q_pos=torch.cat(q_pos).to(device),
        kv_slots=slots,
        kv_pos=torch.cat(kv_pos).to(device),
        q_indptr=torch.tensor(q_indptr, dtype=torch.int32, device=device),
        kv_indptr=torch.tensor(kv_indptr, dtype=torch.int32, device=device),
        q_indptr_host=tuple(q_indptr),
        kv_indptr_host=tuple(kv_indptr),
        causal=causal,
    )
    meta.validate()
    return q, k_cache, v_cache, meta


def build_cases(quick: bool, device: torch.device, seed: int = 0) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    grid, heads, head_dim = ((3, 4), 2, 32) if quick else (WAN_GRID, 12, 128)
    cases = []
    # (name, query frames, key frames); queries are the last frames of the window, as in a
    # stream where the chunk's own keys were written last. Window start 40 frames in.
    for name, q_frames, kv_frames in [
        ("wan_chunk", 3, 12),
        ("wan_recache", 12, 12),
        ("rolling_window", 15, 21),
    ]:
        kv_pos = _wan_positions(40, kv_frames, grid)
        q_pos = kv_pos[len(kv_pos) - q_frames * grid[0] * grid[1] :]
        args = _fill_pool([kv_pos], [q_pos], heads, heads, head_dim, False, device, gen)
        cases.append(Case(name, *args, wan_rope(head_dim)))

    num_seqs, num_q_heads, num_kv_heads = (3, 4, 2) if quick else (16, 28, 4)
    num_keys = 77 if quick else 13_000  # equal lengths so that dense SDPA is one batched call
    kv_pos = [_qwen_positions(num_keys, gen) for _ in range(num_seqs)]
    q_pos = [p[-1:] for p in kv_pos]  # the newest token, its key already in the cache
    sections = (4, 6, 6) if quick else (16, 24, 24)
    args = _fill_pool(kv_pos, q_pos, num_q_heads, num_kv_heads, head_dim, True, device, gen)
    cases.append(Case("qwen_decode", *args, mrope(head_dim, sections=sections)))
    return cases


def dense_sdpa(case: Case) -> Callable[[], torch.Tensor]:
    """SDPA on pre-gathered, pre-rotated bf16 keys (every sequence has equal lengths)."""
    meta, s = case.meta, case.meta.num_seqs
    index = meta.kv_slots.long()
    k = apply_rope(case.k_cache.index_select(0, index), meta.kv_pos, case.rope)
    v = case.v_cache.index_select(0, index)
    q = apply_rope(case.q, meta.q_pos, case.rope)

    def batched(x: torch.Tensor) -> torch.Tensor:  # [S * L, H, D] -> [S, H, L, D]
        return x.to(torch.bfloat16).unflatten(0, (s, -1)).transpose(1, 2).contiguous()

    q, k, v = batched(q), batched(k), batched(v)
    # One query per sequence sees all its keys: no mask (is_causal would be top-left aligned).
    assert not meta.causal or meta.max_q_len == 1
    gqa = q.shape[1] != k.shape[1]
    return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


def bench_ms(fn: Callable[[], object], runs: int) -> float:
    """Median milliseconds: ``do_bench`` on CUDA, elsewhere of ``runs`` wall-clock runs after
    a warm one."""
    if torch.cuda.is_available():
        return triton.testing.do_bench(fn, return_mode="median")
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def run_kernels(
    device: torch.device, full_size: bool, cases: Sequence[str] = ()
) -> Iterator[tuple[str, Workload]]:
    """Yield ``(case name, workload)`` per case (``cases``: a subset of :data:`CASES`)."""
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown kernel cases {sorted(unknown)}; known: {CASES}")
    # the small cases are a smoke run of each variant, not a measurement (off CUDA, Triton
    # kernels run in its interpreter): one timed call; full size, the median of three
    runs = 3 if full_size else 1
    for case in build_cases(quick=not full_size, device=device):
        if not cases or case.name in cases:
            yield case.name, _run_case(case, runs)
    if not cases or "wan_norms" in cases:
        yield "wan_norms", _run_norms(device, full_size, runs)


def _rel_err(
    fn: Callable[..., torch.Tensor],
    args: tuple,
    ref: torch.Tensor,
    what: str,
    tolerance: float = 1e-2,
) -> float:
    out = fn(*args).float()
    rel_err = (torch.linalg.norm(out - ref) / torch.linalg.norm(ref)).item()
    if not rel_err < tolerance:
        raise AssertionError(f"{what} disagrees with the torch twin ({rel_err:.2e})")
    return rel_err


def _run_case(case: Case, runs: int) -> Workload:
    args = (case.q, case.k_cache, case.v_cache, case.meta, case.rope)
    ref = paged_attention_ref(*args).float()
    rel_err = _rel_err(paged_attention_triton, args, ref, f"{case.name}: Triton")
    fused_err = _rel_err(paged_attention_sdpa_fused, args, ref, f"{case.name}: sdpa_fused")
    fp8 = tuple(to_cache_dtype(c, torch.float8_e4m3fn) for c in (case.k_cache, case.v_cache))
    args8 = (case.q, *fp8, case.meta, case.rope)
    ref8 = paged_attention_ref(*args8).float()
    fp8_diff = (torch.linalg.norm(ref8 - ref) / torch.linalg.norm(ref)).item()
    fp8_err = _rel_err(paged_attention_triton, args8, ref8, f"{case.name}: Triton, FP8 cache")
    _rel_err(paged_attention_sdpa_fused, args8, ref8, f"{case.name}: sdpa_fused, FP8 cache")
    sage = []
    if case.q.is_cuda and sage_attention.available():
        sage_err = _rel_err(
            sage_attention.paged_attention_sage, args, ref, f"{case.name}: sage", SAGE_TOLERANCE
        )
        sage.append(
            (
                "sage",
                "SageAttention (INT8 Q.K, FP16 P.V) over keys gathered and rotated by one "
                "Triton pass",
                lambda: sage_attention.paged_attention_sage(*args),
            )
        )
    del ref, ref8
    variants = {}
    for name, description, fn in [
        ("triton", "Triton, gather and RoPE in the kernel", lambda: paged_attention_triton(*args)),
        (
            "sdpa_paged",
            "fused SDPA over keys gathered and rotated from the pool by torch ops",
            lambda: paged_attention_sdpa(*args),
        ),
        (
            "sdpa_fused",
            "fused SDPA over keys gathered and rotated by one Triton pass",
            lambda: paged_attention_sdpa_fused(*args),
        ),
        ("dense", "fused SDPA over contiguous, pre-rotated keys (the floor)", dense_sdpa(case)),
        ("twin", "the float32 torch twin", lambda: paged_attention_ref(*args)),
        (
            "triton_fp8kv",
            "Triton over the pool stored as FP8 (e4m3)",
            lambda: paged_attention_triton(*args8),
        ),
        (
            "sdpa_fused_fp8kv",
            "sdpa_fused over the pool stored as FP8 (e4m3)",
            lambda: paged_attention_sdpa_fused(*args8),
        ),
        *sage,
    ]:
        ms = bench_ms(fn, runs)
        variant = variants[name] = Variant(description)
        variant.add_figure("ms", ms, "ms", "per call, median")
        variant.add_figure("tflops", case.flops / ms / 1e9, "TFLOP/s", "achieved")
    config = {
        "shape": case.shape,
        "flops": case.flops,
        "dtype": str(case.q.dtype).removeprefix("torch."),
        "rel_err_vs_twin": rel_err,
        "rel_err_sdpa_fused_vs_twin": fused_err,
        "rel_err_fp8kv_vs_twin": fp8_err,  # Triton against the twin, both over the FP8 pool
        "fp8kv_rel_diff": fp8_diff,
    }
    if sage:
        config["rel_err_sage_vs_twin"] = sage_err
    return Workload(f"{case.name}: {case.shape}", config, variants, "triton")


def _run_norms(device: torch.device, full_size: bool, runs: int) -> Workload:
    """One block's elementwise work over a LongLive chunk (3 frames x 1560 tokens, dim 1536)."""
    frames, tokens, dim = (3, 1560, 1536) if full_size else (3, 12, 64)
    dtype, eps = torch.bfloat16, 1e-6
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    x, y = randn(1, frames * tokens, dim), randn(1, frames * tokens, dim)
    shift, scale, gate = randn(1, frames, 6, dim, dtype=torch.float32).chunk(6, dim=2)[:3]
    w_q, w_k, w_3, b_3 = (randn(dim) for _ in range(4))

    def block(ops) -> Callable[[], object]:
        layer_norm, gated_residual, rms_norm, rms_norm_pair = ops

        def run() -> None:  # the calls of WanBlock.forward, in order
            layer_norm(x, eps, scale=scale, shift=shift)
            rms_norm_pair(y, y, w_q, w_k, eps)
            gated_residual(x, y, gate)
            layer_norm(x, eps, w_3, b_3)
            rms_norm(y, w_q, eps)
            layer_norm(x, eps, scale=scale, shift=shift)
            gated_residual(x, y, gate)

        return run

    fused = (
        triton_norms.layer_norm,
        triton_norms.gated_residual,
        triton_norms.rms_norm,
        triton_norms.rms_norm_pair,
    )
    twins = (
        norms.layer_norm_ref,
        norms.gated_residual_ref,
        norms.rms_norm_ref,
        norms.rms_norm_pair_ref,
    )
    args = (x, eps, None, None, scale, shift)
    ref = norms.layer_norm_ref(*args).float()
    rel_err = _rel_err(triton_norms.layer_norm, args, ref, "wan_norms: fused LayerNorm")
    variants = {}
    for name, description, ops in [
        ("fused", "fused Triton kernels, one pass each", fused),
        ("torch", "the torch code (float32 intermediates)", twins),
    ]:
        variant = variants[name] = Variant(description)
        variant.add_figure("ms", bench_ms(block(ops), runs), "ms", "per block, median")
    shape = f"{frames * tokens} tokens x {dim}"
    config = {"shape": shape, "dtype": "bfloat16", "rel_err_vs_twin": rel_err}
    return Workload(f"wan_norms: {shape}", config, variants, "fused")
