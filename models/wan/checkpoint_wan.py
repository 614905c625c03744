"""The original Wan layout: the names every other layout is mapped to.

:class:`~models.wan.model.CausalWanModel` uses the original Wan names with no prefix
(``blocks.0.self_attn.q.weight``); :func:`expected_wan_shapes` is their name-to-shape table for a
config. A checkpoint of original names needs no renaming: :func:`drop_wan_buffers` only drops
buffers some forks saved. :data:`WAN_MARKERS` are the key prefixes that identify the layout.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor

__all__ = ["WAN_BUFFERS", "WAN_MARKERS", "drop_wan_buffers", "expected_wan_shapes"]

WAN_MARKERS = re.compile(
    r"^(time_embedding\.|text_embedding\.|time_projection\.|head\.head\.|"
    r"blocks\.\d+\.(self_attn|cross_attn)\.)"
)
# Buffers, not parameters: some forks register the RoPE table as one.
WAN_BUFFERS = ("freqs",)


def expected_wan_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Key → shape table of a ``CausalWanModel`` state dict (original Wan names, no prefix).

    Args:
        config: any object with ``dim, ffn_dim, freq_dim, num_layers, in_channels,
            out_channels, patch_size, text_dim`` (a ``WanConfig`` or a ``SimpleNamespace``).

    Returns:
        ``{name: shape}``, e.g. ``"blocks.0.self_attn.q.weight": (dim, dim)``.
    """
    fields = (
        "dim",
        "ffn_dim",
        "freq_dim",
        "num_layers",
        "in_channels",
        "out_channels",
        "text_dim",
    )
    for name in (*fields, "patch_size"):
        if not hasattr(config, name):
            raise TypeError(f"config={type(config).__name__} has no attribute {name!r}")
    dim, ffn, freq, layers, c_in, c_out, text_dim = (int(getattr(config, f)) for f in fields)
    patch = tuple(int(p) for p in config.patch_size)
    if len(patch) != 3:
        raise ValueError(f"config.patch_size={config.patch_size!r} must be (frames, rows, columns)")

    def linear(name: str, out_f: int, in_f: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (out_f, in_f), f"{name}.bias": (out_f,)}

    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (dim, c_in, *patch),
        "patch_embedding.bias": (dim,),
        **linear("text_embedding.0", dim, text_dim),
        **linear("text_embedding.2", dim, dim),
        **linear("time_embedding.0", dim, freq),
        **linear("time_embedding.2", dim, dim),
        **linear("time_projection.1", 6 * dim, dim),
    }
    for n in range(layers):
        b = f"blocks.{n}"
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes.update(linear(f"{b}.{attn}.{proj}", dim, dim))
            shapes[f"{b}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}.{attn}.norm_k.weight"] = (dim,)
        shapes[f"{b}.norm3.weight"] = (dim,)
        shapes[f"{b}.norm3.bias"] = (dim,)
        shapes.update(linear(f"{b}.ffn.0", ffn, dim))
        shapes.update(linear(f"{b}.ffn.2", dim, ffn))
        shapes[f"{b}.modulation"] = (1, 6, dim)
    shapes.update(linear("head.head", c_out * math.prod(patch), dim))
    shapes["head.modulation"] = (1, 2, dim)
    return shapes


def drop_wan_buffers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the :data:`WAN_BUFFERS` a fork may have saved beside the weights."""
    return {k: v for k, v in state_dict.items() if k not in WAN_BUFFERS}
