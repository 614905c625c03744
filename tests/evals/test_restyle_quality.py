"""``python -m framestream.evals.restyle_quality``: its masks measure the rendered clip itself
near perfectly, and a run below every level records the reconstruction's figures."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from framestream.evals.restyle_quality import (
    main,
    motion_kept,
    output_masks,
    recolour,
    truth_masks,
)
from framestream.models.toyworld import render, sample_clip


def test_the_output_masks_of_the_input_match_its_ground_truth() -> None:
    rng = np.random.default_rng(0)
    for _ in range(4):
        clip = sample_clip(rng, seconds=1.0, size=(64, 64), max_objects=2)
        kept = motion_kept(truth_masks(clip), output_masks(render(clip), 48.0))
        assert kept["iou"] > 0.85 and kept["centroid_error_px"] < 1.5
        other = recolour(clip, rng)
        assert not {s.color for s in clip.sprites} & {s.color for s in other.sprites}
        assert [s.shape for s in other.sprites] == [s.shape for s in clip.sprites]


def test_a_run_under_every_level_is_the_reconstruction(tmp_path, monkeypatch, capsys) -> None:
    """The run in this process, as ``python -m`` runs main() (sys.argv): a second interpreter
    would only import torch and the models' stack again."""
    out = tmp_path / "restyle.json"
    command = ["restyle_quality", "--out", str(out)]
    run = [*command, "--clips", "1", "--chunks", "2", "--strengths", "0.2"]
    monkeypatch.setattr(sys, "argv", run)
    main()
    record = json.loads(out.read_text())
    assert record["command"].endswith("--clips 1 --chunks 2 --strengths 0.2")
    assert record["frames_per_clip"] == 21 and set(record["results"]) == {
        "input",
        "reconstruction",
        "0.2",
    }
    assert record["results"]["0.2"]["per_clip"] == record["results"]["reconstruction"]["per_clip"]
    monkeypatch.setattr(sys, "argv", [*command, "--strengths", "0.5,1.5"])
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 2 and "strength must be in (0, 1]" in capsys.readouterr().err
