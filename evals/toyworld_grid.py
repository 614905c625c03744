"""A picture of what the embedded generator draws: prompts down, seconds across.

    python -m framestream.evals.toyworld_grid --out grid.png [--generator-dir RUN]
        [--pipeline longlive] [--prompts 6] [--seconds 8]

The first row is the README's example ("a red circle moves right on a black background",
switched at 4 s to "a yellow triangle is still on a brown background"); the others are held-out
prompts (the toy world's own sampler, seeds apart from training's). Every frame is measured as
the quality eval measures it (:func:`models.toyworld.color_adherence`,
:func:`models.toyworld.adherence`, :func:`models.toyworld.background_adherence`) against the
prompt in force, and a JSON record beside the PNG holds those scores and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from framestream.evals.toyworld_quality import FPS, SIZE, generate
from framestream.models.toyworld import (
    adherence,
    background_adherence,
    color_adherence,
    measure,
    prompt,
    sample_clip,
)
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline

README_PROMPT = "a red circle moves right on a black background"
README_SWITCH = (4.0, "a yellow triangle is still on a brown background")
PIPELINES = {"longlive": LongLivePipeline, "rolling_forcing": RollingForcingPipeline}


def rows(n_prompts: int, seconds: float, seed: int) -> list[tuple[str, list[tuple[float, str]]]]:
    """(first prompt, switches) of each row: the README's example, then held-out prompts."""
    rng = np.random.default_rng(seed)
    sampled = [
        prompt(sample_clip(rng, seconds=seconds, fps=FPS, size=(SIZE, SIZE)))
        for _ in range(n_prompts)
    ]
    return [(README_PROMPT, [README_SWITCH]), *((text, []) for text in sampled)]


def in_force(first: str, switches: list[tuple[float, str]], t: float) -> str:
    """The prompt a frame at ``t`` seconds was asked for."""
    text = first
    for at, after in switches:
        if t >= at:
            text = after
    return text


def main(argv: list[str] | None = None) -> dict:
    from framestream.models.registry import WanPaths, load_wan_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the PNG; its .json beside it")
    p.add_argument("--generator-dir", type=Path, default=None, help="default: the embedded")
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="longlive")
    p.add_argument("--prompts", type=int, default=6, help="held-out prompts after the example")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=30_000, help="held out from training seeds")
    args = p.parse_args(argv)
    paths = None
    if args.generator_dir is not None:
        run = args.generator_dir
        paths = WanPaths(dit=run / "dit.safetensors", dit_layout="wan", vae=run / "vae")
    pipe = PIPELINES[args.pipeline](load_wan_models(paths=paths), KVCacheManager(), 256 << 20)
    times = np.arange(0.5, args.seconds, 1.0)
    record: dict = {
        "benchmark": "toyworld_grid",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m framestream.evals.toyworld_grid", *sys.argv[1:]]),
        "generator_dir": str(args.generator_dir) if args.generator_dir else "embedded",
        "pipeline": args.pipeline,
        "times": times.tolist(),
        "rows": [],
    }
    pictures = []
    for i, (first, switches) in enumerate(rows(args.prompts, args.seconds, args.seed)):
        frames = generate(pipe, first, args.seconds, args.seed + i, switches)
        texts = [in_force(first, switches, k / FPS) for k in range(len(frames))]
        measured = [[measure(f)] for f in frames]  # scored 3 ways
        colours = [color_adherence(m, t) for m, t in zip(measured, texts, strict=True)]
        shapes = [adherence(m, t) for m, t in zip(measured, texts, strict=True)]
        backgrounds = [background_adherence(m, t) for m, t in zip(measured, texts, strict=True)]
        picked = [frames[round(t * FPS)] for t in times]
        pictures.append(picked)
        record["rows"].append(
            {
                "prompt": first,
                "switches": [{"t": at, "prompt": after} for at, after in switches],
                "color_adherence": float(np.mean(colours)),
                "adherence": float(np.mean(shapes)),
                "background_adherence": float(np.mean(backgrounds)),
            }
        )
        print(
            f"{first!r}: colours {np.mean(colours):.2f}, colours and shapes {np.mean(shapes):.2f}, "
            f"background {np.mean(backgrounds):.2f}"
        )
    _plot(pictures, record, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return record


def _plot(pictures: list[list[np.ndarray]], record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(pictures), len(record["times"])
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.1 * n_cols + 3.2, 1.15 * n_rows), squeeze=False
    )
    for r, (row, frames) in enumerate(zip(record["rows"], pictures, strict=True)):
        label = row["prompt"] + "".join(
            f"\n→ at {s['t']:g} s: {s['prompt']}" for s in row["switches"]
        )
        for c, frame in enumerate(frames):
            ax = axes[r][c]
            ax.imshow(frame, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{record['times'][c]:g} s", fontsize=7)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=6)
    fig.suptitle(f"{record['pipeline']} on the toy world: prompts down, seconds across", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
