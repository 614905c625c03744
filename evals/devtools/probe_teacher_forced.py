"""Probe: how much of a sprite's shape a toy-world DiT keeps when every context it reads is true.

    python -m framestream.evals.devtools.probe_teacher_forced \
        --generator-dir models/toyworld/checkpoints/generator --out FILE.json

Held-out clips are encoded by the folder's codec; each chunk is noised to a level and denoised
in one step with the true chunks before it as context
(:func:`~models.toyworld.generator_eval.teacher_forced_x0`), and the decoded clip is graded:
strict (colour and shape) and colour adherence, over the whole clip and per chunk (the first
has no context; the later ones could copy the sprite from the frames before them). Level 0 is
the codec's reconstruction, the ceiling. Several ``--generator-dir`` are read on the same
clips and noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framestream.models.toyworld import adherence, color_adherence, measure, prompt, render
from framestream.models.toyworld.embedded import toy_text_encoder
from framestream.models.toyworld.generator_config import TEMPORAL
from framestream.models.toyworld.generator_data import encode_prompts, to_signed
from framestream.models.toyworld.generator_eval import eval_clips, load_dit, teacher_forced_x0
from framestream.models.vae import WanVAE, to_uint8
from framestream.models.vae_causal import encode_video
from framestream.models.wan import wan_config

CHUNK = 3  # latent frames a chunk, as the pipelines generate


def _chunk_spans(latent_frames: int) -> list[tuple[int, int]]:
    """Each chunk's video frames: the first latent frame decodes to one, every later to four."""
    ends = [1 + TEMPORAL * ((c + 1) * CHUNK - 1) for c in range(latent_frames // CHUNK)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


@torch.no_grad()
def read_generator(folder: Path, clips: list, sigmas: list[float], seed: int) -> dict:
    """Strict and colour adherence of the teacher-forced clips at each level, for one folder."""
    train = json.loads((folder / "train.json").read_text())
    preset = train["config"]["dit_preset"]
    codec = WanVAE.from_pretrained(folder / "vae", device=torch.device("cpu"))
    dit = load_dit(folder / "dit.safetensors", torch.device("cpu"), preset)
    texts = [prompt(c) for c in clips]
    encoder = toy_text_encoder(wan_config(preset).text_len, folder)
    context = encode_prompts(texts, encoder, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    scores: dict[float, list] = {s: [] for s in sigmas}
    for i, clip in enumerate(tqdm(clips, desc=folder.name)):
        x = to_signed(torch.from_numpy(render(clip))[None])
        latents = codec.normalize(encode_video(codec.vae, x)[:, : codec.z_dim])
        spans = _chunk_spans(latents.shape[2])
        for sigma in sigmas:
            x0 = latents
            if sigma > 0:
                x0 = teacher_forced_x0(dit, context[i : i + 1], latents, sigma, generator)
            video = to_uint8(codec.decode_chunk(x0, codec.new_decode_state()))[0].numpy()
            read = [measure(frame) for frame in video]
            scores[sigma].append(
                {
                    "strict": adherence(read, texts[i]),
                    "colors": color_adherence(read, texts[i]),
                    "strict_per_chunk": [adherence(read[a:b], texts[i]) for a, b in spans],
                }
            )
    return {
        "dit_preset": preset,
        "levels": {
            str(sigma): {
                "strict": float(np.mean([r["strict"] for r in rows])),
                "colors": float(np.mean([r["colors"] for r in rows])),
                "strict_per_chunk": np.mean([r["strict_per_chunk"] for r in rows], 0).tolist(),
            }
            for sigma, rows in scores.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator-dir", type=Path, action="append", required=True)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--latent-frames", type=int, default=12, help="a multiple of 3")
    parser.add_argument("--sigmas", default="0,0.1,0.25,0.5,0.75,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.latent_frames % CHUNK:
        parser.error(f"--latent-frames must be a multiple of {CHUNK}")
    sigmas = [float(s) for s in args.sigmas.split(",")]
    if any(not 0 <= s <= 1 for s in sigmas):
        parser.error("--sigmas must lie in [0, 1]")
    clips = eval_clips(args.clips, 1 + TEMPORAL * (args.latent_frames - 1))
    record = {
        "benchmark": "toyworld_teacher_forced",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m framestream.evals.devtools.probe_teacher_forced "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "clips": args.clips,
        "latent_frames": args.latent_frames,
        "generators": {
            str(folder): read_generator(folder, clips, sigmas, args.seed)
            for folder in args.generator_dir
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for folder, read in record["generators"].items():
        print(folder, {s: round(v["strict"], 3) for s, v in read["levels"].items()})
    return record


if __name__ == "__main__":
    main()
