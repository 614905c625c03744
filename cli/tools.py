"""The commands that run clients, evaluations and benchmarks: ``stream caption``,
``stream timeline``, ``stream eval``, ``stream bench``. The command line is the one place
where the service, its clients and its evaluations meet."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from framestream.cli.options import DTYPES, device_and_dtype

__all__ = [
    "add_bench_parser",
    "add_caption_parser",
    "add_eval_parser",
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


def _eval_inf_streams(args: argparse.Namespace) -> int:
    from framestream.evals.inf_streams.cli import run_inf_streams

    return run_inf_streams(args)


def _eval_fidelity(args: argparse.Namespace) -> int:
    from framestream.evals.fidelity.cli import run

    return run(args)


def _eval_toy_inf_streams(args: argparse.Namespace) -> int:
    from framestream.evals.inf_streams.cli import run_toy

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


def _bench(args: argparse.Namespace) -> int:
    from framestream.evals.bench.cli import run

    return run(args)


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

    return asyncio.run(run_timeline(args))


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


def _caption(args: argparse.Namespace) -> int:
    """The commentary tool of clients/, through the server at --url, or else through one started
    here on a free loopback port (the tiny default, or --vlm-dir)."""
    from framestream.clients.caption import run_caption

    if args.url is not None:
        return asyncio.run(run_caption(args))
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine
    from framestream.stream.server import build_server
    from framestream.stream.service import ServiceModels, build_pipelines

    device, dtype = device_and_dtype(args)
    spec = ServiceModels(
        vlm_dir=args.vlm_dir, device=device, dtype=dtype, pipelines=("streaming_vlm",)
    )
    engine = Engine(build_pipelines(spec))

    async def run() -> int:
        async with build_server(ServerConfig(port=0), engine) as server:
            args.url = server.url
            return await run_caption(args)

    return asyncio.run(run())
