"""The ``stream`` command. Subcommands arrive with the features they run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import stream

__all__ = ["main"]

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _version(_: argparse.Namespace) -> int:
    print(f"stream {stream.__version__}")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models (local paths only; nothing is downloaded)")
    group.add_argument(
        "--preset", default="tiny", help="tiny (embedded default) or wan2.1-t2v-1.3b"
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
        choices=sorted(_DTYPES),
        default=None,
        help="weights and activations (default: bf16 on cuda, fp32 on cpu)",
    )


def _generate(args: argparse.Namespace) -> int:
    import torch

    from models.registry import WanPaths, load_wan_models
    from stream.generate import generate_video, parse_switch
    from stream.kvcache import KVCacheManager
    from stream.pipelines.base import GenerationRequest
    from stream.pipelines.longlive import LongLiveConfig, LongLivePipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, _DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")])
    switches = [parse_switch(s) for s in args.switch]
    switches = [type(s)(s.at_seconds, s.prompt, args.transition_chunks) for s in switches]
    any_path = any((args.model_dir, args.dit, args.vae, args.text_encoder))
    paths = (
        WanPaths(args.model_dir, args.dit, args.dit_layout, args.lora, args.vae, args.text_encoder)
        if any_path
        else None
    )
    models = load_wan_models(args.preset, paths, device=device, dtype=dtype)
    config = LongLiveConfig(global_sink=not args.refresh_sink)
    pipeline = LongLivePipeline(models, KVCacheManager(), int(args.cache_gb * (1 << 30)), config)
    request = GenerationRequest(args.prompt, args.seed, args.height, args.width)
    written = generate_video(pipeline, request, switches, args.seconds, args.out)
    print(
        f"wrote {written} frames ({written / config.fps:.2f} s at {config.fps:g} fps) to {args.out}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream",
        description="Real-time streaming video generation and understanding service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = commands.add_parser("version", help="print the version and exit")
    version.set_defaults(run=_version)

    generate = commands.add_parser("generate", help="generate a video with prompt switches to MP4")
    generate.add_argument("--pipeline", choices=["longlive"], default="longlive")
    generate.add_argument("--prompt", required=True)
    generate.add_argument(
        "--switch",
        action="append",
        default=[],
        metavar="t=SECONDSs:PROMPT",
        help="switch to PROMPT at SECONDS (repeatable), e.g. 't=4s:a blue car'",
    )
    generate.add_argument(
        "--transition-chunks",
        type=int,
        default=0,
        help="blend the text over this many chunks at each switch",
    )
    generate.add_argument(
        "--refresh-sink",
        action="store_true",
        help="re-anchor the frame sink at a switch (LongLive global_sink=false)",
    )
    generate.add_argument("--seconds", type=float, default=8.0)
    generate.add_argument("--out", type=Path, required=True, help="output .mp4")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--height", type=int, help="pixels, a multiple of 16")
    generate.add_argument("--width", type=int, help="pixels, a multiple of 16")
    generate.add_argument("--cache-gb", type=float, default=8.0, help="KV-cache pool size")
    _add_model_arguments(generate)
    generate.set_defaults(run=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
