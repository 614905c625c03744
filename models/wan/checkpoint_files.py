"""Reading a Wan checkpoint's file(s) into memory, whatever names its keys have.

:func:`read_checkpoint_file` takes a file or a folder: a folder is searched (itself, then
``transformer/``) for a ``*.safetensors.index.json`` (its shards are read and checked against
the index), ``diffusion_pytorch_model.safetensors``, or a single ``.safetensors`` file. Safetensors
are memory-mapped; torch files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are read with
``torch.load(mmap=True, weights_only=True)``.

The ``trust_pickle`` rule: ``weights_only=True`` refuses arbitrary pickled objects (a pickle can
run code on load), so a training checkpoint that also pickles, say, a config object is refused
with a :class:`~models.wan.checkpoint_error.CheckpointError` that names ``trust_pickle=True``;
only with it does the read retry with ``weights_only=False``, and it says so in the log.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from framestream.models.wan.checkpoint_error import CheckpointError, first_keys

__all__ = ["is_flat", "read_checkpoint_file"]

logger = logging.getLogger(__name__)

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
            raise CheckpointError(f"shard {str(file)!r} repeats keys {first_keys(clash)}")
        out.update(part)
    if weight_map is not None:  # sharded: every key of the index must be present
        absent = sorted(k for k in weight_map if k not in out)
        if absent:
            raise CheckpointError(
                f"index of {str(files[0].parent)!r} lists keys no shard has: {first_keys(absent)}"
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


def read_checkpoint_file(path: str | Path, trust_pickle: bool) -> Any:
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


def is_flat(obj: Any) -> bool:
    """Whether ``obj`` is a flat state dict (every value a tensor), not a training dict."""
    return isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values())
