"""LongLive's LoRA (PEFT) adapter, merged into base weights of original Wan names.

The adapter's keys name the module they adapt behind PEFT's ``base_model.model.`` prefix (and
maybe the wrapper's ``model.`` and FSDP segments); :func:`merge_lora` maps them to the original
Wan weight names and adds ``(alpha / r) * B @ A`` to each.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framestream.models.wan.checkpoint_error import CheckpointError, first_keys
from framestream.models.wan.checkpoint_files import is_flat, read_checkpoint_file
from framestream.models.wan.checkpoint_training import FSDP_SEGMENT

__all__ = ["merge_lora"]

logger = logging.getLogger(__name__)

# ``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (PEFT, adapter name stripped) or
# ``...q.lora_A.default.weight`` (adapter name kept).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "model.")


def _lora_target(module: str) -> str:
    module = module.replace(FSDP_SEGMENT, "")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _LORA_PREFIXES:
            if module.startswith(prefix):
                module = module[len(prefix) :]
                stripped = True
    return module + ".weight"


def _read_lora(lora: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    raw = lora if isinstance(lora, Mapping) else read_checkpoint_file(lora, trust_pickle=False)
    if "generator_lora" in raw:
        raw = raw["generator_lora"]
    if not is_flat(raw):
        raise CheckpointError(
            f"LoRA {lora if not isinstance(lora, Mapping) else '<dict>'} has no 'generator_lora' "
            f"and is not a flat state dict; found keys {first_keys(sorted(map(str, raw)))}"
        )
    return raw


def merge_lora(
    state_dict: Mapping[str, Tensor],
    lora_path_or_dict: str | Path | Mapping[str, Any],
    alpha: float | None = None,
    rank: int | None = None,
) -> dict[str, Tensor]:
    """Merge a LongLive (PEFT) LoRA into the base weights: ``W += (alpha / r) * B @ A``.

    The product and sum are computed in float32 and cast back to ``W``'s dtype. LongLive's
    adapter is rank 256, alpha 256 (scale 1) on every Linear of every block.

    Args:
        state_dict: base weights in original Wan names (not modified).
        lora_path_or_dict: ``lora.pt`` (``{"generator_lora": sd, ...}`` or a raw sd), a
            ``.safetensors`` file, or the dict itself. Keys look like
            ``base_model.model.blocks.0.self_attn.q.lora_A.weight`` ``[r, in]`` and
            ``...lora_B.weight`` ``[out, r]``; extra ``model.`` / ``_fsdp_wrapped_module.``
            segments and an adapter name (``lora_A.default.weight``) are tolerated.
        alpha: LoRA alpha; ``None`` means ``alpha = r`` (scale 1).
        rank: if given, every pair must have this rank.

    Returns:
        A new dict: ``state_dict`` with the adapted weights replaced.

    Raises:
        CheckpointError: an unpaired or unknown LoRA key, a pair whose target weight does not
            exist, or shapes that disagree with each other, with ``rank``, or with the target.
    """
    lora = _read_lora(lora_path_or_dict)
    pairs: dict[str, dict[str, tuple[str, Tensor]]] = {}
    for key, tensor in lora.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise CheckpointError(
                f"LoRA key {key!r} is not a lora_A/lora_B weight (DoRA, embedding LoRA and "
                "LoRA biases are not supported)"
            )
        target = _lora_target(match["module"])
        slot = pairs.setdefault(target, {})
        if match["ab"] in slot:
            raise CheckpointError(
                f"LoRA keys {slot[match['ab']][0]!r} and {key!r} both adapt {target!r} "
                "(several adapters in one file?)"
            )
        slot[match["ab"]] = (key, tensor)

    merged = dict(state_dict)
    for target, slot in sorted(pairs.items()):
        if "A" not in slot or "B" not in slot:
            ((key, _),) = slot.values()
            raise CheckpointError(f"LoRA key {key!r} has no matching lora_{'AB'['A' in slot]}")
        (key_a, a), (key_b, b) = slot["A"], slot["B"]
        if target not in merged:
            raise CheckpointError(
                f"LoRA pair {key_a!r} targets {target!r}, which the checkpoint does not have"
            )
        weight = merged[target]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"LoRA pair {key_a!r} {tuple(a.shape)} / {key_b!r} {tuple(b.shape)} is not "
                "[r, in] / [out, r]"
            )
        r = a.shape[0]
        if rank is not None and r != rank:
            raise CheckpointError(f"LoRA pair {key_a!r} has rank {r}, but rank={rank} was given")
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise CheckpointError(
                f"LoRA pair {key_a!r} makes a {(b.shape[0], a.shape[1])} update, but {target!r} "
                f"is {tuple(weight.shape)}"
            )
        scale = (r if alpha is None else alpha) / r
        delta = (b.to(torch.float32) @ a.to(torch.float32)).mul_(scale)
        merged[target] = (weight.to(torch.float32) + delta).to(weight.dtype)
    logger.info("merged %d LoRA pairs", len(pairs))
    return merged
