"""``stream bench`` (also ``python -m framestream.evals.bench``): run suites, write one JSON
record and a PNG per suite; ``stream bench report`` regenerates BENCHMARKS.md; ``stream bench
plot`` redraws.

Counts default by device: a CPU run of the default suites takes a few minutes on two cores, a
full-size run of every suite was sized for one device call on an H200 (the service suite's
commentary and mixed-load workloads run on the wall clock, a few minutes more; see
docs/evals.md), ``--quick`` is a smoke run.
Every default is written out in the record's ``command``, so it reproduces the run.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy imports wait until a run needs them (see _run_suites)
    from framestream.evals.bench.loaders import ModelShelf
    from framestream.evals.bench.record import BenchRecord, Workload

__all__ = ["add_bench_arguments", "main", "run"]

SUITES = ("generation", "understanding", "service", "kernels", "vae", "cluster", "long")
DEFAULT_SUITES = ("generation", "understanding", "service")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class _Counts:
    """How long each suite runs, unless a flag says otherwise."""

    chunks: int
    warmup: int
    switches: int
    new_sessions: int
    vlm_seconds: int
    vlm_warmup: int
    streams: str
    rounds: int
    clients: str
    service_chunks: int
    commentary_clients: str
    commentary_seconds: int
    commentary_warmup: int
    mixed_clients: str
    long_seconds: float


_COUNTS = {
    "cpu": _Counts(12, 4, 2, 2, 30, 17, "1,2,4", 4, "1,2", 4, "1,2", 4, 2, "0,1", 30),
    "cuda": _Counts(
        12, 4, 2, 1, 24, 17, "1,2,4,8,16", 4, "1,2,4", 2, "1,2,4,8,16", 8, 17, "0,4,8", 540
    ),
    "quick": _Counts(6, 2, 1, 1, 6, 2, "1,2", 2, "1,2", 2, "1", 2, 1, "0,1", 6),
}
# the order options appear in a record's reproducing command
_RUN_OPTIONS = (
    "suite preset model_dir vlm_dir tiny_decoder device dtype threads baselines pipelines size "
    "chunks warmup switches new_sessions memory_budget published_longlive "
    "published_rolling_forcing vlm_seconds vlm_warmup streams rounds clients service_chunks "
    "formats commentary_clients commentary_seconds commentary_warmup mixed_clients "
    "mixed_generators engines kernel_cases long_seconds long_switch_every revision out"
).split()


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run, and the ``report`` and ``plot`` actions (imports nothing heavy:
    the ``stream`` command builds this parser for every subcommand)."""
    run = parser.add_argument_group("what to run")
    run.add_argument("--suite", default=",".join(DEFAULT_SUITES), help=f"any of {SUITES}")
    run.add_argument(
        "--preset",
        default="toyworld",
        help="toyworld (embedded, default), tiny (random, for tests) or wan2.1-t2v-1.3b (full "
        "size; random weights on the device unless --model-dir)",
    )
    run.add_argument("--model-dir", type=Path, help="a diffusers-layout Wan folder to load")
    run.add_argument("--vlm-dir", type=Path, help="a Qwen2.5-VL / StreamingVLM folder to load")
    run.add_argument(
        "--tiny-decoder",
        type=Path,
        help="a tiny streaming decoder file (TAEHV's taew2_1.pth) for the tinyvae variant and "
        "the vae suite (default: the preset's; random taew2_1 shapes at full size: speed only)",
    )
    run.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    run.add_argument("--dtype", choices=sorted(_DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    run.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's); 1 steadies a CPU that others share",
    )
    run.add_argument(
        "--baselines",
        default="sdpa,growing,tinyvae",
        help="run beside ours: 'growing' (eviction off), 'fp8kv' (the FP8 KV cache), 'tinyvae' "
        "(the tiny streaming decoder; generation only), 'fp8gemm' (FP8 GEMMs in the DiT; "
        "CUDA), 'published' (the published loops, from --published-*) and/or attention backend "
        "names (sdpa, sdpa_fused, triton, torch, sage); '' for none",
    )
    run.add_argument("--quick", action="store_true", help="a smoke run: few steps of each")
    run.add_argument("--out", type=Path, help="the JSON record (default: ./bench_DEVICE_DATE.json)")
    run.add_argument("--no-plots", action="store_true", help="write the JSON only")
    run.add_argument("--revision", help="the commit measured, where the tree has no .git")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--pipelines", default="longlive,rolling_forcing")
    gen.add_argument("--size", help="HEIGHTxWIDTH in pixels (default: the preset's)")
    gen.add_argument("--chunks", type=int, help="steps of the measured stream")
    gen.add_argument("--warmup", type=int, help="first steps left out of the steady figures")
    gen.add_argument("--switches", type=int, help="prompt switches timed")
    gen.add_argument("--new-sessions", type=int, help="fresh sessions timed to a first frame")
    gen.add_argument(
        "--published-longlive",
        type=Path,
        help="a checkout of NVlabs/LongLive v1.0, for --baselines published",
    )
    gen.add_argument(
        "--published-rolling-forcing",
        type=Path,
        help="a checkout of TencentARC/RollingForcing, for --baselines published",
    )
    gen.add_argument(
        "--memory-budget",
        type=float,
        help="GiB the run may allocate on its device, to size the growing baseline by "
        "(default: the device's free memory)",
    )

    vlm = parser.add_argument_group("understanding")
    vlm.add_argument("--vlm-seconds", type=int, help="length of the single stream")
    vlm.add_argument("--vlm-warmup", type=int, help="seconds a stream runs before it is measured")
    vlm.add_argument("--streams", help="concurrent stream counts, e.g. 1,2,4,8,16")
    vlm.add_argument("--rounds", type=int, help="measured seconds per stream count")

    service = parser.add_argument_group("service (and cluster)")
    service.add_argument("--clients", help="client counts, e.g. 1,2,4 ('': skipped)")
    service.add_argument("--service-chunks", type=int, help="chunks timed per client")
    service.add_argument("--formats", default="jpeg", help="of jpeg, png, raw, h264; first is ours")
    service.add_argument(
        "--commentary-clients",
        help="commentary client counts, feeds paced in real time, e.g. 1,2,4,8,16 ('' skips)",
    )
    service.add_argument(
        "--commentary-seconds", type=int, help="video-seconds measured per commentary client"
    )
    service.add_argument(
        "--commentary-warmup", type=int, help="video-seconds of feed before the measurement"
    )
    service.add_argument(
        "--mixed-clients",
        help="commentary client counts beside realtime LongLive sessions, 0 for none, e.g. "
        "0,4,8 ('' skips)",
    )
    service.add_argument(
        "--mixed-generators",
        type=int,
        default=1,
        choices=(1, 2),
        help="realtime LongLive sessions of the mixed load",
    )

    cluster = parser.add_argument_group("cluster (needs Ray: the cluster extra)")
    cluster.add_argument(
        "--engines",
        type=int,
        default=2,
        help="engine actors of the largest run, one GPU each on cuda (1 engine is the baseline)",
    )

    long = parser.add_argument_group("long (one LongLive stream for minutes)")
    long.add_argument(
        "--long-seconds", type=float, help="seconds of video (default: 540 on cuda, 30 on cpu)"
    )
    long.add_argument(
        "--long-switch-every",
        type=float,
        default=30.0,
        help="seconds of video between prompt switches",
    )

    kernels = parser.add_argument_group("kernels")
    kernels.add_argument("--kernel-cases", help="a subset of the cases (default: all)")

    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    report = actions.add_parser("report", help="regenerate BENCHMARKS.md from evals/results")
    report.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md is stale")
    plot = actions.add_parser("plot", help="redraw the PNGs of JSON records")
    plot.add_argument("records", nargs="+", type=Path)


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        from framestream.evals.report import check_report, write_report

        return check_report() if args.check else write_report()
    if args.action == "plot":
        return _replot(args.records)
    return _run_suites(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framestream.evals.bench", description=__doc__)
    add_bench_arguments(parser)
    return run(parser.parse_args(argv))


def _run_suites(args: argparse.Namespace) -> int:
    import os

    import torch

    suites = _split(args.suite)
    unknown = set(suites) - set(SUITES)
    if unknown or not suites:
        raise SystemExit(f"stream bench: --suite takes names of {SUITES}, got {args.suite!r}")
    if args.size is not None:
        _size(args.size)
    checkouts = _checkouts(args, suites)
    if "kernels" in suites and not torch.cuda.is_available():
        # Triton reads this when the kernels are defined, before the first import below
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from tqdm import tqdm

    from framestream.evals.bench.console import progress, workload_table
    from framestream.evals.bench.environment import describe_run
    from framestream.evals.bench.loaders import ModelShelf, Target
    from framestream.evals.bench.record import BenchRecord

    if args.threads is None:
        args.threads = torch.get_num_threads()  # written out, so the command says what ran
    torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    counts = _COUNTS["quick" if args.quick else device.type]
    for name, value in vars(counts).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    target = Target(
        args.preset,
        device,
        getattr(torch, _DTYPES[args.dtype]),
        args.model_dir,
        args.vlm_dir,
        args.tiny_decoder,
    )
    shelf = ModelShelf(target)
    if args.size is None:
        from framestream.models.registry import GENERATION_PRESETS

        height, width = GENERATION_PRESETS[args.preset]["size"]
        args.size = f"{height}x{width}"
    run_info = describe_run(device, args.revision)
    if args.out is None:
        tag = "cpu" if device.type == "cpu" else run_info.device.split()[-1].lower()
        args.out = Path(f"bench_{tag}_{run_info.date[:10]}.json")
    command = _command(args)
    record = BenchRecord(command, run_info, {k: _plain(getattr(args, k)) for k in _RUN_OPTIONS})
    print(f"{command}\n{run_info.machine}", flush=True)
    for suite in progress(suites, "suites"):
        for name, workload in _workloads(suite, shelf, args, checkouts):
            record.add(suite, name, workload)
            record.write(args.out)
            tqdm.write(workload_table(workload))
        if not args.no_plots:
            tqdm.write(_plot(record, suite, args.out))
    print(f"wrote {args.out}")
    return 0


def _checkouts(args: argparse.Namespace, suites: list[str]) -> dict[str, Path]:
    """The published checkouts of a run with ``--baselines published``: pipeline -> path,
    each checked; exits saying what is missing or wrong."""
    given = {
        "longlive": args.published_longlive,
        "rolling_forcing": args.published_rolling_forcing,
    }
    if "published" not in _split(args.baselines):
        named = [f"--published-{k.replace('_', '-')}" for k, path in given.items() if path]
        if named:
            flags = ", ".join(named)
            raise SystemExit(f"stream bench: {flags} given without --baselines published")
        return {}
    if "generation" not in suites:
        raise SystemExit("stream bench: --baselines published runs in the generation suite only")
    from framestream.evals.bench.published import LOOPS, check_checkout

    kinds = [kind for kind in _split(args.pipelines) if kind in LOOPS]  # others: refused later
    try:
        return {kind: check_checkout(kind, given[kind]) for kind in kinds}
    except ValueError as error:
        raise SystemExit(f"stream bench: {error}") from None


def _workloads(
    suite: str, shelf: ModelShelf, args: argparse.Namespace, checkouts: dict[str, Path]
) -> Iterator[tuple[str, Workload]]:
    """The suite's ``(name, workload)`` pairs, each as soon as it is measured."""
    from framestream.evals.bench.variants import variant_specs

    size = _size(args.size)
    specs = variant_specs(_split(args.baselines), shelf.target.device)
    if suite != "generation":
        specs = [spec for spec in specs if not spec.published]  # the rest filter their own
    if suite == "generation":
        from framestream.evals.bench.generation import GenerationSettings, run_generation

        settings = GenerationSettings(
            tuple(_split(args.pipelines)),
            size,
            args.chunks,
            args.warmup,
            args.switches,
            args.new_sessions,
            None if args.memory_budget is None else int(args.memory_budget * 2**30),
            checkouts,
        )
        return run_generation(shelf, settings, specs)
    if suite == "long":
        from framestream.evals.bench.long_stream import LongStreamSettings, run_long_stream

        settings = LongStreamSettings(args.long_seconds, args.long_switch_every, args.warmup, size)
        return run_long_stream(shelf, settings, specs[0])  # ours: the service as shipped
    if suite == "understanding":
        from framestream.evals.bench.understanding import UnderstandingSettings, run_understanding

        settings = UnderstandingSettings(
            args.vlm_seconds,
            args.vlm_warmup,
            tuple(int(n) for n in _split(args.streams)),
            args.rounds,
        )
        return run_understanding(shelf, settings, specs)
    if suite == "service":
        from framestream.evals.bench.service import ServiceSettings, run_service

        served = _served_load(shelf, args, size)
        if not (clients := tuple(int(n) for n in _split(args.clients))):  # '': skipped
            return served
        settings = ServiceSettings(clients, args.service_chunks, tuple(_split(args.formats)), size)
        return itertools.chain(run_service(shelf, settings), served)
    if suite == "cluster":
        from framestream.evals.bench.cluster import ClusterSettings, run_cluster

        settings = ClusterSettings(
            tuple(int(n) for n in _split(args.clients)), args.service_chunks, size, args.engines
        )
        return run_cluster(shelf, settings)
    if suite == "kernels":
        from framestream.evals.bench.kernels import run_kernels

        target = shelf.target
        return run_kernels(target.device, target.full_size, _split(args.kernel_cases or ""))
    from framestream.evals.bench.vae import run_vae

    return run_vae(shelf, size, args.chunks)


def _served_load(
    shelf: ModelShelf, args: argparse.Namespace, size: tuple[int, int]
) -> Iterator[tuple[str, Workload]]:
    """The service suite's commentary and mixed-load workloads, those whose counts are set."""
    from framestream.evals.bench.commentary import CommentarySettings, run_commentary
    from framestream.evals.bench.mixed import MixedSettings, run_mixed

    seconds, warmup = args.commentary_seconds, args.commentary_warmup
    if commentary := tuple(int(n) for n in _split(args.commentary_clients)):
        yield from run_commentary(shelf, CommentarySettings(commentary, seconds, warmup))
    if mixed := tuple(int(n) for n in _split(args.mixed_clients)):
        settings = MixedSettings(mixed, args.mixed_generators, seconds, warmup, size)
        yield from run_mixed(shelf, settings)


def _plot(record: BenchRecord, suite: str, out: Path) -> str:
    from framestream.evals.bench.plot import plot_suite

    try:
        return f"plotted {plot_suite(record, suite, out)}"
    except ImportError:  # matplotlib is a development dependency
        return f"no plot: matplotlib is missing; draw it later with `stream bench plot {out}`"


def _replot(paths: list[Path]) -> int:
    from framestream.evals.bench.plot import plot_suite
    from framestream.evals.bench.record import BenchRecord

    for path in paths:
        record = BenchRecord.read(path)
        for suite in record.suites:
            print(plot_suite(record, suite, path))
    return 0


def _command(args: argparse.Namespace) -> str:
    """``stream bench`` with every option of the run spelled out."""
    words = ["stream", "bench"]
    for name in _RUN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if args.no_plots:
        words.append("--no-plots")
    return shlex.join(words)


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _size(text: str) -> tuple[int, int]:
    """``"HEIGHTxWIDTH"`` -> (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"stream bench: --size takes HEIGHTxWIDTH, got {text!r}") from None
    return height, width


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
