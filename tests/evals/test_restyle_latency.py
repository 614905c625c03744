"""``python -m framestream.evals.restyle_latency``: Rolling Forcing's frames wait one chunk per
window level at or under the strength, and a short run through the real service on the toy-world
models writes a whole, self-consistent record (its timings are the machine's: none is held to a
value here)."""

from __future__ import annotations

import json
import sys

import pytest

from framestream.evals import restyle_latency
from framestream.evals.restyle_latency import chunks_held, window_levels
from framestream.models.registry import load_wan_models
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline


def test_rolling_forcing_holds_a_chunk_per_window_level_at_or_under_the_strength() -> None:
    models = load_wan_models("toyworld")
    rolling = RollingForcingPipeline(models, KVCacheManager(), 16 << 20)
    # the toy world's window levels are 1, 0.8, 0.6, 0.4 and 0.2 (unshifted)
    assert window_levels(rolling, 0.6) == (0.6, 0.4, 0.2)
    assert chunks_held(window_levels(rolling, 0.6)) == 3
    assert chunks_held(window_levels(rolling, 1.0)) == 5
    assert window_levels(rolling, 0.1) == () and chunks_held(()) == 1  # input is the x0
    longlive = LongLivePipeline(models, KVCacheManager(), 16 << 20)
    assert window_levels(longlive, 0.6) is None and chunks_held(None) == 1


def test_a_short_run_records_every_pipeline(tmp_path, monkeypatch) -> None:
    """The run in this process, as ``python -m`` runs main() (sys.argv): a second interpreter
    would only import torch and the models' stack again."""
    out = tmp_path / "latency.json"
    monkeypatch.setattr(sys, "argv", ["restyle_latency", "--out", str(out), "--seconds", "2"])
    restyle_latency.main()
    record = json.loads(out.read_text())
    assert record["command"].endswith("--seconds 2")
    assert record["torch"] and record["git_commit"] and "core" in record["machine"]
    by_name = {r["pipeline"]: r for r in record["pipelines"]}
    assert set(by_name) == {"longlive", "rolling_forcing"}
    assert by_name["longlive"]["chunks_held"] == 1
    assert by_name["rolling_forcing"]["chunks_held"] == 3
    for r in by_name.values():
        assert r["frames_sent"] == 32 == len(r["latency_ms_per_frame"])
        got = [ms for ms in r["latency_ms_per_frame"] if ms is not None]
        assert 0 < r["frames_received"] == len(got) <= r["frames_sent"]
        assert min(got) > 0 and r["steps"] > 0 and r["chunk_ms"] == 750.0
        latency, capture = r["latency_ms"], r["latency_from_capture_ms"]
        assert latency["p50"] <= latency["p95"] <= latency["max"] == max(got)
        # a frame is captured before it is sent
        assert all(capture[k] >= latency[k] for k in ("p50", "p95", "max"))
        step = r["step_ms"]["p50"]
        assert r["bound_ms"] == pytest.approx(750.0 + step, abs=0.1)
        assert r["expected_ms"] == pytest.approx(r["chunks_held"] * 750.0 + step, abs=0.1)
        assert 0 <= r["within_bound"] <= r["within_expected"] <= 1
        assert set(r["server_latency_ms"]) == {"p50", "p95"} and r["why"]


def test_a_strength_out_of_range_is_refused_before_loading(tmp_path, monkeypatch, capsys) -> None:
    """In this process (a second interpreter would only import everything again), with the run,
    which loads the models, made to fail if it is reached."""
    monkeypatch.setattr(restyle_latency, "run", lambda args: pytest.fail("the run began"))
    with pytest.raises(SystemExit) as refused:
        restyle_latency.main(["--out", str(tmp_path / "x.json"), "--strength", "1.5"])
    assert refused.value.code == 2
    assert "strength must be a number in (0, 1]" in capsys.readouterr().err
