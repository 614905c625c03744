"""Fuzz the wire protocol of a real server on loopback (see :mod:`evals.fuzz_target`).

    python -m framestream.evals.fuzz hypothesis --examples 5000 --seed 1
    python -m framestream.evals.fuzz atheris --runs 20000   # pip install atheris (coverage-guided)
    python -m framestream.evals.fuzz hypothesis --examples 2000 --mixed   # beside a mixed load

Both drive the same grammar (:mod:`evals.fuzz_grammar`): hypothesis draws its choices at
random and shrinks a failure to a small example; atheris reads them from libFuzzer's inputs
and keeps those that reach new lines of ``stream/`` and ``clients/``. ``--mixed`` runs it beside
a large background session and clients fetching toy-world feeds (evals.fuzz_target). Each writes
``evals/results/fuzz_<engine>_<date>.json``: inputs tried, replies by type and error code,
the control sessions' frames and captions, the findings (empty when the server held), and
exits 1 on a finding.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _write(engine: str, args: argparse.Namespace, report: Any, findings: list[str]) -> Path:
    name = f"fuzz_{engine}{'_mixed' if args.mixed else ''}_{datetime.now(timezone.utc):%Y-%m-%d}"
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "engine": engine,
        "command": " ".join(["python -m framestream.evals.fuzz", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
        **report.to_json(),
        "findings": findings,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{engine}: {report.inputs} inputs in {report.examples} connections, "
          f"{len(findings)} findings -> {out}")  # fmt: skip
    return out


def _hypothesis(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    from framestream.evals.fuzz_grammar import HypothesisChooser
    from framestream.evals.fuzz_target import FuzzTarget

    with FuzzTarget(mixed=args.mixed) as target:

        @seed(args.seed)
        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
        )
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            target.run_example(HypothesisChooser(data))

        failure = None
        try:
            fuzz()
        except Exception as exc:  # the shrunk failing example: recorded, not raised past here
            failure = f"{type(exc).__name__}: {exc}"
        report = target.finish()
        findings = target.findings + ([failure] if failure else [])
    _write("hypothesis", args, report, findings)
    return 1 if findings else 0


def _atheris(args: argparse.Namespace) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris (Linux, CPython 3.8-3.11 wheels)")
        return 2
    # instrument before anything of the server is imported, so coverage guides the search
    with atheris.instrument_imports(include=["stream", "clients"]):
        from framestream.evals.fuzz_grammar import AtherisChooser
        from framestream.evals.fuzz_target import FuzzTarget

    target = FuzzTarget(mixed=args.mixed).__enter__()
    started = time.monotonic()

    def finish(failure: str | None = None) -> None:
        report = target.finish()
        findings = target.findings + ([failure] if failure else [])
        _write("atheris", args, report, findings)
        target.__exit__()

    def one_input(data: bytes) -> None:
        try:
            target.run_example(AtherisChooser(atheris.FuzzedDataProvider(data)))
        except Exception as exc:
            finish(f"{type(exc).__name__}: {exc}")
            raise  # libFuzzer keeps the crashing input as crash-<sha1>
        if target.report.examples >= args.runs or time.monotonic() - started > args.seconds:
            finish()
            sys.stdout.flush()
            os._exit(0)  # libFuzzer has no way to stop cleanly from inside an input

    corpus = [str(args.corpus)] if args.corpus else []
    if args.corpus:
        args.corpus.mkdir(parents=True, exist_ok=True)
    # inputs of any length from the start: a short one only reaches the first messages
    flags = ["-rss_limit_mb=16384", "-max_len=4096", "-len_control=0"]
    atheris.Setup([sys.argv[0], *flags, *corpus], one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.evals.fuzz", description=__doc__.split("\n")[0]
    )
    engines = parser.add_subparsers(dest="engine", required=True)
    hyp = engines.add_parser("hypothesis", help="random, shrinking")
    hyp.add_argument("--examples", type=int, default=2000, help="connections (examples) to try")
    hyp.add_argument("--seed", type=int, default=0)
    hyp.set_defaults(run=_hypothesis)
    ath = engines.add_parser("atheris", help="coverage-guided (libFuzzer)")
    ath.add_argument("--runs", type=int, default=10000, help="connections (inputs) to try")
    ath.add_argument("--seconds", type=float, default=3600, help="stop after this long")
    ath.add_argument("--corpus", type=Path, help="a folder libFuzzer keeps its corpus in")
    ath.set_defaults(run=_atheris)
    for sub in (hyp, ath):
        sub.add_argument("--out", type=Path, help="JSON report (default: evals/results/)")
        sub.add_argument("--mixed", action="store_true", help="beside a large session and feeds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
