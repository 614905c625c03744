"""``stream bench`` figures that are differences of two measurements (a switch's stall, the
server's overhead, the Ray hop): within the measurements' spread they read "within noise", keep
their value, spread and flag in the JSON, and get no ratio."""

from __future__ import annotations

import json

import pytest

from framestream.evals.bench.console import format_figure, workload_table
from framestream.evals.bench.record import Figure, Variant, Workload
from framestream.evals.bench.service import Throughput
from framestream.evals.bench.timing import Difference, difference, interquartile_range


def test_interquartile_range() -> None:
    assert interquartile_range([1, 2, 3, 4, 5]) == pytest.approx(2.0)
    assert interquartile_range([7.0]) == 0.0 and interquartile_range([]) == 0.0


def test_a_difference_inside_the_spread_is_noise() -> None:
    steady = [100.0, 90.0, 110.0, 95.0, 105.0]  # interquartile range 10
    noisy = difference([60.0, 65.0, 62.0], steady)  # median 62 - 100: far outside
    assert noisy.value == pytest.approx(-38.0) and not noisy.within_noise
    small = difference([95.0, 98.0, 101.0], steady)  # -2 against a spread of 10
    assert small.within_noise and small.spread == pytest.approx(10.0)
    assert Difference.of(-7.34, [10, 20, 30], [1, 2]).within_noise  # spread 10
    assert not Difference(5.0, 0.0).within_noise


def workload(ours_stall: Difference, theirs_stall: Difference) -> Workload:
    variants = {}
    for name, stall in (("ours", ours_stall), ("base", theirs_stall)):
        variant = Variant(name)
        variant.add_figure("fps", 10.0 if name == "ours" else 5.0, "fps", "frames/s")
        variant.add_difference("switch_stall_ms", stall, "ms", "stall")
        variants[name] = variant
    return Workload("w", {}, variants, "ours")


def test_within_noise_is_printed_kept_in_the_json_and_gets_no_ratio() -> None:
    work = workload(Difference(-40.9, 55.0), Difference(120.0, 8.0))
    figure = work.variants["ours"].figures["switch_stall_ms"]
    assert figure == Figure("stall", "ms", -40.9, 55.0, True)
    assert format_figure(figure) == "within noise (±55.0)"
    assert format_figure(work.variants["base"].figures["switch_stall_ms"]) == "120.0"
    table = workload_table(work)
    assert "within noise" in table and "-40.9" not in table
    assert work.ratios() == {"base": {"fps": 2.0}}  # none of the stall
    data = json.loads(json.dumps(work.to_json()))
    stored = data["variants"]["ours"]["figures"]["switch_stall_ms"]
    assert stored == {
        "label": "stall",
        "unit": "ms",
        "value": -40.9,
        "spread": 55.0,
        "within_noise": True,
    }
    assert Workload.from_json(data).variants["ours"].figures["switch_stall_ms"] == figure
    clear = workload(Difference(300.0, 20.0), Difference(150.0, 8.0))
    assert clear.ratios()["base"]["switch_stall_ms"] == pytest.approx(2.0)


def test_figures_of_older_records_still_load() -> None:
    old = {"label": "stall", "unit": "ms", "value": -40.9}  # written before spreads were kept
    figure = Figure(**old)
    assert figure.within_noise is None and format_figure(figure) == "-40.9"


def test_the_faster_run_keeps_both_samples() -> None:
    before, after = Throughput(10.0, [100.0, 101.0]), Throughput(12.0, [80.0])
    assert before.faster(after) == Throughput(12.0, [100.0, 101.0, 80.0])


def test_the_report_prints_within_noise_too() -> None:
    from framestream.evals.report_tables import _cell, _Column, _signed_ms

    variant = Variant("ours")
    variant.add_difference("stall", Difference(-40.9, 55.0), "ms", "switch stall")
    variant.add_difference("hop", Difference(12.0, 3.0), "ms", "Ray hop")
    assert _cell(variant, _Column("stall", "", _signed_ms), None) == "within noise (±55)"
    assert _cell(variant, _Column("hop", "", _signed_ms), 1.5) == "+12 (1.50×)"
