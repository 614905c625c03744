"""BENCHMARKS.md, generated from ``evals/report_template.md`` and ``evals/results/*.json``.

    stream bench report            # or: python -m framestream.evals.report
    stream bench report --check    # exit 1 if BENCHMARKS.md is not what they give

The template is Markdown with Jinja2 expressions: the prose (explanations, published
baselines, gaps and causes) is written there, and every table and quoted figure is read from a
results file by its stem, so a hand edit of BENCHMARKS.md, or a result added without
regenerating, fails ``--check`` (and ``tests/evals/test_report.py``). In the template:

* ``record(stem)``: a ``stream bench`` record (:class:`evals.bench.record.BenchRecord`), for
  the tables of :mod:`evals.report_tables`: ``generation_table(record(stem), "longlive",
  anchor)``, ``vlm_concurrency_table``, ``vlm_stream_table``, ``service_table``,
  ``kernels_table``, ``vae_table``; ``targets_table([(stem, record(stem))], anchors)`` (issue
  10's targets, from :mod:`evals.report_targets`);
* ``result(stem)``: any results file as plain JSON (the toy-world training and quality
  records), for figures quoted in the prose: ``{{ "%.2f" | format(q.streaming_vlm.pair_recall) }}``;
* ``provenance(stem)``: the command that produced a file, the file, its date, machine, versions
  and commit, for the line under each heading; ``link(stem)``: the file alone;
* ``checkpoint(path)``: parameters and bytes of a committed safetensors file, or of every one
  in a folder (``models/toyworld/checkpoints/vlm``), read from their headers;
* ``rolling_forcing_published_fps(anchors)``: a figure derived from the transcribed anchors
  (:mod:`evals.report_targets` says how), for prose that must label it derived.

The published anchors (``anchors_h200_*.json``) are transcribed by hand from
``shared/reference/anchors_h200.md``; prose that quotes them reads them from that record and
says they are transcribed, and a figure computed from them says it is derived and shows how.
Figures measured by a probe whose script is not committed do not belong in the template.

Every file in ``evals/results/`` must be shown (the tests check it), so a result cannot be
committed and forgotten.

A new section: put its JSON in ``evals/results/``, write its heading, ``provenance`` line, prose
and tables in the template, run ``stream bench report`` and commit the three together.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import struct
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from framestream.evals import report_tables
from framestream.evals.bench.record import BenchRecord
from framestream.evals.report_targets import rolling_forcing_published_fps, targets_table

__all__ = ["OUTPUT", "RESULTS", "TEMPLATE", "check_report", "render_report", "write_report"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "evals" / "results"
TEMPLATE = ROOT / "evals" / "report_template.md"
OUTPUT = ROOT / "BENCHMARKS.md"


def render_report(template: Path = TEMPLATE, results: Path = RESULTS) -> str:
    """The report's text: ``template`` rendered over the JSON files in ``results``."""

    @cache
    def result(stem: str) -> dict[str, Any]:
        path = results / f"{stem}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{template.name} reads {path}, which does not exist")
        return json.loads(path.read_text())

    @cache
    def record(stem: str) -> BenchRecord:
        return BenchRecord.from_json(result(stem))

    def link(stem: str) -> str:
        result(stem)  # a file that is not there fails the report, as for every other helper
        return report_tables.link(stem)

    def checkpoint(path: str) -> dict[str, int]:
        where = ROOT / path
        paths = [where] if where.is_file() else sorted(where.rglob("*.safetensors"))
        if not paths:
            raise FileNotFoundError(f"{template.name} reads {path}, which holds no safetensors")
        parameters = sum(_safetensors_parameters(p) for p in paths)
        return {"parameters": parameters, "bytes": sum(p.stat().st_size for p in paths)}

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        undefined=jinja2.StrictUndefined,  # a misspelt figure fails instead of printing nothing
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only {% set ... %} leaves no blank line behind
        lstrip_blocks=True,
        autoescape=False,
    )
    env.globals.update(
        result=result,
        record=record,
        provenance=lambda stem: report_tables.provenance(stem, result(stem)),
        link=link,
        **{n: getattr(report_tables, n) for n in report_tables.__all__ if n.endswith("_table")},
        targets_table=targets_table,
        rolling_forcing_published_fps=rolling_forcing_published_fps,
        checkpoint=checkpoint,
    )
    return env.get_template(template.name).render()


def _safetensors_parameters(path: Path) -> int:
    """Elements of every tensor in a safetensors file, from its JSON header alone."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return sum(math.prod(t["shape"]) for t in header.values())


def write_report(output: Path = OUTPUT) -> int:
    output.write_text(render_report())
    print(f"wrote {output}")
    return 0


def check_report(output: Path = OUTPUT) -> int:
    """0 when ``output`` is exactly what the template and the results give; else 1 and a diff."""
    expected = render_report()
    actual = output.read_text() if output.is_file() else ""
    if actual == expected:
        return 0
    diff = difflib.unified_diff(
        actual.splitlines(keepends=True),
        expected.splitlines(keepends=True),
        f"{output.name} (as committed)",
        f"{output.name} (regenerated)",
    )
    sys.stdout.writelines(diff)
    print(f"\n{output} is stale: edit {TEMPLATE.relative_to(ROOT)} and run `stream bench report`")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framestream.evals.report", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md is stale")
    args = parser.parse_args(argv)
    return check_report() if args.check else write_report()


if __name__ == "__main__":
    sys.exit(main())
