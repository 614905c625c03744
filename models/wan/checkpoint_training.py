"""The training layouts: LongLive, Self-Forcing and Rolling Forcing checkpoints.

Their trainers ``torch.save`` a dict whose weights sit under ``generator`` and/or
``generator_ema`` (or ``model``), each a state dict of ``WanDiffusionWrapper`` in original Wan
names under the wrapper's ``model.`` prefix. LongLive prefers ``generator``; Self-Forcing, and
Rolling Forcing, which reuses its trainer, prefer the EMA weights (:data:`EMA_BY_DEFAULT`).
:func:`select_generator` picks the weights; :func:`strip_wrappers` is the rename: it drops the
wrapper prefix and the ``_fsdp_wrapped_module.`` segments FSDP dumps insert, which a flat dump
of any layout may carry too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from framestream.models.wan.checkpoint_error import CheckpointError, first_keys
from framestream.models.wan.checkpoint_files import is_flat

__all__ = [
    "EMA_BY_DEFAULT",
    "FSDP_SEGMENT",
    "GENERATOR_KEYS",
    "TRAINING_LAYOUTS",
    "select_generator",
    "strip_wrappers",
]

TRAINING_LAYOUTS = ("longlive", "self_forcing", "rolling_forcing")
EMA_BY_DEFAULT = {"longlive": False, "self_forcing": True, "rolling_forcing": True}
GENERATOR_KEYS = ("generator_ema", "generator", "model")

# Wrapper prefixes every layout may carry: LongLive/Self-Forcing save WanDiffusionWrapper
# (``model.``), FSDP dumps insert ``_fsdp_wrapped_module.`` anywhere in the path.
FSDP_SEGMENT = "_fsdp_wrapped_module."
_WRAPPER_PREFIX = "model."


def strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the wrapper prefix and FSDP segments (two keys that map to one
    name are a :class:`CheckpointError`)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key.replace(FSDP_SEGMENT, "")
        new = new.removeprefix(_WRAPPER_PREFIX)
        if new in out:
            raise CheckpointError(f"keys {key!r} and another both map to {new!r}")
        out[new] = value
    return out


def select_generator(raw: Mapping[str, Any], use_ema: bool, source: str) -> tuple[str, Any]:
    """``(key, weights)``: the first of ``generator_ema`` / ``generator`` / ``model`` in
    ``raw``, EMA first when ``use_ema``."""
    order = GENERATOR_KEYS if use_ema else ("generator", "generator_ema", "model")
    for key in order:
        if key in raw:
            if not is_flat(raw[key]):
                raise CheckpointError(f"{source}[{key!r}] is not a dict of tensors")
            return key, raw[key]
    raise CheckpointError(
        f"{source} has none of the keys {list(order)}; "
        f"found keys {first_keys(sorted(map(str, raw)))}"
    )
