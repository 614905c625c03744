"""Train the tiny Qwen2.5-VL to commentate the toy world live, in StreamingVLM's chat format.

Usage::

    python -m models.toyworld.train_vlm --out DIR [--device cuda] [--seconds-budget 150] [--smoke]

Data is generated on the fly from :class:`~models.toyworld.Feed` (2 fps, 64x64 frames, one
2x2-merged video block per second). A sample is a window of ``W`` seconds laid out exactly as
:mod:`stream.pipelines.streaming_vlm` prefills and decodes it (re-created here: ``models/``
never imports ``stream/``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{captions before the window, maybe none}<|im_end|>\\n
    first round:  <|im_start|>user\\nTime=s.0-(s+1).0s<|vision_start|>{video}<|vision_end|>
                  {instruction}<|im_end|>\\n<|im_start|>assistant\\n{caption} ...<|im_end|>
    later rounds: \\n<|im_start|>user\\nTime=k.0-(k+1).0s<|vision_start|>{video}<|vision_end|>
                  <|im_end|>\\n<|im_start|>assistant\\n{caption} ...<|im_end|>

Positions are the pipeline's contiguous M-RoPE layout: text +1 per token, a video block at
``(c, c + row, c + col)``, the next text at the block's maximum + 1. The loss is cross-entropy
on the reply tokens and their ``<|im_end|>`` only; the decoder attends causally through
:class:`~models.attention.DenseAttention` over several packed windows.

:func:`evaluate` replays the inference loop (greedy, at most 20 tokens a second, the last 16
rounds kept, positions re-based contiguously) on a held-out feed and scores the captions.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from kernels import AttentionMetadata, paged_attention_ref
from models.attention import DenseAttention
from models.qwen_vl import QwenVL, tiny_qwen_vl
from models.toyworld import COLORS, SHAPES, Feed, render

__all__ = [
    "SYSTEM_PROMPT",
    "DEFAULT_INSTRUCTION",
    "Window",
    "build_window",
    "evaluate",
    "main",
    "round_text",
    "score",
]

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_INSTRUCTION = "Commentate on this video."  # the pipeline's default instruction
FPS = 2  # frames per second fed to the model (one temporal grid per second)
FRAME_SIZE = (64, 64)
MAX_NEW_TOKENS = 20  # per second, as the pipeline decodes
KEEP_ROUNDS = 16  # rounds (text and vision) the pipeline's cache keeps


# --------------------------------------------------------------------------------------------
# 1. The token layout (identical to stream/pipelines/streaming_vlm.py)
# --------------------------------------------------------------------------------------------


def prefix_text() -> tuple[str, str]:
    """(before, after) the previous text: the pipeline's ``_prefill_prefix`` strings."""
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>previous text\n",
        "<|im_end|>\n",
    )


def round_text(second: int, first: bool, extra: str) -> tuple[str, str]:
    """(head, tail) of one round around its video pads; ``extra`` is the instruction (first
    round) or the questions (later rounds)."""
    head = "<|im_start|>user\n" if first else "\n<|im_start|>user\n"
    head += f"Time={float(second):.1f}-{float(second + 1):.1f}s<|vision_start|>"
    return head, f"<|vision_end|>{extra}<|im_end|>\n<|im_start|>assistant\n"


def reply_text(caption: str) -> str:
    """The assistant's target for a second: the caption and StreamingVLM's " ..." marker."""
    return f"{caption} ..." if caption else " ..."


def caption_of(reply: str) -> str:
    """The pipeline's reading of a reply: strip, then drop a trailing "..."."""
    text = reply.strip()
    if text.endswith("..."):
        text = text[:-3].rstrip()
    return text


def _tokens(model: QwenVL, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special_tokens=False)


def _text_pos(count: int, start: int) -> np.ndarray:
    return np.repeat(np.arange(start, start + count, dtype=np.int32)[:, None], 3, axis=1)


def _vision_pos(grid: tuple[int, int, int], start: int, t_step: int) -> np.ndarray:
    t, h, w = grid
    tt, hh, ww = np.meshgrid(np.arange(t) * t_step, np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=1).astype(np.int32) + start


@dataclass
class Segment:
    """A run of tokens with relative positions; the layout places segments back to back."""

    ids: list[int]
    rel: np.ndarray  # int32 [n, 3], from 0
    labels: list[bool]  # predict this token (reply tokens and their <|im_end|>)

    @classmethod
    def text(cls, ids: list[int], labelled: bool = False) -> Segment:
        return cls(list(ids), _text_pos(len(ids), 0), [labelled] * len(ids))

    @property
    def span(self) -> int:
        return int(self.rel.max()) + 1 if len(self.ids) else 0


def layout(segments: list[Segment]) -> np.ndarray:
    """Contiguous positions ``[N, 3]``: each segment starts at the previous one's max + 1."""
    out, cursor = [], 0
    for seg in segments:
        if seg.ids:
            out.append(seg.rel + cursor)
            cursor += seg.span
    return np.concatenate(out) if out else np.zeros((0, 3), np.int32)


def _t_step(model: QwenVL) -> int:
    tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", 2)
    return round(tokens_per_second * model.temporal_patch_size / FPS)


def round_segments(
    model: QwenVL, second: int, first: bool, extra: str, grid: tuple[int, int, int]
) -> list[Segment]:
    """Head, video pads and tail of one round (no reply)."""
    head, tail = round_text(second, first, extra)
    n = grid[0] * grid[1] * grid[2]
    video = Segment(
        [model.special.video_pad] * n, _vision_pos(grid, 0, _t_step(model)), [False] * n
    )
    return [Segment.text(_tokens(model, head)), video, Segment.text(_tokens(model, tail))]


def reply_segment(model: QwenVL, caption: str) -> Segment:
    """The labelled reply: at most 20 tokens, then <|im_end|> (unlabelled when truncated, as
    the pipeline closes a cut reply itself)."""
    ids = _tokens(model, reply_text(caption))
    cut = len(ids) > MAX_NEW_TOKENS
    ids = ids[:MAX_NEW_TOKENS]
    return Segment(
        ids + [model.special.im_end], _text_pos(len(ids) + 1, 0), [True] * len(ids) + [not cut]
    )


# --------------------------------------------------------------------------------------------
# 2. Data: windows of the toy world
# --------------------------------------------------------------------------------------------


class SecondCache:
    """Rendered, processed seconds of many feeds: ``(seed, second) -> (pixels, grid, caption)``."""

    def __init__(self, model: QwenVL, device: torch.device) -> None:
        self.model, self.device = model, device
        self._feeds: dict[int, Feed] = {}
        self._seconds: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, str]] = {}

    def feed(self, seed: int) -> Feed:
        if seed not in self._feeds:
            self._feeds[seed] = Feed(seed, FRAME_SIZE, float(FPS))
        return self._feeds[seed]

    def get(self, seed: int, second: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        key = (seed, second)
        if key not in self._seconds:
            feed = self.feed(seed)
            clip = feed.second(second)
            video = self.model.video_inputs(list(render(clip)))
            self._seconds[key] = (
                video.pixel_values_videos.to(self.device),
                video.video_grid_thw,
                feed.caption(second).text,
            )
        return self._seconds[key]


@dataclass
class Window:
    """One training sample: ids, positions, labels and the video of its seconds."""

    ids: list[int]
    pos: np.ndarray  # int32 [n, 3]
    labels: list[bool]
    pixels: list[torch.Tensor]  # per second
    grids: list[torch.Tensor]  # int64 [1, 3] per second


def build_window(
    model: QwenVL,
    cache: SecondCache,
    seed: int,
    start: int,
    seconds: int,
    instruction: str | None = DEFAULT_INSTRUCTION,
    previous: str = "",
) -> Window:
    """Seconds ``[start, start + seconds)`` of feed ``seed`` as one conversation.

    ``instruction`` None lays the first round out as a later one (what the cache holds once
    the instruction round is evicted).
    """
    before, after = prefix_text()
    segs = [Segment.text(_tokens(model, before))]
    if previous.strip():
        segs.append(Segment.text(_tokens(model, previous)))
    segs.append(Segment.text(_tokens(model, after)))
    pixels, grids = [], []
    for k in range(start, start + seconds):
        pix, grid, caption = cache.get(seed, k)
        t, h, w = (int(x) for x in grid[0])
        merged = (t, h // model.merge_size, w // model.merge_size)
        first = k == start and instruction is not None
        segs += round_segments(model, k, first, instruction if first else "", merged)
        segs.append(reply_segment(model, caption))
        pixels.append(pix)
        grids.append(grid)
    ids = [i for s in segs for i in s.ids]
    labels = [b for s in segs for b in s.labels]
    return Window(ids, layout(segs), labels, pixels, grids)


def sample_window(
    model: QwenVL, cache: SecondCache, rng: random.Random, feeds: int, seconds: int, horizon: int
) -> Window:
    """A random window: a quarter start at 0 with the instruction (the stream's opening), the
    rest start anywhere, with the instruction half the time, and the captions before them as
    previous text half the time (StreamingVLM's overlapped chunks)."""
    seed = rng.randrange(feeds)
    if rng.random() < 0.25:
        return build_window(model, cache, seed, 0, seconds)
    start = rng.randrange(1, horizon)
    instruction = DEFAULT_INSTRUCTION if rng.random() < 0.5 else None
    previous = ""
    if rng.random() < 0.5:
        lines = [cache.get(seed, k)[2] for k in range(max(0, start - 6), start)]
        previous = " ".join(line for line in lines if line)
    return build_window(model, cache, seed, start, seconds, instruction, previous)


# --------------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------------


def window_loss(model: QwenVL, windows: list[Window], device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of the packed windows."""
    ids = torch.tensor([i for w in windows for i in w.ids], device=device)
    pos = torch.from_numpy(np.concatenate([w.pos for w in windows])).to(device)
    labels = torch.tensor([b for w in windows for b in w.labels], device=device)
    indptr = tuple(np.cumsum([0] + [len(w.ids) for w in windows]).tolist())
    pixels = torch.cat([p for w in windows for p in w.pixels])
    grids = torch.cat([g for w in windows for g in w.grids])
    embeds = model.embed(ids, pixels, grids)
    hidden = model.decoder(embeds, DenseAttention(pos, indptr, model.rope, causal=True))
    # token i predicts token i + 1; never across a window boundary (labels there are prompts)
    target = labels[1:]
    logits = model.decoder.logits(hidden[:-1][target]).float()
    return F.cross_entropy(logits, ids[1:][target])


def _lr(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine to 5% of ``peak`` as ``progress``
    (the larger of elapsed time / budget and steps / max steps) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    model: QwenVL,
    device: torch.device,
    seconds_budget: float,
    max_steps: int,
    batch: int,
    window: int,
    feeds: int,
    lr: float,
    seed: int,
    warmup: int,
) -> dict:
    """Train until ``seconds_budget`` or ``max_steps``; returns the step/loss record."""
    from tqdm import tqdm

    hf = model.hf.train().requires_grad_(True)
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    cache = SecondCache(model, device)
    rng = random.Random(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses: list[float] = []
    t0 = time.monotonic()
    step = 0
    bar = tqdm(total=max_steps, desc="train", file=sys.stderr, mininterval=2.0)
    while step < max_steps and time.monotonic() - t0 < seconds_budget:
        windows = [sample_window(model, cache, rng, feeds, window, 48) for _ in range(batch)]
        # the schedule follows elapsed time, so it anneals whatever the device's speed
        progress = max((time.monotonic() - t0) / seconds_budget, step / max_steps)
        for group in opt.param_groups:
            group["lr"] = _lr(step, progress, lr, warmup)
        with autocast:
            loss = window_loss(model, windows, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))  # one sync per step: progress reporting
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
    bar.close()
    model.hf.eval().requires_grad_(False)
    return {"steps": step, "losses": losses, "train_seconds": time.monotonic() - t0}


# --------------------------------------------------------------------------------------------
# 4. Evaluation: the inference loop, greedy, on a held-out feed
# --------------------------------------------------------------------------------------------


class _GrowingCache:
    """Dense un-rotated K/V of every layer over a list of segments, in layout order; positions
    are re-laid out contiguously after rounds are dropped (the pipeline's cache is re-based,
    never re-rotated). New tokens are always the last ones in layout order."""

    def __init__(self, model: QwenVL) -> None:
        self.model = model
        self.k: list[torch.Tensor | None] = [None] * model.args.num_layers
        self.v: list[torch.Tensor | None] = [None] * model.args.num_layers
        self.segments: list[tuple[int, Segment]] = []  # (round, segment); round -1 = prefix
        self._q_pos = self._kv_pos = torch.zeros(0, 3, dtype=torch.int32)

    def add(self, round_id: int, segment: Segment) -> Segment:
        self.segments.append((round_id, segment))
        return segment

    @staticmethod
    def grow(segment: Segment, tokens: list[int]) -> None:
        segment.ids += tokens
        segment.rel = _text_pos(len(segment.ids), 0)
        segment.labels += [True] * len(tokens)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Run the last ``len(embeds)`` tokens of the layout; returns hidden ``[n, d]``."""
        pos = torch.from_numpy(layout([s for _, s in self.segments])).to(self.model.device)
        self._kv_pos, self._q_pos = pos, pos[-embeds.shape[0] :]
        return self.model.decoder(embeds, self)

    def drop_rounds_before(self, round_id: int) -> None:
        keep = [r < 0 or r >= round_id for r, _ in self.segments]
        mask = torch.tensor(
            [k for k, (_, s) in zip(keep, self.segments, strict=True) for _ in s.ids],
            device=self.model.device,
        )
        self.segments = [s for k, s in zip(keep, self.segments, strict=True) if k]
        for i, (k, v) in enumerate(zip(self.k, self.v, strict=True)):
            if k is not None:
                self.k[i], self.v[i] = k[mask], v[mask]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k]), torch.cat([self.v[layer], v])
        self.k[layer], self.v[layer] = k, v
        n, m, dev = q.shape[0], k.shape[0], q.device
        meta = AttentionMetadata(
            self._q_pos,
            torch.arange(m, dtype=torch.int32, device=dev),
            self._kv_pos,
            torch.tensor([0, n], dtype=torch.int32, device=dev),
            torch.tensor([0, m], dtype=torch.int32, device=dev),
            (0, n),
            (0, m),
            True,
        )
        return paged_attention_ref(q, k, v, meta, self.model.rope)


def _pairs(text: str) -> set[tuple[str, str]]:
    words = text.lower().split()
    return {(a, b) for a, b in zip(words, words[1:], strict=False) if a in COLORS and b in SHAPES}


def score(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """Per-second agreement of captions with the ground truth.

    Returns pair precision / recall / F1 of the (colour, shape) pairs mentioned (micro over
    seconds), the exact-match rate, and silence agreement (both empty or both not).
    """
    tp = n_pred = n_true = 0
    for p, t in zip(predicted, truth, strict=True):
        pp, tt = _pairs(p), _pairs(t)
        tp, n_pred, n_true = tp + len(pp & tt), n_pred + len(pp), n_true + len(tt)
    precision = tp / n_pred if n_pred else float(n_true == 0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = max(1, len(truth))
    return {
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f1": f1,
        "exact_match": sum(p == t for p, t in zip(predicted, truth, strict=True)) / n,
        "silence_agreement": sum(
            (p == "") == (t == "") for p, t in zip(predicted, truth, strict=True)
        )
        / n,
        "silent_truth": sum(t == "" for t in truth) / n,
    }


@torch.inference_mode()
def evaluate(model: QwenVL, n_seconds: int = 32, seed: int = 10_000) -> dict:
    """Greedy live commentary over ``n_seconds`` of ``Feed(seed)`` (held out: training uses
    seeds below the ``--feeds`` count), as the pipeline runs it: system prompt, no previous
    text, the default instruction in the first round, at most 20 tokens a second, the last 16
    rounds kept (older ones are dropped whole, positions re-laid out).

    Returns ``score`` metrics plus ``predicted`` / ``truth`` caption lists.
    """
    sp = model.special
    banned = torch.tensor(
        [sp.video_pad, sp.image_pad, sp.vision_start, sp.vision_end, sp.im_start, sp.endoftext],
        device=model.device,
    )

    def greedy(hidden: torch.Tensor) -> int:
        logits = model.decoder.logits(hidden[-1:]).float()
        logits[:, banned] = -torch.inf
        return int(logits.argmax(-1)[0])

    cache = SecondCache(model, model.device)
    ctx = _GrowingCache(model)
    before, after = prefix_text()
    prefix = _tokens(model, before) + _tokens(model, after)
    ctx.add(-1, Segment.text(prefix))
    ctx.forward(model.embed(torch.tensor(prefix, device=model.device)))
    predicted, truth = [], []
    pending: list[int] = []
    last_reply: Segment | None = None
    for k in range(n_seconds):
        if k >= KEEP_ROUNDS:
            ctx.drop_rounds_before(k - KEEP_ROUNDS + 1)
        pix, grid, caption = cache.get(seed, k)
        truth.append(caption)
        t, h, w = (int(x) for x in grid[0])
        merged = (t, h // model.merge_size, w // model.merge_size)
        extra = DEFAULT_INSTRUCTION if k == 0 else ""
        segs = round_segments(model, k, k == 0, extra, merged)
        if pending and last_reply is not None:  # the last reply's end joins this prefill
            ctx.grow(last_reply, pending)
        for seg in segs:
            ctx.add(k, seg)
        ids = pending + [i for s in segs for i in s.ids]
        embeds = model.embed(torch.tensor(ids, device=model.device), pix, grid)
        token = greedy(ctx.forward(embeds))
        last_reply = ctx.add(k, Segment([], np.zeros((0, 3), np.int32), []))
        reply: list[int] = []
        while token != sp.im_end and len(reply) + 1 < MAX_NEW_TOKENS:
            reply.append(token)
            ctx.grow(last_reply, [token])
            token = greedy(ctx.forward(model.embed(torch.tensor([token], device=model.device))))
        if token == sp.im_end:
            pending = [sp.im_end]
        else:
            reply.append(token)
            pending = [token, sp.im_end]
        predicted.append(caption_of(model.tokenizer.decode(reply, skip_special_tokens=True)))
    result = score(predicted, truth)
    result.update(predicted=predicted, truth=truth, seconds=n_seconds, seed=seed)
    return result


# --------------------------------------------------------------------------------------------
# 5. Command line
# --------------------------------------------------------------------------------------------


def save(model: QwenVL, out: Path) -> None:
    """The Hugging Face folder :func:`models.qwen_vl.load_qwen_vl` reads (float32)."""
    out.mkdir(parents=True, exist_ok=True)
    model.hf.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    model.image_processor.save_pretrained(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m models.toyworld.train_vlm", description=__doc__
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the trained model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds-budget", type=float, default=150.0, help="training wall time")
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=16, help="windows per step")
    parser.add_argument("--window", type=int, default=8, help="seconds per window")
    parser.add_argument("--feeds", type=int, default=512, help="training feeds (seeds 0..n-1)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=30, help="warmup steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seconds", type=int, default=48)
    parser.add_argument("--eval-seeds", type=int, default=2, help="held-out feeds to score")
    parser.add_argument("--smoke", action="store_true", help="a few steps on tiny data (CPU)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.max_steps, args.batch, args.window, args.feeds = 8, 2, 3, 4
        args.eval_seconds, args.eval_seeds, args.warmup = 4, 1, 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    t0 = time.monotonic()
    model = tiny_qwen_vl(args.seed, device=device)
    record = train(
        model,
        device,
        args.seconds_budget,
        args.max_steps,
        args.batch,
        args.window,
        args.feeds,
        args.lr,
        args.seed,
        args.warmup,
    )
    save(model, args.out)
    t_eval = time.monotonic()
    evals = [evaluate(model, args.eval_seconds, 10_000 + i) for i in range(args.eval_seeds)]
    keys = [k for k, v in evals[0].items() if isinstance(v, float)]
    summary = {k: float(np.mean([e[k] for e in evals])) for k in keys}
    losses = record["losses"]
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "command": " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed": args.seed,
        "device": str(device),
        "steps": record["steps"],
        "train_seconds": record["train_seconds"],
        "eval_seconds": time.monotonic() - t_eval,
        "wall_seconds": time.monotonic() - t0,
        "loss_first": losses[0] if losses else None,
        "loss_last_10pct": float(np.mean(tail)) if losses else None,
        "losses": losses,
        "eval": summary,
        "eval_runs": evals,
    }
    (args.out / "train.json").write_text(json.dumps(info, indent=1))
    logger.info(
        "%d steps in %.0f s, loss %.3f -> %.3f; eval %s",
        record["steps"],
        record["train_seconds"],
        info["loss_first"] or float("nan"),
        info["loss_last_10pct"] or float("nan"),
        json.dumps({k: round(v, 3) for k, v in summary.items()}),
    )
    return info


if __name__ == "__main__":
    main()
