"""``stream eval fidelity``: run our loops beside the published ones from checkouts the user
names, and write the differences as JSON::

    stream eval fidelity --longlive ~/src/LongLive --rolling-forcing ~/src/RollingForcing \
        --streaming-vlm ~/src/streaming-vlm --out fidelity.json

Each ``--*`` path is a work tree of that repository (LongLive at branch ``v1.0``); the ones not
given are skipped. Needs the ``fidelity`` extra (the published code's own pure-Python
requirements). Exits 1 when a comparison is not equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import torch

from framestream.evals.bench.environment import describe_run

__all__ = ["add_fidelity_arguments", "main", "run"]


def add_fidelity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--longlive", type=Path, help="a work tree of NVlabs/LongLive (v1.0)")
    parser.add_argument(
        "--rolling-forcing", type=Path, help="a work tree of TencentARC/RollingForcing"
    )
    parser.add_argument(
        "--streaming-vlm", type=Path, help="a work tree of mit-han-lab/streaming-vlm"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("fidelity.json"), help="JSON record")


def run(args: argparse.Namespace) -> int:
    checks = _checks(args)
    if not checks:
        print("name at least one checkout: --longlive, --rolling-forcing, --streaming-vlm")
        return 2
    for path in checks.values():
        if not path[0].is_dir():
            print(f"no checkout at {path[0]}")
            return 2
    torch.manual_seed(args.seed)
    results = []
    for name, (path, compare) in checks.items():
        start = time.monotonic()
        print(f"{name}: {path} ...", flush=True)
        out = compare(path, args.seed)
        for result in out if isinstance(out, list) else [out]:
            result["seconds"] = round(time.monotonic() - start, 1)
            results.append(result)
            print(_summary(result), flush=True)
    record = {
        "command": _command(args),
        "run": dataclasses.asdict(describe_run(torch.device("cpu"))),
        "dtype": "float32",
        "results": results,
        "all_equal": all(r["all_equal"] for r in results),
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if record["all_equal"] else 1


def _checks(args: argparse.Namespace) -> dict[str, tuple[Path, Callable]]:
    """The comparisons asked for: name -> (checkout, its ``compare(path, seed=)``)."""
    given = {
        "longlive": args.longlive,
        "rolling_forcing": args.rolling_forcing,
        "streaming_vlm": args.streaming_vlm,
    }
    return {name: (path, _compare_of(name)) for name, path in given.items() if path is not None}


def _compare_of(name: str) -> Callable:
    def compare(path: Path, seed: int):
        module = importlib.import_module(f"framestream.evals.fidelity.{name}")
        return module.compare(path, seed=seed)

    return compare


def _command(args: argparse.Namespace) -> str:
    """The command that reruns this evaluation."""
    words = ["stream", "eval", "fidelity"]
    for flag in ("longlive", "rolling_forcing", "streaming_vlm"):
        if getattr(args, flag) is not None:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    words += ["--seed", str(args.seed), "--out", str(args.out)]
    return shlex.join(words)


def _summary(result: dict) -> str:
    rows = result.get("chunks") or result.get("blocks") or result.get("rounds") or []
    worst = max((row.get("max_rel", 0.0) for row in rows), default=0.0)
    label = result["pipeline"]
    if "global_sink" in result:
        label += f" (global_sink={result['global_sink']})"
    verdict = "equal" if result["all_equal"] else "DIFFERENT"
    return f"  {label}: {len(rows)} compared, worst relative difference {worst:.1e}: {verdict}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.evals.fidelity", description=__doc__
    )
    add_fidelity_arguments(parser)
    return run(parser.parse_args(argv))
