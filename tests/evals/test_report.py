"""BENCHMARKS.md is generated: it must be exactly what evals/report_template.md renders over
evals/results/*.json, so a hand edit, or a result committed without regenerating, fails here.
Fix with ``stream bench report``."""

from __future__ import annotations

import pytest

from framestream.evals.report import OUTPUT, RESULTS, check_report, render_report


def test_benchmarks_md_is_regenerated_from_the_results() -> None:
    assert check_report() == 0, f"{OUTPUT.name} is stale: run `stream bench report`"


def test_every_results_file_is_read_by_the_report(tmp_path) -> None:
    read = render_report()
    unused = [p.name for p in RESULTS.glob("*.json") if p.name not in read]
    assert not unused, f"results not shown in BENCHMARKS.md: {unused}"


def test_a_template_naming_a_missing_result_or_figure_fails(tmp_path) -> None:
    template = tmp_path / "t.md"
    template.write_text('{{ result("no_such_run").x }}\n')
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        render_report(template, RESULTS)
    template.write_text('{{ result("anchors_h200_2026-11-28").no_such_figure }}\n')
    with pytest.raises(Exception, match="no_such_figure"):
        render_report(template, RESULTS)
