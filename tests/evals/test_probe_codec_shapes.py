"""The codec-ceiling probe (evals/devtools/probe_codec_shapes.py) on the shipped codec."""

from __future__ import annotations

import json

from framestream.evals.devtools import probe_codec_shapes
from framestream.models.toyworld.embedded import GENERATOR_DIR


def test_the_probe_reads_rendered_and_reconstructed_clips(tmp_path):
    out = tmp_path / "codec.json"
    record = probe_codec_shapes.main(
        [
            "--generator-dir",
            str(GENERATOR_DIR),
            "--clips",
            "2",
            "--latent-frames",
            "3",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["truth_adherence"] >= 0.9  # rendered clips show their prompts
    assert 0.0 <= record["recon_adherence"] <= 1.0
    sightings = sum(sum(v.values()) for v in record["recon_verdicts"].values())
    assert sightings >= 2 * 9  # every frame of both clips (1 + 4 * 2 frames) holds a sprite
    assert set(record["recon_verdicts"]) <= {"circle", "square", "triangle", "diamond"}
