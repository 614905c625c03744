"""Probe: the ceiling a toy-world codec puts on any generator's strict (colour and shape) figure.

    python -m framestream.evals.devtools.probe_codec_shapes \
        --generator-dir models/toyworld/checkpoints/generator --out FILE.json

Held-out clips are rendered, encoded and decoded by the folder's codec; the record holds the
strict adherence (:func:`~models.toyworld.adherence`) of the rendered and of the reconstructed
clips, and per prompted shape how the reconstructions' sprites read (the template measure's
verdict, ``untold`` when the measure leaves it, ``missing`` when the colour is gone). A
generator on this codec cannot score above the reconstructions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from framestream.models.toyworld import adherence, measure, prompt, render
from framestream.models.toyworld.generator_data import to_signed
from framestream.models.toyworld.generator_eval import eval_clips, reconstruct
from framestream.models.toyworld.measure import shape_verdicts, verdict_table
from framestream.models.vae import WanVAE, to_uint8


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator-dir", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--latent-frames", type=int, default=12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    codec = WanVAE.from_pretrained(args.generator_dir / "vae", device=torch.device("cpu"))
    truth, recon, verdicts = [], [], Counter()
    for clip in tqdm(eval_clips(args.clips, 1 + 4 * (args.latent_frames - 1)), desc="clips"):
        frames, text = render(clip), prompt(clip)
        decoded = reconstruct(codec, to_signed(torch.from_numpy(frames)[None]))
        decoded = to_uint8(decoded)[0].numpy()
        truth.append(adherence(frames, text))
        measured = [measure(f) for f in decoded]  # scored two ways
        recon.append(adherence(measured, text))
        verdicts += shape_verdicts(measured, text)
    record = {
        "benchmark": "toyworld_codec_shapes",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m framestream.evals.devtools.probe_codec_shapes "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "generator_dir": str(args.generator_dir),
        "clips": args.clips,
        "truth_adherence": sum(truth) / len(truth),
        "recon_adherence": sum(recon) / len(recon),
        "recon_verdicts": verdict_table(verdicts),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "recon_verdicts"}, indent=1))
    return record


if __name__ == "__main__":
    main()
