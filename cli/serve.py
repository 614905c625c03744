"""``stream serve``: the WebSocket service on one device, or a front of engines on a Ray
cluster; every limit is a flag with an environment-variable fallback."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from framestream.cli.checks import (
    ArgumentChecks,
    check,
    check_bindable,
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
    env,
    toyworld_note,
    wan_paths,
)
from framestream.models.toyworld.embedded import DEFAULT_PRESET
from framestream.stream.version import __version__
from framestream.stream.web import STATIC_DIR

__all__ = ["ENGINE_LIMITS", "SERVER_LIMITS", "add_serve_parser", "run_server"]


# limits given as --flag-name (or STREAM_FLAG_NAME); unset ones keep the config's default
SERVER_LIMITS = (
    ("max_connections", int, "open WebSocket connections (more get HTTP 503)"),
    ("max_unauthenticated_connections", int, "of them, those before hello (kept for the rest)"),
    ("hello_timeout", float, "seconds a connection has to say hello (then closed, 1008)"),
    ("max_messages_per_second", float, "messages a second per connection (rate_limited)"),
    ("max_messages_per_second_total", float, "messages a second over all connections"),
    ("max_session_starts_per_second", float, "session.start a second over all connections"),
    (
        "max_session_starts_per_second_per_connection",
        float,
        "session.start a second per connection (charged before the server's budget)",
    ),
    ("toyworld_feed_max_waiting", int, "toy-world feed renders waiting (more: HTTP 503)"),
    ("max_recordings", int, "finished recordings kept; the oldest are deleted"),
    ("max_pending_record_frames", int, "frames waiting for the disk per recording (dropped)"),
    ("max_queue", int, "received messages buffered per connection"),
    ("write_limit", int, "bytes buffered per connection before a send waits"),
    ("encode_workers", int, "threads encoding frames, shared by all sessions"),
    ("open_timeout", float, "seconds for the WebSocket handshake"),
    ("close_timeout", float, "seconds for a closing handshake and for draining at shutdown"),
    ("session_open_timeout", float, "seconds to wait for the engine to admit a session"),
)
ENGINE_LIMITS = (
    ("output_queue_frames", int, "frames kept per session for a slow client (oldest dropped)"),
    ("input_queue_frames", int, "input frames waiting per session (oldest dropped)"),
    ("max_pending_commands", int, "connection commands waiting for the engine (rate_limited)"),
    ("max_pending_switches", int, "prompt switches per session waiting for their frame"),
    ("max_load", float, "share of the device realtime sessions may claim (compute_full)"),
    ("max_step_seconds", float, "a session whose one step takes longer is refused"),
    ("late_seconds", float, "a realtime step this late makes /healthz say degraded"),
    ("reply_slice_seconds", float, "a caption's decoding before an overdue chunk cuts in"),
    ("recalibrate_seconds", float, "an idle device re-times a pipeline before compute_full"),
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
        default=env("STREAM_CLUSTER"),
        metavar="ADDRESS",
        help="STREAM_CLUSTER; local (a Ray cluster of this host), auto (the `ray start` of "
        "this host), HOST:PORT or ray://HOST:PORT; default: no cluster, one engine here",
    )
    for name, flag, kind, help_ in _CLUSTER_SETTINGS:
        variable = f"STREAM_{flag.upper().replace('-', '_')}"
        group.add_argument(
            f"--{flag}", dest=name, type=kind, default=env(variable), help=f"{variable}; {help_}"
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
    for name, kind, help_ in SERVER_LIMITS + ENGINE_LIMITS:
        variable = f"STREAM_{name.upper()}"
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=env(variable), help=f"{variable}; {help_}")


def _given(args: argparse.Namespace, limits: tuple) -> dict:
    return {name: getattr(args, name) for name, _, _ in limits if getattr(args, name) is not None}


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the WebSocket API (and the browser page)",
        description="Every flag falls back to the environment variable named in its help.",
    )
    serve.add_argument("--host", default=env("STREAM_HOST", "127.0.0.1"), help="STREAM_HOST")
    serve.add_argument(
        "--port", type=int, default=int(env("STREAM_PORT", "8000")), help="STREAM_PORT"
    )
    serve.add_argument(
        "--token",
        default=env("STREAM_TOKEN"),
        help="STREAM_TOKEN; required in hello; mandatory when --host is not loopback",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[o for o in (env("STREAM_ALLOW_ORIGIN") or "").split(",") if o],
        help="STREAM_ALLOW_ORIGIN (comma separated); browser origins allowed (repeatable; "
        "default: same origin and localhost)",
    )
    serve.add_argument(
        "--cache-gb",
        type=float,
        default=env("STREAM_CACHE_GB"),
        help="STREAM_CACHE_GB; KV-cache pool size (default: 8 on cuda, 0.5 on cpu)",
    )
    serve.add_argument(
        "--kv-cache-dtype",
        default=env("STREAM_KV_CACHE_DTYPE", "auto"),
        help=f"STREAM_KV_CACHE_DTYPE; {KV_CACHE_DTYPE_HELP}",
    )
    serve.add_argument(
        "--max-sessions",
        type=int,
        default=int(env("STREAM_MAX_SESSIONS", "8")),
        help="STREAM_MAX_SESSIONS; sessions on the device at once",
    )
    serve.add_argument(
        "--max-sessions-per-connection",
        type=int,
        default=int(env("STREAM_MAX_SESSIONS_PER_CONNECTION", "4")),
        help="STREAM_MAX_SESSIONS_PER_CONNECTION",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(env("STREAM_MAX_MESSAGE_BYTES", str(1 << 20))),
        help="STREAM_MAX_MESSAGE_BYTES",
    )
    _add_limit_arguments(serve)
    serve.add_argument(
        "--max-frame-pixels",
        type=int,
        default=int(env("STREAM_MAX_FRAME_PIXELS", str(1920 * 1080))),
        help="STREAM_MAX_FRAME_PIXELS",
    )
    serve.add_argument(
        "--toyworld-feed-max-seconds",
        type=int,
        default=int(env("STREAM_TOYWORLD_FEED_MAX_SECONDS", "600")),
        help="STREAM_TOYWORLD_FEED_MAX_SECONDS; longest /toyworld/feed.mp4",
    )
    serve.add_argument(
        "--static-dir",
        type=Path,
        default=env("STREAM_STATIC_DIR", str(STATIC_DIR)),
        help="STREAM_STATIC_DIR; the browser page's files (default: the page shipped here)",
    )
    serve.add_argument("--no-page", action="store_true", help="serve no browser page at /")
    serve.add_argument(
        "--record-dir",
        type=Path,
        default=env("STREAM_RECORD_DIR"),
        help="STREAM_RECORD_DIR; default: a temporary folder",
    )
    serve.add_argument(
        "--pipelines",
        default=env("STREAM_PIPELINES", "longlive,rolling_forcing,streaming_vlm"),
        help="STREAM_PIPELINES; comma-separated pipelines to serve",
    )
    serve.add_argument(
        "--vlm-dir",
        type=Path,
        default=env("STREAM_VLM_DIR"),
        help="STREAM_VLM_DIR; a local Qwen2.5-VL / StreamingVLM folder (default: the embedded "
        "toy-world model)",
    )
    serve.add_argument(
        "--vlm-cache-gb",
        type=float,
        default=env("STREAM_VLM_CACHE_GB"),
        help="STREAM_VLM_CACHE_GB; the VLM's KV-cache pool (default: 4 on cuda, 0.25 on cpu)",
    )
    add_model_arguments(serve)
    _add_cluster_arguments(serve)
    serve.set_defaults(
        run=_serve,
        preset=env("STREAM_PRESET", DEFAULT_PRESET),
        device=env("STREAM_DEVICE"),
        dtype=env("STREAM_DTYPE"),
        # local paths (a container's checkpoint volume), converted by the flags' types
        model_dir=env("STREAM_MODEL_DIR"),
        dit=env("STREAM_DIT"),
        lora=env("STREAM_LORA"),
        vae=env("STREAM_VAE"),
        text_encoder=env("STREAM_TEXT_ENCODER"),
    )


_CHECKS = ArgumentChecks(
    folders=("vlm_dir",),
    made=("record_dir",),
    positive=(
        "cache_gb",
        "vlm_cache_gb",
        "max_sessions",
        "max_sessions_per_connection",
        "max_message_bytes",
        "max_frame_pixels",
        "toyworld_feed_max_seconds",
    ),
)


def _check(args: argparse.Namespace) -> None:
    """The paths and numbers, before anything heavy is imported; raises :class:`UsageError`."""
    check(args, _CHECKS)
    check_model_arguments(args)
    if not args.no_page:
        check(args, ArgumentChecks(folders=("static_dir",)))


def _serve(args: argparse.Namespace) -> int:
    _check(args)
    from framestream.stream.config import ServerConfig

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
            **_given(args, SERVER_LIMITS),
        )
    except ValueError as exc:
        print(f"stream serve: {exc}", file=sys.stderr)
        return 2
    check_bindable(config.host, config.port)  # a port in use is found before the models load
    if not args.cluster:  # on a cluster the device is the engines', not this front's
        check_device(args.device)
    check_preset(args.preset)
    from framestream.stream.engine import Engine, EngineConfig
    from framestream.stream.service import ServiceModels, build_pipelines

    try:
        engine_config = EngineConfig(max_sessions=args.max_sessions, **_given(args, ENGINE_LIMITS))
        cluster = _cluster_config(args)
    except ValueError as exc:
        print(f"stream serve: {exc}", file=sys.stderr)
        return 2
    # on a cluster the models load on the engines' GPUs, whatever this front has
    device, dtype = device_and_dtype(args, cluster and cluster.gpus_per_engine > 0)
    cache_gb = args.cache_gb if args.cache_gb is not None else (8.0 if device == "cuda" else 0.5)
    vlm_gb = (
        args.vlm_cache_gb if args.vlm_cache_gb is not None else (4.0 if device == "cuda" else 0.25)
    )
    try:
        spec = ServiceModels(
            preset=args.preset,
            paths=wan_paths(args),
            decoder=decoder(args),
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
    served = set(spec.pipelines)
    note = toyworld_note(
        embedded_generator(args) and bool({"longlive", "rolling_forcing"} & served),
        args.vlm_dir is None and "streaming_vlm" in served,
    )
    if note:
        print(note, file=sys.stderr, flush=True)
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

    asyncio.run(run_server(config, local, f"{args.preset} on {device}"))
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
        asyncio.run(run_server(config, lambda: ClusterEngine.connect(engines, cluster), where))
    except (ValueError, TimeoutError, ConnectionError, ray.exceptions.RayError) as exc:
        print(f"stream serve: cannot start the engines: {exc}", file=sys.stderr)
        return 2
    finally:
        if joined:
            ray.shutdown()
    return 0


async def run_server(config, open_backend, where: str) -> None:
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
