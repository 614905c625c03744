"""Attention kernels over the paged KV cache and rotary embeddings, each with a torch twin.

Imports only torch and triton. The Triton backends (``triton``, ``sdpa_fused``) register
themselves when triton is importable; :func:`kernels.attention.paged_attention` picks them on
CUDA (``auto``) and the torch twin elsewhere.
"""

import contextlib

from kernels.attention import (
    AttentionMetadata,
    fused_kernels,
    paged_attention,
    paged_attention_ref,
    register_backend,
    select_backend,
    write_kv,
)
from kernels.rope import RopeSpec, apply_rope, mrope, rope_1d, wan_rope

# Triton is optional on machines without it; the torch twin always works.
with contextlib.suppress(ImportError):
    # each registers its backend: "triton", "sdpa_fused"
    from kernels import triton_attention, triton_gather  # noqa: F401

__all__ = [
    "AttentionMetadata",
    "RopeSpec",
    "apply_rope",
    "fused_kernels",
    "mrope",
    "paged_attention",
    "paged_attention_ref",
    "register_backend",
    "rope_1d",
    "select_backend",
    "wan_rope",
    "write_kv",
]
