"""``stream bench --suite long`` on the tiny preset on the CPU: a few seconds of one LongLive
stream with a switch every 2 s of video gives the last / first ratios, the per-step and
per-span series, and a plot. Structure and sanity only: nothing here asserts a timing."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from framestream.evals.bench.cli import main
from framestream.evals.bench.long_stream import GOAL, LongStreamSettings, window_seconds
from framestream.evals.bench.plot import plot_path
from framestream.evals.bench.record import BenchRecord


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench") / "long.json"
    argv = ["--preset", "tiny", "--size", "16x16", "--suite", "long", "--warmup", "1"]
    argv += ["--long-seconds", "6", "--long-switch-every", "2", "--out", str(out)]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out, BenchRecord.read(out)


def test_the_long_stream_reports_last_over_first(long_run) -> None:
    out, record = long_run
    assert "--long-seconds 6.0" in record.command and "--long-switch-every 2.0" in record.command
    workload = record.suites["long"]["longlive_long"]
    config = workload.config
    assert config["seconds"] == 6 and config["window_seconds"] == window_seconds(6) == 2
    assert config["switches"] == 2  # at 2 s and 4 s of video; none at the end
    assert config["memory"] == "process RSS" and config["goal"] == GOAL
    (variant,) = workload.variants.values()
    steps = variant.series["step_ms"]
    assert config["steps"] == len(steps.y) == math.ceil((6 * 16 - 9) / 12) + 1
    assert steps.x[0] == 0 and steps.x == sorted(steps.x) and min(steps.y) > 0
    # the step ratio is the last window's median over the first's, the steps after warmup
    first = [y for x, y in zip(steps.x, steps.y, strict=True) if steps.x[1] <= x < steps.x[1] + 2]
    last = [y for x, y in zip(steps.x, steps.y, strict=True) if x >= 6 - 2]
    expected = statistics.median(last) / statistics.median(first)
    assert variant.value("step_last_over_first") == pytest.approx(expected)
    for name in ("memory_last_over_first", "reserved_last_over_first"):
        assert variant.value(name) > 0
    held = variant.series["memory_bytes"].y
    assert min(held) > 0 and variant.value("memory_bytes") == max(held)
    per_span = variant.series["step_ms_per_span"]
    assert per_span.x == [0, 1, 2]  # 2-second spans of a 6-second stream
    assert per_span.x_label == "2 s of video"
    assert variant.series["memory_bytes_per_span"].y[-1] > 0
    assert isinstance(variant.value("within_goal"), bool)
    assert plot_path(out, "long").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_full_run_compares_minutes() -> None:
    assert window_seconds(540) == 60 and window_seconds(90) == 30
    with pytest.raises(ValueError, match="switch_every > 0"):
        LongStreamSettings(540, 0, 4, (480, 832))
