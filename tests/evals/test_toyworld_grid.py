"""The grid eval draws the embedded generator's frames and scores each row three ways."""

from __future__ import annotations

import json

from framestream.evals.toyworld_grid import README_PROMPT, README_SWITCH, in_force, main


def test_a_prompt_is_in_force_from_its_switch_on() -> None:
    switches = [README_SWITCH]
    assert in_force(README_PROMPT, switches, README_SWITCH[0] - 0.01) == README_PROMPT
    assert in_force(README_PROMPT, switches, README_SWITCH[0]) == README_SWITCH[1]


def test_grid_draws_the_readme_example_and_scores_every_row(tmp_path) -> None:
    out = tmp_path / "grid.png"
    record = main(["--out", str(out), "--prompts", "1", "--seconds", "5"])
    assert out.stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text()) == record
    first, held_out = record["rows"]
    assert first["prompt"] == README_PROMPT
    assert first["switches"] == [{"t": README_SWITCH[0], "prompt": README_SWITCH[1]}]
    assert held_out["prompt"] != README_PROMPT and held_out["switches"] == []
    assert record["times"] == [0.5, 1.5, 2.5, 3.5, 4.5]
    for row in record["rows"]:
        # a frame with the prompt's colours and shapes has its colours
        assert 0.0 <= row["adherence"] <= row["color_adherence"] <= 1.0
        assert 0.0 <= row["background_adherence"] <= 1.0
