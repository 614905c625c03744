"""The commands that run clients, evaluations and benchmarks: ``stream caption``,
``stream restyle``, ``stream timeline``, ``stream eval``, ``stream bench``. The command line is
the one place where the service, its clients and its evaluations meet."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

from framestream.cli.checks import ArgumentChecks, UsageError, check, check_device, check_preset
from framestream.cli.options import (
    DTYPES,
    add_model_arguments,
    check_model_arguments,
    decoder,
    device_and_dtype,
    embedded_generator,
    toyworld_note,
    wan_paths,
)

__all__ = [
    "add_bench_parser",
    "add_caption_parser",
    "add_eval_parser",
    "add_restyle_parser",
    "add_timeline_parser",
]


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.evals.fidelity.cli import add_fidelity_arguments
    from framestream.evals.inf_streams.cli import add_inf_streams_arguments, add_toy_arguments

    evaluate = commands.add_parser(
        "eval", help="run an evaluation (Inf-Streams-Eval, fidelity to the published loops)"
    )
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION")
    inf_streams = evaluations.add_parser(
        "inf-streams",
        help="Inf-Streams-Eval: stream each video, score the commentary, judge it pairwise",
        description="Reads the published dataset layout; see docs/evals.md.",
    )
    add_inf_streams_arguments(inf_streams)
    inf_streams.set_defaults(run=_eval_inf_streams)
    toy = evaluations.add_parser(
        "toy-inf-streams", help="write a tiny Inf-Streams-Eval dataset from the toy world"
    )
    add_toy_arguments(toy)
    toy.set_defaults(run=_eval_toy_inf_streams)
    fidelity = evaluations.add_parser(
        "fidelity",
        help="run our loops beside the published ones (checkouts you name), report differences",
        description="See docs/evals.md (fidelity to the published loops).",
    )
    add_fidelity_arguments(fidelity)
    fidelity.set_defaults(run=_eval_fidelity)
    evaluate.set_defaults(run=lambda _: evaluate.print_help() or 2)


_INF_STREAMS_CHECKS = ArgumentChecks(
    folders=("data", "vlm_dir"),
    files=("metadata", "score_windows"),
    paths=("answers",),
    made=("out", "judge_cache"),
    positive=("cache_gb", "timeout"),
    non_negative=("judge_backoff",),
)


def _eval_inf_streams(args: argparse.Namespace) -> int:
    from framestream.evals.inf_streams.cli import run_inf_streams

    check(args, _INF_STREAMS_CHECKS)
    _quality(args.quality)
    check_device(args.device)

    return run_inf_streams(args)


def _eval_fidelity(args: argparse.Namespace) -> int:
    from framestream.evals.fidelity.cli import run

    check(
        args,
        ArgumentChecks(folders=("longlive", "rolling_forcing", "streaming_vlm"), outputs=("out",)),
    )

    return run(args)


def _eval_toy_inf_streams(args: argparse.Namespace) -> int:
    from framestream.evals.inf_streams.cli import run_toy

    check(args, ArgumentChecks(made=("out",)))

    return run_toy(args)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.evals.bench.cli import add_bench_arguments

    bench = commands.add_parser(
        "bench",
        help="measure speed beside baselines: JSON + plots; `bench report` writes BENCHMARKS.md",
        description="See docs/evals.md (stream bench) for the CPU and accelerator commands.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(run=_bench)


_BENCH_CHECKS = ArgumentChecks(
    folders=("model_dir", "vlm_dir"),
    made=("out",),
    positive=(
        "threads",
        "chunks",
        "vlm_seconds",
        "rounds",
        "service_chunks",
        "engines",
        "memory_budget",
        "long_seconds",
        "long_switch_every",
    ),
    non_negative=("warmup", "vlm_warmup", "switches", "new_sessions"),
    counts=("streams", "clients"),
)


def _bench(args: argparse.Namespace) -> int:
    from framestream.evals.bench.cli import SUITES, run

    if args.action == "plot":
        check(args, ArgumentChecks(files=("records",)))
    if args.action is not None:
        return run(args)
    check(args, _BENCH_CHECKS)
    suites = [name.strip() for name in args.suite.split(",") if name.strip()]
    if not suites or set(suites) - set(SUITES):
        raise UsageError(f"--suite takes names of {', '.join(SUITES)}, got {args.suite!r}")
    if args.size is not None:
        _size(args.size)
    check_device(args.device)
    check_preset(args.preset)
    return run(args)


def _size(text: str) -> None:
    """``--size HEIGHTxWIDTH``: positive multiples of 16."""
    parts = [part.strip() for part in text.lower().split("x")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 and int(p) % 16 == 0 for p in parts):
        raise UsageError(f"--size takes HEIGHTxWIDTH in multiples of 16, got {text!r}")


def add_timeline_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.clients.timeline import add_timeline_arguments

    timeline = commands.add_parser(
        "timeline",
        help="generate from a schedule of prompts (ours or LongLive's) through a server, to MP4",
    )
    add_timeline_arguments(timeline)
    timeline.set_defaults(run=_timeline)


def _timeline(args: argparse.Namespace) -> int:
    from framestream.clients.timeline import run_timeline

    check(args, ArgumentChecks(outputs=("out",)))
    _websocket_url(args.url)
    return asyncio.run(run_timeline(args))


def _quality(quality: int | None) -> None:
    """``--quality``: a JPEG quality, 1..100 (None: the command's default)."""
    if quality is not None and not 1 <= quality <= 100:
        raise UsageError(f"--quality must be 1..100, got {quality}")


def _websocket_url(url: str) -> None:
    if not url.startswith(("ws://", "wss://")):
        raise UsageError(f"--url must be a ws:// or wss:// URL, got {url!r}")


def add_caption_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.clients.caption import add_caption_arguments

    caption = commands.add_parser(
        "caption",
        help="live commentary on a video file, stream URL or camera, printed as it comes",
        description="Without --url, a server with the StreamingVLM pipeline is started here. "
        "To watch the captions over the video live, open the server's page (its Watch tab).",
    )
    add_caption_arguments(caption)
    caption.add_argument("--vlm-dir", type=Path, help="a local Qwen2.5-VL / StreamingVLM folder")
    caption.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    caption.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    caption.set_defaults(run=_caption, url=None)


_CAPTION_CHECKS = ArgumentChecks(
    folders=("vlm_dir",), outputs=("vtt", "srt", "out_mp4"), non_negative=("camera",)
)


def _caption(args: argparse.Namespace) -> int:
    """The commentary tool of clients/, through the server at --url, or else through one started
    here on a free loopback port (the tiny default, or --vlm-dir); the arguments and the video
    file are checked before either."""
    from framestream.clients.caption import run_caption, video_problem

    check(args, _CAPTION_CHECKS)
    _quality(args.quality)
    problem = video_problem(args.video) if args.video is not None else None
    if problem is not None:
        raise UsageError(problem)
    if args.url is not None:
        _websocket_url(args.url)
        return asyncio.run(run_caption(args))
    check_device(args.device)
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine
    from framestream.stream.server import build_server
    from framestream.stream.service import ServiceModels, build_pipelines

    device, dtype = device_and_dtype(args)
    note = toyworld_note(generator=False, understanding=args.vlm_dir is None)
    if note:
        print(note, file=sys.stderr, flush=True)
    spec = ServiceModels(
        vlm_dir=args.vlm_dir, device=device, dtype=dtype, pipelines=("streaming_vlm",)
    )
    engine = Engine(build_pipelines(spec))

    async def run() -> int:
        async with build_server(ServerConfig(port=0), engine) as server:
            args.url = server.url
            return await run_caption(args)

    return asyncio.run(run())


def add_restyle_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.clients.restyle import add_restyle_arguments

    restyle = commands.add_parser(
        "restyle",
        help="restyle a video file, stream URL, camera or the toy-world feed under a prompt, "
        "to MP4",
        description="Without --url, a server with the generation pipeline is started here "
        "(the embedded toy-world models unless model flags say otherwise). A network video "
        "(rtsp://, http://) goes in --video; --url names the server.",
    )
    add_restyle_arguments(restyle)
    add_model_arguments(restyle)
    restyle.add_argument(
        "--cache-gb", type=float, default=1.0, help="the KV-cache pool of the server started here"
    )
    restyle.set_defaults(run=_restyle, url=None)


_RESTYLE_CHECKS = ArgumentChecks(
    outputs=("out",), positive=("cache_gb",), non_negative=("camera",), texts=("prompt",)
)


def _restyle(args: argparse.Namespace) -> int:
    """The restyle tool of clients/, through the server at --url, or else through one started
    here on a free loopback port for this one session (so admitted whatever the device's
    speed: a slow device restyles a live source with more latency, skipping input); the
    arguments and the video file are checked before either."""
    from framestream.clients.restyle import argument_problem, run_restyle

    check(args, _RESTYLE_CHECKS)
    check_model_arguments(args)
    problem = argument_problem(args)
    if problem is not None:
        raise UsageError(problem)
    if args.url is not None:
        _websocket_url(args.url)
        return asyncio.run(run_restyle(args))
    check_device(args.device)
    check_preset(args.preset)
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine, EngineConfig
    from framestream.stream.server import build_server
    from framestream.stream.service import ServiceModels, build_pipelines

    device, dtype = device_and_dtype(args)
    note = toyworld_note(generator=embedded_generator(args), understanding=False)
    if note:
        print(note, file=sys.stderr, flush=True)
    spec = ServiceModels(
        preset=args.preset,
        paths=wan_paths(args),
        decoder=decoder(args),
        device=device,
        dtype=dtype,
        cache_bytes=int(args.cache_gb * (1 << 30)),
        pipelines=(args.pipeline,),
        calibrate=False,  # nothing to admit by compute: the one session runs, however slowly
    )
    try:
        pipelines = build_pipelines(spec)
    except Exception as exc:  # a missing, corrupt or mismatched checkpoint: say which, no trace
        print(f"stream restyle: cannot load the models: {exc}", file=sys.stderr)
        return 2
    engine = Engine(pipelines, EngineConfig(max_load=math.inf, max_step_seconds=math.inf))

    async def run() -> int:
        async with build_server(ServerConfig(port=0), engine) as server:
            args.url = server.url
            return await run_restyle(args)

    return asyncio.run(run())
