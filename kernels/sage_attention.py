"""SageAttention's 8-bit kernel as the inner attention of a step: the ``sage`` backend.

The SageAttention papers quantize Q and K to INT8 per block (K smoothed first: its mean over
the sequence subtracted, which leaves softmax unchanged and takes the outliers out of the
shared channel bias) and compute P.V in FP16, and report near-lossless results end to end on
video DiTs. The ``sageattention`` package (its Triton release, an optional extra here:
``pip install 'framestream[sage]'``) is the maintained implementation; this module keeps our
part of the step: keys and values are gathered from the slot pool and rotated from their
logical positions by :func:`kernels.triton_gather.gather_rotate`, as for ``sdpa_fused``, and
only the per-sequence attention is theirs.

Their kernel applies a causal mask top-left aligned, which equals ours (bottom-right) only when
a sequence's queries and keys are the same length; any other causal sequence (a StreamingVLM
decode step or a round over a cached prefix) goes to SDPA, as ``sdpa_fused`` would run it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from framestream.kernels.attention import AttentionMetadata, attend_sequence
from framestream.kernels.rope import RopeSpec

__all__ = ["available", "paged_attention_sage", "sage_or_sdpa"]

SAGE_HEAD_DIMS = (64, 96, 128)
InnerAttention = Callable[..., torch.Tensor]


@functools.cache
def _sageattn() -> InnerAttention | None:
    try:
        from sageattention import sageattn
    except ImportError:
        return None
    return sageattn


def available() -> bool:
    """Whether the ``sageattention`` package imports here."""
    return _sageattn() is not None


def sage_or_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float | None,
    inner: InnerAttention | None = None,
) -> torch.Tensor:
    """One sequence, ``q [H_q, q_len, D]`` over ``k, v [H_kv, kv_len, D]`` (rotated):
    SageAttention where its mask and head size match ours, else SDPA (:func:`attend_sequence`).
    ``k`` is smoothed in place (it is the step's own gathered copy)."""
    inner = inner or _sageattn()
    if inner is None:
        raise RuntimeError("the sage backend needs the sageattention package")
    if (causal and q.shape[1] != k.shape[1]) or q.shape[-1] not in SAGE_HEAD_DIMS:
        return attend_sequence(q, k, v, causal, scale)
    out = inner(q[None], k[None], v[None], tensor_layout="HND", is_causal=causal, sm_scale=scale)
    return out[0]


def paged_attention_sage(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`kernels.triton_gather.paged_attention_sdpa_fused` with SageAttention as the
    per-sequence kernel; same arguments, 8-bit Q.K rounding on top of bf16's."""
    from framestream.kernels.triton_gather import attend_gathered

    return attend_gathered(q, k_cache, v_cache, meta, rope, scale, attend=sage_or_sdpa)
