"""Options several commands share: where models come from, their device and dtype, and the
environment-variable fallback of every flag."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from framestream.cli.checks import ArgumentChecks, check
from framestream.models.toyworld.embedded import DEFAULT_PRESET, GENERATOR_DIR, WORDS_FILE

__all__ = [
    "DTYPES",
    "KV_CACHE_DTYPE_HELP",
    "MODEL_CHECKS",
    "VAE_TINY",
    "add_model_arguments",
    "check_model_arguments",
    "decoder",
    "device_and_dtype",
    "env",
    "wan_paths",
]

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
KV_CACHE_DTYPE_HELP = (
    "the generation pipelines' KV-cache rows: auto (the models' dtype, default) or fp8_e4m3 "
    "(unscaled FP8: half of bf16's bytes, twice the sessions per --cache-gb)"
)


# the local model paths of add_model_arguments, checked before anything loads (--vae by
# check_model_arguments: it may name the tiny decoder instead of a path)
MODEL_CHECKS = ArgumentChecks(
    folders=("model_dir", "text_encoder"), files=("lora",), paths=("dit",)
)
VAE_TINY = "tiny"  # --vae tiny: the preset's tiny streaming decoder (models.vae_tiny)


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
    group.add_argument(
        "--vae",
        type=_vae_argument,
        help="the decoder: a diffusers vae/ folder or Wan2.1_VAE.pth (the full Wan VAE), "
        "'tiny' (the preset's tiny streaming decoder: the toy world ships one), or a tiny "
        "decoder file such as TAEHV's taew2_1.pth (recognised by its keys)",
    )
    group.add_argument("--text-encoder", type=Path, help="folder with text_encoder/ and tokenizer/")
    group.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    group.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="weights and activations (default: bf16 on cuda, fp32 on cpu)",
    )


TOYWORLD_NOTE = (
    "toy-world models: they know coloured shapes, not the real world; "
    "load real checkpoints with {flags}"
)


def toyworld_note(generator: bool, understanding: bool) -> str | None:
    """The one line a command prints when it runs the embedded toy-world models (the page
    shows the same warning): ``generator`` / ``understanding`` say which of them it runs;
    None when neither."""
    flags = [f for f, used in (("--model-dir", generator), ("--vlm-dir", understanding)) if used]
    return TOYWORLD_NOTE.format(flags=" and ".join(flags)) if flags else None


def unknown_words_note(prompts: list[str]) -> str | None:
    """The line ``stream generate`` prints when the embedded generator, which reads a closed
    vocabulary (its ``words.json``), will not read some words of ``prompts``; None when it
    reads them all."""
    from framestream.models.text import WordTokenizer  # transformers: only when generating

    vocabulary = GENERATOR_DIR / WORDS_FILE
    if not vocabulary.is_file():
        return None
    tokenizer = WordTokenizer.load(vocabulary)
    unknown = list(dict.fromkeys(w for p in prompts for w in tokenizer.unknown(p)))
    if not unknown:
        return None
    return (
        f"the toy-world generator does not know the words {', '.join(unknown)}, and skips them "
        f"(it knows: {' '.join(tokenizer.words)})"
    )


def embedded_generator(args: argparse.Namespace) -> bool:
    """Whether the model arguments leave the generator on the shipped toy-world one."""
    return args.preset == DEFAULT_PRESET and wan_paths(args) is None


def _vae_argument(text: str) -> str | Path:
    return VAE_TINY if text == VAE_TINY else Path(text)


def check_model_arguments(args: argparse.Namespace) -> None:
    """:data:`MODEL_CHECKS`, and ``--vae`` an existing path unless it says ``tiny``."""
    check(args, MODEL_CHECKS)
    if isinstance(args.vae, Path):
        check(args, ArgumentChecks(paths=("vae",)))


def decoder(args: argparse.Namespace) -> str:
    """The registry's decoder (:data:`models.registry.DECODERS`) that ``--vae`` asks for; a
    tiny-decoder file is recognised by the registry from ``--vae``'s path."""
    return "tiny" if args.vae == VAE_TINY else "wan"


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

    vae = args.vae if isinstance(args.vae, Path) else None
    if not any((args.model_dir, args.dit, vae, args.text_encoder)):
        return None
    return WanPaths(args.model_dir, args.dit, args.dit_layout, args.lora, vae, args.text_encoder)
