"""The training-step probe (evals/devtools/probe_train_step.py), on the CPU at a tiny size."""

from __future__ import annotations

import json
import shutil

import pytest

from framestream.evals.devtools import probe_train_step

# torch.compile builds C++ for the CPU
COMPILER = shutil.which("g++") or shutil.which("clang++")


@pytest.mark.parametrize(
    "compiled",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(not COMPILER, reason="torch.compile needs a C++ compiler"),
        ),
    ],
    ids=["eager", "eager-and-compiled"],
)
def test_the_probe_times_real_steps_and_a_compiled_step_trains_the_same(tmp_path, compiled):
    out = tmp_path / "step.json"
    argv = ["--device", "cpu", "--dit-preset", "tiny", "--batch", "2", "--clips", "4"]
    argv += ["--warmup", "1", "--steps", "2", "--profile-steps", "1", "--out", str(out)]
    record = probe_train_step.main([*argv, "--compile-blocks"] if compiled else argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["device"] == "cpu"
    variants = ("eager", "compiled") if compiled else ("eager",)
    assert [name for name in ("eager", "compiled") if name in record] == list(variants)
    for name in variants:
        result = record[name]
        # the first step's loss and the mean over the timed steps
        assert result["steps_a_second"] > 0 and len(result["losses"]) == 2
        names = {row["name"] for row in result["top"]}
        assert any("AdamW" in name for name in names), names  # the optimizer step is profiled
        assert all(row["cpu_ms_a_step"] >= row["self_cpu_ms_a_step"] >= 0 for row in result["top"])
    if compiled:
        # the same seeds through the same arithmetic, fused: the losses agree to float32 rounding
        assert record["compiled_loss_gap"] < 1e-4
        assert record["compiled_speedup"] > 0
        assert any("compiled" in row["name"].lower() for row in record["compiled"]["top"])
