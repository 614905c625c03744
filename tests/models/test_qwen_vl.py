"""Our Qwen2.5-VL decoder against transformers' own forward (tiny config, CPU, float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framestream.models.attention import DenseAttention
from framestream.models.qwen_vl import QwenVL, load_qwen_vl
from framestream.models.qwen_vl_tiny import tiny_qwen_vl
from framestream.stream.kvcache import (
    BlockPool,
    CacheGeometry,
    CacheView,
    SessionCache,
    StreamingVLMConfig,
    StreamingVLMWindow,
    build_step,
    text_positions,
    vision_positions,
)
from framestream.stream.kvcache.vlm_window import RoundTokens

ATOL = 2e-5  # float32, logits are O(1)


@pytest.fixture(scope="module")
def tiny() -> QwenVL:
    return tiny_qwen_vl(seed=0)


def _frames(seed: int, size: tuple[int, int] = (56, 84), count: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def _ids(tiny: QwenVL, text: str) -> list[int]:
    return tiny.tokenizer(text, add_special_tokens=False)["input_ids"]


def _round(tiny: QwenVL, seed: int = 0, size=(56, 84), prev: str = "a red circle moves left"):
    """Token pieces of a first StreamingVLM round: (system, prev, prev_end, user, reply) + video."""
    video = tiny.video_inputs(_frames(seed, size))
    pads = "<|video_pad|>" * int(np.prod(video.merged_grid))
    pieces = (
        _ids(tiny, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"),
        _ids(tiny, "<|im_start|>previous text\n" + prev),
        _ids(tiny, "<|im_end|>\n"),
        _ids(tiny, "<|im_start|>user\nTime=0.0-1.0s<|vision_start|>"),
        _ids(tiny, pads),
        _ids(tiny, "<|vision_end|>Commentate on this video<|im_end|>\n<|im_start|>assistant\n"),
    )
    return pieces, video


def _hf_logits(tiny: QwenVL, ids: list[int], video) -> torch.Tensor:
    """transformers' own forward over the whole sequence: logits ``[N, vocab]``."""
    input_ids = torch.tensor([ids])
    out = tiny.hf(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values_videos=video.pixel_values_videos,
        video_grid_thw=video.video_grid_thw,
        # transformers 5.x needs the modality types to place M-RoPE; without them it silently
        # falls back to 1D positions.
        mm_token_type_ids=(input_ids == tiny.special.video_pad).int() * 2,
    )
    return out.logits[0]


def _hf_positions(tiny: QwenVL, ids: list[int], grid: torch.Tensor) -> np.ndarray:
    input_ids = torch.tensor([ids])
    types = (input_ids == tiny.special.video_pad).int() * 2
    pos, _ = tiny.hf.model.get_rope_index(input_ids, types, video_grid_thw=grid)
    return pos[:, 0].T.numpy().astype(np.int32)  # [N, 3]


def test_shares_weights_and_reads_special_ids(tiny: QwenVL) -> None:
    lm = tiny.hf.model.language_model
    assert tiny.decoder.layers[1].self_attn.k_proj.bias is lm.layers[1].self_attn.k_proj.bias
    assert tiny.decoder.lm_head.weight is tiny.hf.lm_head.weight
    assert tiny.decoder.norm.weight is lm.norm.weight
    sp = tiny.special
    assert tiny.config.video_token_id == sp.video_pad
    assert tiny.config.vision_start_token_id == sp.vision_start
    assert tiny.config.text_config.vocab_size == len(tiny.tokenizer)
    text = "<|im_start|>user\nTime=0.0-1.0s<|vision_start|><|video_pad|><|vision_end|>red<|im_end|>"
    ids = _ids(tiny, text)
    assert tiny.tokenizer.decode(ids) == text
    assert tiny.tokenizer.unk_token_id not in ids


def test_video_inputs_match_image_processor_layout(tiny: QwenVL) -> None:
    """Two identical frames form the same temporal patches as the image processor's still
    (a frame needing no resize, so the values agree bit for bit; resized frames are held to a
    tolerance in test_qwen_vision.py)."""
    frame = _frames(3, (56, 84), 1)[0]
    video = tiny.video_inputs([frame, frame])
    still = tiny.image_processor(
        images=[frame],
        size={"shortest_edge": tiny.video_min_pixels, "longest_edge": tiny.video_max_pixels},
        return_tensors="pt",
    )
    assert video.video_grid_thw.tolist() == still["image_grid_thw"].tolist()
    torch.testing.assert_close(video.pixel_values_videos, still["pixel_values"], rtol=0, atol=0)
    t, h, w = video.video_grid_thw[0].tolist()
    assert video.merged_grid == (t, h // 2, w // 2)
    big = tiny.video_inputs(_frames(0, (480, 640)), max_pixels=8 * 28 * 28)
    assert big.video_grid_thw[0, 1] * big.video_grid_thw[0, 2] * 14 * 14 <= 8 * 28 * 28


@pytest.mark.parametrize("size", [(56, 84), (84, 56), (56, 56)])
def test_contiguous_positions_equal_get_rope_index(tiny: QwenVL, size) -> None:
    pieces, video = _round(tiny, size=size)
    ids = [i for p in pieces for i in p]
    before = sum(len(p) for p in pieces[:4])
    after = len(pieces[5])
    _, h, w = video.merged_grid
    ours = np.concatenate(
        [
            text_positions(before),
            vision_positions(video.merged_grid) + before,
            text_positions(after, before + max(h, w)),
        ]
    )
    np.testing.assert_array_equal(ours, _hf_positions(tiny, ids, video.video_grid_thw))


@torch.no_grad()
def test_dense_logits_equal_transformers(tiny: QwenVL) -> None:
    pieces, video = _round(tiny)
    ids = [i for p in pieces for i in p]
    ref = _hf_logits(tiny, ids, video)
    embeds = tiny.embed(torch.tensor(ids), video.pixel_values_videos, video.video_grid_thw)
    pos = torch.from_numpy(_hf_positions(tiny, ids, video.video_grid_thw))
    attention = DenseAttention(pos, (0, len(ids)), tiny.rope, causal=True)
    ours = tiny.decoder.logits(tiny.decoder(embeds, attention))
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)


# -- through the real cache -------------------------------------------------------------------


def _pool(tiny: QwenVL) -> BlockPool:
    a = tiny.args
    geometry = CacheGeometry(a.num_layers, a.num_kv_heads, a.head_dim, torch.float32)
    return BlockPool(geometry, block_size=16, capacity_bytes=10_000 * geometry.bytes_per_token)


class _Session:
    """One StreamingVLM session of the tiny model over a shared pool (test driver)."""

    def __init__(self, tiny: QwenVL, pool: BlockPool, sid: int, seed: int, prev: str) -> None:
        self.tiny = tiny
        config = StreamingVLMConfig(
            text_rounds=2,
            vision_seconds=2,
            prev_sink_tokens=32,
            prev_window_tokens=32,
            max_prefix_tokens=64,
            max_round_text_tokens=64,
            max_vision_tokens=16,
        )
        cache = SessionCache.open(pool, sid, config.worst_case_blocks(pool.block_size))
        self.policy = StreamingVLMWindow(cache, config)
        self.pieces, self.video = _round(tiny, seed=seed, prev=prev)
        self.ids = [i for p in self.pieces for i in p]

    def prefill_plan(self):
        system, prev, prev_end, user, pads, reply = self.pieces
        tokens = RoundTokens(  # "<|im_start|>user\n" "Time=0.0-1.0s" ... "<|im_start|>assistant\n"
            newline=[],
            user=user[:3],
            time=user[3:-1],
            vision=[user[-1], *pads, reply[0]],
            query=reply[1:-3],
            prompt=reply[-3:],
            grid=self.video.merged_grid,
        )
        ranges = self.policy.start(system, prev, prev_end)
        ranges += self.policy.begin_round(tokens)
        assert self.policy.token_ids(ranges) == self.ids
        return self.policy.cache.plan(ranges)

    def decode_plan(self, token: int):
        self.ids.append(token)
        return self.policy.cache.plan([self.policy.append_reply([token])])


def _forward(tiny: QwenVL, pool: BlockPool, plans, embeds: torch.Tensor) -> torch.Tensor:
    step = build_step(plans, causal=True, device="cpu")
    return tiny.decoder.logits(tiny.decoder(embeds, CacheView(pool, step, tiny.rope)))


@torch.no_grad()
def test_cache_prefill_and_greedy_decode_equal_transformers(tiny: QwenVL) -> None:
    pool = _pool(tiny)
    session = _Session(tiny, pool, 0, seed=1, prev="a blue square bounces")
    plan = session.prefill_plan()
    hf_pos = _hf_positions(tiny, session.ids, session.video.video_grid_thw)
    np.testing.assert_array_equal(plan.q_pos, hf_pos)  # the policy's layout == get_rope_index
    video = session.video
    embeds = tiny.embed(torch.tensor(session.ids), video.pixel_values_videos, video.video_grid_thw)
    logits = _forward(tiny, pool, [plan], embeds)
    errors = [float((logits - _hf_logits(tiny, session.ids, video)).abs().max())]
    for _ in range(5):
        token = int(logits[-1].argmax())
        plan = session.decode_plan(token)
        logits = _forward(tiny, pool, [plan], tiny.embed(torch.tensor([token])))
        errors.append(float((logits[-1] - _hf_logits(tiny, session.ids, video)[-1]).abs().max()))
    assert max(errors) < ATOL, errors


@torch.no_grad()
def test_batched_decode_of_8_sessions_equals_each_alone(tiny: QwenVL) -> None:
    words = "a red circle moves left and a green star spins up".split()
    pools = {"batched": _pool(tiny), "alone": _pool(tiny)}
    sessions = {
        mode: [_Session(tiny, pool, i, seed=i, prev=" ".join(words[: i + 1])) for i in range(8)]
        for mode, pool in pools.items()
    }
    last = {}
    for mode, group in sessions.items():
        for i, s in enumerate(group):
            v = s.video
            embeds = tiny.embed(torch.tensor(s.ids), v.pixel_values_videos, v.video_grid_thw)
            last[mode, i] = _forward(tiny, pools[mode], [s.prefill_plan()], embeds)[-1]
    assert len({len(s.ids) for s in sessions["alone"]}) == 8
    for _ in range(3):
        tokens = [int(last["alone", i].argmax()) for i in range(8)]
        plans = [s.decode_plan(t) for s, t in zip(sessions["batched"], tokens, strict=True)]
        batched = _forward(tiny, pools["batched"], plans, tiny.embed(torch.tensor(tokens)))
        for i, (s, t) in enumerate(zip(sessions["alone"], tokens, strict=True)):
            alone = _forward(
                tiny, pools["alone"], [s.decode_plan(t)], tiny.embed(torch.tensor([t]))
            )
            torch.testing.assert_close(batched[i], alone[0], rtol=0, atol=1e-5)
            last["alone", i] = alone[0]


# -- loading ----------------------------------------------------------------------------------


@torch.no_grad()
def test_load_round_trip(tiny: QwenVL, tmp_path) -> None:
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    tiny.image_processor.save_pretrained(tmp_path)
    loaded = load_qwen_vl(
        tmp_path, torch.float32, "cpu", tiny.video_min_pixels, tiny.video_max_pixels
    )
    assert loaded.special == tiny.special
    pieces, video = _round(tiny)
    ids = [i for p in pieces for i in p]
    assert [i for p in _round(loaded)[0] for i in p] == ids
    loaded_video = loaded.video_inputs(_frames(0))
    torch.testing.assert_close(loaded_video.pixel_values_videos, video.pixel_values_videos)
    pos = torch.from_numpy(_hf_positions(tiny, ids, video.video_grid_thw))
    out = []
    for model in (tiny, loaded):
        embeds = model.embed(torch.tensor(ids), video.pixel_values_videos, video.video_grid_thw)
        attention = DenseAttention(pos, (0, len(ids)), model.rope, causal=True)
        out.append(model.decoder.logits(model.decoder(embeds, attention)))
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=0)


def test_load_errors_name_the_path(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_qwen_vl(missing)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=f"{tmp_path}.*'llama'"):
        load_qwen_vl(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        load_qwen_vl(empty)
