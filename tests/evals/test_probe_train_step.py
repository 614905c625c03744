"""The training-step probe (evals/devtools/probe_train_step.py), on the CPU at a tiny size."""

from __future__ import annotations

import json

from framestream.evals.devtools import probe_train_step


def test_the_probe_times_real_steps_and_names_the_operators_they_ran(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--device", "cpu", "--dit-preset", "tiny", "--batch", "2", "--clips", "4"]
    record = probe_train_step.main(
        [*argv, "--warmup", "1", "--steps", "2", "--profile-steps", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["device"] == "cpu" and record["steps_a_second"] > 0
    names = {row["name"] for row in record["top"]}
    assert any("AdamW" in name for name in names), names  # the optimizer step is in the profile
    assert all(row["cpu_ms_a_step"] >= row["self_cpu_ms_a_step"] >= 0 for row in record["top"])
