"""Probe: where a toy-world DiT training step spends its time, on the accelerator.

    python -m framestream.evals.devtools.probe_train_step --out FILE.json

Runs :func:`~models.toyworld.train_dit.train_dit` on random latents in the shipped run's
shapes (``--dit-preset``, ``--batch`` clips of 21 latent frames at 8x8) with the run's layouts,
so no pool is rendered or encoded: ``--steps`` timed steps after ``--warmup`` steps, then the
same again under ``torch.profiler``, whose heaviest operators (by device time) the record
keeps. A device call's steps a second are what bounds a training round (BENCHMARKS.md's runs);
this says which kernels to make faster. ``--compile-blocks`` does all of it twice in the one
call, eagerly and with the DiT's blocks compiled (``TrainConfig.compile_blocks``), from the same
seeds, and records both step times and both runs' losses (the first step's and the mean over the
timed steps), which must agree.
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


def _run(cfg: TrainConfig, steps: int, device: torch.device, data: dict) -> dict:
    """The stage's report over ``steps`` steps: its curve holds the first step's loss and the
    mean of all of them (a logged loss syncs the device, so none in between)."""
    cfg = replace(cfg, max_gen_steps=steps, log_every=steps)
    _sync(device)
    _, report = train_dit(cfg, deadline=time.perf_counter() + 3600, device=device, **data)
    _sync(device)
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(cfg: TrainConfig, args: argparse.Namespace, device: torch.device, data: dict):
    """Warm up, time ``args.steps`` steps, then profile ``args.profile_steps`` more."""
    _run(cfg, args.warmup, device, data)
    timed = _run(cfg, args.steps, device, data)
    seconds_a_step = timed["seconds"] / timed["steps"]
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
    return {
        "seconds_a_step": seconds_a_step,
        "steps_a_second": 1 / seconds_a_step,
        "device_ms_a_step": device_total / 1e3 / args.profile_steps,
        "losses": [loss for _, loss in timed["curve"]],
        "top": top,
    }


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
    parser.add_argument(
        "--compile-blocks", action="store_true", help="also time the step with the blocks compiled"
    )
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
        "chunk_prompt": torch.randint(
            prompts, (args.clips, cfg.num_chunks), generator=gen, device=device
        ),
        "text": torch.randn(
            (prompts, config.text_len, config.text_dim), generator=gen, device=device
        ),
        "null": 0,
    }
    variants = {"eager": cfg}
    if args.compile_blocks:
        variants["compiled"] = replace(cfg, compile_blocks=True)
    record = {
        "benchmark": "toyworld_train_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m framestream.evals.devtools.probe_train_step "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
    }
    where = "device" if device.type == "cuda" else "cpu"
    for name, variant in variants.items():
        result = record[name] = _measure(variant, args, device, data)
        print(
            f"{record['device']}, {name}: {result['seconds_a_step'] * 1e3:.0f} ms a step, "
            f"device busy {result['device_ms_a_step']:.0f} ms of it"
        )
        for row in result["top"]:
            print(
                f"{row[f'self_{where}_ms_a_step']:8.2f} ms self "
                f"{row[f'{where}_ms_a_step']:8.2f} ms "
                f"{row['calls'] // args.profile_steps:5d}x  {row['name'][:90]}"
            )
    if "compiled" in record:
        eager, compiled = record["eager"], record["compiled"]
        record["compiled_speedup"] = eager["seconds_a_step"] / compiled["seconds_a_step"]
        record["compiled_loss_gap"] = max(
            abs(a - b) / abs(a) for a, b in zip(eager["losses"], compiled["losses"], strict=True)
        )
        print(
            f"compiled blocks: {record['compiled_speedup']:.2f}x the eager step's speed, "
            f"losses within {record['compiled_loss_gap']:.1e} of it"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
