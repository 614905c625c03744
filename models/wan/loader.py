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
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

__all__ = [
    "DIFFUSERS_TO_WAN",
    "LAYOUTS",
    "CheckpointError",
    "check_state_dict",
    "detect_wan_layout",
    "expected_wan_shapes",
    "load_wan_weights",
    "merge_lora",
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
_TRAINING_LAYOUTS = ("longlive", "self_forcing", "rolling_forcing")
_EMA_BY_DEFAULT = {"longlive": False, "self_forcing": True, "rolling_forcing": True}
_GENERATOR_KEYS = ("generator_ema", "generator", "model")
_LOAD_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_SHOW = 5  # how many keys of each kind an error message names


class CheckpointError(ValueError):
    """A checkpoint whose content does not fit the model or the requested layout.

    Attributes:
        missing: keys the model expects that the checkpoint lacks.
        unexpected: keys the checkpoint has that the model does not.
        mismatched: ``(key, expected_shape, found_shape)`` for keys of the wrong shape.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


# --------------------------------------------------------------------------------------------
# Expected names and shapes
# --------------------------------------------------------------------------------------------


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
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if mismatched:
        shown = ", ".join(f"{k}: expected {e}, found {f}" for k, e, f in mismatched[:_SHOW])
        more = f" (+{len(mismatched) - _SHOW} more)" if len(mismatched) > _SHOW else ""
        parts.append(f"{len(mismatched)} mis-shaped key(s): {shown}{more}")
    raise CheckpointError(
        "checkpoint does not match the model: " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


# --------------------------------------------------------------------------------------------
# Rename tables, one per source layout
# --------------------------------------------------------------------------------------------

# Wrapper prefixes every layout may carry: LongLive/Self-Forcing save WanDiffusionWrapper
# (``model.``), FSDP dumps insert ``_fsdp_wrapped_module.`` anywhere in the path.
_FSDP_SEGMENT = "_fsdp_wrapped_module."
_WRAPPER_PREFIX = "model."

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

_DIFFUSERS_MARKERS = re.compile(
    r"^(condition_embedder\.|proj_out\.|scale_shift_table$|norm_out\.|blocks\.\d+\.attn[12]\.)"
)
_WAN_MARKERS = re.compile(
    r"^(time_embedding\.|text_embedding\.|time_projection\.|head\.head\.|"
    r"blocks\.\d+\.(self_attn|cross_attn)\.)"
)


def _strip_wrappers(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key.replace(_FSDP_SEGMENT, "")
        new = new.removeprefix(_WRAPPER_PREFIX)
        if new in out:
            raise CheckpointError(f"keys {key!r} and another both map to {new!r}")
        out[new] = value
    return out


def _diffusers_to_wan(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    folded = sorted(k for k in state_dict if _DIFFUSERS_FOLDED.match(k))
    if folded:
        raise CheckpointError(
            f"diffusers checkpoint has {_first(folded)}: scale_shift_table folded into "
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


def _key_family(keys: Iterable[str], source: str) -> str:
    """``"wan"`` or ``"diffusers"`` from the key names (after wrapper stripping)."""
    keys = list(keys)
    diffusers = [k for k in keys if _DIFFUSERS_MARKERS.match(k)]
    wan = [k for k in keys if _WAN_MARKERS.match(k)]
    if diffusers and not wan:
        return "diffusers"
    if wan and not diffusers:
        return "wan"
    if wan and diffusers:
        raise CheckpointError(
            f"{source} mixes original Wan keys ({_first(wan)}) and diffusers keys "
            f"({_first(diffusers)})"
        )
    raise CheckpointError(
        f"{source} has neither original Wan nor diffusers Wan keys; found {_first(sorted(keys))}"
    )


# --------------------------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------------------------

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _resolve_weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight file(s) behind ``path`` and, when sharded, the index's ``weight_map``."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path={str(path)!r} does not exist")
    if path.is_file():
        return [path], None
    for folder in (path, path / "transformer"):
        if not folder.is_dir():
            continue
        indexes = sorted(folder.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise CheckpointError(f"folder {str(folder)!r} has several index files: {indexes}")
        if indexes:
            return _shards_of(indexes[0])
        if (folder / _DIFFUSERS_WEIGHTS).is_file():
            return [folder / _DIFFUSERS_WEIGHTS], None
        singles = sorted(folder.glob("*.safetensors"))
        if len(singles) == 1:
            return singles, None
        if len(singles) > 1:
            raise CheckpointError(
                f"folder {str(folder)!r} has several .safetensors files and no index json: "
                f"{[p.name for p in singles]}"
            )
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(
        f"folder {str(path)!r} has no Wan weights (no *.safetensors, index json or "
        f"transformer/ subfolder); found {found[:10]}; pass a .pt/.pth file directly"
    )


def _shards_of(index: Path) -> tuple[list[Path], dict[str, str]]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"index {str(index)!r} has no valid 'weight_map': {exc}") from None
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(
                f"shard {str(shard)!r} named by index {str(index)!r} does not exist"
            )
    return shards, weight_map


def _read_safetensors(files: list[Path], weight_map: dict[str, str] | None) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for file in files:
        try:
            part = load_file(str(file), device="cpu")  # mmap-backed
        except SafetensorError as exc:  # truncated or not safetensors: name the file
            raise CheckpointError(
                f"{str(file)!r} is not a readable safetensors file: {exc}"
            ) from None
        clash = sorted(set(part) & set(out))
        if clash:
            raise CheckpointError(f"shard {str(file)!r} repeats keys {_first(clash)}")
        out.update(part)
    if weight_map is not None:  # sharded: every key of the index must be present
        absent = sorted(k for k in weight_map if k not in out)
        if absent:
            raise CheckpointError(
                f"index of {str(files[0].parent)!r} lists keys no shard has: {_first(absent)}"
            )
    return out


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, EOFError, ValueError) as exc:  # truncated or not a torch checkpoint
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a readable torch checkpoint: {first}"
        ) from None
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{str(path)!r} holds objects other than tensors and plain containers, so "
                "torch.load(weights_only=True) refused it; pass trust_pickle=True only if you "
                f"trust the file ({str(exc).splitlines()[0]})"
            ) from exc
    logger.warning("loading %s with weights_only=False (trust_pickle=True)", path)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def _read_file(path: str | Path, trust_pickle: bool) -> Any:
    """The raw content: a flat ``{name: Tensor}`` dict or a training-checkpoint dict."""
    files, weight_map = _resolve_weight_files(Path(path))
    if files[0].suffix == ".safetensors":
        return _read_safetensors(files, weight_map)
    if files[0].suffix in _TORCH_SUFFIXES:
        return _torch_load(files[0], trust_pickle)
    raise CheckpointError(
        f"checkpoint path={str(path)!r}: unknown file type {files[0].suffix!r}; expected "
        f".safetensors or one of {_TORCH_SUFFIXES}"
    )


def _is_flat(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())


def _select_generator(raw: Mapping[str, Any], use_ema: bool, source: str) -> tuple[str, Any]:
    order = _GENERATOR_KEYS if use_ema else ("generator", "generator_ema", "model")
    for key in order:
        if key in raw:
            if not _is_flat(raw[key]):
                raise CheckpointError(f"{source}[{key!r}] is not a dict of tensors")
            return key, raw[key]
    raise CheckpointError(
        f"{source} has none of the keys {list(order)}; found keys {_first(sorted(map(str, raw)))}"
    )


def _read(
    path: str | Path, layout: str, use_ema: bool | None, trust_pickle: bool
) -> tuple[dict[str, Tensor], str]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not known; expected one of {list(LAYOUTS)}")
    source = repr(str(path))
    raw = _read_file(path, trust_pickle)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} holds a {type(raw).__name__}, not a dict")

    if _is_flat(raw):
        if layout in _TRAINING_LAYOUTS:
            raise CheckpointError(
                f"layout={layout!r} expects a training checkpoint dict with one of "
                f"{list(_GENERATOR_KEYS)}, but {source} is a flat state dict; found keys "
                f"{_first(sorted(raw))}"
            )
        state = _strip_wrappers(raw)
        family = _key_family(state, source)
        if layout not in ("auto", family):
            raise CheckpointError(
                f"layout={layout!r} but the keys of {source} are {family!r} names "
                f"(e.g. {_first(sorted(state))}); use layout={family!r} or 'auto'"
            )
        detected = family
    else:
        if layout in ("wan", "diffusers"):
            raise CheckpointError(
                f"layout={layout!r} expects a flat state dict, but {source} is a training "
                f"checkpoint dict with keys {_first(sorted(map(str, raw)))}; use one of "
                f"{list(_TRAINING_LAYOUTS)} or 'auto'"
            )
        if layout == "auto":
            detected = "self_forcing" if "generator_ema" in raw else "longlive"
        else:
            detected = layout
        ema = _EMA_BY_DEFAULT[detected] if use_ema is None else use_ema
        if layout == "auto" and use_ema is None:
            ema = True  # prefer EMA whenever the file has it
        key, inner = _select_generator(raw, ema, source)
        logger.info("%s: using %r weights", source, key)
        state = _strip_wrappers(inner)
        family = _key_family(state, f"{source}[{key!r}]")
        if family != "wan":
            raise CheckpointError(
                f"{source}[{key!r}] holds {family!r} names; training checkpoints must use the "
                "original Wan names"
            )

    if family == "diffusers":
        state = _diffusers_to_wan(state)
    elif "freqs" in state:  # some forks register the RoPE table as a buffer
        state.pop("freqs")
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
# LoRA
# --------------------------------------------------------------------------------------------

# ``base_model.model.blocks.0.self_attn.q.lora_A.weight`` (PEFT, adapter name stripped) or
# ``...q.lora_A.default.weight`` (adapter name kept).
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_PREFIXES = ("base_model.model.", "model.")


def _lora_target(module: str) -> str:
    module = module.replace(_FSDP_SEGMENT, "")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _LORA_PREFIXES:
            if module.startswith(prefix):
                module = module[len(prefix) :]
                stripped = True
    return module + ".weight"


def _read_lora(lora: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    raw = lora if isinstance(lora, Mapping) else _read_file(lora, trust_pickle=False)
    if "generator_lora" in raw:
        raw = raw["generator_lora"]
    if not _is_flat(raw):
        raise CheckpointError(
            f"LoRA {lora if not isinstance(lora, Mapping) else '<dict>'} has no 'generator_lora' "
            f"and is not a flat state dict; found keys {_first(sorted(map(str, raw)))}"
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


# --------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------


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
