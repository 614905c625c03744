"""``python -m framestream.evals.toyworld_quality --parts``: a partial run writes only what it
measured. Its refusals are the parser's, checked in this process (``refused``): a second
interpreter would only import everything again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from framestream.evals.toyworld_quality import main


def refused(monkeypatch, capsys, *argv: str) -> str:
    """What ``python -m framestream.evals.toyworld_quality *argv`` says on stderr as it exits 2."""
    monkeypatch.setattr(sys, "argv", ["toyworld_quality", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_a_switch_only_run_writes_the_switch_figures(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "switch.json"
    command = [sys.executable, "-m", "framestream.evals.toyworld_quality", "--out", str(out)]
    subprocess.run([*command, "--parts", "switch", "--switches", "1"], check=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["command"].endswith(f"--out {out} --parts switch --switches 1")
    for name in ("longlive", "rolling_forcing"):
        assert set(result[name]) == {"switch"} and result[name]["switch"]["switches"] == 1
    assert "streaming_vlm" not in result and not out.with_suffix(".png").exists()
    assert (result["dtype"], result["kv_cache_dtype"]) == ("fp32", "auto")
    assert (result["longlive_positions"], result["longlive_max_position"]) == ("absolute", 1024)

    stderr = refused(monkeypatch, capsys, *command[3:], "--parts", "speed")
    assert "--parts must be a subset" in stderr


def test_the_fp8_cache_run_records_its_cache_and_positions_and_refuses_unknown_ones(
    tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "fp8.json"
    command = [sys.executable, "-m", "framestream.evals.toyworld_quality", "--out", str(out)]
    fp8 = ["--dtype", "bf16", "--kv-cache-dtype", "fp8_e4m3"]
    positions = ["--longlive-positions", "contiguous"]
    run = [*command, "--parts", "adherence", "--prompts", "1", *fp8, *positions]
    subprocess.run(run, check=True, timeout=600)
    result = json.loads(out.read_text())
    assert (result["dtype"], result["kv_cache_dtype"]) == ("bf16", "fp8_e4m3")
    assert result["longlive_positions"] == "contiguous"
    for name in ("longlive", "rolling_forcing"):
        adherence = result[name]["adherence"]
        assert len(adherence["per_prompt"]) == 1
        # every frame's verdict on every sprite the prompt names (4 s at 16 fps)
        drawn = sum(n for row in adherence["shape_verdicts"].values() for n in row.values())
        assert drawn > 0 and drawn % 64 == 0

    stderr = refused(monkeypatch, capsys, *command[3:], "--kv-cache-dtype", "fp16")
    assert "kv_cache_dtype must be one of auto, fp8_e4m3, got 'fp16'" in stderr


def test_a_questions_run_writes_accuracy_per_kind(tmp_path) -> None:
    """Only the understanding model loads; every asked question is scored under its kind."""
    out = tmp_path / "qa.json"
    command = [sys.executable, "-m", "framestream.evals.toyworld_quality", "--out", str(out)]
    run = [*command, "--parts", "questions", "--qa-feeds", "1", "--qa-seconds", "8"]
    subprocess.run(run, check=True, timeout=600)
    result = json.loads(out.read_text())
    qa = result["streaming_vlm_qa"]
    assert "longlive" not in result and "streaming_vlm" not in result
    assert result["vlm_dir"] == "embedded" and qa["seeds"] == [10_400]
    assert qa["asked"] == sum(k["asked"] for k in qa["per_kind"].values()) >= 3
    assert set(qa["per_kind"]) == {"colour", "shape", "count", "direction"}
    right = [e["right"] for e in qa["examples"]]
    assert len(right) == qa["asked"] and qa["accuracy"] == sum(right) / len(right)


def test_a_drift_run_streams_the_named_generators_and_plots_each(
    tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "drift.json"
    command = [sys.executable, "-m", "framestream.evals.toyworld_quality", "--out", str(out)]
    run = [*command, "--parts", "drift", "--drift-minutes", "0.25"]  # one partial minute
    subprocess.run([*run, "--drift-pipelines", "rolling_forcing"], check=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["longlive"] == {} and set(result["rolling_forcing"]) == {"drift"}
    stream = result["rolling_forcing"]["drift"]
    for key in ("adherence", "color_adherence", "background_adherence"):
        assert len(stream[f"{key}_per_minute"]) == 1 and 0 <= stream[f"{key}_per_minute"][0] <= 1
    assert out.with_suffix(".png").stat().st_size > 0

    stderr = refused(monkeypatch, capsys, *run[3:], "--drift-pipelines", "longlive,self_forcing")
    assert "--drift-pipelines must be a subset of longlive,rolling_forcing" in stderr
