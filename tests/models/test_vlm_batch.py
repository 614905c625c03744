"""Training batches of the toy-world VLM compute what inference computes: the pool's pixels are
``video_inputs``'s, the batched vision tower is transformers' tower, padded causal attention is
the packed dense attention, and the batch loss is the packed reference loss."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from framestream.models.attention import DenseAttention
from framestream.models.qwen_vl_tiny import TOY_VIDEO_PIXELS, tiny_qwen_vl, toy_qwen_vl
from framestream.models.toyworld import COLORS, Feed
from framestream.models.toyworld.vlm_batch import (
    BatchedVision,
    PaddedCausalAttention,
    SecondPool,
    WindowSampler,
    batch_loss,
    check_batched_vision,
)
from framestream.models.toyworld.vlm_layout import (
    FPS,
    FRAME_SIZE,
    SecondCache,
    TokenLayout,
    build_window,
)


@pytest.fixture(scope="module")
def toy():
    return toy_qwen_vl(seed=0)


@pytest.fixture(scope="module")
def pool(toy):
    return SecondPool.render(toy, feeds=3, horizon=10, workers=2)


def test_toy_model_size(toy):
    params = sum(p.numel() for p in toy.hf.parameters())
    assert 1_000_000 < params < 2_000_000  # float32 safetensors under 8 MB
    assert (toy.video_min_pixels, toy.video_max_pixels) == (TOY_VIDEO_PIXELS, TOY_VIDEO_PIXELS)
    video = toy.video_inputs([np.zeros((64, 64, 3), np.uint8)] * 2)
    assert video.video_grid_thw.tolist() == [[1, 8, 8]] and video.merged_grid == (1, 4, 4)


def test_pool_matches_video_inputs(toy, pool):
    assert pool.frames.dtype == torch.uint8 and pool.frames.shape[0] == 30
    assert pool.grid == (1, 8, 8) and pool.merged == (1, 4, 4)
    cache = SecondCache(toy, torch.device("cpu"))
    rows = torch.tensor([pool.row(1, 7), pool.row(0, 0), pool.row(2, 9)])
    ours = pool.pixels(rows)
    ref = torch.cat([cache.get(1, 7)[0], cache.get(0, 0)[0], cache.get(2, 9)[0]])
    assert ours.shape == ref.shape == (3 * 64, 3 * 2 * 14 * 14)
    # The pool resizes 64x64 -> 112x112 with PIL, video_inputs with torch on the device: a
    # few values land one uint8 level apart (models.qwen_vision.VideoPreprocessor).
    level = 1 / 255 / min(toy.image_processor.image_std)
    differ = (ours - ref).abs() > 1e-5
    assert float((ours - ref).abs().max()) <= level + 1e-5
    assert float(differ.float().mean()) < 0.005
    feed = Feed(2, FRAME_SIZE, float(FPS))
    assert pool.captions[2] == [feed.caption(k).text for k in range(10)]


@pytest.mark.parametrize(
    "which, grid", [("toy", (1, 8, 8)), ("tiny", (1, 8, 8)), ("tiny", (1, 4, 4))]
)
def test_batched_vision_matches_transformers(toy, which, grid):
    """One window per frame (toy) and four windows per frame (tiny at 112 px)."""
    model = toy if which == "toy" else tiny_qwen_vl(seed=1)
    torch.manual_seed(0)
    pixels = torch.randn(3 * grid[1] * grid[2], 3 * 2 * 14 * 14)
    vision = BatchedVision(model, grid)
    assert check_batched_vision(model, vision, pixels) < 1e-5
    features = vision(pixels)
    assert features.shape == (3 * grid[1] * grid[2] // 4, model.args.hidden_size)


def test_batched_vision_check_raises(toy):
    vision = BatchedVision(toy, (1, 8, 8))
    vision.reverse = vision.reverse.flip(0)  # features in the wrong order
    with pytest.raises(RuntimeError, match="disagrees"):
        check_batched_vision(toy, vision, torch.randn(64, 1176))


def test_padded_attention_matches_dense(toy):
    """Two rows of different lengths padded at the end: every real token's output equals the
    packed causal attention of its own window (GQA: 4 query heads over 2 kv heads)."""
    torch.manual_seed(0)
    lengths, length = (37, 50), 64
    heads, kv_heads, d = toy.args.num_heads, toy.args.num_kv_heads, toy.args.head_dim
    pos = torch.zeros(2, length, 3, dtype=torch.int32)
    for b, n in enumerate(lengths):
        pos[b, :n] = torch.randint(0, 300, (n, 3)).sort(0).values.int()
    q = torch.randn(2 * length, heads, d)
    k, v = torch.randn(2 * length, kv_heads, d), torch.randn(2 * length, kv_heads, d)
    ours = PaddedCausalAttention(pos, toy.rope).attend(0, q, k, v).view(2, length, heads, d)
    real = torch.cat([torch.arange(n) + b * length for b, n in enumerate(lengths)])
    dense = DenseAttention(
        pos.view(-1, 3)[real], (0, lengths[0], sum(lengths)), toy.rope, causal=True
    )
    ref = dense.attend(0, q[real], k[real], v[real])
    got = torch.cat([ours[b, :n] for b, n in enumerate(lengths)])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_sampler_batch_is_consistent(toy, pool):
    layout = TokenLayout.from_model(toy)
    sampler = WindowSampler(layout, pool.captions, pool.merged, 3, 4, 0, toy.special.endoftext)
    rng, replay = random.Random(5), random.Random(5)
    batch = sampler.sample(rng)
    picks = [sampler.pick(replay) for _ in range(3)]
    ids, pos = batch.ids.numpy(), batch.pos.numpy()
    assert ids.shape[1] % 64 == 0 and batch.rows.tolist() == [
        pool.row(p.feed, p.start + j) for p in picks for j in range(4)
    ]
    labelled = np.zeros(ids.size, bool)
    for b, p in enumerate(picks):
        w_ids, w_pos, w_labels = layout.window(
            pool.captions[p.feed][p.start : p.start + 4],
            p.clock,
            pool.merged,
            p.instruction,
            p.previous,
        )
        n = len(w_ids)
        assert (ids[b, :n] == w_ids).all() and (pos[b, :n] == w_pos).all()
        assert (ids[b, n:] == toy.special.endoftext).all() and (pos[b, n:] == 0).all()
        labelled[b * ids.shape[1] : b * ids.shape[1] + n] = w_labels
    assert (batch.label_index.numpy() + 1 == np.flatnonzero(labelled)).all()
    assert (batch.targets.numpy() == ids.reshape(-1)[np.flatnonzero(labelled)]).all()
    assert len(batch.video_index) == 3 * 4 * 16
    assert (ids.reshape(-1)[batch.video_index.numpy()] == toy.special.video_pad).all()


def test_batch_loss_matches_packed_reference(toy, pool):
    """The training loss equals cross-entropy through ``QwenVL.embed`` (transformers' vision
    tower on ``video_inputs`` pixels) and packed dense causal attention."""
    layout = TokenLayout.from_model(toy)
    sampler = WindowSampler(layout, pool.captions, pool.merged, 3, 3, 1, toy.special.endoftext)
    batch = sampler.sample(random.Random(2))
    replay = random.Random(2)
    picks = [sampler.pick(replay) for _ in range(3)]
    loss, aux = batch_loss(toy, BatchedVision(toy, pool.grid), pool, batch)
    assert aux is None

    cache = SecondCache(toy, torch.device("cpu"))
    windows = []
    for p in picks:
        window = build_window(toy, cache, p.feed, p.start, 3, p.instruction, p.previous)
        if p.clock != p.start:  # the same seconds read at a later clock
            captions = [cache.get(p.feed, p.start + j)[2] for j in range(3)]
            ids, pos, labels = layout.window(
                captions, p.clock, pool.merged, p.instruction, p.previous
            )
            window.ids, window.pos, window.labels = ids.tolist(), pos, labels.tolist()
        windows.append(window)
    assert any(p.clock > p.start for p in picks)
    ids = torch.tensor([i for w in windows for i in w.ids])
    pos = torch.from_numpy(np.concatenate([w.pos for w in windows]))
    labels = torch.tensor([b for w in windows for b in w.labels])
    indptr = tuple(np.cumsum([0] + [len(w.ids) for w in windows]).tolist())
    pixels = torch.cat([p for w in windows for p in w.pixels])
    embeds = toy.embed(ids, pixels, torch.cat([g for w in windows for g in w.grids]))
    hidden = toy.decoder(embeds, DenseAttention(pos, indptr, toy.rope, causal=True))
    target = labels[1:]
    ref = F.cross_entropy(toy.decoder.logits(hidden[:-1][target]).float(), ids[1:][target])
    assert len(batch.targets) == int(target.sum())
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def test_cell_labels_mark_the_sprite():
    """A still red square in the top-left cell and a blue circle moving left in the third cell
    of the bottom row: each labelled where it covers enough pixels, nothing elsewhere."""
    from framestream.models.toyworld import Clip, Sprite, render
    from framestream.models.toyworld.vlm_batch import _cell_labels

    square = Sprite("square", "red", 6.0, (7.5, 7.5))
    circle = Sprite("circle", "blue", 7.0, (55.5, 40.0), velocity=(0.0, -4.0))
    clip = Clip("black", (square, circle), (64, 64), 2.0, 2, 0)
    labels = _cell_labels(clip, render(clip), 4).reshape(3, 4, 4)
    color, shape, motion = labels
    assert color[0, 0] == 1 + list(COLORS).index("red") and shape[0, 0] == 1 + 1  # square
    assert motion[0, 0] == 1  # still
    blue = 1 + list(COLORS).index("blue")
    assert color[3, 2] == blue and shape[3, 2] == 1 and motion[3, 2] == 2  # circle, left
    assert color.astype(bool).sum() == 2 and (color.astype(bool) == shape.astype(bool)).all()


def test_aux_loss_reads_the_pool_labels(toy, pool):
    """The auxiliary loss is the cross-entropy of the head's per-token logits against the
    pool's labels, averaged over (colour, shape, motion)."""
    from framestream.models.toyworld.vlm_batch import AUX_CLASSES

    layout = TokenLayout.from_model(toy)
    sampler = WindowSampler(layout, pool.captions, pool.merged, 2, 2, 3, toy.special.endoftext)
    batch = sampler.sample(random.Random(0))
    torch.manual_seed(0)
    head = torch.nn.Linear(toy.args.hidden_size, sum(AUX_CLASSES))
    vision = BatchedVision(toy, pool.grid)
    loss, aux = batch_loss(toy, vision, pool, batch, head)
    assert loss == batch_loss(toy, vision, pool, batch)[0]
    logits = head(vision(pool.pixels(batch.rows))).split(AUX_CLASSES, dim=-1)
    labels = pool.labels[batch.rows].long()  # [S, 3, 16]
    ref = sum(F.cross_entropy(lg, labels[:, i].reshape(-1)) for i, lg in enumerate(logits)) / 3
    torch.testing.assert_close(aux, ref)


def test_aux_accuracy_counts_sprite_tokens(pool):
    """A probe that reads the labels back is right on every sprite token; one that always
    says "no sprite" is never right there."""
    from framestream.models.toyworld.vlm_batch import AUX_CLASSES, aux_accuracy

    def oracle(pixels: torch.Tensor) -> torch.Tensor:  # features = one-hot of the labels
        seconds = pixels.shape[0] // 64
        labels = pool.labels[:seconds].long()  # [S, 3, 16]
        hot = [F.one_hot(labels[:, i], n) for i, n in enumerate(AUX_CLASSES)]
        return torch.cat(hot, -1).reshape(-1, sum(AUX_CLASSES)).float()

    perfect = aux_accuracy(oracle, pool, torch.nn.Identity())
    assert perfect["probe_sprite_tokens"] == int((pool.labels[:, 0] > 0).sum()) > 0
    for name in ("color", "shape", "motion"):
        assert perfect[f"probe_{name}_acc"] == 1.0
    none = torch.nn.Linear(1, sum(AUX_CLASSES))
    with torch.no_grad():
        none.weight.zero_()
        none.bias.zero_()
        none.bias[[0, AUX_CLASSES[0], AUX_CLASSES[0] + AUX_CLASSES[1]]] = 1.0  # class 0 each
    blind = aux_accuracy(lambda px: torch.zeros(px.shape[0] // 4, 1), pool, none)
    assert all(blind[f"probe_{name}_acc"] == 0.0 for name in ("color", "shape", "motion"))


def test_sampler_asks_questions_about_the_window_seconds(toy, pool):
    """With ``qa_rate`` 1 every later round asks one of its second's ground-truth questions
    and its target is that question's answer; the batch is the layout of those rounds."""
    layout = TokenLayout.from_model(toy)
    sampler = WindowSampler(
        layout, pool.captions, pool.merged, 4, 3, 2, toy.special.endoftext, pool.questions, 1.0
    )
    rng, replay = random.Random(7), random.Random(7)
    batch = sampler.sample(rng)
    picks = [sampler.pick(replay) for _ in range(4)]
    asked = 0
    for b, p in enumerate(picks):
        for j, (ask, reply) in enumerate(zip(p.asks, p.replies, strict=True)):
            pairs = pool.questions[p.feed][p.start + j]
            if ask:
                asked += 1
                assert (ask, reply) in pairs and (j > 0 or p.instruction is None)
            else:
                assert reply == pool.captions[p.feed][p.start + j]
                assert not pairs or (j == 0 and p.instruction is not None)
        w_ids, _, _ = layout.window(
            list(p.replies), p.clock, pool.merged, p.instruction, p.previous, list(p.asks)
        )
        assert (batch.ids[b, : len(w_ids)].numpy() == w_ids).all()
    assert asked > 0
    with pytest.raises(ValueError, match="qa_rate"):
        WindowSampler(layout, pool.captions, pool.merged, 1, 3, 0, 0, None, 0.5)
