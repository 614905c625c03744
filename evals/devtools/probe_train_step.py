"""Probe: where a toy-world DiT training step spends its time, on the accelerator.

    python -m framestream.evals.devtools.probe_train_step --out FILE.json

Runs :func:`~models.toyworld.train_dit.train_dit` on random latents in the shipped run's
shapes (``--dit-preset``, ``--batch`` clips of 21 latent frames at 8x8) with the run's layouts,
so no pool is rendered or encoded: ``--steps`` timed steps after ``--warmup`` steps, then the
same again under ``torch.profiler``, whose heaviest operators (by device time) the record
keeps. A device call's steps a second are what bounds a training round (BENCHMARKS.md's runs);
this says which kernels to make faster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from framestream.models.toyworld.generator_config import TrainConfig
from framestream.models.toyworld.train_dit import train_dit
from framestream.models.wan import wan_config


def _run(cfg: TrainConfig, steps: int, device: torch.device, data: dict) -> float:
    """Seconds a step over ``steps`` steps (after the stage's own setup)."""
    cfg = replace(cfg, max_gen_steps=steps, log_every=steps)
    _sync(device)
    _, report = train_dit(cfg, deadline=time.perf_counter() + 3600, device=device, **data)
    _sync(device)
    return report["seconds"] / report["steps"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit-preset", default="toyworld-l-words")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clips", type=int, default=1024, help="random pool size")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    # the shipped teacher rounds' layouts: 40% Rolling Forcing, half of LongLive's sink far
    cfg = TrainConfig(dit_preset=args.dit_preset, gen_batch=args.batch, far_sink_fraction=0.5)
    config = wan_config(cfg.dit_preset)
    gen = torch.Generator(device).manual_seed(0)
    shape = (args.clips, 16, cfg.latent_frames, 8, 8)
    prompts = 64
    data = {
        "latents": torch.randn(shape, generator=gen, device=device),
        "foreground": torch.rand((args.clips, 1, *shape[2:]), generator=gen, device=device) < 0.1,
        "chunk_prompt": torch.randint(prompts, (args.clips, cfg.num_chunks), device=device),
        "text": torch.randn((prompts, config.text_len, config.text_dim), device=device),
        "null": 0,
    }
    _run(cfg, args.warmup, device, data)
    seconds_a_step = _run(cfg, args.steps, device, data)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        _run(cfg, args.profile_steps, device, data)
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    device_total = sum(e.self_device_time_total for e in events)
    top = [
        {
            "name": e.key,
            "calls": e.count,
            "self_device_ms_a_step": e.self_device_time_total / 1e3 / args.profile_steps,
            "device_ms_a_step": e.device_time_total / 1e3 / args.profile_steps,
            "self_cpu_ms_a_step": e.self_cpu_time_total / 1e3 / args.profile_steps,
            "cpu_ms_a_step": e.cpu_time_total / 1e3 / args.profile_steps,
        }
        for e in events[: args.top]
    ]
    record = {
        "benchmark": "toyworld_train_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m framestream.evals.devtools.probe_train_step "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "seconds_a_step": seconds_a_step,
        "steps_a_second": 1 / seconds_a_step,
        "device_ms_a_step": device_total / 1e3 / args.profile_steps,
        "top": top,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"{record['device']}: {seconds_a_step * 1e3:.0f} ms a step, device busy "
        f"{record['device_ms_a_step']:.0f} ms of it"
    )
    where = "device" if device.type == "cuda" else "cpu"
    for row in top:
        print(
            f"{row[f'self_{where}_ms_a_step']:8.2f} ms self {row[f'{where}_ms_a_step']:8.2f} ms "
            f"{row['calls'] // args.profile_steps:5d}x  {row['name'][:90]}"
        )
    return record


if __name__ == "__main__":
    main()
