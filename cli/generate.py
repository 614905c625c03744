"""``stream generate``: a video from a prompt and its switches, straight to MP4 (no server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framestream.cli.checks import (
    ArgumentChecks,
    UsageError,
    check,
    check_device,
    check_preset,
)
from framestream.cli.options import (
    KV_CACHE_DTYPE_HELP,
    add_model_arguments,
    check_model_arguments,
    decoder,
    device_and_dtype,
    embedded_generator,
    toyworld_note,
    unknown_words_note,
    wan_paths,
)

__all__ = ["add_generate_parser"]


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    generate = commands.add_parser("generate", help="generate a video with prompt switches to MP4")
    generate.add_argument("--pipeline", choices=["longlive", "rolling_forcing"], default="longlive")
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
    generate.add_argument(
        "--no-recache",
        action="store_true",
        help="Rolling Forcing: keep the clean history's K/V at a switch instead of recaching it",
    )
    generate.add_argument("--seconds", type=float, default=8.0)
    generate.add_argument("--out", type=Path, required=True, help="output .mp4")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--height", type=int, help="pixels, a multiple of 16")
    generate.add_argument("--width", type=int, help="pixels, a multiple of 16")
    generate.add_argument("--cache-gb", type=float, default=8.0, help="KV-cache pool size")
    generate.add_argument("--kv-cache-dtype", default="auto", help=KV_CACHE_DTYPE_HELP)
    generate.add_argument(
        "--commentary",
        action="store_true",
        help="also watch the video with the embedded toy-world StreamingVLM and write its "
        "captions to a WebVTT file beside the MP4 (OUT with .vtt)",
    )
    add_model_arguments(generate)
    generate.set_defaults(run=_generate)


_VLM_CACHE_BYTES = 256 << 20  # one stream of the embedded model, with room to spare

_CHECKS = ArgumentChecks(
    outputs=("out",),
    positive=("seconds", "cache_gb"),
    non_negative=("seed", "transition_chunks"),
    texts=("prompt",),
)


def _switches(args: argparse.Namespace) -> list:
    """The ``--switch`` schedule, each inside the video; raises :class:`UsageError`."""
    from framestream.stream.generate import PromptSwitch, parse_switch

    switches = []
    for text in args.switch:
        try:
            switch = parse_switch(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if switch.at_seconds >= args.seconds:
            raise UsageError(
                f"--switch {text!r} is at or after the end of the video ({args.seconds:g} s)"
            )
        switches.append(PromptSwitch(switch.at_seconds, switch.prompt, args.transition_chunks))
    return switches


def _check(args: argparse.Namespace) -> None:
    """Every argument, before a model loads; raises :class:`UsageError`."""
    check(args, _CHECKS)
    check_model_arguments(args)
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 16):
            raise UsageError(f"--{name} must be a positive multiple of 16, got {value}")
    if args.seed >= 2**64:
        raise UsageError(f"--seed must be below 2**64, got {args.seed}")


def _generate(args: argparse.Namespace) -> int:
    _check(args)
    switches = _switches(args)
    check_device(args.device)
    check_preset(args.preset)
    from framestream.models.registry import load_wan_models
    from framestream.stream.generate import generate_video
    from framestream.stream.kvcache import KVCacheManager
    from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
    from framestream.stream.pipelines.rolling_forcing import (
        RollingForcingConfig,
        RollingForcingPipeline,
    )
    from framestream.stream.requests import GenerationRequest

    device, dtype = device_and_dtype(args)
    try:
        if args.pipeline == "longlive":
            config = LongLiveConfig(
                global_sink=not args.refresh_sink, kv_cache_dtype=args.kv_cache_dtype
            )
        else:
            config = RollingForcingConfig(
                recache_on_switch=not args.no_recache, kv_cache_dtype=args.kv_cache_dtype
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    embedded = embedded_generator(args)
    note = toyworld_note(embedded, understanding=False)  # once the args hold
    if note:
        print(note, file=sys.stderr)
    words = embedded and unknown_words_note([args.prompt, *(s.prompt for s in switches)])
    if words:
        print(words, file=sys.stderr)
    try:
        models = load_wan_models(
            args.preset, wan_paths(args), device=device, dtype=dtype, decoder=decoder(args)
        )
    except Exception as exc:  # a missing, corrupt or mismatched checkpoint: say which, no trace
        print(f"stream generate: cannot load the models: {exc}", file=sys.stderr)
        return 2
    cache_bytes = int(args.cache_gb * (1 << 30))
    if args.pipeline == "longlive":
        pipeline = LongLivePipeline(models, KVCacheManager(), cache_bytes, config)
    else:
        pipeline = RollingForcingPipeline(models, KVCacheManager(), cache_bytes, config)
    request = GenerationRequest(args.prompt, args.seed, args.height, args.width)
    if not args.commentary:
        written = generate_video(pipeline, request, switches, args.seconds, args.out)
    else:
        written = _generate_with_commentary(args, pipeline, request, switches, device, dtype)
    print(
        f"wrote {written} frames ({written / config.fps:.2f} s at {config.fps:g} fps) to {args.out}"
    )
    return 0


def _generate_with_commentary(args, pipeline, request, switches, device, dtype) -> int:
    """Generate while the embedded StreamingVLM watches, then write ``OUT.vtt``."""
    from framestream.clients.vtt import write_vtt
    from framestream.models.toyworld.embedded import load_vlm
    from framestream.stream.generate import generate_video
    from framestream.stream.kvcache import KVCacheManager
    from framestream.stream.offline_commentary import OfflineCommentary
    from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline

    vlm = StreamingVLMPipeline(load_vlm(dtype, device), KVCacheManager(), _VLM_CACHE_BYTES)
    with OfflineCommentary(vlm, pipeline.config.fps) as commentary:
        written = generate_video(
            pipeline, request, switches, args.seconds, args.out, on_frames=commentary.watch
        )
        commentary.finish(written)
    subtitles = args.out.with_suffix(".vtt")
    cues = write_vtt(subtitles, commentary.captions)
    print(f"wrote {cues} captions of {len(commentary.captions)} seconds to {subtitles}")
    return written
