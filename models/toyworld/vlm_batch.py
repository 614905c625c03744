"""Fast training batches for the toy-world VLM: a pre-rendered pool, padded windows, a batched
vision tower and causal attention over equal-length rows.

What one training step computes equals what inference computes, only batched::

    SecondPool (host workers render + resize once; uint8 on the device)
        rows [S] --pixels()--> [S*P, C*tps*p*p]   = QwenVL.video_inputs, normalised on device
        --BatchedVision--> [S*16, hidden]         = visual.forward, all seconds in one call
    WindowSampler (DataLoader workers, numpy) --> PackedBatch: ids [B, L] padded at the end
        embed, scatter the features into the <|video_pad|> rows
        --QwenDecoder + PaddedCausalAttention--> causal SDPA on [B, H, L, D], M-RoPE from pos

Padding sits after each window's last token, so causal attention never lets a real token see
it, and padded rows carry no label. :func:`check_batched_vision` compares the batched tower with
transformers' own forward on the device before training starts.

The pool also keeps, per second and merged token, the (colour, shape, motion) of the sprite
covering it, read from the renderer: a training-only head on the vision features learns them
(:func:`batch_loss` with ``aux_head``), a dense signal that teaches the tower to see long
before the captions alone would. Nothing of it is saved or used at inference.
"""

from __future__ import annotations

import multiprocessing
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional as F
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from framestream.kernels.rope import RopeSpec
from framestream.models.qwen_vl import QwenVL
from framestream.models.toyworld import COLORS, DIRECTIONS, SHAPES, Clip, Feed, render
from framestream.models.toyworld.questions import PHRASINGS, questions
from framestream.models.toyworld.vlm_layout import DEFAULT_INSTRUCTION, FPS, FRAME_SIZE, TokenLayout

__all__ = [
    "AUX_CLASSES",
    "BatchedVision",
    "PackedBatch",
    "PaddedCausalAttention",
    "Pick",
    "SecondPool",
    "WindowSampler",
    "aux_accuracy",
    "batch_loss",
    "check_batched_vision",
]

PAD_MULTIPLE = 64  # batch rows are padded to a multiple of this many tokens
# Auxiliary classes per merged token: colour, shape, motion (still + 4 directions); 0 = none.
AUX_CLASSES = (1 + len(COLORS), 1 + len(SHAPES), 2 + len(DIRECTIONS))
MIN_CELL_PIXELS = 12  # sprite pixels (over a second's frames) that label a cell
MAX_CLOCK = 3600  # windows may read "Time=" up to this many seconds past their start


# --------------------------------------------------------------------------------------------
# 1. The pool: every second of feeds 0..F-1 rendered and resized once
# --------------------------------------------------------------------------------------------


def _cell_labels(clip: Clip, frames: np.ndarray, cells: int) -> np.ndarray:
    """uint8 ``[3, cells * cells]``: per merged-token cell of one second, the (colour, shape,
    motion) class of the sprite covering most of it over the second's frames (0: none).

    Pixels count when they equal the sprite's RGB exactly (drawn colours are unique on screen;
    anti-aliased edges do not count); a cell needs ``MIN_CELL_PIXELS`` of them.
    """
    h, w = frames.shape[1:3]
    rows, cols = np.arange(h) * cells // h, np.arange(w) * cells // w
    cell = rows[:, None] * cells + cols[None, :]  # [H, W] cell of each pixel
    best = np.zeros(cells * cells, np.int64)
    out = np.zeros((3, cells * cells), np.uint8)
    for i, sprite in enumerate(clip.sprites):
        shown = np.flatnonzero(clip.visible(i))
        if len(shown) == 0:
            continue
        mask = (frames == np.array(COLORS[sprite.color], np.uint8)).all(-1)  # [T, H, W]
        count = np.bincount(np.broadcast_to(cell, mask.shape)[mask], minlength=cells * cells)
        heading = sprite.heading(clip.size, (clip.first_frame + shown[0]) / clip.fps)
        motion = 1 if heading is None else 2 + tuple(DIRECTIONS).index(heading)
        take = (count >= MIN_CELL_PIXELS) & (count > best)
        best[take] = count[take]
        out[:, take] = np.array(
            [[1 + tuple(COLORS).index(sprite.color)], [1 + SHAPES.index(sprite.shape)], [motion]]
        )
    return out


def _questions(clip: Clip) -> list[tuple[str, str]]:
    """(question, answer) of every question about ``clip`` in every phrasing."""
    return [
        (q.text, q.answer)
        for phrasing in range(max(len(p) for p in PHRASINGS.values()))
        for q in questions(clip, phrasing)
    ]


def _render_feed(job: tuple[int, int, Qwen2VLImageProcessorPil, int, int]):
    """Seconds ``0..horizon-1`` of ``Feed(seed)``: resized frames as uint8 patches
    ``[horizon, FPS, P, C*p*p]`` (one temporal copy), cell labels ``[horizon, 3, cells]``,
    the captions and the (question, answer) pairs about each second."""
    seed, horizon, processor, min_pixels, max_pixels = job
    feed = Feed(seed, FRAME_SIZE, float(FPS))
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    tps, p, m = processor.temporal_patch_size, processor.patch_size, processor.merge_size
    out, labels, captions, asked = None, None, [], []
    for k in range(horizon):
        clip = feed.second(k)
        frames = render(clip)
        raw = processor(
            images=list(frames),
            size=size,
            do_rescale=False,
            do_normalize=False,
            return_tensors="np",
        )["pixel_values"]  # [FPS * P, C * tps * p * p], the resized uint8 values as floats
        patches = raw.reshape(FPS, -1, 3, tps, p * p)[:, :, :, 0].reshape(FPS, -1, 3 * p * p)
        if out is None:
            cells = round(patches.shape[1] ** 0.5) // m
            out = np.empty((horizon, *patches.shape), np.uint8)
            labels = np.empty((horizon, 3, cells * cells), np.uint8)
        out[k] = patches
        labels[k] = _cell_labels(clip, frames, cells)
        captions.append(feed.caption(k).text)
        asked.append(_questions(clip))
    return out, labels, captions, asked


class SecondPool:
    """Seconds ``0..horizon-1`` of training feeds ``0..feeds-1``, processed like the service.

    Args:
        frames: uint8 ``[feeds * horizon, FPS, P, 3 * p * p]``: each frame resized by the
            model's image processor (its pixel bounds), patchified, before rescale/normalise.
        labels: uint8 ``[feeds * horizon, 3, P / merge**2]``: (colour, shape, motion) class
            per merged token (:data:`AUX_CLASSES`; 0 = no sprite), for the auxiliary loss.
        captions: ``[feeds][horizon]`` ground-truth captions.
        model: supplies the processor's rescale factor, mean and std.
        questions: ``[feeds][horizon]`` (question, answer) pairs about each second, from the
            world's ground truth (:mod:`models.toyworld.questions`); None: none.
    """

    def __init__(
        self,
        frames: torch.Tensor,
        labels: torch.Tensor,
        captions: list[list[str]],
        model: QwenVL,
        questions: list[list[list[tuple[str, str]]]] | None = None,
    ) -> None:
        self.frames, self.labels, self.captions = frames, labels, captions
        self.questions = questions
        self.feeds, self.horizon = len(captions), len(captions[0])
        ip = model.image_processor
        self.patch, self.tps = model.patch_size, model.temporal_patch_size
        if self.tps != FPS:
            raise ValueError(f"one temporal grid per second needs FPS == {self.tps}, got {FPS}")
        side = int(round((frames.shape[2] * self.patch**2) ** 0.5))
        self.grid = (1, side // self.patch, side // self.patch)  # patches (t, h, w) a second
        self.merged = (1, self.grid[1] // model.merge_size, self.grid[2] // model.merge_size)
        self._scale = float(ip.rescale_factor)
        self._mean = torch.tensor(ip.image_mean, dtype=torch.float32)
        self._std = torch.tensor(ip.image_std, dtype=torch.float32)

    @classmethod
    def render(
        cls, model: QwenVL, feeds: int, horizon: int, workers: int = 1, first_seed: int = 0
    ) -> SecondPool:
        """Render feeds ``first_seed ..`` with ``workers`` forked processes (call before CUDA
        is touched)."""
        jobs = [
            (seed, horizon, model.image_processor, model.video_min_pixels, model.video_max_pixels)
            for seed in range(first_seed, first_seed + feeds)
        ]
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                done = pool.map(_render_feed, jobs, chunksize=max(1, feeds // (4 * workers)))
        else:
            done = [_render_feed(job) for job in jobs]
        frames = torch.from_numpy(np.concatenate([f for f, _, _, _ in done]))
        labels = torch.from_numpy(np.concatenate([y for _, y, _, _ in done]))
        return cls(frames, labels, [c for _, _, c, _ in done], model, [q for *_, q in done])

    def to(self, device: torch.device) -> SecondPool:
        self.frames, self.labels = self.frames.to(device), self.labels.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self

    def row(self, feed: int, second: int) -> int:
        return feed * self.horizon + second

    def pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """``pixel_values_videos`` of the seconds ``rows`` ``[S]``, concatenated:
        float32 ``[S * P, C * tps * p * p]``, as :meth:`QwenVL.video_inputs` lays them out."""
        x = self.frames.index_select(0, rows).float()  # [S, tps, P, C * p * p]
        s, t, n = x.shape[:3]
        x = x.view(s, t, n, 3, -1) * self._scale
        x = (x - self._mean[:, None]) / self._std[:, None]
        return x.permute(0, 2, 3, 1, 4).reshape(s * n, -1)  # [S * P, (C, tps, p, p)]


# --------------------------------------------------------------------------------------------
# 2. Batches: windows padded to one length
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PackedBatch:
    """``B`` windows padded at the end to ``L`` tokens. Flat indices address ``[B * L]``."""

    ids: torch.Tensor  # int64 [B, L], padding <|endoftext|>
    pos: torch.Tensor  # int32 [B, L, 3] M-RoPE positions, 0 on padding
    label_index: torch.Tensor  # int64 [M] flat index of each token whose next one is a label
    targets: torch.Tensor  # int64 [M] that next token
    video_index: torch.Tensor  # int64 [V] flat index of each <|video_pad|>, in order
    rows: torch.Tensor  # int64 [S] pool rows of the windows' seconds, window-major

    def _map(self, fn) -> PackedBatch:
        return PackedBatch(*(fn(getattr(self, name)) for name in self.__slots__))

    def pin_memory(self) -> PackedBatch:
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device) -> PackedBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


class Pick(NamedTuple):
    """One window: seconds ``[start, start + window)`` of pool feed ``feed``."""

    feed: int
    start: int
    clock: int  # the "Time=" of its first round (a live stream runs for hours)
    instruction: str | None  # the first round's instruction, or laid out as a later round
    previous: str  # previous text
    asks: tuple[str, ...] = ()  # per round: a question asked in it ("" none; empty: no round)
    replies: tuple[str, ...] = ()  # per round: its target (a caption, or the answer)


class WindowSampler(torch.utils.data.IterableDataset):
    """Endless :class:`PackedBatch` es of random windows of the pool's feeds.

    A quarter of the windows start at second 0 with the instruction (the stream's opening);
    the rest start anywhere, with the instruction half the time, and the captions of up to 6
    seconds before them as previous text half the time (StreamingVLM's overlapped chunks).
    Half of those read a later clock (``Time=`` up to :data:`MAX_CLOCK` s on): the world is
    stationary, and the service's streams outlive the pool's horizon.
    With ``questions`` (the pool's), a later round carries a question about its second with
    probability ``qa_rate``, and its target is the answer instead of the caption (a question
    joins the next round's user turn, as in the pipeline).
    Each DataLoader worker draws from its own generator seeded by ``(seed, worker)``.
    """

    def __init__(
        self,
        layout: TokenLayout,
        captions: list[list[str]],
        merged_grid: tuple[int, int, int],
        batch: int,
        window: int,
        seed: int,
        pad_id: int,
        questions: list[list[list[tuple[str, str]]]] | None = None,
        qa_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(captions[0]) < window + 1:
            raise ValueError(f"pool horizon {len(captions[0])} is shorter than window {window}+1")
        if not 0.0 <= qa_rate <= 1.0 or (qa_rate > 0 and questions is None):
            raise ValueError(f"qa_rate must be in [0, 1] and needs questions, got {qa_rate}")
        self.layout, self.captions, self.grid = layout, captions, merged_grid
        self.batch, self.window, self.seed, self.pad_id = batch, window, seed, pad_id
        self.questions, self.qa_rate = questions, qa_rate

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1009 + (info.id + 1 if info else 0))
        while True:
            yield self.sample(rng)

    def pick(self, rng: random.Random) -> Pick:
        """One random window."""
        feed = rng.randrange(len(self.captions))
        if rng.random() < 0.25:
            return self._ask(rng, Pick(feed, 0, 0, DEFAULT_INSTRUCTION, ""))
        start = rng.randrange(1, len(self.captions[feed]) - self.window + 1)
        clock = start if rng.random() < 0.5 else start + rng.randrange(MAX_CLOCK)
        instruction = DEFAULT_INSTRUCTION if rng.random() < 0.5 else None
        previous = ""
        if rng.random() < 0.5:
            lines = self.captions[feed][max(0, start - 6) : start]
            previous = " ".join(line for line in lines if line)
        return self._ask(rng, Pick(feed, start, clock, instruction, previous))

    def _ask(self, rng: random.Random, pick: Pick) -> Pick:
        """``pick`` with questions in some of its later rounds (none without ``qa_rate``)."""
        if not self.qa_rate:
            return pick
        seconds = range(pick.start, pick.start + self.window)
        asks, replies = [], []
        for j, second in enumerate(seconds):
            pairs = self.questions[pick.feed][second]
            later = j > 0 or pick.instruction is None
            if later and pairs and rng.random() < self.qa_rate:
                question, answer = rng.choice(pairs)
                asks.append(question)
                replies.append(answer)
            else:
                asks.append("")
                replies.append(self.captions[pick.feed][second])
        return pick._replace(asks=tuple(asks), replies=tuple(replies))

    def sample(self, rng: random.Random) -> PackedBatch:
        picks = [self.pick(rng) for _ in range(self.batch)]
        horizon = len(self.captions[0])
        built = [
            self.layout.window(
                list(p.replies) or self.captions[p.feed][p.start : p.start + self.window],
                p.clock,
                self.grid,
                p.instruction,
                p.previous,
                list(p.asks) or None,
            )
            for p in picks
        ]
        length = max(len(ids) for ids, _, _ in built)
        length = -(-length // PAD_MULTIPLE) * PAD_MULTIPLE
        ids = np.full((self.batch, length), self.pad_id, np.int64)
        pos = np.zeros((self.batch, length, 3), np.int32)
        labels = np.zeros((self.batch, length), bool)
        for b, (w_ids, w_pos, w_labels) in enumerate(built):
            ids[b, : len(w_ids)], pos[b, : len(w_ids)] = w_ids, w_pos
            labels[b, : len(w_ids)] = w_labels
        flat_ids, flat_labels = ids.reshape(-1), labels.reshape(-1)
        label_index = np.flatnonzero(flat_labels[1:])  # token i predicts i + 1 (same row:
        # a row's first token is never labelled)
        rows = [p.feed * horizon + p.start + j for p in picks for j in range(self.window)]
        return PackedBatch(
            torch.from_numpy(ids),
            torch.from_numpy(pos),
            torch.from_numpy(label_index),
            torch.from_numpy(flat_ids[label_index + 1].copy()),
            torch.from_numpy(np.flatnonzero(flat_ids == self.layout.video_pad)),
            torch.tensor(rows, dtype=torch.int64),
        )


# --------------------------------------------------------------------------------------------
# 3. The batched vision tower
# --------------------------------------------------------------------------------------------


class BatchedVision:
    """Qwen2.5-VL's vision tower over ``S`` seconds of one patch grid in one call per layer.

    transformers' forward runs one SDPA per attention window (a Python loop over
    ``cu_seqlens``); here every window of every second has the same length, so each block is
    one batched SDPA. Same parameters, same arithmetic (rotation in float32, the merger's
    reverse permutation); the patch embedding's stride-equal Conv3d is the matmul it equals.
    Supports grids whose merged sides are multiples of the window (or fit in one window).
    """

    def __init__(self, model: QwenVL, grid: tuple[int, int, int]) -> None:
        visual = model.hf.model.visual
        t, h, w = grid
        m = visual.spatial_merge_size
        if t != 1:
            raise ValueError(f"one temporal grid per call, got grid {grid}")
        self.visual, self.grid, self.patches = visual, grid, h * w
        # window layout over merged units (as transformers' get_window_index, no padding)
        units = visual.window_size // m // visual.patch_size
        gh, gw = h // m, w // m
        wh, ww = min(units, gh), min(units, gw)
        if gh % wh or gw % ww:
            raise ValueError(f"merged grid {(gh, gw)} is not a whole number of {units} windows")
        index = np.arange(gh * gw).reshape(gh // wh, wh, gw // ww, ww).transpose(0, 2, 1, 3)
        device = model.device
        self.window_index = torch.from_numpy(index.reshape(-1).copy()).to(device)
        self.reverse = torch.argsort(self.window_index)
        self.window_len = wh * ww * m * m  # patches per window
        # 2D rotary of each patch, in merged-block order, then window order
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w))
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w))

        def blocked(x: np.ndarray) -> np.ndarray:
            return x.reshape(gh, m, gw, m).transpose(0, 2, 1, 3).reshape(-1)

        pos = torch.from_numpy(np.stack([blocked(hpos), blocked(wpos)], 1)).to(device)
        inv_freq = visual.rotary_pos_emb.inv_freq.to(device=device, dtype=torch.float32)
        freqs = (pos[..., None].float() * inv_freq).reshape(h * w, -1)  # [P, (h, w) freqs]
        emb = torch.cat([freqs, freqs], -1)
        emb = emb.view(gh * gw, m * m, -1)[self.window_index].reshape(h * w, -1)
        self.cos, self.sin = emb.cos(), emb.sin()

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)

    def _block(self, blk, x: torch.Tensor, group: int) -> torch.Tensor:
        """One vision block over ``x [S * P, D]`` with attention inside runs of ``group``."""
        n, d = x.shape
        heads, runs = blk.attn.num_heads, self.patches // group
        qkv = blk.attn.qkv(blk.norm1(x)).view(n // self.patches, runs, group, 3, heads, -1)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # [S, runs, H, group, hd]
        cos = self.cos.view(runs, 1, group, -1)  # broadcast over seconds and heads
        sin = self.sin.view(runs, 1, group, -1)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        four = (n // group, heads, group, -1)  # fused SDPA kernels take 4-D inputs
        out = F.scaled_dot_product_attention(q.reshape(four), k.reshape(four), v.reshape(four))
        x = x + blk.attn.proj(out.transpose(1, 2).reshape(n, d))
        return x + blk.mlp(blk.norm2(x))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels [S * P, C * tps * p * p]`` -> merged features ``[S * P / 4, out_hidden]``,
        second by second in the merged grid's row-major order."""
        visual = self.visual
        weight = visual.patch_embed.proj.weight
        x = F.linear(pixels.to(weight.dtype), weight.view(weight.shape[0], -1))
        s = x.shape[0] // self.patches
        unit = visual.spatial_merge_size**2
        x = x.view(s, -1, unit, x.shape[-1])[:, self.window_index].reshape(x.shape)
        for i, blk in enumerate(visual.blocks):
            full = i in visual.fullatt_block_indexes
            x = self._block(blk, x, self.patches if full else self.window_len)
        merged = visual.merger(x)
        return merged.view(s, -1, merged.shape[-1])[:, self.reverse].reshape(-1, merged.shape[-1])


@torch.no_grad()
def check_batched_vision(model: QwenVL, vision: BatchedVision, pixels: torch.Tensor) -> float:
    """Largest difference between :class:`BatchedVision` and transformers' forward on
    ``pixels`` (a few seconds), relative to the largest feature, in float32 without TF32;
    raises ``RuntimeError`` above 1e-3 (a wrong layout gives O(1))."""
    s = pixels.shape[0] // vision.patches
    grid = torch.tensor([vision.grid] * s, dtype=torch.int64, device=pixels.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = model.hf.model.get_video_features(pixels, grid, return_dict=True).pooler_output
        ref = torch.cat(list(ref)).float()
        ours = vision(pixels).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    err = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
    if not err < 1e-3:
        raise RuntimeError(f"batched vision tower disagrees with transformers' (rel err {err})")
    return err


# --------------------------------------------------------------------------------------------
# 4. The decoder over padded rows, and the loss
# --------------------------------------------------------------------------------------------


class PaddedCausalAttention:
    """An :class:`~models.attention.AttentionContext` for ``B`` rows of ``L`` tokens each:
    causal SDPA per row (one call per layer), M-RoPE rotation from ``pos`` computed once.

    Args:
        pos: int ``[B, L, 3]`` logical positions.
        rope: the model's rotation.
    """

    def __init__(self, pos: torch.Tensor, rope: RopeSpec) -> None:
        self.rows, self.length = pos.shape[:2]
        freq, axis, partner, sign = rope.per_dim(pos.device)
        angle = pos.reshape(-1, 3).float().index_select(1, axis.long()) * freq  # [N, D]
        self.cos, self.sin = angle.cos()[:, None], angle.sin()[:, None]
        self.partner, self.sign = partner.long(), sign

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return xf * self.cos + self.sign * xf.index_select(-1, self.partner) * self.sin

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``q [B*L, H_q, D]``, ``k, v [B*L, H_kv, D]`` -> ``[B*L, H_q, D]``."""
        n, heads, d = q.shape
        groups = heads // k.shape[1]
        dtype = v.dtype

        def rows(x: torch.Tensor) -> torch.Tensor:  # [N, H, D] -> [B, H, L, D]
            return x.view(self.rows, self.length, heads, d).transpose(1, 2)

        q = rows(self._rotate(q).to(dtype))
        k = rows(self._rotate(k).to(dtype).repeat_interleave(groups, dim=1))
        v = rows(v.repeat_interleave(groups, dim=1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(n, heads, d)


def batch_loss(
    model: QwenVL,
    vision: BatchedVision,
    pool: SecondPool,
    batch: PackedBatch,
    aux_head: torch.nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy over the labelled tokens of ``batch`` (on the model's device), and with
    ``aux_head`` (a training-only ``Linear(out_hidden, sum(AUX_CLASSES))`` on the merged
    vision features) the mean cross-entropy of each merged token's (colour, shape, motion)."""
    rows, length = batch.ids.shape
    embeds = model.hf.get_input_embeddings()(batch.ids).view(rows * length, -1)
    features = vision(pool.pixels(batch.rows))
    embeds = embeds.index_put((batch.video_index,), features.to(embeds.dtype))
    hidden = model.decoder(embeds, PaddedCausalAttention(batch.pos, model.rope))
    logits = model.decoder.logits(hidden.index_select(0, batch.label_index)).float()
    loss = F.cross_entropy(logits, batch.targets)
    if aux_head is None:
        return loss, None
    aux_logits = aux_head(features).float().split(AUX_CLASSES, dim=-1)
    targets = pool.labels.index_select(0, batch.rows).long()  # [S, 3, M]
    aux = sum(
        F.cross_entropy(lg, targets[:, i].reshape(-1)) for i, lg in enumerate(aux_logits)
    ) / len(AUX_CLASSES)
    return loss, aux


@torch.no_grad()
def aux_accuracy(
    vision: BatchedVision, pool: SecondPool, aux_head: torch.nn.Module
) -> dict[str, float]:
    """How well the vision features tell each sprite token's colour, shape and motion (the
    auxiliary head's accuracy over every second of ``pool``, on tokens a sprite covers)."""
    rows = torch.arange(pool.frames.shape[0], device=pool.frames.device)
    logits = aux_head(vision(pool.pixels(rows)).float()).split(AUX_CLASSES, dim=-1)
    labels = pool.labels.permute(1, 0, 2).reshape(len(AUX_CLASSES), -1).long()  # [3, S * M]
    sprite = labels[0] > 0
    out = {}
    for name, lg, y in zip(("color", "shape", "motion"), logits, labels, strict=True):
        out[f"probe_{name}_acc"] = float((lg.argmax(-1) == y)[sprite].float().mean())
    out["probe_sprite_tokens"] = int(sprite.sum())
    return out
