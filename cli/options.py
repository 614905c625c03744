"""Options several commands share: where models come from, their device and dtype, and the
environment-variable fallback of every flag."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from framestream.cli.checks import ArgumentChecks
from framestream.models.toyworld.embedded import DEFAULT_PRESET

__all__ = [
    "DTYPES",
    "KV_CACHE_DTYPE_HELP",
    "MODEL_CHECKS",
    "add_model_arguments",
    "device_and_dtype",
    "env",
    "wan_paths",
]

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
KV_CACHE_DTYPE_HELP = (
    "the generation pipelines' KV-cache rows: auto (the models' dtype, default) or fp8_e4m3 "
    "(unscaled FP8: half of bf16's bytes, twice the sessions per --cache-gb)"
)


# the local model paths of add_model_arguments, checked before anything loads
MODEL_CHECKS = ArgumentChecks(
    folders=("model_dir", "text_encoder"), files=("lora",), paths=("dit", "vae")
)


def env(name: str, default: str | None = None) -> str | None:
    """The variable's value; an empty one counts as unset (compose passes `VAR=` through)."""
    return os.environ.get(name) or default


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models (local paths only; nothing is downloaded)")
    group.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="toyworld (embedded default, trained), tiny (random weights) or wan2.1-t2v-1.3b",
    )
    group.add_argument(
        "--model-dir",
        type=Path,
        help="diffusers-layout folder: transformer/ vae/ text_encoder/ tokenizer/",
    )
    group.add_argument(
        "--dit",
        type=Path,
        help="DiT checkpoint (Wan, diffusers, LongLive, Self-Forcing, Rolling Forcing)",
    )
    group.add_argument("--dit-layout", default="auto", help="layout of --dit (default: detect)")
    group.add_argument("--lora", type=Path, help="LongLive lora.pt, merged at load")
    group.add_argument("--vae", type=Path, help="diffusers vae/ folder or Wan2.1_VAE.pth")
    group.add_argument("--text-encoder", type=Path, help="folder with text_encoder/ and tokenizer/")
    group.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    group.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="weights and activations (default: bf16 on cuda, fp32 on cpu)",
    )


def device_and_dtype(args: argparse.Namespace, gpus: bool | None = None):
    """The models' device and dtype; ``gpus`` says whether they load on GPUs when the device
    is not given (None: whether this machine has one)."""
    import torch

    if gpus is None:
        gpus = torch.cuda.is_available()
    device = args.device or ("cuda" if gpus else "cpu")
    return device, getattr(torch, DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")])


def wan_paths(args: argparse.Namespace):
    from framestream.models.registry import WanPaths

    if not any((args.model_dir, args.dit, args.vae, args.text_encoder)):
        return None
    return WanPaths(
        args.model_dir, args.dit, args.dit_layout, args.lora, args.vae, args.text_encoder
    )
