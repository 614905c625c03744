"""The attention backends by name, and the dispatch to one of them.

* ``torch``: :func:`~kernels.attention.paged_attention_ref`, the plain-torch twin (float32);
* ``sdpa``: :func:`~kernels.attention.paged_attention_sdpa`, the same in the input dtype;
* ``triton``: the split-K paged kernels (:mod:`kernels.triton_attention`);
* ``sdpa_fused``: SDPA over keys gathered and rotated by one Triton pass
  (:mod:`kernels.triton_gather`);
* ``sage``: SageAttention's 8-bit kernel over the same gathered, rotated keys
  (:mod:`kernels.sage_attention`; registered where the ``sageattention`` package imports);
* ``auto``: the fastest measured per shape on CUDA (:func:`paged_attention_auto`).

The Triton backends are imported on first selection (Triton is optional where it is missing;
the torch twin always works), so importing this module needs no GPU and no Triton.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from framestream.kernels.attention import (
    DECODE_MAX_Q_LEN,
    AttentionFn,
    AttentionMetadata,
    paged_attention_ref,
    paged_attention_sdpa,
)
from framestream.kernels.rope import RopeSpec

__all__ = ["paged_attention", "paged_attention_auto", "register_backend", "select_backend"]


def paged_attention_auto(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """The fastest measured backend per shape on CUDA: the Triton split-K kernel for decode;
    for chunks, SDPA over keys gathered and rotated by one Triton pass (``sdpa_fused``), else
    torch's gather (BENCHMARKS.md and docs/perf-notes.md have the figures behind the choice)."""
    if meta.max_q_len <= DECODE_MAX_Q_LEN and "triton" in _BACKENDS:
        name = "triton"
    elif q.is_cuda and "sdpa_fused" in _BACKENDS:
        name = "sdpa_fused"
    else:
        name = "sdpa"
    return _BACKENDS[name](q, k_cache, v_cache, meta, rope, scale)


_BACKENDS: dict[str, AttentionFn] = {
    "torch": paged_attention_ref,
    "sdpa": paged_attention_sdpa,
    "auto": paged_attention_auto,
}


def register_backend(name: str, fn: AttentionFn) -> None:
    """Make ``fn`` selectable as backend ``name``; same signature as :func:`paged_attention_ref`."""
    _BACKENDS[name] = fn


@functools.cache
def _register_triton_backends() -> None:
    with contextlib.suppress(ImportError):  # no Triton here: the torch backends serve
        from framestream.kernels.triton_attention import paged_attention_triton
        from framestream.kernels.triton_gather import paged_attention_sdpa_fused

        register_backend("triton", paged_attention_triton)
        register_backend("sdpa_fused", paged_attention_sdpa_fused)
        from framestream.kernels import sage_attention

        if sage_attention.available():
            register_backend("sage", sage_attention.paged_attention_sage)


def select_backend(device: torch.device, name: str | None = None) -> AttentionFn:
    """The backend for ``device``: ``name``, else ``$STREAM_ATTENTION_BACKEND``, else ``auto``
    on CUDA (Triton for decode, SDPA for chunks) and the torch twin elsewhere."""
    _register_triton_backends()
    name = name or os.environ.get("STREAM_ATTENTION_BACKEND")
    if name is None:
        name = "auto" if device.type == "cuda" else "torch"
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(_BACKENDS)}")
    return _BACKENDS[name]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """Dispatch to the backend for ``q``'s device; see :func:`paged_attention_ref`."""
    return select_backend(q.device)(q, k_cache, v_cache, meta, rope, scale)
