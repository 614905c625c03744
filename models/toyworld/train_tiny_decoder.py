"""Distil the toy world's tiny streaming decoder (:mod:`models.vae_tiny`) from its Wan VAE.

The shipped generator's codec is a small Wan VAE (``checkpoints/generator/vae``); its decoder
is the teacher. Toy-world clips are rendered, encoded by the codec's encoder into the
generator's normalised latents, and decoded by the teacher; the tiny decoder learns to give the
teacher's frames from the same latents (MSE + L1, sprite pixels weighted up, as the codec was
trained). A clip is decoded whole from a fresh state: streaming is exact
(:meth:`~models.vae_tiny.TinyWanDecoder.decode_chunk`), so this trains the streamed decoder.
A step decodes a random ``--crop`` x ``--crop`` window of the latents against the same window
of the teacher's frames: the decoder is convolutional, and a quarter of the pixels buys four
times the steps on a shared CPU (the evaluation decodes whole frames). The run stops at
``--max-steps`` or ``--seconds-budget``, whichever comes first, and the learning rate follows
the further along of the two, so a time-limited run is seeded but not bit-reproducible on
another machine: ``train.json`` records the steps it took.

The record (``train.json``: command, seed, steps, the PSNR of the tiny decoder's streamed frames
against the teacher's on held-out clips, and both against the rendered frames) goes beside the
weights, which are written in the published layout (``decoder.safetensors``), so the one loader
reads them and ``--vae tiny`` finds them (:data:`models.toyworld.embedded.TINY_DECODER_DIR`)::

    python -m framestream.models.toyworld.train_tiny_decoder --threads 1 \
        --out models/toyworld/checkpoints/tiny_decoder
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from framestream.models.toyworld.embedded import GENERATOR_DIR, require
from framestream.models.toyworld.generator_config import EVAL_SEED, FPS, SIZE, TEMPORAL
from framestream.models.toyworld.generator_data import foreground_mask, to_signed
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import sample_clip
from framestream.models.vae import WanVAE
from framestream.models.vae_causal import encode_video
from framestream.models.vae_tiny import (
    TinyDecoderConfig,
    TinyWanDecoder,
    random_tiny_decoder,
    save_tiny_decoder,
)

__all__ = ["TOY_WIDTHS", "distil", "main"]

# conv_in's width, then each stage's output (the default of --widths)
TOY_WIDTHS = (64, 32, 16, 16)
_CHUNK = 3  # latent frames per streamed chunk in the evaluation, as the pipelines decode


def _clips(rng: np.random.Generator, n: int, latents: int) -> torch.Tensor:
    """``[n, 3, 1 + 4 (latents - 1), H, W]`` rendered toy-world clips in ``[-1, 1]``."""
    seconds = (1 + TEMPORAL * (latents - 1)) / FPS
    clips = [
        sample_clip(rng, seconds=seconds, fps=FPS, size=SIZE, max_objects=2, transient=0.1)
        for _ in range(n)
    ]
    return to_signed(torch.from_numpy(np.stack([render(c) for c in clips])))


@torch.no_grad()
def _teach(teacher: WanVAE, video: torch.Tensor, batch: int = 16):
    """The generator's latents of ``video`` and the teacher's whole-clip decode of them."""
    latents, frames = [], []
    for part in video.split(batch):
        z = encode_video(teacher.vae, part)[:, : teacher.z_dim]
        z = (z - teacher.latents_mean) / teacher.latents_std
        latents.append(z)
        frames.append(teacher.decode_chunk(z, teacher.new_decode_state()))
    return torch.cat(latents), torch.cat(frames)


@torch.no_grad()
def _grow_as_copies(model: TinyWanDecoder) -> None:
    """Start each temporal grow as copies of its frame, so a clip starts as a stack of images
    and the grows only learn what motion adds (the codec's ``per_frame_init`` idea)."""
    for stage in model.stages:
        width = stage.grow.weight.shape[1]
        eye = torch.eye(width)[:, :, None, None]
        stage.grow.weight.copy_(eye.repeat(stage.time_stride, 1, 1, 1))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))  # signal range [-1, 1]


@torch.no_grad()
def _streamed(decoder, latents: torch.Tensor) -> torch.Tensor:
    state = decoder.new_decode_state()
    return torch.cat([decoder.decode_chunk(z, state) for z in latents.split(_CHUNK, 2)], dim=2)


def distil(args: argparse.Namespace, command: str) -> dict:
    """Render, teach, train until the step or time budget, evaluate; returns the record."""
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    teacher = WanVAE.from_pretrained(require(GENERATOR_DIR, "dit.safetensors") / "vae")
    rng = np.random.default_rng(args.seed)
    video = _clips(rng, args.clips, args.latent_frames)
    latents, targets = _teach(teacher, video)
    weights = 1.0 + args.foreground_weight * foreground_mask(targets)
    data_seconds = time.perf_counter() - start

    config = TinyDecoderConfig(widths=tuple(int(w) for w in args.widths.split(",")))
    model = random_tiny_decoder(config, seed=args.seed).train()
    _grow_as_copies(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    train_start, step, curve, losses = time.perf_counter(), 0, [], []
    budget = args.seconds_budget - data_seconds
    while step < args.max_steps and time.perf_counter() - train_start < budget:
        progress = max(step / args.max_steps, (time.perf_counter() - train_start) / budget)
        for group in opt.param_groups:  # cosine to a tenth
            group["lr"] = args.lr * (0.55 + 0.45 * math.cos(math.pi * min(progress, 1.0)))
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        top, left = torch.randint(latents.shape[-1] - args.crop + 1, (2,), generator=gen).tolist()
        window = (slice(top, top + args.crop), slice(left, left + args.crop))
        pixels = tuple(slice(8 * part.start, 8 * part.stop) for part in window)
        recon = model(latents[idx][..., window[0], window[1]], model.new_decode_state())
        w, target = weights[idx][..., pixels[0], pixels[1]], targets[idx][..., pixels[0], pixels[1]]
        loss = (w * ((recon - target).square() + (recon - target).abs())).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 25 == 0 or step == 1:
            recent = float(np.mean(losses[-25:]))
            curve.append((step, round(recent, 5)))
            print(f"step {step} loss {recent:.4f}", file=sys.stderr)
    train_seconds = time.perf_counter() - train_start
    model.eval()

    eval_video = _clips(np.random.default_rng(EVAL_SEED + 7), args.eval_clips, args.eval_latents)
    with torch.no_grad():
        z = encode_video(teacher.vae, eval_video)[:, : teacher.z_dim]
        z = (z - teacher.latents_mean) / teacher.latents_std
    teacher_frames, tiny_frames = _streamed(teacher, z), _streamed(model, z)
    record = {
        "command": command,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "widths": list(config.widths),
        "parameters": sum(p.numel() for p in model.parameters()),
        "teacher": "checkpoints/generator/vae",
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "steps": step,
        "curve": curve,
        "eval": {
            "clips": args.eval_clips,
            "frames": tiny_frames.shape[2],
            "chunk_latent_frames": _CHUNK,
            "psnr_tiny_vs_teacher": round(_psnr(tiny_frames, teacher_frames), 2),
            "psnr_tiny_vs_rendered": round(_psnr(tiny_frames, eval_video), 2),
            "psnr_teacher_vs_rendered": round(_psnr(teacher_frames, eval_video), 2),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_tiny_decoder(model, out / "decoder.safetensors")
    (out / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for decoder.safetensors, train.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--widths", default=",".join(map(str, TOY_WIDTHS)), help="conv_in's, then each stage's"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seconds-budget", type=float, default=420.0, help="data + training")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=96, help="training clips rendered")
    parser.add_argument("--latent-frames", type=int, default=4, help="latent frames a clip")
    parser.add_argument("--batch", type=int, default=8, help="clips a step")
    parser.add_argument("--crop", type=int, default=4, help="latent pixels a side a step decodes")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--foreground-weight", type=float, default=9.0)
    parser.add_argument("--eval-clips", type=int, default=8)
    parser.add_argument("--eval-latents", type=int, default=12, help="latent frames an eval clip")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    record = distil(
        args, " ".join(["python -m framestream.models.toyworld.train_tiny_decoder", *argv])
    )
    print(json.dumps(record["eval"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
