"""The teacher-forcing probe (evals/devtools/probe_teacher_forced.py) on the shipped generator."""

from __future__ import annotations

import json

from framestream.evals.devtools import probe_codec_shapes, probe_teacher_forced
from framestream.models.toyworld.embedded import GENERATOR_DIR


def test_the_probe_reads_each_level_and_level_zero_is_the_codecs_ceiling(tmp_path):
    out = tmp_path / "forced.json"
    argv = ["--generator-dir", str(GENERATOR_DIR), "--clips", "2", "--latent-frames", "6"]
    record = probe_teacher_forced.main([*argv, "--sigmas", "0,0.25", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    levels = record["generators"][str(GENERATOR_DIR)]["levels"]
    assert set(levels) == {"0.0", "0.25"}
    for level in levels.values():
        assert 0.0 <= level["strict"] <= level["colors"] <= 1.0
        assert len(level["strict_per_chunk"]) == 2

    # level 0 decodes the true latents: the codec probe's reconstructions of the same clips
    codec = probe_codec_shapes.main(
        ["--generator-dir", str(GENERATOR_DIR), "--clips", "2", "--latent-frames", "6",
         "--out", str(tmp_path / "codec.json")]
    )  # fmt: skip
    assert levels["0.0"]["strict"] == codec["recon_adherence"]
