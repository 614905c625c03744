"""The ``stream`` command. Subcommands arrive with the features they run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from framestream.models.toyworld.embedded import DEFAULT_PRESET
from framestream.stream.version import __version__
from framestream.stream.web import STATIC_DIR

__all__ = ["main"]

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_KV_CACHE_DTYPE_HELP = (
    "the generation pipelines' KV-cache rows: auto (the models' dtype, default) or fp8_e4m3 "
    "(unscaled FP8: half of bf16's bytes, twice the sessions per --cache-gb)"
)


def _version(_: argparse.Namespace) -> int:
    print(f"stream {__version__}")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
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
        choices=sorted(_DTYPES),
        default=None,
        help="weights and activations (default: bf16 on cuda, fp32 on cpu)",
    )


def _device_and_dtype(args: argparse.Namespace, gpus: bool | None = None):
    """The models' device and dtype; ``gpus`` says whether they load on GPUs when the device
    is not given (None: whether this machine has one)."""
    import torch

    if gpus is None:
        gpus = torch.cuda.is_available()
    device = args.device or ("cuda" if gpus else "cpu")
    return device, getattr(torch, _DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")])


def _wan_paths(args: argparse.Namespace):
    from framestream.models.registry import WanPaths

    if not any((args.model_dir, args.dit, args.vae, args.text_encoder)):
        return None
    return WanPaths(
        args.model_dir, args.dit, args.dit_layout, args.lora, args.vae, args.text_encoder
    )


def _generate(args: argparse.Namespace) -> int:
    from framestream.models.registry import load_wan_models
    from framestream.stream.generate import generate_video, parse_switch
    from framestream.stream.kvcache import KVCacheManager
    from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
    from framestream.stream.pipelines.rolling_forcing import (
        RollingForcingConfig,
        RollingForcingPipeline,
    )
    from framestream.stream.requests import GenerationRequest

    device, dtype = _device_and_dtype(args)
    switches = [parse_switch(s) for s in args.switch]
    switches = [type(s)(s.at_seconds, s.prompt, args.transition_chunks) for s in switches]
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
        print(f"stream generate: {exc}", file=sys.stderr)
        return 2
    models = load_wan_models(args.preset, _wan_paths(args), device=device, dtype=dtype)
    cache_bytes = int(args.cache_gb * (1 << 30))
    if args.pipeline == "longlive":
        pipeline = LongLivePipeline(models, KVCacheManager(), cache_bytes, config)
    else:
        pipeline = RollingForcingPipeline(models, KVCacheManager(), cache_bytes, config)
    request = GenerationRequest(args.prompt, args.seed, args.height, args.width)
    written = generate_video(pipeline, request, switches, args.seconds, args.out)
    print(
        f"wrote {written} frames ({written / config.fps:.2f} s at {config.fps:g} fps) to {args.out}"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine, EngineConfig
    from framestream.stream.service import ServiceModels, build_pipelines

    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=args.token or None,
            allowed_origins=tuple(args.allow_origin) if args.allow_origin else None,
            preset=args.preset,
            max_sessions_per_connection=args.max_sessions_per_connection,
            max_message_bytes=args.max_message_bytes,
            max_frame_pixels=args.max_frame_pixels,
            toyworld_feed_max_seconds=args.toyworld_feed_max_seconds,
            static_dir=None if args.no_page else args.static_dir,
            record_dir=args.record_dir,
            **_given(args, _SERVER_LIMITS),
        )
        engine_config = EngineConfig(max_sessions=args.max_sessions, **_given(args, _ENGINE_LIMITS))
        cluster = _cluster_config(args)
    except ValueError as exc:
        print(f"stream serve: {exc}", file=sys.stderr)
        return 2
    # on a cluster the models load on the engines' GPUs, whatever this front has
    device, dtype = _device_and_dtype(args, cluster and cluster.gpus_per_engine > 0)
    cache_gb = args.cache_gb if args.cache_gb is not None else (8.0 if device == "cuda" else 0.5)
    vlm_gb = (
        args.vlm_cache_gb if args.vlm_cache_gb is not None else (4.0 if device == "cuda" else 0.25)
    )
    try:
        spec = ServiceModels(
            preset=args.preset,
            paths=_wan_paths(args),
            vlm_dir=args.vlm_dir,
            device=device,
            dtype=dtype,
            cache_bytes=int(float(cache_gb) * (1 << 30)),
            vlm_cache_bytes=int(float(vlm_gb) * (1 << 30)),
            pipelines=tuple(args.pipelines.split(",")),
            kv_cache_dtype=args.kv_cache_dtype,
        )
    except ValueError as exc:
        print(f"stream serve: {exc}", file=sys.stderr)
        return 2
    if cluster is not None:
        return _serve_cluster(args, config, spec, engine_config, cluster)
    try:
        pipelines = build_pipelines(spec)
    except Exception as exc:  # a missing, corrupt or mismatched checkpoint: say which, no trace
        print(f"stream serve: cannot load the models: {exc}", file=sys.stderr)
        return 2
    engine = Engine(pipelines, engine_config)

    async def local() -> Engine:
        return engine

    asyncio.run(_run_server(config, local, f"{args.preset} on {device}"))
    return 0


def _serve_cluster(args, config, spec, engine_config, cluster) -> int:
    """``stream serve --cluster``: this process is a front; the engines are Ray actors."""
    import functools

    import ray

    from framestream.stream.cluster import ClusterEngine, join_cluster, start_engines
    from framestream.stream.service import build_pipelines

    joined = False
    try:
        joined = join_cluster(cluster)
        engines = start_engines(functools.partial(build_pipelines, spec), engine_config, cluster)
        where = f"{args.preset} on {len(engines)} engines ({spec.device}), Ray at {cluster.address}"
        asyncio.run(_run_server(config, lambda: ClusterEngine.connect(engines, cluster), where))
    except (ValueError, TimeoutError, ConnectionError, ray.exceptions.RayError) as exc:
        print(f"stream serve: cannot start the engines: {exc}", file=sys.stderr)
        return 2
    finally:
        if joined:
            ray.shutdown()
    return 0


async def _run_server(config, open_backend, where: str) -> None:
    """Serve the backend ``open_backend()`` gives until SIGINT or SIGTERM, then shut down
    gracefully."""
    from framestream.stream.server import build_server

    server = build_server(config, await open_backend())
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"stream {__version__}: {where}", flush=True)
    print(f"  WebSocket  {server.url}", flush=True)
    print(f"  page       http://{host}:{server.port}/", flush=True)
    print(f"  health     http://{host}:{server.port}/healthz", flush=True)
    await stop.wait()
    print("shutting down", flush=True)
    await server.close()


def _caption(args: argparse.Namespace) -> int:
    """The commentary tool of clients/, through the server at --url, or else through one started
    here on a free loopback port (the tiny default, or --vlm-dir)."""
    from framestream.clients.caption import run_caption  # the CLI is the one place both sides meet

    if args.url is not None:
        return asyncio.run(run_caption(args))
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine
    from framestream.stream.server import build_server
    from framestream.stream.service import ServiceModels, build_pipelines

    device, dtype = _device_and_dtype(args)
    spec = ServiceModels(
        vlm_dir=args.vlm_dir, device=device, dtype=dtype, pipelines=("streaming_vlm",)
    )
    engine = Engine(build_pipelines(spec))

    async def run() -> int:
        async with build_server(ServerConfig(port=0), engine) as server:
            args.url = server.url
            return await run_caption(args)

    return asyncio.run(run())


def _env(name: str, default: str | None = None) -> str | None:
    """The variable's value; an empty one counts as unset (compose passes `VAR=` through)."""
    return os.environ.get(name) or default


# limits given as --flag-name (or STREAM_FLAG_NAME); unset ones keep the config's default
_SERVER_LIMITS = (
    ("max_connections", int, "open WebSocket connections (more get HTTP 503)"),
    ("max_messages_per_second", float, "messages a second per connection (rate_limited)"),
    ("max_messages_per_second_total", float, "messages a second over all connections"),
    ("max_session_starts_per_second", float, "session.start a second over all connections"),
    ("max_recordings", int, "finished recordings kept; the oldest are deleted"),
    ("max_pending_record_frames", int, "frames waiting for the disk per recording (dropped)"),
    ("max_queue", int, "received messages buffered per connection"),
    ("write_limit", int, "bytes buffered per connection before a send waits"),
    ("encode_workers", int, "threads encoding frames, shared by all sessions"),
    ("open_timeout", float, "seconds for the WebSocket handshake"),
    ("close_timeout", float, "seconds for a closing handshake and for draining at shutdown"),
    ("session_open_timeout", float, "seconds to wait for the engine to admit a session"),
)
_ENGINE_LIMITS = (
    ("output_queue_frames", int, "frames kept per session for a slow client (oldest dropped)"),
    ("input_queue_frames", int, "input frames waiting per session (oldest dropped)"),
    ("max_pending_commands", int, "connection commands waiting for the engine (rate_limited)"),
    ("max_load", float, "share of the device realtime sessions may claim (compute_full)"),
    ("max_step_seconds", float, "a session whose one step takes longer is refused"),
    ("late_seconds", float, "a realtime step this late makes /healthz say degraded"),
)


# --cluster's settings (stream.cluster.ClusterConfig fields) as --flag-name (or STREAM_FLAG_NAME)
_CLUSTER_SETTINGS = (
    ("engines", "engines", int, "engines to start (0: one per --gpus-per-engine GPUs of it)"),
    ("gpus_per_engine", "gpus-per-engine", float, "GPUs reserved per engine (0: on CPUs)"),
    ("cpus_per_engine", "cpus-per-engine", float, "CPUs reserved per engine"),
    ("max_restarts", "engine-restarts", int, "times Ray restarts a dead engine (-1: always)"),
    ("namespace", "engine-namespace", str, "Ray namespace of the named engines"),
    ("lease_seconds", "front-lease-seconds", float, "engines close a silent front's sessions"),
    ("poll_seconds", "engine-poll-seconds", float, "longest an engine holds a poll for frames"),
    ("retry_seconds", "engine-retry-seconds", float, "seconds between calls to a down engine"),
    ("start_timeout", "engine-start-timeout", float, "seconds for the engines to load models"),
)


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster (several GPUs or hosts, on Ray; docs/scaling.md)",
        "With --cluster this process is a front: sessions run on engine actors, one per GPU.",
    )
    group.add_argument(
        "--cluster",
        default=_env("STREAM_CLUSTER"),
        metavar="ADDRESS",
        help="STREAM_CLUSTER; local (a Ray cluster of this host), auto (the `ray start` of "
        "this host), HOST:PORT or ray://HOST:PORT; default: no cluster, one engine here",
    )
    for name, flag, kind, help_ in _CLUSTER_SETTINGS:
        env = f"STREAM_{flag.upper().replace('-', '_')}"
        group.add_argument(
            f"--{flag}", dest=name, type=kind, default=_env(env), help=f"{env}; {help_}"
        )


def _cluster_config(args: argparse.Namespace):
    """The ``ClusterConfig`` of ``--cluster``, or None without it."""
    if not args.cluster:
        return None
    try:
        from framestream.stream.cluster.config import ClusterConfig
    except ImportError:
        raise ValueError("--cluster needs Ray: pip install -e '.[cluster]'") from None

    given = {name: getattr(args, name) for name, *_ in _CLUSTER_SETTINGS}
    return ClusterConfig(args.cluster, **{k: v for k, v in given.items() if v is not None})


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    for name, kind, help_ in _SERVER_LIMITS + _ENGINE_LIMITS:
        env = f"STREAM_{name.upper()}"
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=_env(env), help=f"{env}; {help_}")


def _given(args: argparse.Namespace, limits: tuple) -> dict:
    return {name: getattr(args, name) for name, _, _ in limits if getattr(args, name) is not None}


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the WebSocket API (and the browser page)",
        description="Every flag falls back to the environment variable named in its help.",
    )
    serve.add_argument("--host", default=_env("STREAM_HOST", "127.0.0.1"), help="STREAM_HOST")
    serve.add_argument(
        "--port", type=int, default=int(_env("STREAM_PORT", "8000")), help="STREAM_PORT"
    )
    serve.add_argument(
        "--token",
        default=_env("STREAM_TOKEN"),
        help="STREAM_TOKEN; required in hello; mandatory when --host is not loopback",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[o for o in (_env("STREAM_ALLOW_ORIGIN") or "").split(",") if o],
        help="STREAM_ALLOW_ORIGIN (comma separated); browser origins allowed (repeatable; "
        "default: same origin and localhost)",
    )
    serve.add_argument(
        "--cache-gb",
        type=float,
        default=_env("STREAM_CACHE_GB"),
        help="STREAM_CACHE_GB; KV-cache pool size (default: 8 on cuda, 0.5 on cpu)",
    )
    serve.add_argument(
        "--kv-cache-dtype",
        default=_env("STREAM_KV_CACHE_DTYPE", "auto"),
        help=f"STREAM_KV_CACHE_DTYPE; {_KV_CACHE_DTYPE_HELP}",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=int(_env("STREAM_MAX_SESSIONS", "8")),
        help="STREAM_MAX_SESSIONS; sessions on the device at once",
    )
    serve.add_argument(
        "--max-sessions-per-connection",
        type=int,
        default=int(_env("STREAM_MAX_SESSIONS_PER_CONNECTION", "4")),
        help="STREAM_MAX_SESSIONS_PER_CONNECTION",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(_env("STREAM_MAX_MESSAGE_BYTES", str(1 << 20))),
        help="STREAM_MAX_MESSAGE_BYTES",
    )
    _add_limit_arguments(serve)
    serve.add_argument(
        "--max-frame-pixels",
        type=int,
        default=int(_env("STREAM_MAX_FRAME_PIXELS", str(1920 * 1080))),
        help="STREAM_MAX_FRAME_PIXELS",
    )
    serve.add_argument(
        "--toyworld-feed-max-seconds",
        type=int,
        default=int(_env("STREAM_TOYWORLD_FEED_MAX_SECONDS", "600")),
        help="STREAM_TOYWORLD_FEED_MAX_SECONDS; longest /toyworld/feed.mp4",
    )
    serve.add_argument(
        "--static-dir",
        type=Path,
        default=_env("STREAM_STATIC_DIR", str(STATIC_DIR)),
        help="STREAM_STATIC_DIR; the browser page's files (default: the page shipped here)",
    )
    serve.add_argument("--no-page", action="store_true", help="serve no browser page at /")
    serve.add_argument(
        "--record-dir",
        type=Path,
        default=_env("STREAM_RECORD_DIR"),
        help="STREAM_RECORD_DIR; default: a temporary folder",
    )
    serve.add_argument(
        "--pipelines",
        default=_env("STREAM_PIPELINES", "longlive,rolling_forcing,streaming_vlm"),
        help="STREAM_PIPELINES; comma-separated pipelines to serve",
    )
    serve.add_argument(
        "--vlm-dir",
        type=Path,
        default=_env("STREAM_VLM_DIR"),
        help="STREAM_VLM_DIR; a local Qwen2.5-VL / StreamingVLM folder (default: the embedded "
        "toy-world model)",
    )
    serve.add_argument(
        "--vlm-cache-gb",
        type=float,
        default=_env("STREAM_VLM_CACHE_GB"),
        help="STREAM_VLM_CACHE_GB; the VLM's KV-cache pool (default: 4 on cuda, 0.25 on cpu)",
    )
    _add_model_arguments(serve)
    _add_cluster_arguments(serve)
    serve.set_defaults(
        run=_serve,
        preset=_env("STREAM_PRESET", DEFAULT_PRESET),
        device=_env("STREAM_DEVICE"),
        dtype=_env("STREAM_DTYPE"),
        # local paths (a container's checkpoint volume), converted by the flags' types
        model_dir=_env("STREAM_MODEL_DIR"),
        dit=_env("STREAM_DIT"),
        lora=_env("STREAM_LORA"),
        vae=_env("STREAM_VAE"),
        text_encoder=_env("STREAM_TEXT_ENCODER"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream",
        description="Real-time streaming video generation and understanding service.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = commands.add_parser("version", help="print the version and exit")
    version.set_defaults(run=_version)

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
    generate.add_argument("--kv-cache-dtype", default="auto", help=_KV_CACHE_DTYPE_HELP)
    _add_model_arguments(generate)
    generate.set_defaults(run=_generate)
    _add_serve_parser(commands)
    _add_caption_parser(commands)
    _add_timeline_parser(commands)
    _add_eval_parser(commands)
    _add_bench_parser(commands)
    return parser


def _add_eval_parser(commands: argparse._SubParsersAction) -> None:
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


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
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


def _add_timeline_parser(commands: argparse._SubParsersAction) -> None:
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


def _add_caption_parser(commands: argparse._SubParsersAction) -> None:
    from framestream.clients.caption import add_caption_arguments

    caption = commands.add_parser(
        "caption",
        help="live commentary on a video file, stream URL or camera, printed as it comes",
        description="Without --url, a server with the StreamingVLM pipeline is started here.",
    )
    add_caption_arguments(caption)
    caption.add_argument("--vlm-dir", type=Path, help="a local Qwen2.5-VL / StreamingVLM folder")
    caption.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    caption.add_argument("--dtype", choices=sorted(_DTYPES), default=None)
    caption.set_defaults(run=_caption, url=None)


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
