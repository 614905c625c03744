"""stream/kvcache/vlm_window.py: StreamingVLM's cache keeps what the published bookkeeping keeps.

Pinned here without the published code (``evals/fidelity/streaming_vlm.py`` runs it against the
published ``process_past_kv``):

(a) a reply folded into the previous text leaves out its last ``fold_drop_tokens`` tokens (the
    " ..." marker: one token on Qwen2.5), whatever they are;
(b) the "\\n" between an evicted reply's ``<|im_end|>`` and the next ``<|im_start|>user`` leaves
    with it, so everything after moves one position down;
(c) the previous text keeps its first ``prev_sink_tokens`` and last ``prev_window_tokens - 1``.

Every written token's K row carries its id, so the tests also read back which K/V the cache
really holds (a fold copies rows).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.stream.kvcache import CacheGeometry, KVCacheManager, TokenRange
from framestream.stream.kvcache.vlm_window import (
    RoundTokens,
    StreamingVLMConfig,
    StreamingVLMWindow,
)

GEOMETRY = CacheGeometry(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)
NL, IM_START, IM_END, USER, ASSISTANT, V_START, V_END, PAD, DOTS = range(1, 10)
SYSTEM, END = [60, 61, 62], [IM_END, NL]


def open_window(block_size: int = 4, **config) -> StreamingVLMWindow:
    m = KVCacheManager()
    m.add_pool(GEOMETRY, block_size, 64 << 20)
    return m.open(GEOMETRY, StreamingVLMConfig(**config))


def round_tokens(j: int, query: list[int] | None = None, grid=(1, 1, 2)) -> RoundTokens:
    pads = [PAD] * int(np.prod(grid))
    return RoundTokens(
        newline=[NL],
        user=[IM_START, USER, NL],
        time=[1000 + j],
        vision=[V_START, *pads, V_END],
        query=[*(query or []), IM_END, NL],
        prompt=[IM_START, ASSISTANT, NL],
        grid=grid,
    )


def write(window: StreamingVLMWindow, ranges: list[TokenRange]) -> None:
    """Tag each written token's K row with its id, as a forward would write its K."""
    if not ranges:
        return
    slots = np.concatenate([window.cache.slots(r.segment)[r.start : r.stop] for r in ranges])
    ids = torch.tensor(window.token_ids(ranges), dtype=torch.float32)
    window.cache.pool.layer_kv(0)[0][torch.from_numpy(slots).long(), 0, 0] = ids


def kept_kv(window: StreamingVLMWindow) -> list[int]:
    """The K rows the cache holds, in order (the ids written into them)."""
    cache = window.cache
    slots = np.concatenate([cache.slots(n) for n in cache.segment_names]).astype(np.int64)
    return [int(x) for x in cache.pool.layer_kv(0)[0][torch.from_numpy(slots), 0, 0]]


class Stream:
    """Drives a window as the pipeline does: a round, its reply fed token by token, the reply's
    end (its ``<|im_end|>``, after a cut reply's last token) joining the next round."""

    def __init__(self, window: StreamingVLMWindow, previous: list[int]) -> None:
        self.window = window
        write(window, window.start(SYSTEM, previous, END))
        self.close: list[int] = []
        self.round = 0

    def step(self, reply: list[int], cut: bool = False, query=None) -> list[TokenRange]:
        """One round; ``reply`` is what is sampled, ``<|im_end|>`` included unless ``cut``."""
        ranges = self.window.begin_round(round_tokens(self.round, query), self.close)
        write(self.window, ranges)
        if reply[:-1]:
            write(self.window, [self.window.append_reply(reply[:-1])])
        self.close = [*reply[-1:], IM_END] if cut else reply[-1:]
        self.round += 1
        return ranges


def contiguous_positions(ids: list[int], grids: list[tuple[int, int, int]]) -> np.ndarray:
    """Qwen2.5-VL's rope index over a token list (text +1; a video block at the position after
    the text before it, (c + t, c + row, c + col); the next text at its max + 1)."""
    out, cursor, i, blocks = [], 0, 0, iter(grids)
    while i < len(ids):
        if ids[i] != PAD:
            out.append((cursor,) * 3)
            cursor, i = cursor + 1, i + 1
            continue
        t, h, w = next(blocks)
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        block = np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=1) + cursor
        out += [tuple(p) for p in block]
        cursor, i = int(block.max()) + 1, i + t * h * w
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def prefix_length(window: StreamingVLMWindow) -> int:
    """Tokens before the first round: system, previous text, its end."""
    cache = window.cache
    return sum(cache.length(n) for n in ("system", "prev_head", "prev_tail", "prev_end"))


def round_ids(j: int, newline: bool, reply: list[int] | None, query=()) -> list[int]:
    ids = [NL] if newline else []
    ids += [IM_START, USER, NL, 1000 + j, V_START, PAD, PAD, V_END, *query, IM_END, NL]
    ids += [IM_START, ASSISTANT, NL]
    return ids + (reply or [])


# -- the published layout, token by token ------------------------------------------------------


def test_kept_sequence_and_positions_after_evictions() -> None:
    """T = W = 2, previous text 2 + (3 - 1): round 0 leaves at round 2, folded without its
    " ...", and the "\\n" before round 1 leaves with it."""
    s = Stream(
        open_window(text_rounds=2, vision_seconds=2, prev_sink_tokens=2, prev_window_tokens=3),
        [50, 51, 52],
    )
    s.step([100, 101, DOTS, IM_END], query=[70])
    s.step([110, 111, DOTS, IM_END])
    s.step([120, DOTS, IM_END])
    expected = [
        *SYSTEM,
        *[50, 51],  # prev head
        *[100, 101],  # prev tail: the last 2 of 50 51 52 100 101 (round 0 folded, no " ...")
        *END,
        *round_ids(1, newline=False, reply=[110, 111, DOTS, IM_END]),  # its "\n" left
        *round_ids(2, newline=True, reply=[120, DOTS]),  # <|im_end|> joins the next round
    ]
    ids, positions = s.window.retained()
    assert ids.tolist() == expected
    assert kept_kv(s.window) == expected  # the fold copied the right K/V rows
    np.testing.assert_array_equal(positions, contiguous_positions(expected, [(1, 1, 2)] * 2))
    assert s.window.rounds == [1, 2]


def test_a_round_begins_with_the_newline_only_while_the_last_reply_is_kept() -> None:
    s = Stream(open_window(text_rounds=3, vision_seconds=3), [])
    first = s.step([100, DOTS, IM_END])
    assert s.window.token_ids(first)[:3] == [IM_START, USER, NL]  # round 0: no "\n"
    second = s.step([110, DOTS, IM_END])
    assert s.window.token_ids(second)[:4] == [IM_END, NL, IM_START, USER]  # close, then "\n"


# -- (a) the fold leaves the reply's last token out ---------------------------------------------


@pytest.mark.parametrize(
    ("reply", "cut", "folded"),
    [
        ([100, 101, 102, DOTS, IM_END], False, [100, 101, 102]),  # " ..." stays out
        ([DOTS, IM_END], False, []),  # a silent second folds nothing
        ([IM_END], False, []),
        (list(range(100, 120)), True, list(range(100, 119))),  # cut: its last token stays out
    ],
)
def test_fold_leaves_out_the_reply_s_last_token(reply, cut, folded) -> None:
    s = Stream(open_window(text_rounds=1, vision_seconds=1, prev_sink_tokens=4), [50])
    s.step(reply, cut=cut)
    s.step([DOTS, IM_END])  # round 0's text leaves: its reply is folded
    head = s.window.cache.length("prev_head")
    prev = s.window.retained()[0][
        len(SYSTEM) : len(SYSTEM) + head + s.window.cache.length("prev_tail")
    ]
    assert prev.tolist() == [50, *folded][: 4 + 511]
    kv = kept_kv(s.window)[len(SYSTEM) : len(SYSTEM) + len(prev)]
    assert kv == prev.tolist()


def test_fold_drop_tokens_follows_the_tokenizer() -> None:
    """A tokenizer that spells " ..." in three tokens (the toy world's) drops three."""
    s = Stream(open_window(text_rounds=2, vision_seconds=2, fold_drop_tokens=3), [])
    s.step([100, 101, 7, 8, 8, IM_END])
    s.step([DOTS, IM_END])
    s.step([DOTS, IM_END])
    assert s.window.cache.length("prev_head") == 2
    assert s.window.retained()[0][len(SYSTEM) : len(SYSTEM) + 2].tolist() == [100, 101]


# -- (b) the "\n" after an evicted reply leaves with it -----------------------------------------


def test_the_newline_after_an_evicted_reply_goes_and_positions_close_up() -> None:
    s = Stream(open_window(text_rounds=2, vision_seconds=2), [])
    for j in range(6):
        s.step([100 + j, DOTS, IM_END])
    ids, positions = s.window.retained()
    after_prefix = ids[prefix_length(s.window) :].tolist()
    assert after_prefix[:2] == [IM_START, USER]  # no "\n" after the previous text's <|im_end|>
    assert after_prefix.count(NL) == 3 * 2 + 1  # user\n, <|im_end|>\n, assistant\n x2, one join
    # contiguous over what is kept: the first round starts right after the previous text
    np.testing.assert_array_equal(positions, contiguous_positions(ids.tolist(), [(1, 1, 2)] * 2))


def test_one_text_round_never_caches_the_last_reply_s_end() -> None:
    """``text_rounds = 1``: a reply leaves as the next round begins, so its <|im_end|> is never
    cached, and the next round starts with no "\\n" (the published special case)."""
    s = Stream(open_window(text_rounds=1, vision_seconds=2, prev_sink_tokens=8), [])
    s.step([100, DOTS, IM_END])
    ranges = s.step([110, DOTS, IM_END])
    assert s.window.token_ids(ranges)[:2] == [IM_START, USER]  # no <|im_end|>, no "\n"
    ids = s.window.retained()[0].tolist()
    # round 0: its user turn stays (vision window 2) without its time; its reply is folded
    assert ids[len(SYSTEM) : len(SYSTEM) + 1] == [100]
    assert ids.count(1000) == 0 and ids.count(1001) == 1


# -- (c) the previous text keeps sink + window - 1 ----------------------------------------------


def test_previous_text_keeps_its_sink_and_window_minus_one() -> None:
    config = StreamingVLMConfig(prev_sink_tokens=4, prev_window_tokens=6)
    assert config.cut_previous(range(100)) == [0, 1, 2, 3, *range(95, 100)]
    assert config.cut_previous(range(9)) == list(range(9))
    with pytest.raises(ValueError, match="cut_previous"):
        open_window(prev_sink_tokens=4, prev_window_tokens=6).start(SYSTEM, list(range(10)), END)
    s = Stream(
        open_window(text_rounds=2, vision_seconds=2, prev_sink_tokens=4, prev_window_tokens=6),
        list(range(200, 209)),
    )
    folded: list[int] = []
    for j in range(12):
        s.step([300 + 10 * j, 301 + 10 * j, DOTS, IM_END])
        if j >= 2:
            folded += [300 + 10 * (j - 2), 301 + 10 * (j - 2)]
        assert s.window.cache.length("prev_head") == 4
        tail = s.window.retained()[0][len(SYSTEM) + 4 : len(SYSTEM) + 4 + 5].tolist()
        assert tail == [*range(204, 209), *folded][-5:]  # 5 = prev_window_tokens - 1
        assert s.window.cache.length("prev_tail") == 5


# -- windows of different lengths ----------------------------------------------------------------


def test_a_shorter_vision_window_drops_the_vision_block_alone() -> None:
    s = Stream(open_window(text_rounds=4, vision_seconds=2), [])
    for j in range(6):
        s.step([100 + j, DOTS, IM_END])
    ids = s.window.retained()[0].tolist()
    assert s.window.rounds == [2, 3, 4, 5]
    assert ids.count(V_START) == 2  # rounds 4 and 5
    start = prefix_length(s.window)  # round 2, text only, its "\n" gone
    assert ids[start : start + 7] == [IM_START, USER, NL, 1002, IM_END, NL, IM_START]


def test_a_longer_vision_window_keeps_the_user_turn_without_its_time() -> None:
    s = Stream(open_window(text_rounds=2, vision_seconds=4), [])
    for j in range(6):
        s.step([100 + j, DOTS, IM_END], query=[70] if j == 0 else None)
    ids = s.window.retained()[0].tolist()
    assert s.window.rounds == [2, 3, 4, 5]
    start = prefix_length(s.window)
    text_gone = [IM_START, USER, NL, V_START, PAD, PAD, V_END, IM_END, NL]
    assert ids[start : start + 18] == [*text_gone[:3], *text_gone[3:], *text_gone]
    assert 1002 not in ids and 1003 not in ids and 1004 in ids


@pytest.mark.parametrize(("text_rounds", "vision_seconds"), [(16, 16), (6, 2), (2, 6), (1, 3)])
def test_600_rounds_stay_bounded_and_contiguous(text_rounds, vision_seconds) -> None:
    config = dict(
        text_rounds=text_rounds,
        vision_seconds=vision_seconds,
        prev_sink_tokens=8,
        prev_window_tokens=8,
        max_prefix_tokens=8,
        max_round_text_tokens=24,
        max_vision_tokens=2,
    )
    window = open_window(block_size=4, **config)
    s = Stream(window, list(range(200, 212)))
    bound = StreamingVLMConfig(**config).worst_case_blocks(4)
    rng = np.random.default_rng(0)
    for j in range(600):
        words = rng.integers(300, 900, j % 5).tolist()
        cut = j % 7 == 3
        s.step(words + [DOTS] if cut else [*words, DOTS, IM_END], cut=cut)
        ids, positions = window.retained()
        assert kept_kv(window) == ids.tolist()
        assert window.rounds == list(range(max(0, j - max(text_rounds, vision_seconds) + 1), j + 1))
        assert window.cache.pool.stats().used_blocks <= bound
        grids = [(1, 1, 2)] * ids.tolist().count(V_START)
        expected = contiguous_positions(ids.tolist(), grids)
        np.testing.assert_array_equal(positions, expected)
    assert len(ids) < 400  # bounded, not growing with the stream
