"""One attention call over all of a step's sequences, packed token-major (FlashAttention's varlen
kernel through torch), instead of one SDPA call per sequence.

A batched StreamingVLM prefill holds 16 sequences of some 750 queries over some 13k keys each:
one SDPA call per sequence and layer is 448 calls, each too small to fill the card. The varlen
kernel takes the step's packed operands and its cumulative lengths, which are the metadata's
``q_indptr`` / ``kv_indptr`` as they stand::

    queries [N_q, H_q, D]   keys, values [N_kv, H_kv, D]    rotated, token-major, packed
    cu_seqlens_q = q_indptr, cu_seqlens_k = kv_indptr        int32, on the device

FlashAttention's causal mask is bottom-right aligned per sequence (query ``i`` of ``q_len``
sees keys ``j <= kv_len - q_len + i``), the contract of :mod:`kernels.attention`, and it reads
GQA's shared kv heads itself.

It serves where the flash kernel does (CUDA, 16-bit, head dim a multiple of 8 up to 256) and
where a step has several sequences of at most :data:`VARLEN_MAX_Q_LEN` queries; a longer
sequence (a Wan chunk: thousands of queries) fills the card alone and keeps torch's SDPA
dispatch (cuDNN's kernels on Hopper, for which FlashAttention 2 is not tuned).
``STREAM_VARLEN_ATTENTION=0`` turns it off (an A/B against the per-sequence calls); elsewhere
the same operands go through :func:`~kernels.attention.attend_sequences`.
"""

from __future__ import annotations

import inspect
import os

import torch

from framestream.kernels.attention import AttentionMetadata, attend_sequences

__all__ = ["VARLEN_MAX_Q_LEN", "attend_packed", "use_varlen"]

# Sequences with more queries than this fill the card one call each.
VARLEN_MAX_Q_LEN = 2048

try:  # a torch with torch.nn.attention.varlen
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # an older torch: the per-sequence calls serve
    _varlen_attn = None
# the keyword arguments of this torch's varlen_attn: earlier releases take ``is_causal``, torch
# 2.13 ``window_size=(-1, 0)`` (FlashAttention aligns both bottom-right) and ``enable_gqa``
# (FlashAttention reads GQA's shared kv heads either way)
_PARAMETERS = set(inspect.signature(_varlen_attn).parameters) if _varlen_attn else set()


def _keywords(causal: bool, gqa: bool) -> dict:
    keywords = {"enable_gqa": gqa} if "enable_gqa" in _PARAMETERS else {}
    if "is_causal" in _PARAMETERS:
        return keywords | {"is_causal": causal}
    return keywords | {"window_size": (-1, 0) if causal else (-1, -1)}


def use_varlen(q: torch.Tensor, k: torch.Tensor, meta: AttentionMetadata) -> bool:
    """Whether :func:`attend_packed` makes one varlen call for these operands and this step."""
    head_dim = q.shape[-1]
    sequences = sum(b > a for a, b in zip(meta.q_indptr_host, meta.q_indptr_host[1:], strict=False))
    return (
        _varlen_attn is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k.dtype == q.dtype
        and head_dim % 8 == 0
        and head_dim <= 256
        and sequences > 1
        and meta.max_q_len <= VARLEN_MAX_Q_LEN
        and os.environ.get("STREAM_VARLEN_ATTENTION", "1") != "0"
    )


def attend_packed(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    meta: AttentionMetadata,
    scale: float | None,
) -> torch.Tensor:
    """Attention of every sequence of ``meta`` over its keys.

    Args:
        queries: ``[N_q, H_q, D]`` rotated, sequences back to back as ``meta.q_indptr`` says.
        keys, values: ``[N_kv, H_kv, D]`` rotated keys and their values, as ``meta.kv_indptr``.
        meta: the step's metadata (its ``causal`` is bottom-right aligned).
        scale: softmax scale, ``D ** -0.5`` by default.

    Returns:
        ``[N_q, H_q, D]`` in ``queries.dtype``: one varlen call where :func:`use_varlen` says
        so, else one SDPA call per sequence.
    """
    if use_varlen(queries, keys, meta):
        return _varlen_attn(
            queries,
            keys,
            values,
            meta.q_indptr,
            meta.kv_indptr,
            meta.max_q_len,
            meta.max_kv_len,
            scale=scale,
            **_keywords(meta.causal, gqa=queries.shape[1] != keys.shape[1]),
        )
    qi, ki = meta.q_indptr_host, meta.kv_indptr_host

    def sequence(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            queries[qi[s] : qi[s + 1]].transpose(0, 1),  # [H, len, D]
            keys[ki[s] : ki[s + 1]].transpose(0, 1),
            values[ki[s] : ki[s + 1]].transpose(0, 1),
        )

    return attend_sequences(torch.empty_like(queries), meta, sequence, scale)
