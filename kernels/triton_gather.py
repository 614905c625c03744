"""One Triton pass that gathers and rotates a step's keys for SDPA: the ``sdpa_fused`` backend.

:func:`kernels.attention.paged_attention_sdpa` prepares SDPA's operands in torch: an
``index_select`` of keys and values from the slot pool, :func:`~kernels.rope.apply_rope` in
float32 on keys and queries (a dozen passes over float32 copies), casts, and transposed views.
On a Wan chunk that costs more than the attention itself saves over the dense floor. Here one
kernel launch reads every key and value once through ``meta.kv_slots``, rotates the keys from
``meta.kv_pos`` (float32, rounded once to ``q.dtype``, the same math as ``apply_rope``) and
writes both in the layout SDPA reads fastest; a second launch rotates the queries::

    packed [N, H, D] (queries: in order; keys, values: by slot from the pool)
                 |  grid = (cdiv(max_len, BLOCK_N), H, S)
                 v
    flat buffer:  | seq 0: [H, len_0, D] | seq 1: [H, len_1, D] | ...
                  ^ element 0            ^ element kv_indptr[1] * H * D

so sequence ``s`` is the contiguous ``[H, len_s, D]`` view at ``indptr[s] * H * D``. SDPA then
runs per sequence (:func:`kernels.attention.attend_sequences`), as in the torch path. Where a
step's sequences are many and short (a batched StreamingVLM prefill), the same pass writes
them packed token-major instead, ``[N, H, D]``, and one varlen call attends them all
(:mod:`kernels.varlen`). An FP8
cache is read the same way: its rows are converted when loaded, so SDPA sees ``q.dtype``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from framestream.kernels.attention import AttentionMetadata, attend_sequences
from framestream.kernels.rope import RopeSpec
from framestream.kernels.triton_attention import _rope_tables, check_operands
from framestream.kernels.triton_kernels import _load_rotated
from framestream.kernels.varlen import attend_packed, use_varlen

__all__ = ["attend_gathered", "gather_rotate", "paged_attention_sdpa_fused", "sequence_view"]


@triton.jit
def _gather_rotate_kernel(
    x_ptr,
    v_ptr,
    x_out_ptr,
    v_out_ptr,
    stride_xn,
    stride_xh,
    stride_xd,
    stride_vn,
    stride_vh,
    stride_vd,
    slots_ptr,
    pos_ptr,
    indptr_ptr,
    freq_ptr,
    axis_ptr,
    num_heads,
    GATHER: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    TOKEN_MAJOR: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Rotate ``BLOCK_N`` rows of one head of one sequence of ``x`` into ``x_out``: head-major
    per sequence, or with ``TOKEN_MAJOR`` packed ``[N, H, D]`` (the varlen kernel's layout).

    With ``GATHER`` (keys), rows are read through ``slots`` and the same rows of ``v`` are
    copied to ``v_out`` by the same program; without (queries), rows are read in order.
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    pid = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    start = tl.load(indptr_ptr + seq)
    length = tl.load(indptr_ptr + seq + 1) - start
    if pid * BLOCK_N >= length:  # the grid is sized for the longest sequence
        return
    tok = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = tok < length
    rows = (start + tok).to(tl.int64)  # packed index: position row, and source row unless GATHER
    src = rows
    if GATHER:
        src = tl.load(slots_ptr + rows, mask=mask, other=0).to(tl.int64)
    freq = tl.load(freq_ptr + tl.arange(0, HALF))
    axis = tl.load(axis_ptr + tl.arange(0, HALF))
    a, b = _load_rotated(
        x_ptr,
        src * stride_xn + head * stride_xh,
        stride_xd,
        pos_ptr,
        rows,
        mask,
        freq,
        axis,
        BLOCK_N,
        HEAD_DIM,
        INTERLEAVED,
    )
    if TOKEN_MAJOR:  # row tok of head h of sequence s: element ((indptr[s] + tok) * H + h) * D
        out_row = ((rows * num_heads + head) * HEAD_DIM)[:, None]
    else:  # element (indptr[s] * H + h * len_s + tok) * D
        out_row = ((start.to(tl.int64) * num_heads + head * length + tok) * HEAD_DIM)[:, None]
    out_ty = x_out_ptr.dtype.element_ty
    if INTERLEAVED:  # pair j back to dims (2j, 2j+1)
        dims = tl.arange(0, HEAD_DIM)[None, :]
        pairs = tl.reshape(tl.join(a, b), [BLOCK_N, HEAD_DIM])
        tl.store(x_out_ptr + out_row + dims, pairs.to(out_ty), mask=mask[:, None])
    else:  # pair j back to dims (j, j + D/2)
        half = tl.arange(0, HALF)[None, :]
        tl.store(x_out_ptr + out_row + half, a.to(out_ty), mask=mask[:, None])
        tl.store(x_out_ptr + out_row + HALF + half, b.to(out_ty), mask=mask[:, None])
    if GATHER:
        dims = tl.arange(0, HEAD_DIM)[None, :]
        v_off = src[:, None] * stride_vn + head * stride_vh + dims * stride_vd
        v = tl.load(v_ptr + v_off, mask=mask[:, None], other=0.0)
        tl.store(v_out_ptr + out_row + dims, v.to(v_out_ptr.dtype.element_ty), mask=mask[:, None])


def _launch(
    x: torch.Tensor,
    x_out: torch.Tensor,
    pos: torch.Tensor,
    indptr: torch.Tensor,
    max_len: int,
    rope: RopeSpec,
    gather: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    token_major: bool = False,
) -> None:
    """Rotate ``x`` into ``x_out``; with ``gather = (slots, v, v_out)`` read ``x`` and ``v``
    rows through ``slots`` and copy ``v`` into ``v_out`` in the same programs."""
    num_heads, head_dim = x.shape[1], x.shape[2]
    if pos.shape[0] == 0:
        return
    slots, v, v_out = gather if gather is not None else (indptr, x, x_out)  # unread if None
    on_gpu = x.device.type == "cuda"
    # 64 rows x 128 dims of bf16 per program streams at full bandwidth; the interpreter is
    # fastest on small tiles.
    block_n = 64 if on_gpu else 16
    _gather_rotate_kernel[(triton.cdiv(max_len, block_n), num_heads, len(indptr) - 1)](
        x,
        v,
        x_out,
        v_out,
        *x.stride(),
        *v.stride(),
        slots,
        pos.contiguous(),
        indptr,
        *_rope_tables(rope, x.device),
        num_heads,
        GATHER=gather is not None,
        HEAD_DIM=head_dim,
        INTERLEAVED=rope.interleaved,
        TOKEN_MAJOR=token_major,
        BLOCK_N=block_n,
        num_warps=4 if on_gpu else 1,
    )


def gather_rotate(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    token_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotated queries, gathered rotated keys and gathered values, flat and head-major.

    Args:
        q: ``[N_q, H_q, D]`` un-rotated queries (any strides).
        k_cache, v_cache: ``[num_slots, H_kv, D]`` one layer of the pool.
        meta: the step's metadata; ``rope``: the model's rotation.
        token_major: lay the buffers out as packed ``[N, H, D]`` instead (view them so).

    Returns:
        Flat ``q.dtype`` buffers of ``N_q * H_q * D`` and ``N_kv * H_kv * D`` elements; see
        :func:`sequence_view` for sequence ``s``'s ``[H, len_s, D]`` block.
    """
    check_operands(q, k_cache, v_cache, rope, min_head_dim=2)
    queries = torch.empty(q.numel(), dtype=q.dtype, device=q.device)
    kv_numel = meta.kv_slots.shape[0] * k_cache.shape[1] * k_cache.shape[2]
    keys = torch.empty(kv_numel, dtype=q.dtype, device=q.device)
    values = torch.empty_like(keys)
    _launch(q, queries, meta.q_pos, meta.q_indptr, meta.max_q_len, rope, None, token_major)
    gather = (meta.kv_slots.contiguous(), v_cache, values)
    _launch(k_cache, keys, meta.kv_pos, meta.kv_indptr, meta.max_kv_len, rope, gather, token_major)
    return queries, keys, values


def sequence_view(
    flat: torch.Tensor, indptr_host: tuple[int, ...], seq: int, num_heads: int, head_dim: int
) -> torch.Tensor:
    """Sequence ``seq``'s contiguous ``[H, len, D]`` block of a :func:`gather_rotate` buffer."""
    start, end = indptr_host[seq], indptr_host[seq + 1]
    row = num_heads * head_dim
    return flat[start * row : end * row].view(num_heads, end - start, head_dim)


def paged_attention_sdpa_fused(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`kernels.attention.paged_attention_sdpa` with its operands prepared by
    :func:`gather_rotate`: same arguments, same result up to rounding (both rotate in float32
    and round once to ``q.dtype``). Where :func:`kernels.varlen.use_varlen` says so, the
    operands are packed token-major and every sequence is attended in one varlen call."""
    num_kv_heads, head_dim = k_cache.shape[1], q.shape[2]
    if use_varlen(q, q, meta):  # the keys are gathered into q's dtype
        queries, keys, values = gather_rotate(q, k_cache, v_cache, meta, rope, token_major=True)
        return attend_packed(
            queries.view(q.shape),
            keys.view(-1, num_kv_heads, head_dim),
            values.view(-1, num_kv_heads, head_dim),
            meta,
            scale,
        )
    return attend_gathered(q, k_cache, v_cache, meta, rope, scale)


def attend_gathered(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
    attend: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attend`` (SDPA unless given; :func:`kernels.attention.attend_sequence`'s signature)
    per sequence, over the operands :func:`gather_rotate` prepares head-major."""
    num_q_heads, num_kv_heads, head_dim = q.shape[1], k_cache.shape[1], q.shape[2]
    queries, keys, values = gather_rotate(q, k_cache, v_cache, meta, rope)
    qi, ki = meta.q_indptr_host, meta.kv_indptr_host

    def sequence(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            sequence_view(queries, qi, s, num_q_heads, head_dim),
            sequence_view(keys, ki, s, num_kv_heads, head_dim),
            sequence_view(values, ki, s, num_kv_heads, head_dim),
        )

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return attend_sequences(out, meta, sequence, scale, attend)
