"""Triton paged attention with rotary embedding applied inside the kernel.

Same contract as :func:`kernels.attention.paged_attention_ref`: keys sit *un-rotated* in a slot
pool, every key is gathered through ``meta.kv_slots`` and rotated from ``meta.kv_pos`` while it is
loaded, queries are rotated from ``meta.q_pos``, and the softmax runs online in float32 (the
flash-attention recurrence with ``exp2``). Two kernels share one inner loop,
:func:`~kernels.triton_kernels._attend_keys`. The ``@triton.jit`` device code is in
:mod:`kernels.triton_kernels`; this module holds the host wrappers and registers the ``triton``
backend.

**Chunk / prefill** (``max_q_len > 32``: a Wan chunk, a recache, a long text prompt). One program
owns ``BLOCK_M`` queries of one head of one sequence and sweeps that sequence's keys::

        grid = (cdiv(max_q_len, BLOCK_M), H_q, S)

                  keys of sequence s (gathered by slot, rotated) ->
               +--------+--------+--------+--------+
    q tile m   | BLOCK_N| BLOCK_N|  ...   |        |    acc, max, sum in registers,
    head h     +--------+--------+--------+--------+    written once, in q.dtype

**Decode** (``max_q_len <= 32``: one or a few new text tokens per sequence, many cached keys).
There are too few queries to fill a tile per head, so one program takes *all* query heads of a
GQA group times all query tokens of the sequence as its rows (``row = token * GROUP + head``);
every key is loaded and rotated once per group instead of once per query head. The keys are
split over a third grid axis (flash-decoding) so that 16 sequences x 4 kv heads still fill the
GPU::

        grid = (S, H_kv, SPLITS)

                    split 0        split 1               split SPLITS-1
               +--------------+--------------+-- ... --+--------------+
    GROUP x    | acc, max, sum| acc, max, sum|         | acc, max, sum|  -> fp32 workspace
    q tokens   +--------------+--------------+-- ... --+--------------+
                                     |
                  combine: grid = (N_q, H_q), rescale by the split maxima, sum, divide

The rotation works on pairs, as :class:`RopeSpec` defines it (:meth:`RopeSpec.per_dim` spells
the same map out per dim): pair ``j`` turns by ``a = pos[axis[j]] * inv_freq[j]``. A kernel loads
a row as its two pair halves ``(x_a, x_b)`` (interleaved: one load, split in registers;
rotate-half: two contiguous half loads), rotates them in float32 with one cos/sin per *pair*,
and takes ``q . k`` as ``q_a . k_a + q_b . k_b``, so the model's dim order is never rebuilt.
cos/sin come from :func:`~kernels.triton_kernels._sincos` (FMA range reduction and
polynomials), not libdevice.

An FP8 cache (``float8_e4m3fn``, see :mod:`kernels.attention`) needs nothing of its own: keys are
converted to float32 as they are loaded and rotated, values to the dot dtype, which stays the
queries' 16-bit dtype because every e4m3 value is exact in it (:func:`_dot_config`).

Its speed beside SDPA on the workloads' shapes is measured by ``stream bench --suite kernels``
(BENCHMARKS.md): the decode kernel is what ``auto`` runs for decode-shaped steps, and the
prefill kernel trails dense cuDNN SDPA on pre-rotated keys. Every key is rotated once per query
tile in the prefill kernel; that and the pointer gathers (no TMA) are the gap.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from framestream.kernels.attention import DECODE_MAX_Q_LEN, AttentionMetadata
from framestream.kernels.rope import RopeSpec
from framestream.kernels.triton_kernels import _combine_kernel, _decode_kernel, _prefill_kernel
from framestream.kernels.triton_launch import Launcher, cdiv, next_power_of_2

__all__ = [
    "DECODE_MAX_Q_LEN",
    "decode_attention",
    "paged_attention_triton",
    "prefill_attention",
]

# --------------------------------------------------------------------------------------------
# Host code
# --------------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634
_TORCH_TO_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}

# Pair tables (inv_freq, axis) per RopeSpec (by identity) and device; they die with the spec.
_ROPE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rope_tables(rope: RopeSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    per_device = _ROPE_TABLES.setdefault(rope, {})
    if device not in per_device:  # one copy per spec and device: no host-device traffic later
        per_device[device] = (
            rope.inv_freq.to(device, torch.float32).contiguous(),
            rope.axis.to(device, torch.int32).contiguous(),
        )
    return per_device[device]


def check_operands(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    rope: RopeSpec,
    min_head_dim: int = 32,
) -> int:
    """Validate the shapes a Triton attention kernel takes; return the GQA group size.

    The head dim must be a power of two (``tl.arange`` spans a pair half) of at least
    ``min_head_dim``: the attention kernels make each pair half a matrix-product operand of
    ``HEAD_DIM // 2 >= 16`` columns; the gather kernel only loads it, so any power of two does.
    """
    head_dim = q.shape[-1]
    if k_cache.shape != v_cache.shape or k_cache.shape[-1] != head_dim:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} "
            f"do not match q {tuple(q.shape)}"
        )
    if head_dim != rope.head_dim or head_dim < min_head_dim or head_dim & (head_dim - 1):
        raise ValueError(
            f"head_dim {head_dim} must be a power of two >= {min_head_dim} and match the rope"
        )
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    return num_q_heads // num_kv_heads


def _dot_config(q: torch.Tensor, k_cache: torch.Tensor) -> tuple[tl.dtype, str]:
    """Tensor-core input type: the queries' 16-bit dtype when the cache's rows convert to it
    exactly (the same dtype, or FP8: every e4m3 value is a bfloat16 and a float16), else
    float32 (exact).

    The CPU interpreter multiplies bfloat16 blocks wrongly (NumPy has no bfloat16), so there
    bfloat16 inputs are multiplied in float32 after the loads.
    """
    half = (torch.float16,) if triton.knobs.runtime.interpret else (torch.float16, torch.bfloat16)
    exact = k_cache.dtype in (q.dtype, torch.float8_e4m3fn)
    if exact and q.dtype in half:
        return _TORCH_TO_TL[q.dtype], "tf32"  # precision only matters for float32 inputs
    return tl.float32, "ieee"


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_contiguous() else x.contiguous()  # no op call when it already is


def _common_args(meta: AttentionMetadata, rope: RopeSpec, device: torch.device) -> list:
    return [
        _contiguous(meta.q_pos),
        _contiguous(meta.kv_pos),
        _contiguous(meta.kv_slots),
        meta.q_indptr,
        meta.kv_indptr,
        *_rope_tables(rope, device),
    ]


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The chunk/prefill kernel for any query count; see :func:`paged_attention_triton`."""
    group = check_operands(q, k_cache, v_cache, rope)
    num_tokens, num_q_heads, head_dim = q.shape
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    on_gpu = q.device.type == "cuda"
    # Tuned on an H200 (Wan chunk, bf16): 128 x 128 tiles, 8 warps, 3 stages; float32 tiles
    # take half the keys and 2 stages to fit shared memory. The interpreter (CPU) runs the same
    # code fastest on small tiles.
    wide = k_cache.element_size() > 2
    block_m = block_m or (128 if on_gpu else 16)
    block_n = block_n or ((64 if wide else 128) if on_gpu else 16)
    num_stages = num_stages or (2 if wide else 3)
    dot_dtype, precision = _dot_config(q, k_cache)
    scale = head_dim**-0.5 if scale is None else scale
    grid = (triton.cdiv(meta.max_q_len, block_m), num_q_heads, meta.num_seqs)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *out.stride(),
        *_common_args(meta, rope, q.device),
        scale * _LOG2E,
        GROUP=group,
        HEAD_DIM=head_dim,
        INTERLEAVED=rope.interleaved,
        CAUSAL=meta.causal,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=num_warps or (8 if on_gpu else 4),
        num_stages=num_stages,
    )
    return out


_SM_COUNT: dict[int, int] = {}
# A decode step is host-bound: its kernels launch through Launcher (kernels.triton_launch).
_decode = Launcher(_decode_kernel)
_combine = Launcher(_combine_kernel)


def _num_splits(device: torch.device, programs: int, max_kv_len: int, block_n: int) -> int:
    """Enough key splits for about four programs per SM (best on an H200 for Qwen decode),
    never more than there are key blocks."""
    if device.type != "cuda":
        return max(1, min(4, cdiv(max_kv_len, block_n)))
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    wanted = cdiv(4 * _SM_COUNT[index], programs)
    return max(1, min(wanted, cdiv(max_kv_len, block_n), 64))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The split-key decode kernel plus combine; for ``meta.max_q_len <= DECODE_MAX_Q_LEN``."""
    group = check_operands(q, k_cache, v_cache, rope)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    if meta.max_q_len > DECODE_MAX_Q_LEN:
        raise ValueError(
            f"decode kernel takes <= {DECODE_MAX_Q_LEN} queries per sequence, got {meta.max_q_len}"
        )
    on_gpu = q.device.type == "cuda"
    # Tuned on an H200 (Qwen2.5-VL decode, bf16); float32 keys take one stage less.
    block_n = block_n or (64 if on_gpu else 16)
    num_stages = num_stages or (2 if k_cache.element_size() > 2 else 3)
    block_m = max(16, next_power_of_2(group * meta.max_q_len))  # tl.dot needs >= 16 rows
    splits = num_splits or _num_splits(
        q.device, meta.num_seqs * num_kv_heads, meta.max_kv_len, block_n
    )
    dot_dtype, precision = _dot_config(q, k_cache)
    scale = head_dim**-0.5 if scale is None else scale
    # No zero-fill: every (token, head, split) row is written by exactly one decode program.
    acc = torch.empty(
        (num_tokens, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device
    )
    ml = torch.empty((num_tokens, num_q_heads, splits, 2), dtype=torch.float32, device=q.device)
    _decode(
        (meta.num_seqs, num_kv_heads, splits),
        q,
        k_cache,
        v_cache,
        acc,
        ml,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *_common_args(meta, rope, q.device),
        scale * _LOG2E,
        num_q_heads,
        GROUP=group,
        HEAD_DIM=head_dim,
        INTERLEAVED=rope.interleaved,
        CAUSAL=meta.causal,
        SPLITS=splits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=num_warps or 4,
        num_stages=num_stages,
    )
    _combine(
        (num_tokens, num_q_heads),
        acc,
        ml,
        out,
        *out.stride(),
        num_q_heads,
        HEAD_DIM=head_dim,
        SPLITS=splits,
        SPLITS_P2=next_power_of_2(splits),
        num_warps=4 if on_gpu else 1,
    )
    return out


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """Triton twin of :func:`kernels.attention.paged_attention_ref` (same arguments, result).

    Few queries per sequence (``<= DECODE_MAX_Q_LEN``) take the split-key decode kernel, the
    rest the prefill kernel. Grids come from the host copies in ``meta``; nothing syncs.
    """
    if meta.max_q_len <= DECODE_MAX_Q_LEN:
        return decode_attention(q, k_cache, v_cache, meta, rope, scale)
    return prefill_attention(q, k_cache, v_cache, meta, rope, scale)
