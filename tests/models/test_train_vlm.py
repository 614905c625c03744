"""The toy-world VLM training script: its token layout is the pipeline's, and a smoke run
trains, saves a folder the project's loader reads, and records its metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framestream.models.qwen_vl import load_qwen_vl
from framestream.models.qwen_vl_tiny import TOY_VIDEO_PIXELS, load_toy_qwen_vl, tiny_qwen_vl
from framestream.models.toyworld import Feed, render
from framestream.models.toyworld.train_vlm import (
    DEFAULT_INSTRUCTION,
    SecondCache,
    Segment,
    build_window,
    layout,
    main,
    prefix_text,
    score,
)
from framestream.models.toyworld.vlm_layout import TokenLayout
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline
from framestream.stream.requests import UnderstandingRequest


@pytest.fixture(scope="module")
def model():
    return tiny_qwen_vl()


@pytest.mark.parametrize("question", ["", "what colour is the circle?"])
def test_layout_matches_pipeline(model, question):
    """Prefix, a first round, its reply and a later round (asking ``question`` as a client
    does): the ids the pipeline embeds, in order, equal the training layout with the same
    reply and the question in the later round."""
    pipe = StreamingVLMPipeline(model, KVCacheManager(), 64 << 20)
    seen: list[int] = []
    embed = model.embed

    def recording(input_ids, *args, **kwargs):
        seen.extend(input_ids.tolist())
        return embed(input_ids, *args, **kwargs)

    model.embed = recording
    try:
        state = pipe.open(UnderstandingRequest())
        feed = Feed(1, (64, 64), 2.0)
        replies = []
        for second in range(3):  # a second is complete once the next one starts
            for j, frame in enumerate(render(feed.second(second))):
                pipe.push_frame(state, second + j / 2, frame)
        for second in range(2):
            assert pipe.ready(state)
            if second == 1 and question:
                pipe.ask(state, question)
            pipe.prefill(state)
            while state.decoding:
                pipe.decode([state])
            replies.append(list(state.reply))
        grid = model.video_inputs(list(render(feed.second(0)))).merged_grid
    finally:
        del model.embed
    before, after = prefix_text()
    tl = TokenLayout.from_model(model)
    segs = [Segment.text(tl.tokens(before) + tl.tokens(after))]
    for second, reply in enumerate(replies):
        extra = DEFAULT_INSTRUCTION if second == 0 else question
        segs += tl.round(second, second == 0, extra, grid)
        segs.append(Segment.text(reply + [model.special.im_end]))
    ours = [i for s in segs for i in s.ids]
    # the pipeline has not embedded the last reply's <|im_end|> (it joins the next prefill),
    # and a cut reply's last token is in the same pending tail
    pending = len(state.pending)
    assert seen == ours[: len(ours) - pending]


def test_window_positions_contiguous(model):
    cache = SecondCache(model, torch.device("cpu"))
    window = build_window(model, cache, seed=2, start=3, seconds=2, previous="a red circle")
    pos = window.pos
    assert pos.shape == (len(window.ids), 3)
    vp = model.special.video_pad
    is_video = np.array(window.ids) == vp
    text = pos[~is_video]
    assert (text[:, 0] == text[:, 1]).all() and (text[:, 1] == text[:, 2]).all()
    # a 2x2 block at (c, c + row, c + col); the next text token at c + 2
    first = int(np.argmax(is_video))
    c = pos[first - 1, 0] + 1
    block = pos[first : first + 4]
    assert block.tolist() == [[c, c, c], [c, c, c + 1], [c, c + 1, c], [c, c + 1, c + 1]]
    assert pos[first + 4, 0] == c + 2
    # labels: each second's reply ends with <|im_end|>, labelled
    labelled = [i for i, b in zip(window.ids, window.labels, strict=True) if b]
    assert 1 <= labelled.count(model.special.im_end) <= 2  # a cut reply has no labelled end
    assert layout([]).shape == (0, 3)


def test_memoised_window_equals_segment_layout(model):
    """``TokenLayout.window`` (memoised parts) equals laying out its segments directly, and a
    second call (from the memo) equals the first."""
    tl = TokenLayout.from_model(model)
    captions = ["the red circle moves right", "", "a blue square appears and " * 5]
    for instruction, previous in ((DEFAULT_INSTRUCTION, ""), (None, "the red circle is still")):
        segs = tl.prefix(previous)
        for j, caption in enumerate(captions):
            first = j == 0 and instruction is not None
            segs += tl.round(5 + j, first, instruction if first else "", (1, 2, 2))
            segs.append(tl.reply(caption))
        for _ in range(2):
            ids, pos, labels = tl.window(captions, 5, (1, 2, 2), instruction, previous)
            assert ids.tolist() == [i for s in segs for i in s.ids]
            assert (pos == layout(segs)).all() and pos.dtype == np.int32
            assert labels.tolist() == [b for s in segs for b in s.labels]
    # the long caption is cut at 20 tokens and its <|im_end|> is not labelled
    assert labels[-1] == False  # noqa: E712 (numpy bool)


def test_score():
    s = score(["a red circle appears", ""], ["a red circle appears", "the blue square is still"])
    assert s["pair_precision"] == 1.0 and s["pair_recall"] == 0.5
    assert s["exact_match"] == 0.5 and s["silence_agreement"] == 0.5


@pytest.mark.slow
def test_smoke_run(tmp_path):
    info = main(["--smoke", "--out", str(tmp_path), "--seed", "3"])
    losses = info["losses"]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < losses[0]
    assert info["batched_vision_rel_err"] < 1e-5 and info["reload_max_logit_diff"] == 0.0
    loaded = load_qwen_vl(
        tmp_path,
        torch.float32,
        "cpu",
        video_min_pixels=TOY_VIDEO_PIXELS,
        video_max_pixels=TOY_VIDEO_PIXELS,
    )
    assert loaded.args.num_layers == 4
    assert loaded.image_processor.size["shortest_edge"] == TOY_VIDEO_PIXELS
    toy = load_toy_qwen_vl(tmp_path)
    assert (toy.video_min_pixels, toy.video_max_pixels) == (TOY_VIDEO_PIXELS, TOY_VIDEO_PIXELS)
    frames = list(render(Feed(10_000, (64, 64), 2.0).second(0)))
    assert toy.video_inputs(frames).merged_grid == (1, 4, 4)  # 16 tokens a second
    assert loaded.video_inputs(frames).merged_grid == (1, 4, 4)
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["steps"] == len(losses) == len(record["losses"]) * record["curve_every"]
    assert record["model_config"]["text_config"]["num_hidden_layers"] == 4
    assert record["command"].startswith("python -m framestream.models.toyworld.train_vlm --smoke")
    assert record["seed"] == 3 and record["args"]["feeds"] == 4
    assert record["load"] == {
        "video_min_pixels": TOY_VIDEO_PIXELS,
        "video_max_pixels": TOY_VIDEO_PIXELS,
    }
    for key in ("pair_f1", "color_f1", "shape_acc", "kind_acc", "event_f1"):
        assert 0.0 <= record["eval"][key] <= 1.0 and key in record["eval_chance"]
    assert len(record["eval_runs"][0]["predicted"]) == 4
