"""Restyle quality on the toy world: how much of its input's motion a restyle stream keeps, and
how far it takes the prompt's colours, per strength, measured on pixels.

    python -m framestream.evals.restyle_quality [--clips 4] [--chunks 5]
        [--strengths 0.2,0.4,0.6,0.8,1.0] [--pipeline longlive] [--out PATH]

Each held-out toy-world clip (64x64, 16 fps, one or two sprites) is fed frame by frame, stamped
``i / 16``, into a restyle stream on the embedded toy-world models (CPU), whose prompt names the
clip's sprites, motions and background with every sprite in another colour. Output frame ``i``
restyles input frame ``i``.

- **Motion kept**: per frame, the IoU of the output's sprite mask with the input's ground-truth
  sprite mask, mean over the frames that show a sprite. Ground truth: each sprite rendered alone,
  a pixel in the mask when it is at least half way from the background to the sprite's colour
  (anti-aliased edges included as the renderer blends them). The output's mask is colour-blind,
  since a restyled sprite changes colour: a pixel at least ``--mask-distance`` (RGB) from the
  median of the frame's border. Also the distance between the two masks' centroids, in pixels.
- **Prompt colours**: :func:`models.toyworld.color_adherence` of the output to the restyle
  prompt (the new colours), and to the input's own prompt (the old ones).

Rows ``input`` (the rendered clip itself: the output-mask rule on the input, so its IoU is the
measure's own ceiling) and ``reconstruction`` (the input through the VAE alone) frame the
strengths. The toy world's levels are 1, 0.75, 0.5 and 0.25 (trained unshifted): a strength
under 0.25 runs no DiT forward and is the reconstruction exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from framestream.models.registry import load_wan_models
from framestream.models.toyworld import BACKGROUNDS, COLORS, color_adherence, prompt, render
from framestream.models.toyworld.scenarios import sample_clip
from framestream.models.toyworld.world import Clip
from framestream.models.vae import from_uint8, to_uint8
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.requests import GenerationRequest, RestyleRequest

RESULTS = Path(__file__).parent / "results"
SIZE = 64
FPS = 16
PIPELINES = {"longlive": LongLivePipeline, "rolling_forcing": RollingForcingPipeline}


def recolour(clip: Clip, rng: np.random.Generator) -> Clip:
    """``clip`` with every sprite in a colour none of its sprites has."""
    taken = {sprite.color for sprite in clip.sprites}
    others = [name for name in COLORS if name not in taken]
    picks = rng.permutation(len(others))[: len(clip.sprites)]
    sprites = tuple(
        replace(sprite, color=others[k]) for sprite, k in zip(clip.sprites, picks, strict=True)
    )
    return replace(clip, sprites=sprites)


def truth_masks(clip: Clip) -> np.ndarray:
    """``[T, H, W]`` bool: pixels at least half way from the background to a sprite's colour,
    each sprite rendered alone."""
    background = np.array(BACKGROUNDS[clip.background], np.float32)
    masks = np.zeros((clip.num_frames, *clip.size), bool)
    for sprite in clip.sprites:
        alone = render(replace(clip, sprites=(sprite,))).astype(np.float32)
        toward = np.array(COLORS[sprite.color], np.float32) - background
        alpha = ((alone - background) @ toward) / float(toward @ toward)
        masks |= alpha >= 0.5
    return masks


def output_masks(frames: np.ndarray, distance: float) -> np.ndarray:
    """``[T, H, W]`` bool: pixels at least ``distance`` (RGB) from their frame's border median,
    whatever their colour."""
    pixels = frames.astype(np.float32)
    border = np.concatenate(
        [pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1
    )  # [T, 2H + 2W, 3]
    background = np.median(border, axis=1)[:, None, None]
    return np.linalg.norm(pixels - background, axis=-1) >= distance


def motion_kept(truth: np.ndarray, got: np.ndarray) -> dict:
    """Mean IoU and centroid distance over the frames whose truth shows a sprite."""
    ious, offsets = [], []
    for want, have in zip(truth, got, strict=True):
        if not want.any():
            continue
        ious.append((want & have).sum() / (want | have).sum())
        if have.any():
            offsets.append(np.hypot(*(np.argwhere(want).mean(0) - np.argwhere(have).mean(0))))
    return {
        "iou": float(np.mean(ious)),
        "centroid_error_px": float(np.mean(offsets)) if offsets else None,
        "frames_without_a_sprite": int(len(ious) - len(offsets)),
    }


def restyle(pipe, frames: np.ndarray, text: str, strength: float, seed: int) -> np.ndarray:
    """``frames`` through a restyle stream at ``strength``: one output frame per input frame."""
    request = GenerationRequest(text, seed, SIZE, SIZE, RestyleRequest(strength))
    state = pipe.open(request)
    out = []
    try:
        for i, frame in enumerate(frames):
            pipe.push_frame(state, i / FPS, frame)
            while pipe.input_ready(state):
                chunk = pipe.step(state)
                assert chunk.first_index == sum(len(c) for c in out), "no input was skipped"
                out.append(chunk.frames)
    finally:
        pipe.close(state)
    return np.concatenate(out)


def reconstruction(vae, frames: np.ndarray) -> np.ndarray:
    """The VAE's streamed reconstruction of ``frames``, 9 then 12 a chunk."""
    encoded, decoded, out = vae.new_encode_state(), vae.new_decode_state(), []
    for part in np.split(frames, range(9, len(frames), 12)):
        z = vae.encode_chunk(from_uint8(torch.from_numpy(part)[None]), encoded)
        out.append(to_uint8(vae.decode_chunk(z, decoded))[0].numpy())
    return np.concatenate(out)


def evaluate(pipe, vae, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    frames_per_clip = 9 + 12 * (args.chunks - 1)
    rows: dict[str, list[dict]] = {"input": [], "reconstruction": []}
    rows.update({f"{s:g}": [] for s in args.strengths})
    clips = []
    for i in range(args.clips):
        clip = sample_clip(
            rng, seconds=frames_per_clip / FPS, fps=FPS, size=(SIZE, SIZE), max_objects=2
        )
        target = recolour(clip, rng)
        old, new = prompt(clip), prompt(target)
        clips.append({"input_prompt": old, "restyle_prompt": new})
        frames, truth = render(clip), truth_masks(clip)
        outputs = {"input": frames, "reconstruction": reconstruction(vae, frames)}
        for strength in args.strengths:
            outputs[f"{strength:g}"] = restyle(pipe, frames, new, strength, args.seed + i)
        for name, out in outputs.items():
            row = motion_kept(truth, output_masks(out, args.mask_distance))
            row["restyle_colours"] = color_adherence(out, new)
            row["input_colours"] = color_adherence(out, old)
            rows[name].append(row)
        print(f"clip {i}: {old!r} -> {new!r}")
    summary = {}
    for name, per_clip in rows.items():
        keys = ("iou", "restyle_colours", "input_colours")
        summary[name] = {k: float(np.mean([r[k] for r in per_clip])) for k in keys}
        errors = [r["centroid_error_px"] for r in per_clip if r["centroid_error_px"] is not None]
        summary[name]["centroid_error_px"] = float(np.mean(errors)) if errors else None
        summary[name]["per_clip"] = per_clip
        s = summary[name]
        print(
            f"{name:>14}: IoU {s['iou']:.2f}, restyle colours {s['restyle_colours']:.2f}, "
            f"input colours {s['input_colours']:.2f}"
        )
    return {"clips": clips, "frames_per_clip": frames_per_clip, "results": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument(
        "--chunks", type=int, default=5, help="chunks of each clip (9 frames, then 12 each)"
    )
    parser.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="longlive")
    parser.add_argument(
        "--mask-distance",
        type=float,
        default=48.0,
        help="RGB distance from the border median that makes an output pixel a sprite's",
    )
    parser.add_argument("--seed", type=int, default=30_000, help="held out from training seeds")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        args.strengths = [RestyleRequest(float(s)).strength for s in args.strengths.split(",")]
    except ValueError as exc:
        parser.error(f"--strengths: {exc}")
    if args.clips < 1 or args.chunks < 1:
        parser.error("--clips and --chunks must be >= 1")
    models = load_wan_models("toyworld")
    pipe = PIPELINES[args.pipeline](models, KVCacheManager(), 256 << 20)
    record = {
        "benchmark": "restyle_quality",
        "pipeline": args.pipeline,
        "command": " ".join(["python -m framestream.evals.restyle_quality", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
            f"python {platform.python_version()}"
        ),
        "torch": torch.__version__,
        "size": f"{SIZE}x{SIZE}",
        "fps": FPS,
        "mask_distance": args.mask_distance,
        **evaluate(pipe, models.vae, args),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = args.out or RESULTS / f"restyle_quality_{args.pipeline}_cpu_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
