"""Held-out evaluation of the toy-world VLM: the service's inference loop, greedy, scored
against the toy world's ground-truth captions.

:func:`evaluate` replays the pipeline's loop (at most 20 tokens a second, the last 16 rounds
kept, positions re-based contiguously) on ``Feed(seed)`` with frames processed by
:meth:`QwenVL.video_inputs`, exactly as the service prepares them. :func:`score` compares the
captions second by second: (colour, shape) pairs, and per attribute: colour, shape, event kind
(appears / disappears / bounces / moves / still) and its detail (direction or edge).
:func:`blind_score` is the chance level: another feed's true captions, so perfect grammar and
statistics but no sight.
"""

from __future__ import annotations

import numpy as np
import torch

from framestream.kernels.attention import AttentionMetadata, paged_attention_ref
from framestream.models.qwen_vl import QwenVL
from framestream.models.toyworld import COLORS, SHAPES, Feed
from framestream.models.toyworld.vlm_layout import (
    DEFAULT_INSTRUCTION,
    FPS,
    FRAME_SIZE,
    KEEP_ROUNDS,
    MAX_NEW_TOKENS,
    SecondCache,
    Segment,
    TokenLayout,
    _text_pos,
    caption_of,
    layout,
)

__all__ = ["EVENT_KINDS", "blind_score", "clauses", "evaluate", "score"]

EVENT_KINDS = ("appears", "disappears", "bounces")  # what happens; "moves"/"still" are idle


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


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def clauses(text: str) -> list[tuple[str, str, str, str | None]]:
    """``(colour, shape, kind, detail)`` of each "colour shape verb ..." clause of a caption;
    kind is one of :data:`EVENT_KINDS`, ``"moves"`` or ``"still"``, detail the direction or
    edge (None otherwise). Words outside the grammar are skipped."""
    words = text.lower().split()
    out = []
    for i in range(len(words) - 2):
        color, shape, verb = words[i : i + 3]
        if color not in COLORS or shape not in SHAPES:
            continue
        rest = words[i + 3 : i + 6]
        if verb == "moves":
            out.append((color, shape, "moves", rest[0] if rest else None))
        elif verb == "bounces":
            out.append((color, shape, "bounces", rest[2] if len(rest) > 2 else None))
        elif verb == "is" and rest[:1] == ["still"]:
            out.append((color, shape, "still", None))
        elif verb in ("appears", "disappears"):
            out.append((color, shape, verb, None))
    return out


def _f1(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else float(n_true == 0)
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """Per-second agreement of captions with the ground truth (micro over seconds).

    Returns:
        ``pair_precision`` / ``pair_recall`` / ``pair_f1`` of the (colour, shape) pairs;
        ``color_f1`` of the colours named; ``kind_f1`` of (colour, kind) and ``event_f1`` of
        (colour, kind) for the events only (appears, disappears, bounces); for sprites named
        in both (same colour): ``shape_acc``, ``kind_acc`` (same set of kinds) and
        ``detail_acc`` (same direction/edge, over matched kinds that have one); the
        exact-match rate, silence agreement (both empty or both not) and the silent share.
    """
    counts = {key: [0, 0, 0] for key in ("pair", "color", "kind", "event")}
    right = {key: [0, 0] for key in ("shape", "kind", "detail")}  # [correct, total]
    for p, t in zip(predicted, truth, strict=True):
        pc, tc = clauses(p), clauses(t)
        sets = {
            "pair": ({c[:2] for c in pc}, {c[:2] for c in tc}),
            "color": ({c[0] for c in pc}, {c[0] for c in tc}),
            "kind": ({(c[0], c[2]) for c in pc}, {(c[0], c[2]) for c in tc}),
            "event": (
                {(c[0], c[2]) for c in pc if c[2] in EVENT_KINDS},
                {(c[0], c[2]) for c in tc if c[2] in EVENT_KINDS},
            ),
        }
        for key, (ps, ts) in sets.items():
            counts[key][0] += len(ps & ts)
            counts[key][1] += len(ps)
            counts[key][2] += len(ts)
        for color in sets["color"][0] & sets["color"][1]:
            mine = [c for c in pc if c[0] == color]
            true = [c for c in tc if c[0] == color]
            right["shape"][0] += mine[0][1] == true[0][1]
            right["shape"][1] += 1
            right["kind"][0] += {c[2] for c in mine} == {c[2] for c in true}
            right["kind"][1] += 1
            for kind, detail in {(c[2], c[3]) for c in true if c[3] is not None}:
                said = {c[3] for c in mine if c[2] == kind}
                if said:
                    right["detail"][0] += detail in said
                    right["detail"][1] += 1
    precision, recall, pair_f1 = _f1(*counts["pair"])
    n = max(1, len(truth))
    out = {"pair_precision": precision, "pair_recall": recall, "pair_f1": pair_f1}
    for key in ("color", "kind", "event"):
        out[f"{key}_f1"] = _f1(*counts[key])[2]
    for key, (good, total) in right.items():
        out[f"{key}_acc"] = good / total if total else 0.0
    pairs = list(zip(predicted, truth, strict=True))
    out["exact_match"] = sum(p == t for p, t in pairs) / n
    out["silence_agreement"] = sum((p == "") == (t == "") for p, t in pairs) / n
    out["silent_truth"] = sum(t == "" for t in truth) / n
    return out


def truth_captions(seed: int, n_seconds: int) -> list[str]:
    """Ground-truth captions of seconds ``0..n_seconds-1`` of ``Feed(seed)``."""
    feed = Feed(seed, FRAME_SIZE, float(FPS))
    return [feed.caption(k).text for k in range(n_seconds)]


def blind_score(n_seconds: int, seed: int) -> dict[str, float]:
    """Chance level for ``Feed(seed)``: the true captions of ``Feed(seed + 7919)`` scored as
    its commentary (perfect format and statistics, no sight)."""
    return score(truth_captions(seed + 7919, n_seconds), truth_captions(seed, n_seconds))


# --------------------------------------------------------------------------------------------
# The inference loop
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(model: QwenVL, n_seconds: int = 32, seed: int = 10_000) -> dict:
    """Greedy live commentary over ``n_seconds`` of ``Feed(seed)`` (held out: training uses
    seeds below the ``--feeds`` count), as the pipeline runs it: system prompt, no previous
    text, the default instruction in the first round, at most 20 tokens a second, the last 16
    rounds kept (older ones are dropped whole, positions re-laid out).

    Returns ``score`` metrics plus ``predicted`` / ``truth`` caption lists.
    """
    sp = model.special
    tl = TokenLayout.from_model(model)
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
    prefix = [i for s in tl.prefix() for i in s.ids]
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
        segs = tl.round(k, k == 0, DEFAULT_INSTRUCTION if k == 0 else "", merged)
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
