"""Attention over a paged KV cache with rotary embedding applied from logical positions.

The cache stores keys *un-rotated*, one row per slot, shared by every sequence of a pool::

    k_cache, v_cache: [num_slots, H_kv, D]     (one layer of the pool)

A step's metadata (built once on the host, shared by all layers) lists, per sequence ``s``,
the slots it reads and the logical position of each, packed back to back::

    q        [N_q, H_q, D]    q_indptr  = [0, q_len_0, q_len_0 + q_len_1, ...]
    kv_slots [N_kv]           kv_indptr = [0, kv_len_0, ...]
    q_pos    [N_q, 3]  kv_pos [N_kv, 3]    int32 (t, h, w); 1D text repeats one value

The new tokens' own keys are written to their slots first (:func:`write_kv`) and appear at the
*end* of their sequence's kv list, so causal masking is bottom-right aligned::

    causal:  query i of q_len queries over kv_len keys sees keys j <= kv_len - q_len + i
    full:    every query sees all kv_len keys (a video chunk attends to itself bidirectionally)

Grouped-query attention: query head h reads kv head ``h // (H_q // H_kv)``.

The cache may hold the model's dtype or **unscaled FP8** (``torch.float8_e4m3fn``, half of
bf16's bytes), as vLLM's default fp8 KV cache with scale 1.0: :func:`write_kv` clamps to
``+-448`` (past it, what a cast gives depends on the backend: torch's CPU cast saturates, a
non-saturating one gives NaN) and rounds to e4m3 (:func:`to_cache_dtype`); every backend reads
the rows back into float32 or the compute dtype. There are no per-block
scales because e4m3 is a floating-point format: a scale only moves the range against overflow
(past 448) and underflow (below 2^-9), and Wan's keys are RMS-normed (q/k norm) and its values
small, so they sit well inside it; the toy-world quality delta (docs/evals.md) is the check.
The known limit: a model whose keys or values have outliers past 448 would be clipped, and
needs per-block (or per-head) scales before it can use this cache.

:func:`paged_attention_ref` is the plain-torch twin (gather, rotate, SDPA in float32);
:func:`paged_attention_sdpa` is the same in the input dtype, so torch's fused kernels run (the
baseline on CUDA). The Triton kernels in :mod:`kernels.triton_attention` have the same signature,
as does :mod:`kernels.triton_gather`'s ``sdpa_fused`` (SDPA over keys gathered and rotated by one
Triton pass); :mod:`kernels.backends` names them all and dispatches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from framestream.kernels.rope import RopeSpec, apply_rope

__all__ = [
    "AttentionMetadata",
    "DECODE_MAX_Q_LEN",
    "AttentionFn",
    "FP8_E4M3_MAX",
    "attend_sequence",
    "attend_sequences",
    "fused_kernels",
    "paged_attention_ref",
    "paged_attention_sdpa",
    "to_cache_dtype",
    "write_kv",
]

# The largest finite e4m3fn value; the FP8 cache clamps to it, so nothing past it is cast.
FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max


@dataclass(slots=True)
class AttentionMetadata:
    """Where every sequence's keys live and where its tokens sit; one per step, all layers.

    Device tensors are read by kernels; the ``*_host`` copies let the host size grids and loop
    without synchronising the device.
    """

    q_pos: torch.Tensor  # int32 [N_q, 3], logical positions of the queries
    kv_slots: torch.Tensor  # int32 [N_kv], pool slot of every key, per sequence, in order
    kv_pos: torch.Tensor  # int32 [N_kv, 3], logical position of every key
    q_indptr: torch.Tensor  # int32 [S + 1]
    kv_indptr: torch.Tensor  # int32 [S + 1]
    q_indptr_host: tuple[int, ...]  # same values as q_indptr, on the host
    kv_indptr_host: tuple[int, ...]  # same values as kv_indptr, on the host
    causal: bool  # bottom-right causal (text) or full (video chunk)

    max_q_len: int = field(init=False)  # longest sequence's queries, derived from the indptr
    max_kv_len: int = field(init=False)  # longest sequence's keys

    def __post_init__(self) -> None:
        self.max_q_len = _longest(self.q_indptr_host)
        self.max_kv_len = _longest(self.kv_indptr_host)

    @property
    def num_seqs(self) -> int:
        return len(self.q_indptr_host) - 1

    def validate(self) -> None:
        """Check the host-visible invariants; raises ``ValueError`` naming the broken one."""
        qi, ki = self.q_indptr_host, self.kv_indptr_host
        if len(qi) != len(ki) or len(qi) < 2:
            raise ValueError(
                f"q_indptr ({len(qi)}) and kv_indptr ({len(ki)}) need S+1 >= 2 entries"
            )
        for s in range(len(qi) - 1):
            q_len, kv_len = qi[s + 1] - qi[s], ki[s + 1] - ki[s]
            if q_len < 0 or kv_len < 0:
                raise ValueError(f"sequence {s}: negative length (q {q_len}, kv {kv_len})")
            if self.causal and q_len > kv_len:
                raise ValueError(f"sequence {s}: causal with {q_len} queries but {kv_len} keys")
            if q_len and not kv_len:
                raise ValueError(f"sequence {s}: {q_len} queries attend to no key")
        if self.q_pos.shape != (qi[-1], 3):
            raise ValueError(f"q_pos shape {tuple(self.q_pos.shape)} != ({qi[-1]}, 3)")
        if self.kv_pos.shape != (ki[-1], 3) or self.kv_slots.shape != (ki[-1],):
            raise ValueError(
                f"kv_slots {tuple(self.kv_slots.shape)} / kv_pos {tuple(self.kv_pos.shape)} "
                f"do not match kv_indptr total {ki[-1]}"
            )


def _longest(indptr: tuple[int, ...]) -> int:
    return max((b - a for a, b in zip(indptr, indptr[1:], strict=False)), default=0)


def fused_kernels(device: torch.device) -> bool:
    """Whether the fused Triton kernels (norms, activations, cache writes) run on ``device``:
    on CUDA, unless ``STREAM_FUSED_KERNELS=0``; ``=1`` forces them anywhere (CPU tests, under
    Triton's interpreter). The kernels have no backward, so a forward that records gradients
    (training) always runs the torch code, as does every other device, and so does code being
    compiled (``torch.compile`` fuses the torch code itself)."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    setting = os.environ.get("STREAM_FUSED_KERNELS")
    return device.type == "cuda" if setting is None else setting != "0"


def write_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Store un-rotated ``k``/``v`` ``[N, H_kv, D]`` into ``slots`` ``[N]`` of one layer's cache.

    Graph-safe (a scatter; no host sync). Overwriting already-cached slots is how recompute
    passes (the t=0 refresh, KV-recache) replace K/V in place. Rows are converted by
    :func:`to_cache_dtype` (an FP8 cache: clamped, rounded to e4m3). Where
    :func:`fused_kernels` says so, one Triton launch (:mod:`kernels.triton_cache`) instead of
    two ``index_copy_``.
    """
    if fused_kernels(k.device):
        from framestream.kernels.triton_cache import (
            write_kv_triton,  # triton may be missing elsewhere
        )

        write_kv_triton(k_cache, v_cache, slots, k, v)
        return
    index = slots.long()
    for cache, x in ((k_cache, k), (v_cache, v)):
        _indexable(cache).index_copy_(0, index, _indexable(to_cache_dtype(x, cache.dtype)))


def _indexable(rows: torch.Tensor) -> torch.Tensor:
    """``rows``, or their bytes where they are FP8: ``index_copy_`` and ``index_select`` have no
    float8 kernel on the CPU, and moving whole rows as bytes is the same copy."""
    return rows.view(torch.uint8) if rows.dtype == torch.float8_e4m3fn else rows


def to_cache_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as cache rows of ``dtype``: a plain cast, except that ``float8_e4m3fn`` is first
    clamped to ``+-FP8_E4M3_MAX`` (unscaled FP8; see the module docstring) and then rounded to
    nearest even, as the Triton store does."""
    if dtype == torch.float8_e4m3fn:
        x = x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return x.to(dtype)


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain-torch twin: gather the keys, rotate queries and keys, SDPA per sequence in float32.

    Args:
        q: ``[N_q, H_q, D]`` un-rotated queries.
        k_cache, v_cache: ``[num_slots, H_kv, D]`` one layer of the pool.
        meta: the step's :class:`AttentionMetadata`.
        rope: rotation of the model.
        scale: softmax scale, ``D ** -0.5`` by default.

    Returns:
        ``[N_q, H_q, D]`` in ``q.dtype``.
    """
    return _gather_rotate_attend(q, k_cache, v_cache, meta, rope, scale, torch.float32)


def paged_attention_sdpa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """The twin computed in ``q.dtype`` so torch picks its fused SDPA kernels (cuDNN, flash):
    rotation in float32, rounded once. The baseline for the Triton kernels on CUDA."""
    return _gather_rotate_attend(q, k_cache, v_cache, meta, rope, scale, q.dtype)


def _gather_rotate_attend(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    index = meta.kv_slots.long()
    keys = apply_rope(_gather(k_cache, index), meta.kv_pos, rope).to(compute_dtype)
    values = _gather(v_cache, index).to(compute_dtype)
    queries = apply_rope(q, meta.q_pos, rope).to(compute_dtype)
    qi, ki = meta.q_indptr_host, meta.kv_indptr_host

    def sequence(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            queries[qi[s] : qi[s + 1]].transpose(0, 1),  # [H_q, q_len, D]
            keys[ki[s] : ki[s + 1]].transpose(0, 1),
            values[ki[s] : ki[s + 1]].transpose(0, 1),
        )

    out = torch.empty(q.shape, dtype=compute_dtype, device=q.device)
    return attend_sequences(out, meta, sequence, scale).to(q.dtype)


def _gather(cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``cache``, in its dtype (:func:`_indexable`); a cache that is not FP8
    stays differentiable (training through the dense context gathers its keys here)."""
    rows = _indexable(cache).index_select(0, index)
    return rows if rows.dtype == cache.dtype else rows.view(cache.dtype)


def attend_sequences(
    out: torch.Tensor,
    meta: AttentionMetadata,
    sequence: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scale: float | None,
    attend: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attend`` (:func:`attend_sequence` unless given, same signature) for every sequence of
    ``meta`` with queries, written into ``out [N_q, H_q, D]``; ``sequence(s)`` gives its rotated
    ``q, k, v`` as ``[H, len, D]``."""
    attend = attend or attend_sequence
    qi = meta.q_indptr_host
    for s in range(meta.num_seqs):
        if qi[s + 1] == qi[s]:
            continue
        o = attend(*sequence(s), meta.causal, scale)
        out[qi[s] : qi[s + 1]] = o.transpose(0, 1)
    return out


def attend_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None
) -> torch.Tensor:
    """SDPA of one sequence: ``q [H_q, q_len, D]`` over ``k, v [H_kv, kv_len, D]``, already
    rotated; causal is bottom-right aligned. Returns ``[H_q, q_len, D]``.

    The bottom-right mask is torch's :func:`causal_lower_right` bias rather than a boolean
    matrix: with it SDPA keeps the flash kernel (GQA included). An explicit mask needs a masked
    kernel and the mask's own ``q_len x kv_len`` bytes every layer, which made a StreamingVLM
    round's prefill markedly slower (docs/perf-notes.md, change 8).
    """
    mask = causal_lower_right(q.shape[1], k.shape[1]) if causal else None
    o = F.scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=q.shape[0] != k.shape[0]
    )
    return o[0]


AttentionFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, RopeSpec, "float | None"],
    torch.Tensor,
]
# Up to this many queries per sequence a step is decode-shaped (split-K pays off).
DECODE_MAX_Q_LEN = 32
