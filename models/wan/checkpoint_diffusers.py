"""The diffusers layout: a ``WanTransformer3DModel`` folder, mapped back to the original Wan names.

:data:`DIFFUSERS_TO_WAN` is the rename table; :data:`DIFFUSERS_MARKERS` are the key prefixes
that identify the layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from framestream.models.wan.checkpoint_error import CheckpointError, first_keys

__all__ = ["DIFFUSERS_MARKERS", "DIFFUSERS_TO_WAN", "diffusers_to_wan"]


# diffusers WanTransformer3DModel → original Wan. The inverse of diffusers
# ``scripts/convert_wan_to_diffusers.py: TRANSFORMER_KEYS_RENAME_DICT`` (T2V keys), as anchored
# regexes; the first match wins and a key matching none is kept as is (``patch_embedding.*``).
# Note the swap: diffusers ``norm2`` is the affine cross-attention LayerNorm (our ``norm3``);
# diffusers ``norm3`` / our ``norm2`` has no parameters.
_B = r"^(blocks\.\d+)\."
DIFFUSERS_TO_WAN: tuple[tuple[str, str], ...] = (
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (_B + r"scale_shift_table$", r"\1.modulation"),
    (_B + r"attn1\.to_([qkv])\.", r"\1.self_attn.\2."),
    (_B + r"attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (_B + r"attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (_B + r"attn2\.to_([qkv])\.", r"\1.cross_attn.\2."),
    (_B + r"attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (_B + r"attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (_B + r"norm2\.", r"\1.norm3."),
    (_B + r"ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (_B + r"ffn\.net\.2\.", r"\1.ffn.2."),
)
_DIFFUSERS_RULES = tuple((re.compile(p), r) for p, r in DIFFUSERS_TO_WAN)
# Non-persistent in diffusers 0.42 (never saved), dropped if some exporter saved them anyway.
_DIFFUSERS_IGNORED = re.compile(r"^rope\.")
# A diffusers revision newer than 0.42 may fold the top-level scale_shift_table into
# ``norm_out.linear`` on load; 0.42.1 has no such hook, so those keys are refused, not guessed.
_DIFFUSERS_FOLDED = re.compile(r"^norm_out\.")

DIFFUSERS_MARKERS = re.compile(
    r"^(condition_embedder\.|proj_out\.|scale_shift_table$|norm_out\.|blocks\.\d+\.attn[12]\.)"
)


def diffusers_to_wan(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    folded = sorted(k for k in state_dict if _DIFFUSERS_FOLDED.match(k))
    if folded:
        raise CheckpointError(
            f"diffusers checkpoint has {first_keys(folded)}: scale_shift_table folded into "
            "norm_out (a diffusers revision newer than 0.42) is not supported; save it with "
            "diffusers 0.42 or export the original Wan layout"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _DIFFUSERS_IGNORED.match(key):
            continue
        new = key
        for pattern, repl in _DIFFUSERS_RULES:
            new, n = pattern.subn(repl, key, count=1)
            if n:
                break
        if new in out:
            raise CheckpointError(f"diffusers keys {key!r} and another both map to {new!r}")
        out[new] = value
    return out
