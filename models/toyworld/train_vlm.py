"""Train the toy-world Qwen2.5-VL to commentate the toy world live, in StreamingVLM's format.

Retrain the shipped model's base from scratch (one NVIDIA H200, one device call; that run's
times and peak memory are in the shipped folder's ``train_base.json``)::

    python -m framestream.models.toyworld.train_vlm --device cuda --seconds-budget 420 \
        --out .runs/vlm

The shipped model then learnt questions about the world (:mod:`models.toyworld.questions`) in
a CPU fine-tune of its decoder, half of the later rounds asking one, mixed with commentary so
that commentary holds (its ``train.json``; the run it started from is ``train_base.json``)::

    python -m framestream.models.toyworld.train_vlm --init .runs/vlm --threads 2 \
        --seconds-budget 1200 --batch 8 --window 5 --feeds 256 --horizon 24 --qa-rate 0.5 \
        --lr 1e-3 --warmup 20 --aux-weight 0 --freeze-vision --eval-every 0 --out OUT

The schedule follows the time budget, so a rerun on another CPU takes another number of steps
(the record has them). A CPU check: ``python -m framestream.models.toyworld.train_vlm --out DIR
--smoke`` (seconds), or
``--seconds-budget 300 --batch 8 --window 4 --feeds 64 --horizon 64`` (colours and events
well above chance in minutes).

The model is :func:`models.qwen_vl_tiny.toy_qwen_vl` (~1.7 M parameters; 64x64 frames seen at
112x112, 16 tokens a second). The output folder is a Hugging Face folder
(``config.json``, ``model.safetensors`` in float32, ``tokenizer.json``,
``preprocessor_config.json``) plus ``train.json`` (command, arguments, seeds, losses, held-out
metrics). Load it as the service must, with the pixel bounds it was trained at::

    models.qwen_vl_tiny.load_toy_qwen_vl(DIR, dtype, device)
    # = load_qwen_vl(DIR, dtype, device, video_min_pixels=112 * 112, video_max_pixels=112 * 112)

(``load_qwen_vl``'s defaults would resize the 64x64 frames to 280x280: 100 tokens a second).

Data: training feeds ``Feed(0..feeds-1)`` are rendered once for ``horizon`` seconds into a
:class:`~models.toyworld.vlm_batch.SecondPool` (processed as the service processes frames);
windows of ``window`` seconds are laid out as the pipeline lays out its cache
(:mod:`~models.toyworld.vlm_layout`) in DataLoader workers; a step runs the vision tower over
every second of the batch at once and the decoder over equal-length padded rows. The loss is
cross-entropy on the reply tokens and their ``<|im_end|>``. The learning rate warms up, then
follows a cosine over the time budget. :func:`~models.toyworld.vlm_eval.evaluate` replays the
inference loop on held-out feeds (seeds 10000+) at the end (and every ``--eval-every`` s).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from framestream.models.attention import DenseAttention
from framestream.models.qwen_vl import QwenVL
from framestream.models.qwen_vl_tiny import TOY_VIDEO_PIXELS, load_toy_qwen_vl, toy_qwen_vl
from framestream.models.toyworld.vlm_batch import (
    AUX_CLASSES,
    BatchedVision,
    SecondPool,
    WindowSampler,
    aux_accuracy,
    batch_loss,
    check_batched_vision,
)
from framestream.models.toyworld.vlm_eval import blind_score, evaluate, score
from framestream.models.toyworld.vlm_layout import (
    DEFAULT_INSTRUCTION,
    SYSTEM_PROMPT,
    SecondCache,
    Segment,
    TokenLayout,
    Window,
    build_window,
    layout,
    prefix_text,
    round_text,
)

__all__ = [
    "DEFAULT_INSTRUCTION",
    "SYSTEM_PROMPT",
    "SecondCache",
    "Segment",
    "Window",
    "build_window",
    "evaluate",
    "layout",
    "main",
    "prefix_text",
    "round_text",
    "save",
    "score",
    "train",
]

logger = logging.getLogger(__name__)

EVAL_SEED = 10_000  # held-out feeds are EVAL_SEED, EVAL_SEED + 1, ...
MAX_CURVE_POINTS = 500  # train.json keeps the loss curves at most this long


def _thin(values: list[float], every: int) -> list[float]:
    """Means of consecutive runs of ``every`` values."""
    return [float(np.mean(values[i : i + every])) for i in range(0, len(values), every)]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _lr(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine to 5% of ``peak`` as ``progress``
    (the larger of elapsed time / budget and steps / max steps) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _summary(evals: list[dict]) -> dict[str, float]:
    keys = [k for k, v in evals[0].items() if isinstance(v, float)]
    return {k: float(np.mean([e[k] for e in evals])) for k in keys}


def run_evals(model: QwenVL, seconds: int, seeds: int) -> tuple[dict, list[dict]]:
    """Greedy commentary on held-out feeds; (mean metrics, per-feed records)."""
    evals = [evaluate(model, seconds, EVAL_SEED + i) for i in range(seeds)]
    return _summary(evals), evals


def train(
    model: QwenVL,
    pool: SecondPool,
    device: torch.device,
    args: argparse.Namespace,
    held_out: SecondPool | None = None,
) -> dict:
    """Train until ``args.seconds_budget`` or ``args.max_steps``; returns the record.

    Mid-run evaluations (``args.eval_every`` seconds of training apart) pause the clock. With
    ``held_out`` and the auxiliary head, the record has its accuracy there (the vision probe).
    """
    from tqdm import tqdm

    layout_ = TokenLayout.from_model(model)
    vision = BatchedVision(model, pool.grid)
    sampler = WindowSampler(
        layout_,
        pool.captions,
        pool.merged,
        args.batch,
        args.window,
        args.seed,
        model.special.endoftext,
        pool.questions,
        args.qa_rate,
    )
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        sampler,
        batch_size=None,
        num_workers=args.workers,
        pin_memory=cuda,
        prefetch_factor=4 if args.workers else None,
    )
    hf = model.hf.train().requires_grad_(True)
    if args.freeze_vision:  # its features are kept as they are: no backward through the tower
        hf.model.visual.requires_grad_(False)
    aux_head = None
    if args.aux_weight > 0:  # training only: never saved
        aux_head = torch.nn.Linear(model.args.hidden_size, sum(AUX_CLASSES)).to(device)
    params = [p for p in hf.parameters() if p.requires_grad]
    params += list(aux_head.parameters()) if aux_head is not None else []
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        **({"fused": True} if cuda else {}),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    losses: list[float] = []
    aux_losses: list[float] = []
    pending: list[torch.Tensor] = []  # this interval's losses, read back in one sync
    midway: list[dict] = []
    step, tokens, paused = 0, 0, 0.0
    t0 = time.monotonic()
    next_eval = args.eval_every or math.inf
    bar = tqdm(total=args.max_steps, desc="train", file=sys.stderr, mininterval=5.0)
    for batch in loader:
        elapsed = time.monotonic() - t0 - paused
        if step >= args.max_steps or elapsed >= args.seconds_budget:
            break
        batch = batch.to(device) if cuda else batch
        progress = max(elapsed / args.seconds_budget, step / args.max_steps)
        for group in opt.param_groups:
            group["lr"] = _lr(step, progress, args.lr, args.warmup)
        with autocast:
            loss, aux = batch_loss(model, vision, pool, batch, aux_head)
        opt.zero_grad(set_to_none=True)
        (loss if aux is None else loss + args.aux_weight * aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        pending.append(loss.detach() if aux is None else torch.stack([loss, aux]).detach())
        step += 1
        tokens += batch.tokens
        if step % args.log_every == 0 or elapsed >= next_eval:
            _drain(pending, losses, aux_losses)  # the interval's one sync
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if elapsed >= next_eval:
            t_pause = time.monotonic()
            model.hf.eval()
            summary, _ = run_evals(model, args.eval_every_seconds, 1)
            model.hf.train()
            midway.append({"step": step, "train_seconds": elapsed, "loss": losses[-1], **summary})
            logger.info("step %d (%.0f s): %s", step, elapsed, _short(summary))
            next_eval += args.eval_every
            paused += time.monotonic() - t_pause
    _drain(pending, losses, aux_losses)
    bar.close()
    model.hf.eval().requires_grad_(False)
    train_seconds = time.monotonic() - t0 - paused
    probe = {}
    if aux_head is not None and held_out is not None:
        with autocast:
            probe = aux_accuracy(vision, held_out, aux_head)
    return {
        "vision_probe": probe,
        "steps": step,
        "losses": losses,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, step),
        "tokens_per_step": tokens / max(1, step),
        "aux_losses": aux_losses,
        "midway_evals": midway,
    }


def _drain(pending: list[torch.Tensor], losses: list[float], aux_losses: list[float]) -> None:
    """Read the pending step losses back (one sync) into ``losses`` (and ``aux_losses``)."""
    if not pending:
        return
    values = torch.stack(pending).float().reshape(len(pending), -1).tolist()
    losses += [v[0] for v in values]
    aux_losses += [v[1] for v in values if len(v) > 1]
    pending.clear()


def _short(metrics: dict[str, float]) -> str:
    keys = ("pair_f1", "color_f1", "shape_acc", "kind_acc", "event_f1", "detail_acc")
    keys += tuple(f"probe_{name}_acc" for name in ("color", "shape", "motion"))
    return json.dumps({k: round(metrics[k], 3) for k in keys if k in metrics})


# --------------------------------------------------------------------------------------------
# Saving and the command line
# --------------------------------------------------------------------------------------------


def save(model: QwenVL, out: Path) -> None:
    """The Hugging Face folder :func:`models.qwen_vl.load_qwen_vl` reads (float32)."""
    out.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    model.image_processor.save_pretrained(out)


@torch.no_grad()
def check_reload(model: QwenVL, out: Path) -> float:
    """Largest logit difference between ``model`` and the folder loaded back on the CPU with
    the toy pixel bounds, over one processed second of a held-out feed."""
    loaded = load_toy_qwen_vl(out, torch.float32, "cpu")
    diffs = []
    for m in (model, loaded):
        window = build_window(m, SecondCache(m, m.device), EVAL_SEED, 0, 2)
        pos = torch.from_numpy(window.pos).to(m.device)
        ids = torch.tensor(window.ids, device=m.device)
        embeds = m.embed(ids, torch.cat(window.pixels), torch.cat(window.grids))
        hidden = m.decoder(embeds, DenseAttention(pos, (0, len(ids)), m.rope, causal=True))
        diffs.append(m.decoder.logits(hidden).float().cpu())
    return float((diffs[0] - diffs[1]).abs().max())


def _init_record(folder: Path | None) -> dict | None:
    """What a fine-tune started from: its folder and that run's command and step count."""
    if folder is None:
        return None
    path = folder / "train.json"
    if not path.is_file():
        return {"folder": str(folder)}
    before = json.loads(path.read_text())
    return {
        "folder": str(folder),
        "command": before.get("command"),
        "steps": before.get("steps"),
        "git_commit": before.get("git_commit"),
        "init": before.get("init"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.models.toyworld.train_vlm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the trained model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds-budget", type=float, default=480.0, help="training wall time")
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64, help="windows per step")
    parser.add_argument("--window", type=int, default=16, help="seconds (rounds) per window")
    parser.add_argument("--feeds", type=int, default=2048, help="training feeds (seeds 0..n-1)")
    parser.add_argument("--horizon", type=int, default=48, help="seconds rendered per feed")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100, help="warmup steps")
    parser.add_argument(
        "--aux-weight",
        type=float,
        default=1.0,
        help="weight of the training-only per-token (colour, shape, motion) loss (0: off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="initialisation and sampling")
    parser.add_argument("--workers", type=int, default=-1, help="data workers (-1: auto)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between loss reads")
    parser.add_argument("--eval-seconds", type=int, default=48, help="per held-out feed")
    parser.add_argument("--eval-seeds", type=int, default=4, help="held-out feeds to score")
    parser.add_argument(
        "--eval-every", type=float, default=120.0, help="training s between quick evals (0: off)"
    )
    parser.add_argument("--eval-every-seconds", type=int, default=24, help="quick eval length")
    parser.add_argument(
        "--qa-rate",
        type=float,
        default=0.0,
        help="chance a later round asks a question about its second (its target: the answer)",
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="fine-tune this model folder (default: fresh)"
    )
    parser.add_argument(
        "--freeze-vision", action="store_true", help="train the decoder only (fine-tuning)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (CPU)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_steps, args.batch, args.window, args.feeds, args.horizon = 8, 2, 3, 4, 8
        args.eval_seconds, args.eval_seeds, args.warmup, args.log_every = 4, 1, 2, 2
    cores = len(os.sched_getaffinity(0))
    if args.workers < 0:
        args.workers = 0 if args.device == "cpu" else max(1, min(4, cores // 2 - 1))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.monotonic()
    # on the CPU: the pool's workers fork before CUDA starts
    if args.init is not None:
        model = load_toy_qwen_vl(args.init, torch.float32, "cpu")
    else:
        model = toy_qwen_vl(args.seed)
    pool = SecondPool.render(model, args.feeds, args.horizon, min(12, cores))
    held_out = SecondPool.render(model, 16, 16, min(12, cores), first_seed=EVAL_SEED)
    render_seconds = time.monotonic() - t0
    logger.info("rendered %d seconds in %.1f s", pool.frames.shape[0], render_seconds)
    model = QwenVL(
        model.hf.to(device),
        model.tokenizer,
        model.image_processor,
        model.video_min_pixels,
        model.video_max_pixels,
    )
    pool.to(device)
    held_out.to(device)
    vision_err = check_batched_vision(
        model, BatchedVision(model, pool.grid), pool.pixels(torch.arange(3, device=device))
    )
    record = train(model, pool, device, args, held_out)
    save(model, args.out)
    reload_diff = check_reload(model, args.out)
    t_eval = time.monotonic()
    summary, evals = run_evals(model, args.eval_seconds, args.eval_seeds)
    chance = _summary(
        [blind_score(args.eval_seconds, EVAL_SEED + i) for i in range(args.eval_seeds)]
    )
    losses = record["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    every = max(1, math.ceil(len(losses) / MAX_CURVE_POINTS))
    info = {
        "command": " ".join(
            [
                "python -m framestream.models.toyworld.train_vlm",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "init": _init_record(args.init),
        "seed": args.seed,
        "git_commit": _git_commit(),
        "model": "framestream.models.qwen_vl_tiny.toy_config",
        "model_config": model.config.to_dict(),
        "eval_feed_seeds": [EVAL_SEED + i for i in range(args.eval_seeds)],
        "device": str(device),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.hf.parameters()),
        "load": {"video_min_pixels": TOY_VIDEO_PIXELS, "video_max_pixels": TOY_VIDEO_PIXELS},
        "pool_seconds": int(pool.frames.shape[0]),
        "render_seconds": render_seconds,
        "batched_vision_rel_err": vision_err,
        "reload_max_logit_diff": reload_diff,
        **{k: v for k, v in record.items() if k not in ("losses", "aux_losses")},
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
        "eval_seconds": time.monotonic() - t_eval,
        "wall_seconds": time.monotonic() - t0,
        "loss_first": losses[0] if losses else None,
        "loss_last_10pct": float(np.mean(tail)) if losses else None,
        "eval": summary,
        "eval_chance": chance,
        "eval_runs": evals,
        "curve_every": every,  # steps per point of the curves below (their means)
        "losses": _thin(losses, every),
        "aux_losses": _thin(record["aux_losses"], every),
    }
    (args.out / "train.json").write_text(json.dumps(info, indent=1))
    logger.info(
        "%d steps in %.0f s (%.3f s/step), loss %.3f -> %.3f; eval %s; chance %s; probe %s",
        record["steps"],
        record["train_seconds"],
        record["seconds_per_step"],
        info["loss_first"] or float("nan"),
        info["loss_last_10pct"] or float("nan"),
        _short(summary),
        _short(chance),
        _short(record["vision_probe"]),
    )
    return info


if __name__ == "__main__":
    main()
