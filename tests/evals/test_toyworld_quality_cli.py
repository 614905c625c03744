"""``python -m evals.toyworld_quality --parts``: a partial run writes only what it measured."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_switch_only_run_writes_the_switch_figures(tmp_path) -> None:
    out = tmp_path / "switch.json"
    command = [sys.executable, "-m", "evals.toyworld_quality", "--out", str(out)]
    subprocess.run([*command, "--parts", "switch", "--switches", "1"], check=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["command"].endswith(f"--out {out} --parts switch --switches 1")
    for name in ("longlive", "rolling_forcing"):
        assert set(result[name]) == {"switch"} and result[name]["switch"]["switches"] == 1
    assert "streaming_vlm" not in result and not out.with_suffix(".png").exists()

    refused = subprocess.run([*command, "--parts", "speed"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--parts must be a subset" in refused.stderr
