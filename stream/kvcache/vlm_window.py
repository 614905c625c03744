"""StreamingVLM's cache policy: which tokens a live commentary stream keeps, in which order, at
which positions, after any number of evictions.

It keeps what the published inference keeps (mit-han-lab/streaming-vlm,
``streaming_vlm/inference/inference.py``: ``process_past_kv``, ``prune_id_and_kv_cache`` and
``contiguous_id_and_kv`` over the ranges of ``streaming_vlm/utils/get_qwen_range.py``), in its
order, at the positions its ``get_rope_index`` gives them: contiguous M-RoPE over whatever is
retained. With ``T = text_rounds``, ``W = vision_seconds`` and ``M = max(T, W)``, before round
``i`` the stream holds::

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>previous text\\n        segment system
    first prev_sink_tokens of the previous text                              prev_head
    its last prev_window_tokens - 1 tokens (511: the published "- 1")        prev_tail
    <|im_end|>\\n                                                             prev_end
    then every round j not yet gone, oldest first, as pieces that leave at round:
      \\n                                            j - 1 + T (with round j-1's reply)
      <|im_start|>user\\n                            j + M
      Time=j.0-(j+1).0s                              j + T
      <|vision_start|>{pads}<|vision_end|>           j + W
      {query}<|im_end|>\\n                           j + M
      <|im_start|>assistant\\n{reply}<|im_end|>      j + T, its text folded first

* fold: when round ``j``'s reply leaves, its text less its last ``fold_drop_tokens`` tokens (the
  published ``assistant_end_bias - 1``: the " ..." marker, one token on Qwen2.5) moves to the end
  of the previous text, its K/V copied (never recomputed);
* the previous text then keeps its first ``prev_sink_tokens`` and its last
  ``prev_window_tokens - 1`` tokens (the published cut's ``+ 4`` and ``- 1``);
* a round begins with ``\\n`` only while the last round's reply is kept (the published ``T = 1``
  case drops it, as it drops the last reply's uncached end).

The pieces of a round that leave at the same round share one segment (``W = T``: a whole round
is one segment), so an eviction drops whole segments, or the ``\\n`` at the front of one; no K/V
moves but the fold's copy, and positions are re-based on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from framestream.models.positions import text_positions, vision_positions
from framestream.stream.kvcache.session import SessionCache, TokenRange

__all__ = ["RoundTokens", "StreamingVLMConfig", "StreamingVLMWindow"]

PREFIX = ("system", "prev_head", "prev_tail", "prev_end")
# a round's pieces after its leading "\n", in order; "reply" starts with its prompt
PIECES = ("user", "time", "vision", "query", "reply")


def _blocks_for(tokens: int, block_size: int) -> int:
    """Blocks a segment of at most ``tokens`` live tokens can span (+1 for a partial head)."""
    return -(-tokens // block_size) + 1


@dataclass(frozen=True)
class StreamingVLMConfig:
    """StreamingVLM's budgets (defaults as published).

    Attributes:
        text_rounds: ``T``, recent rounds whose text stays (16, the published ``text_round``).
        vision_seconds: ``W``, recent rounds whose vision stays (16, ``window_size``).
        prev_sink_tokens: first tokens of the previous text kept for good (512, ``text_sink``).
        prev_window_tokens: the previous text's tail budget (512, ``text_sliding_window``); as
            published, its last ``prev_window_tokens - 1`` tokens are kept.
        fold_drop_tokens: reply tokens just before its ``<|im_end|>`` that are not folded into
            the previous text: the published ``len(tokens(" ...<|im_end|>")) - 1`` (1 on
            Qwen2.5, where " ..." is one token).
        max_prefix_tokens: system prompt + previous-text header/footer, for the worst case.
        max_round_text_tokens: a round's template and reply text (query included), worst case.
        max_vision_tokens: merged vision tokens of one second, worst case (768 for 16:9).
    """

    text_rounds: int = 16
    vision_seconds: int = 16
    prev_sink_tokens: int = 512
    prev_window_tokens: int = 512
    fold_drop_tokens: int = 1
    max_prefix_tokens: int = 256
    max_round_text_tokens: int = 160
    max_vision_tokens: int = 768

    def __post_init__(self) -> None:
        for name in ("text_rounds", "vision_seconds", "prev_window_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prev_sink_tokens", "fold_drop_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    @property
    def kept_rounds(self) -> int:
        """``M``: rounds with anything kept once a round has begun, the new one included."""
        return max(self.text_rounds, self.vision_seconds)

    @property
    def prev_tail_tokens(self) -> int:
        return self.prev_window_tokens - 1

    def cut_previous(self, ids: Sequence[int]) -> list[int]:
        """The previous text as the published cut leaves it: its first ``prev_sink_tokens``
        and last ``prev_window_tokens - 1`` tokens (all of it when that is no shorter)."""
        ids = list(ids)
        head, tail = self.prev_sink_tokens, self.prev_tail_tokens
        if len(ids) <= head + tail:
            return ids
        return ids[:head] + ids[len(ids) - tail :]

    def worst_case_blocks(self, block_size: int) -> int:
        # a round's pieces sit in at most len(PIECES) segments, each with a partial block at
        # either end; the fold lands in prev_tail before its overflow leaves
        round_tokens = self.max_round_text_tokens + self.max_vision_tokens + 2
        per_round = -(-round_tokens // block_size) + 2 * len(PIECES)
        prefix = 2 * _blocks_for(self.max_prefix_tokens, block_size)
        prev = _blocks_for(self.prev_sink_tokens, block_size) + _blocks_for(
            self.prev_tail_tokens + self.max_round_text_tokens, block_size
        )
        return self.kept_rounds * per_round + prefix + prev


@dataclass(frozen=True, slots=True)
class RoundTokens:
    """Token ids of one round, piece by piece, as StreamingVLM's chat template lays them out::

        \\n  <|im_start|>user\\n  Time=k.0-(k+1).0s  <|vision_start|>{pads}<|vision_end|>
        newline  user           time               vision
        {instruction or questions}<|im_end|>\\n  <|im_start|>assistant\\n
        query                                   prompt

    ``grid`` is the merged (t, h, w) grid of the pads: ``vision`` holds ``t * h * w`` of them
    between its two markers (or nothing, with ``grid`` None).
    """

    newline: Sequence[int]
    user: Sequence[int]
    time: Sequence[int]
    vision: Sequence[int]
    query: Sequence[int]
    prompt: Sequence[int]
    grid: tuple[int, int, int] | None = None


@dataclass(eq=False, slots=True)
class _Round:
    index: int
    drops: dict[str, int]  # segment -> the round at whose start it leaves
    reply: str  # the segment holding "<|im_start|>assistant\n" and the reply
    reply_start: int  # index in ``reply`` of the reply's first token
    newline: str | None  # the segment this round's "\n" heads, while it is kept
    newline_tokens: int
    reply_tokens: int = 0  # reply text: decoded tokens, and the close but its <|im_end|>
    folded: bool = False


class StreamingVLMWindow:
    """StreamingVLM's cache with contiguous M-RoPE positions over whatever is retained.

    Segment order::

        system | prev_head | prev_tail | prev_end | r<j>.<pieces> ... | r<i>.<pieces> ...

    The policy also keeps every retained token's id (:meth:`retained`), so the sequence it
    holds can be read back: the repetition penalty's token set, and the fidelity check
    against the published bookkeeping (``evals/fidelity/streaming_vlm.py``).
    """

    PREFIX = PREFIX

    def __init__(self, cache: SessionCache, config: StreamingVLMConfig) -> None:
        self.cache, self.config = cache, config
        self._ids: dict[str, np.ndarray] = {}
        for name in PREFIX:
            self._add_segment(name)
        self._rounds: list[_Round] = []
        self._next_round = 0

    @property
    def rounds(self) -> list[int]:
        """Rounds with anything still kept, oldest first."""
        return [r.index for r in self._rounds]

    def start(
        self, system: Sequence[int], previous: Sequence[int], end: Sequence[int]
    ) -> list[TokenRange]:
        """Lay out the prefix: ``system`` (the system turn and the previous-text header), the
        previous text (cut by :meth:`StreamingVLMConfig.cut_previous` first) and its ``end``.
        """
        cfg = self.config
        if len(previous) > cfg.prev_sink_tokens + cfg.prev_tail_tokens:
            raise ValueError(
                f"previous text of {len(previous)} tokens exceeds {cfg.prev_sink_tokens} + "
                f"{cfg.prev_tail_tokens}; cut it with StreamingVLMConfig.cut_previous"
            )
        head = min(len(previous), cfg.prev_sink_tokens)
        parts = (system, previous[:head], previous[head:], end)
        ranges = [
            self._append(name, ids, text_positions(len(ids)))
            for name, ids in zip(PREFIX, parts, strict=True)
        ]
        self._rebase()
        return [r for r in ranges if len(r)]

    def begin_round(
        self, tokens: RoundTokens, close: Sequence[int] = (), t_step: int = 1
    ) -> list[TokenRange]:
        """Evict as the published bookkeeping does before a round, then append the round.

        Args:
            tokens: the new round's pieces.
            close: the last reply's end, not cached yet: its ``<|im_end|>`` (last), after its
                last token when the reply was cut at its budget. It joins the last reply,
                unless that reply leaves now (``text_rounds = 1``: then it is never cached).
            t_step: temporal position step between the video's grids (Qwen2.5-VL:
                tokens_per_second x seconds per grid).

        Returns:
            the ranges to prefill, in order; :meth:`token_ids` gives their ids.
        """
        i = self._next_round
        ranges: list[TokenRange] = []
        last = None
        if close:
            if not self._rounds or self._rounds[-1].index != i - 1:
                raise ValueError("close given, but the last round is gone or never began")
            last = self._rounds[-1]
            last.reply_tokens += len(close) - 1
        self._evict(i)  # first: it may move the front of the last reply's segment
        if last is not None and last.reply in self._ids:  # the reply stays this round
            ranges.append(self._append_text(last.reply, close))
        self._next_round += 1
        ranges += self._add_round(i, tokens, t_step)
        self._rebase()
        return [r for r in ranges if len(r)]

    def append_reply(self, ids: Sequence[int]) -> TokenRange:
        """Append decoded reply tokens to the current round (its closing ``<|im_end|>`` comes
        with the next :meth:`begin_round`)."""
        if not self._rounds or self._rounds[-1].index != self._next_round - 1:
            raise ValueError("no round to reply to: call begin_round first")
        rnd = self._rounds[-1]
        rnd.reply_tokens += len(ids)
        return self._append_text(rnd.reply, ids)

    def token_ids(self, ranges: Sequence[TokenRange]) -> list[int]:
        """The ids of ``ranges``' tokens, in order."""
        return [int(t) for r in ranges for t in self._ids[r.segment][r.start : r.stop]]

    def retained(self) -> tuple[np.ndarray, np.ndarray]:
        """Every kept token as ``(ids int64 [n], positions int32 [n, 3])``, in order: what the
        published ``prev_generated_ids`` holds, with the positions ``get_rope_index`` gives."""
        names = self.cache.segment_names
        ids = np.concatenate([np.zeros(0, np.int64), *(self._ids[n] for n in names)])
        pos = [self.cache.positions(n) for n in names]
        return ids, np.concatenate([np.zeros((0, 3), np.int32), *pos])

    # -- eviction --------------------------------------------------------------------------

    def _evict(self, i: int) -> None:
        """What the published ``process_past_kv`` removes before round ``i``."""
        cfg = self.config
        for rnd in self._rounds:
            if rnd.newline is not None and rnd.index - 1 + cfg.text_rounds <= i:
                self._evict_front(rnd.newline, rnd.newline_tokens)
                if rnd.newline == rnd.reply:
                    rnd.reply_start -= rnd.newline_tokens
                rnd.newline = None
            if not rnd.folded and rnd.index + cfg.text_rounds <= i:
                self._fold(rnd)
                rnd.folded = True
            for name, when in rnd.drops.items():
                if when <= i and name in self._ids:
                    self._drop(name)
        self._rounds = [r for r in self._rounds if any(n in self._ids for n in r.drops)]
        overflow = self.cache.length("prev_tail") - cfg.prev_tail_tokens
        if overflow > 0:
            self._evict_front("prev_tail", overflow)

    def _fold(self, rnd: _Round) -> None:
        """Copy round ``rnd``'s reply text, less its last ``fold_drop_tokens``, to the end of
        the previous text, K/V reused; the head fills first, then the tail.

        The published code moves ``[start + len(prompt), im_end - assistant_end_bias]``
        (inclusive) before the previous text's ``<|im_end|>``::

            <|im_start|>assistant\\n  The  ball  goes  in   ...  <|im_end|>
                                    [--- folded ----]  dropped
        """
        cfg = self.config
        cached = self.cache.length(rnd.reply) - rnd.reply_start
        count = min(max(rnd.reply_tokens - cfg.fold_drop_tokens, 0), cached)
        first, stop = rnd.reply_start, rnd.reply_start + count
        room = max(cfg.prev_sink_tokens - self.cache.length("prev_head"), 0)
        into_head = min(room, count)
        for target, start, end in (
            ("prev_head", first, first + into_head),
            ("prev_tail", first + into_head, stop),
        ):
            if end > start:
                src = TokenRange(rnd.reply, start, end)
                at = self._next_position(target)
                self.cache.copy_tokens(src, target, text_positions(end - start, at))
                copied = self._ids[rnd.reply][start:end]
                self._ids[target] = np.concatenate([self._ids[target], copied])

    # -- a new round -----------------------------------------------------------------------

    def _add_round(self, i: int, tokens: RoundTokens, t_step: int) -> list[TokenRange]:
        cfg = self.config
        leave = {
            "user": i + cfg.kept_rounds,
            "time": i + cfg.text_rounds,
            "vision": i + cfg.vision_seconds,
            "query": i + cfg.kept_rounds,
            "reply": i + cfg.text_rounds,
        }
        groups: list[list[str]] = []
        for piece in PIECES:
            if groups and leave[groups[-1][-1]] == leave[piece]:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        segment_of: dict[str, str] = {}
        drops: dict[str, int] = {}
        for group in groups:
            name = f"r{i}." + "+".join(group)
            self._add_segment(name)
            drops[name] = leave[group[0]]
            segment_of.update(dict.fromkeys(group, name))
        # the published input drops the round's "\n" when the kept sequence ends in one: when
        # the last reply has just left (text_rounds = 1), or at the first round
        newline = bool(tokens.newline and self._rounds and self._rounds[-1].reply in self._ids)
        ranges = []
        first = segment_of["user"]
        if newline:
            ranges.append(self._append_text(first, tokens.newline))
        text = {"user": tokens.user, "time": tokens.time, "query": tokens.query}
        for piece in PIECES[:-1]:
            if piece == "vision":
                ranges.append(self._append_vision(segment_of[piece], tokens, t_step))
            else:
                ranges.append(self._append_text(segment_of[piece], text[piece]))
        reply = segment_of["reply"]
        ranges.append(self._append_text(reply, tokens.prompt))
        self._rounds.append(
            _Round(
                index=i,
                drops=drops,
                reply=reply,
                reply_start=self.cache.length(reply),
                newline=first if newline else None,
                newline_tokens=len(tokens.newline) if newline else 0,
            )
        )
        return ranges

    def _append_vision(self, name: str, tokens: RoundTokens, t_step: int) -> TokenRange:
        """The vision piece: its markers as text, the pads as a (t, h, w) block between."""
        if tokens.grid is None:
            return self._append_text(name, tokens.vision)
        t, h, w = tokens.grid
        if len(tokens.vision) != t * h * w + 2:
            raise ValueError(
                f"vision holds {len(tokens.vision)} ids; a {tokens.grid} grid takes "
                f"{t * h * w} pads between two markers"
            )
        at = self._next_position(name)
        block = vision_positions(tokens.grid, t_step) + at + 1
        end = int(block.max()) + 1
        rel = np.concatenate([text_positions(1, at), block, text_positions(1, end)])
        return self._append(name, tokens.vision, rel)

    # -- segments and their ids ------------------------------------------------------------

    def _next_position(self, name: str) -> int:
        rel = self.cache.rel_positions(name)
        return int(rel.max()) + 1 if len(rel) else 0

    def _add_segment(self, name: str) -> None:
        self.cache.add_segment(name)
        self._ids[name] = np.zeros(0, np.int64)

    def _append_text(self, name: str, ids: Sequence[int]) -> TokenRange:
        return self._append(name, ids, text_positions(len(ids), self._next_position(name)))

    def _append(self, name: str, ids: Sequence[int], rel_pos: np.ndarray) -> TokenRange:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        assert len(ids) == len(rel_pos), (len(ids), len(rel_pos))
        written = self.cache.append(name, rel_pos)
        self._ids[name] = np.concatenate([self._ids[name], ids])
        return written

    def _evict_front(self, name: str, count: int) -> None:
        self.cache.evict_front(name, count)
        self._ids[name] = self._ids[name][count:]

    def _drop(self, name: str) -> None:
        self.cache.drop(name)
        del self._ids[name]

    def _rebase(self) -> None:
        self.cache.layout_contiguous(self.cache.segment_names, axes=(0, 1, 2))
