"""Probe: how much slower (or faster) one toy-world generator streams than another on a CPU.

    python -m framestream.evals.devtools.probe_generator_speed --before DIR --after DIR \
        --out evals/results/generator_speed_cpu_DATE.json

Each folder is a generator run (``dit.safetensors``, ``vae/``, ``train.json``, and the text
encoder files it trained). Both stream the same prompt through LongLive at 64x64 on one
thread, their steps interleaved so a shared or throttled CPU slows both alike; the record
holds each one's median seconds per frame after the warm-up and their ratio. On a CPU only the
ratio is a figure to quote.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from framestream.models.registry import WanPaths, load_wan_models
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.requests import GenerationRequest

PROMPT = "a red circle moves right on a black background"


def _pipeline(folder: Path) -> LongLivePipeline:
    paths = WanPaths(dit=folder / "dit.safetensors", dit_layout="wan", vae=folder / "vae")
    return LongLivePipeline(load_wan_models("toyworld", paths), KVCacheManager(), 64 << 20)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the baseline generator")
    parser.add_argument("--after", type=Path, required=True, help="the generator measured")
    parser.add_argument("--steps", type=int, default=14, help="chunks each stream takes")
    parser.add_argument("--warmup", type=int, default=4, help="first chunks left out")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [0, --steps), got {args.warmup}")
    torch.set_num_threads(1)
    pipes = {"before": _pipeline(args.before), "after": _pipeline(args.after)}
    states = {k: p.open(GenerationRequest(PROMPT, 0, 64, 64)) for k, p in pipes.items()}
    per_frame: dict[str, list[float]] = {k: [] for k in pipes}
    for step in tqdm(range(args.steps), desc="chunks", unit="chunk"):
        for key, pipe in pipes.items():
            start = time.perf_counter()
            frames = pipe.step(states[key]).frames
            if step >= args.warmup:
                per_frame[key].append((time.perf_counter() - start) / len(frames))
    medians = {k: statistics.median(v) for k, v in per_frame.items()}
    record = {
        "benchmark": "generator_speed_probe",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, 1 torch thread",
        "torch": torch.__version__,
        "command": "python -m framestream.evals.devtools.probe_generator_speed "
        f"--before {args.before} --after {args.after} --steps {args.steps} "
        f"--warmup {args.warmup} --out {args.out}",
        "prompt": PROMPT,
        "seconds_per_frame_median": medians,
        "after_over_before": medians["after"] / medians["before"],
        "seconds_per_frame": per_frame,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"after / before: {record['after_over_before']:.2f} the time a frame")
    return record


if __name__ == "__main__":
    main()
