"""Read Wan2.1 DiT checkpoints of every source layout into the original Wan key names.

The model (:class:`models.wan.model.CausalWanModel`) uses the original Wan names with no prefix
(``blocks.0.self_attn.q.weight``). This module reads a checkpoint from any of the layouts below,
renames its keys to those names, optionally merges a LongLive LoRA, checks the result against the
model's own ``state_dict()`` shapes, and loads it with ``assign=True`` into a model built on the
``meta`` device, so weights are materialised once (mmap read, one cast/copy, assign)::

    with torch.device("meta"):
        model = CausalWanModel(wan_config("wan2.1-t2v-1.3b"))
    load_wan_weights(model, "longlive_models/models/longlive_base.pt",
                     lora="longlive_models/models/lora.pt", device="cuda")

Layouts (``layout=``):

=================== =====================================================================
``"wan"``            original Wan folder (``diffusion_pytorch_model.safetensors``, maybe
                     sharded with ``*.safetensors.index.json``) or a single ``.safetensors``
                     / ``.pth`` / ``.pt`` file of original names (flat state dict).
``"diffusers"``      a diffusers ``WanTransformer3DModel`` folder (the pipeline root with
                     ``transformer/``, or the transformer folder itself); names mapped back
                     with :data:`DIFFUSERS_TO_WAN`.
``"longlive"``       ``torch.save`` training dict; weights under ``generator`` (then
                     ``generator_ema``, then ``model``), keys prefixed ``model.``.
``"self_forcing"``   the same dict, preferring ``generator_ema`` (``use_ema=True``).
``"rolling_forcing"`` identical to ``"self_forcing"`` (Rolling Forcing reuses its trainer).
``"auto"``           detected from the content, see below.
=================== =====================================================================

Auto-detection (content only; file names only choose *which* file of a folder to open):

1. A torch file whose top-level dict has a non-tensor value is a training checkpoint. It must
   hold ``generator_ema``, ``generator`` or ``model``; it is reported as ``"self_forcing"`` when
   ``generator_ema`` is present (EMA preferred) and ``"longlive"`` otherwise.
2. Otherwise it is a flat state dict (all safetensors files, raw ``.pth``). After stripping
   ``model.`` and ``_fsdp_wrapped_module.``, keys with diffusers markers
   (``condition_embedder.*``, ``proj_out.*``, top-level ``scale_shift_table``,
   ``blocks.N.attn1.*``) make it ``"diffusers"``; keys with original markers
   (``time_embedding.*``, ``head.head.*``, ``blocks.N.self_attn.*``) make it ``"wan"``. Both or
   neither is a :class:`CheckpointError`.

An explicit layout is checked against the same rule, so ``layout="diffusers"`` on a file of
original names fails loudly instead of loading half-renamed keys.

Errors: a missing path raises ``FileNotFoundError``; an unknown layout or dtype raises
``ValueError``; anything wrong with the checkpoint content raises :class:`CheckpointError`
(a ``ValueError``).

Modules, one per job (this one detects the layout, reads through the others, checks and loads):

- :mod:`models.wan.checkpoint_files`: files, shards and the ``trust_pickle`` rule;
- :mod:`models.wan.checkpoint_wan`: the original names and shapes every layout maps to;
- :mod:`models.wan.checkpoint_diffusers`: :data:`DIFFUSERS_TO_WAN`;
- :mod:`models.wan.checkpoint_training`: the ``generator`` / ``generator_ema`` wrappers;
- :mod:`models.wan.checkpoint_lora`: :func:`merge_lora`;
- :mod:`models.wan.checkpoint_error`: :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from framestream.models.wan.checkpoint_diffusers import DIFFUSERS_MARKERS, diffusers_to_wan
from framestream.models.wan.checkpoint_error import SHOWN_KEYS, CheckpointError, first_keys
from framestream.models.wan.checkpoint_files import is_flat, read_checkpoint_file
from framestream.models.wan.checkpoint_lora import merge_lora
from framestream.models.wan.checkpoint_training import (
    EMA_BY_DEFAULT,
    GENERATOR_KEYS,
    TRAINING_LAYOUTS,
    select_generator,
    strip_wrappers,
)
from framestream.models.wan.checkpoint_wan import WAN_MARKERS, drop_wan_buffers

__all__ = [
    "LAYOUTS",
    "check_state_dict",
    "detect_wan_layout",
    "load_wan_weights",
    "read_wan_state_dict",
]

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = (
    "auto",
    "wan",
    "diffusers",
    "longlive",
    "self_forcing",
    "rolling_forcing",
)
_LOAD_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


# --------------------------------------------------------------------------------------------
# Reading any layout
# --------------------------------------------------------------------------------------------


def _key_family(keys: Iterable[str], source: str) -> str:
    """``"wan"`` or ``"diffusers"`` from the key names (after wrapper stripping)."""
    keys = list(keys)
    diffusers = [k for k in keys if DIFFUSERS_MARKERS.match(k)]
    wan = [k for k in keys if WAN_MARKERS.match(k)]
    if diffusers and not wan:
        return "diffusers"
    if wan and not diffusers:
        return "wan"
    if wan and diffusers:
        raise CheckpointError(
            f"{source} mixes original Wan keys ({first_keys(wan)}) and diffusers keys "
            f"({first_keys(diffusers)})"
        )
    raise CheckpointError(
        f"{source} has neither original Wan nor diffusers Wan keys; "
        f"found {first_keys(sorted(keys))}"
    )


def _read(
    path: str | Path, layout: str, use_ema: bool | None, trust_pickle: bool
) -> tuple[dict[str, Tensor], str]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not known; expected one of {list(LAYOUTS)}")
    source = repr(str(path))
    raw = read_checkpoint_file(path, trust_pickle)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a dict")

    if is_flat(raw):
        if layout in TRAINING_LAYOUTS:
            raise CheckpointError(
                f"layout={layout!r} expects a training checkpoint dict with one of "
                f"{list(GENERATOR_KEYS)}, but {source} is a flat state dict; found keys "
                f"{first_keys(sorted(raw))}"
            )
        state = strip_wrappers(raw)
        family = _key_family(state, source)
        if layout not in ("auto", family):
            raise CheckpointError(
                f"layout={layout!r} but the keys of {source} are {family!r} names "
                f"(e.g. {first_keys(sorted(state))}); use layout={family!r} or 'auto'"
            )
        detected = family
    else:
        if layout in ("wan", "diffusers"):
            raise CheckpointError(
                f"layout={layout!r} expects a flat state dict, but {source} is a training "
                f"checkpoint dict with keys {first_keys(sorted(map(str, raw)))}; use one of "
                f"{list(TRAINING_LAYOUTS)} or 'auto'"
            )
        if layout == "auto":
            detected = "self_forcing" if "generator_ema" in raw else "longlive"
        else:
            detected = layout
        ema = EMA_BY_DEFAULT[detected] if use_ema is None else use_ema
        if layout == "auto" and use_ema is None:
            ema = True  # prefer EMA whenever the file has it
        key, inner = select_generator(raw, ema, source)
        logger.info("%s: using %r weights", source, key)
        state = strip_wrappers(inner)
        family = _key_family(state, f"{source}[{key!r}]")
        if family != "wan":
            raise CheckpointError(
                f"{source}[{key!r}] holds {family!r} names; training checkpoints must use the "
                "original Wan names"
            )

    state = diffusers_to_wan(state) if family == "diffusers" else drop_wan_buffers(state)
    logger.info("%s: read %d tensors as layout %r", source, len(state), detected)
    return state, detected


def read_wan_state_dict(
    path: str | Path,
    layout: str = "auto",
    *,
    use_ema: bool | None = None,
    trust_pickle: bool = False,
) -> dict[str, Tensor]:
    """Read a Wan2.1 DiT checkpoint into original Wan key names.

    Tensors keep their stored dtype and stay on CPU, memory-mapped where the format allows
    (safetensors, zip-format torch files).

    Args:
        path: a file (``.safetensors``, ``.pt``, ``.pth``) or a folder (original Wan or
            diffusers; a diffusers pipeline root is searched under ``transformer/``).
        layout: one of :data:`LAYOUTS`; see the module docstring for the auto rule.
        use_ema: training checkpoints only. ``None`` means the layout default:
            ``generator_ema`` first for ``self_forcing``/``rolling_forcing``/``auto``,
            ``generator`` first for ``longlive``. The other key (then ``model``) is the fallback.
        trust_pickle: torch files are read with ``weights_only=True``, which refuses arbitrary
            pickled objects (a pickle can run code on load). Set this only for files you trust
            whose extra entries (e.g. a config object) make that refuse; it retries with
            ``weights_only=False``.

    Returns:
        ``{name: Tensor}`` in the names of :func:`expected_wan_shapes`.

    Raises:
        FileNotFoundError: ``path`` (or a shard its index names) does not exist.
        ValueError: ``layout`` is unknown.
        CheckpointError: the content does not fit ``layout``.
    """
    return _read(path, layout, use_ema, trust_pickle)[0]


def detect_wan_layout(path: str | Path, *, trust_pickle: bool = False) -> str:
    """The layout ``"auto"`` resolves to for ``path``: ``"wan"``, ``"diffusers"``,
    ``"longlive"`` or ``"self_forcing"`` (Rolling Forcing files read as ``"self_forcing"``)."""
    return _read(path, "auto", None, trust_pickle)[1]


# --------------------------------------------------------------------------------------------
# Checking and loading into a model
# --------------------------------------------------------------------------------------------


def check_state_dict(
    state_dict: Mapping[str, Tensor], expected_shapes: Mapping[str, Iterable[int]]
) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected and mis-shaped key.

    All three kinds are collected before raising; the message names the first few of each
    (mis-shaped ones as ``name: expected (a, b), found (c, d)``) and the exception carries the
    full lists as ``missing``, ``unexpected`` and ``mismatched``.
    """
    expected = {k: tuple(int(s) for s in v) for k, v in expected_shapes.items()}
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        (k, expected[k], tuple(t.shape))
        for k, t in state_dict.items()
        if k in expected and tuple(t.shape) != expected[k]
    )
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {first_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {first_keys(unexpected)}")
    if mismatched:
        shown = ", ".join(f"{k}: expected {e}, found {f}" for k, e, f in mismatched[:SHOWN_KEYS])
        more = f" (+{len(mismatched) - SHOWN_KEYS} more)" if len(mismatched) > SHOWN_KEYS else ""
        parts.append(f"{len(mismatched)} mis-shaped key(s): {shown}{more}")
    raise CheckpointError(
        "checkpoint does not match the model: " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def load_wan_weights(
    model: nn.Module,
    path: str | Path,
    *,
    layout: str = "auto",
    lora: str | Path | Mapping[str, Any] | None = None,
    lora_alpha: float | None = None,
    use_ema: bool | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
) -> nn.Module:
    """Read, merge LoRA, check, cast and assign a checkpoint into ``model``.

    Build the model on ``meta`` first; ``load_state_dict(assign=True)`` then adopts the read
    tensors instead of copying into preallocated ones, so each weight exists once on
    ``device`` (and not at all when the stored dtype/device already match: the mmap-backed
    tensor itself is adopted).

    Args:
        model: a module whose ``state_dict()`` uses the original Wan names (may be on meta).
        path, layout, use_ema, trust_pickle: as in :func:`read_wan_state_dict`.
        lora: optional LoRA merged with :func:`merge_lora` before casting.
        lora_alpha: LoRA alpha (default: the rank, i.e. scale 1).
        dtype: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32``.
        device: where the weights end up.

    Returns:
        ``model``, with its parameters replaced.

    Raises:
        ValueError: ``dtype`` or ``layout`` not supported.
        CheckpointError: the checkpoint does not match the model (all problems listed).
    """
    if dtype not in _LOAD_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; expected one of {list(_LOAD_DTYPES)}")
    state = read_wan_state_dict(path, layout, use_ema=use_ema, trust_pickle=trust_pickle)
    if lora is not None:
        state = merge_lora(state, lora, alpha=lora_alpha)
    check_state_dict(state, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model
