"""The token layout of StreamingVLM's live commentary, as training windows.

A window of ``W`` seconds is laid out exactly as :mod:`stream.pipelines.streaming_vlm` prefills
and decodes it (re-created here: ``models/`` never imports ``stream/``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{captions before the window, maybe none}<|im_end|>\\n
    first round:  <|im_start|>user\\nTime=s.0-(s+1).0s<|vision_start|>{video}<|vision_end|>
                  {instruction}<|im_end|>\\n<|im_start|>assistant\\n{caption} ...<|im_end|>
    later rounds: \\n<|im_start|>user\\nTime=k.0-(k+1).0s<|vision_start|>{video}<|vision_end|>
                  <|im_end|>\\n<|im_start|>assistant\\n{caption} ...<|im_end|>

Positions are the pipeline's contiguous M-RoPE layout: text +1 per token, a video block at
``(c, c + t_step * frame, c + row, c + col)``, the next text at the block's maximum + 1::

    text  ...  c-1 | video (t, h, w) = (c, c+row, c+col) | text c+max(h,w) ...

The labels mark the reply tokens and their ``<|im_end|>`` (the loss predicts them).
:class:`TokenLayout` holds only the tokenizer and a few ids, so it pickles into data workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from framestream.models.qwen_vl import QwenVL
from framestream.models.toyworld import Feed, render

__all__ = [
    "DEFAULT_INSTRUCTION",
    "FPS",
    "FRAME_SIZE",
    "KEEP_ROUNDS",
    "MAX_NEW_TOKENS",
    "SYSTEM_PROMPT",
    "SecondCache",
    "Segment",
    "TokenLayout",
    "Window",
    "build_window",
    "caption_of",
    "layout",
    "prefix_text",
    "reply_text",
    "round_text",
]

SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_INSTRUCTION = "Commentate on this video."  # the pipeline's default instruction
FPS = 2  # frames per second fed to the model (one temporal grid per second)
FRAME_SIZE = (64, 64)
MAX_NEW_TOKENS = 20  # per second, as the pipeline decodes
KEEP_ROUNDS = 16  # rounds (text and vision) the pipeline's cache keeps


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


@dataclass
class TokenLayout:
    """Tokens of the commentary format for one model; memoises the tokenizer's answers.

    Args:
        tokenizer: the model's tokenizer.
        im_end, video_pad: ids of ``<|im_end|>`` and ``<|video_pad|>``.
        t_step: M-RoPE temporal step between the temporal grids of a second.
    """

    tokenizer: PreTrainedTokenizerBase
    im_end: int
    video_pad: int
    t_step: int
    _memo: dict = field(default_factory=dict, repr=False)  # text or part key -> answer

    @classmethod
    def from_model(cls, model: QwenVL) -> TokenLayout:
        tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", 2)
        t_step = round(tokens_per_second * model.temporal_patch_size / FPS)
        return cls(model.tokenizer, model.special.im_end, model.special.video_pad, t_step)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memo": {}}

    def tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added), memoised."""
        ids = self._memo.get(text)
        if ids is None:
            if len(self._memo) > 200_000:
                self._memo.clear()
            ids = self._memo[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return list(ids)

    def prefix(self, previous: str = "") -> list[Segment]:
        """System prompt and the previous text (the pipeline's prefix)."""
        before, after = prefix_text()
        segs = [Segment.text(self.tokens(before))]
        if previous.strip():
            segs.append(Segment.text(self.tokens(previous)))
        return [*segs, Segment.text(self.tokens(after))]

    def round(self, second: int, first: bool, extra: str, grid: tuple[int, int, int]):
        """Head, video pads and tail of one round (no reply); ``grid`` is the merged grid."""
        head, tail = round_text(second, first, extra)
        n = grid[0] * grid[1] * grid[2]
        video = Segment([self.video_pad] * n, _vision_pos(grid, 0, self.t_step), [False] * n)
        return [Segment.text(self.tokens(head)), video, Segment.text(self.tokens(tail))]

    def reply(self, caption: str) -> Segment:
        """The labelled reply: at most 20 tokens, then <|im_end|> (unlabelled when truncated,
        as the pipeline closes a cut reply itself)."""
        ids = self.tokens(reply_text(caption))
        cut = len(ids) > MAX_NEW_TOKENS
        ids = ids[:MAX_NEW_TOKENS]
        return Segment(
            [*ids, self.im_end], _text_pos(len(ids) + 1, 0), [True] * len(ids) + [not cut]
        )

    def _part(self, key: tuple, make, *args) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Memoised ``(ids int64, rel int32 [n, 3], labels bool, span)`` of ``make(*args)``'s
        segments; ``key`` names them."""
        part = self._memo.get(key)
        if part is None:
            segs = make(*args)
            rel = layout(segs)
            ids = np.array([i for s in segs for i in s.ids], np.int64)
            labels = np.array([b for s in segs for b in s.labels], bool)
            part = self._memo[key] = (ids, rel, labels, int(rel.max()) + 1 if len(ids) else 0)
        return part

    def _reply_part(self, caption: str) -> list[Segment]:
        return [self.reply(caption)]

    def window(
        self,
        captions: list[str],
        start: int,
        grid: tuple[int, int, int],
        instruction: str | None = DEFAULT_INSTRUCTION,
        previous: str = "",
        asks: list[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seconds ``start, start + 1, ...`` (one per caption) as one conversation.

        ``instruction`` None lays the first round out as a later one (what the cache holds
        once the instruction round is evicted). ``asks`` (one per caption) puts a question in
        later rounds' user turns ("" none), as the pipeline does; its caption is the answer.

        Returns:
            ``(ids int64 [n], positions int32 [n, 3], labels bool [n])``, the positions of
            :func:`layout` over the segments (built from memoised parts).
        """
        parts = [self._part(("prefix", previous), self.prefix, previous)]
        for j, caption in enumerate(captions):
            first = j == 0 and instruction is not None
            extra = instruction if first else asks[j] if asks else ""
            second = start + j
            key = ("round", second, first, extra, grid)
            parts.append(self._part(key, self.round, second, first, extra, grid))
            parts.append(self._part(("reply", caption), self._reply_part, caption))
        spans = np.cumsum([0] + [p[3] for p in parts[:-1]])
        pos = np.concatenate([p[1] + off for p, off in zip(parts, spans, strict=True)])
        ids = np.concatenate([p[0] for p in parts])
        return ids, pos.astype(np.int32), np.concatenate([p[2] for p in parts])


# --------------------------------------------------------------------------------------------
# Windows of feeds, processed as the service processes them (tests, evaluation)
# --------------------------------------------------------------------------------------------


class SecondCache:
    """Rendered, processed seconds of many feeds: ``(seed, second) -> (pixels, grid, caption)``.

    Frames go through :meth:`QwenVL.video_inputs` with the model's pixel bounds, exactly as the
    service prepares them.
    """

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
            video = self.model.video_inputs(list(render(feed.second(second))))
            self._seconds[key] = (
                video.pixel_values_videos.to(self.device),
                video.video_grid_thw,
                feed.caption(second).text,
            )
        return self._seconds[key]


@dataclass
class Window:
    """One sample: ids, positions, labels and the video of its seconds."""

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
    """Seconds ``[start, start + seconds)`` of feed ``seed`` as one conversation."""
    got = [cache.get(seed, k) for k in range(start, start + seconds)]
    t, h, w = (int(x) for x in got[0][1][0])
    merged = (t, h // model.merge_size, w // model.merge_size)
    ids, pos, labels = TokenLayout.from_model(model).window(
        [caption for _, _, caption in got], start, merged, instruction, previous
    )
    pixels, grids = [p for p, _, _ in got], [g for _, g, _ in got]
    return Window(ids.tolist(), pos, labels.tolist(), pixels, grids)
