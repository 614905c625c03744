"""Attention kernels over the paged KV cache and rotary embeddings, each with a torch twin.

Imports only torch and triton. The Triton backend registers itself when triton is importable;
:func:`kernels.attention.paged_attention` picks it on CUDA and the torch twin elsewhere.
"""

import contextlib

from kernels.attention import (
    AttentionMetadata,
    paged_attention,
    paged_attention_ref,
    register_backend,
    select_backend,
    write_kv,
)
from kernels.rope import RopeSpec, apply_rope, mrope, rope_1d, wan_rope

# Triton is optional on machines without it; the torch twin always works.
with contextlib.suppress(ImportError):
    import kernels.triton_attention  # noqa: F401  (registers the "triton" backend)

__all__ = [
    "AttentionMetadata",
    "RopeSpec",
    "apply_rope",
    "mrope",
    "paged_attention",
    "paged_attention_ref",
    "register_backend",
    "rope_1d",
    "select_backend",
    "wan_rope",
    "write_kv",
]
