"""A trained DiT loaded into a deeper one of the same width, drawing what it drew before.

More rounds of the same training stopped sharpening the toy-world generator's shapes
(BENCHMARKS.md, runs 16-18): teacher-forced with the true frames as context, the 6-layer DiT
keeps a sprite's shape from noise level 0.75 in no more of its frames after three more rounds.
Depth is capacity that can be added without losing what was trained: a block whose three
output projections (self-attention, cross-attention, FFN) are zero is the identity, so the
deeper model starts as the trained one and its new blocks learn only what the old ones could
not. The trained blocks keep their order, spread evenly among the new ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from framestream.models.wan import CausalWanModel, wan_config

__all__ = ["deepened_dit", "kept_positions"]

# the last layer of each residual branch of a WanBlock: zeroed, the block is the identity
_BRANCH_OUTPUTS = ("self_attn.o", "cross_attn.o", "ffn.2")


def kept_positions(old_layers: int, new_layers: int) -> list[int]:
    """Where each of ``old_layers`` trained blocks goes among ``new_layers``, in order."""
    if not 1 <= old_layers <= new_layers:
        raise ValueError(f"cannot deepen {old_layers} layers into {new_layers}")
    return [k * new_layers // old_layers for k in range(old_layers)]


@torch.no_grad()
def deepened_dit(
    path: Path, preset: str, generator: torch.Generator | None = None
) -> tuple[CausalWanModel, dict]:
    """The DiT saved at ``path`` inside ``preset``'s deeper architecture, in fp32 on the CPU.

    Every parameter outside the blocks, and each trained block, is copied; the other blocks get
    fresh weights (``init_weights`` from ``generator``, seed 0 by default: the global RNG a run
    seeds is left as it was) with their output projections zeroed. Any other difference between
    the two architectures is an error (``load_state_dict``'s message).

    Returns:
        the model and ``{"from_layers", "to_layers", "kept_at"}`` for the run's record.
    """
    state = load_file(path)
    old_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    model = CausalWanModel(wan_config(preset))
    model.init_weights(generator or torch.Generator().manual_seed(0))
    kept = kept_positions(old_layers, model.config.num_layers)
    moved = {
        _renumbered(key, kept) if key.startswith("blocks.") else key: value
        for key, value in state.items()
    }
    for i, block in enumerate(model.blocks):
        if i not in kept:
            for name, value in block.state_dict().items():
                output = name.rsplit(".", 1)[0] in _BRANCH_OUTPUTS
                moved[f"blocks.{i}.{name}"] = torch.zeros_like(value) if output else value
    model.load_state_dict(moved, strict=True)
    record = {"from_layers": old_layers, "to_layers": model.config.num_layers, "kept_at": kept}
    return model.float().eval(), record


def _renumbered(key: str, kept: list[int]) -> str:
    _, index, rest = key.split(".", 2)
    return f"blocks.{kept[int(index)]}.{rest}"
