"""The vision side on torch ops against transformers: the preprocessor against the PIL image
processor (bit for bit without a resize, a stated tolerance with one), the batched tower against
transformers' per-window tower (CPU, float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from framestream.models.qwen_vision import VideoPreprocessor, VisionTower
from framestream.models.qwen_vl import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, QwenVL
from framestream.models.qwen_vl_tiny import tiny_qwen_vl

ATOL = 1e-5  # float32 features are O(1)
# Resized frames: at most this many uint8 levels from PIL's resampling, on at most this share
# of values (models.qwen_vision.VideoPreprocessor states the same).
RESIZE_LEVELS = 2
RESIZE_SHARE = 0.005


@pytest.fixture(scope="module")
def tiny() -> QwenVL:
    return tiny_qwen_vl(seed=0)


def _noise(rng: np.random.Generator, size: tuple[int, int], count: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def _smooth(size: tuple[int, int], count: int) -> list[np.ndarray]:
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    return [
        np.stack(
            [127 + 120 * np.sin(cols / (5 + k) + c) * np.cos(rows / 4) for c in range(3)], -1
        ).astype(np.uint8)
        for k in range(count)
    ]


def _processor_pixels(
    ip: Qwen2VLImageProcessorPil, frames: list[np.ndarray], min_pixels: int, max_pixels: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The reference: transformers' PIL image processor per frame, then frames interleaved
    into temporal patches as ``Qwen2VLVideoProcessor`` lays them out (what ``video_inputs``
    computed before it ran on torch)."""
    tps, p = ip.temporal_patch_size, ip.patch_size
    frames = list(frames) + [frames[-1]] * (-len(frames) % tps)
    out = ip(
        images=frames,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        return_tensors="np",
        input_data_format="channels_last",
    )
    h, w = (int(v) for v in out["image_grid_thw"][0, 1:])
    patches = out["pixel_values"].reshape(len(frames), h * w, -1, tps, p, p)[:, :, :, 0]
    t = len(frames) // tps
    patches = patches.reshape(t, tps, h * w, -1, p, p).transpose(0, 2, 3, 1, 4, 5)
    return patches.reshape(t * h * w, -1), (t, h, w)


# -- preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(56, 84), (84, 56), (112, 112), (56, 56)])
@pytest.mark.parametrize("count", [2, 3])
def test_no_resize_equals_image_processor_bit_for_bit(tiny: QwenVL, size, count) -> None:
    frames = _noise(np.random.default_rng(count), size, count)
    ref, grid = _processor_pixels(
        tiny.image_processor, frames, tiny.video_min_pixels, tiny.video_max_pixels
    )
    video = tiny.video_inputs(frames)
    assert tuple(video.video_grid_thw[0].tolist()) == grid
    assert video.merged_grid == (grid[0], grid[1] // 2, grid[2] // 2)
    assert video.pixel_values_videos.dtype == tiny.dtype
    torch.testing.assert_close(video.pixel_values_videos, torch.from_numpy(ref), rtol=0, atol=0)


def test_benchmark_geometry_equals_image_processor_bit_for_bit() -> None:
    """One second of 1008x560 at StreamingVLM's bounds (CLIP mean/std): no resize, 2,880
    patches, identical values; in bfloat16 too (one rounding of the same value)."""
    ip = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    pre = VideoPreprocessor(ip)
    frames = _noise(np.random.default_rng(0), (560, 1008), 2)
    ref, grid = _processor_pixels(ip, frames, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    ours, ours_grid = pre.prepare(frames, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, "cpu", torch.float32)
    assert ours_grid == grid == (1, 40, 72)
    torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=0, atol=0)
    half, _ = pre.prepare(frames, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, "cpu", torch.bfloat16)
    assert torch.equal(half, torch.from_numpy(ref).to(torch.bfloat16))


@pytest.mark.parametrize(
    "size",
    [
        (70, 100),  # height shrinks, width grows: Pillow >= 13 resamples vertically first
        (100, 70),  # the other way round: horizontally first
        (480, 640),  # both shrink
        (64, 64),  # both grow (the toy model's 64 -> 112)
        (30, 200),  # grows to the pixel floor
        (1, 150),  # one pixel high (a frame the fuzzer found)
        (57, 57),  # a one-pixel shrink
    ],
)
@pytest.mark.parametrize("content", ["noise", "smooth"])
def test_resize_within_stated_tolerance_of_pil(tiny: QwenVL, size, content) -> None:
    frames = _noise(np.random.default_rng(7), size, 2) if content == "noise" else _smooth(size, 2)
    ip = tiny.image_processor
    ref, grid = _processor_pixels(ip, frames, tiny.video_min_pixels, tiny.video_max_pixels)
    assert (grid[1] * 14, grid[2] * 14) != size  # the frames are resized
    video = tiny.video_inputs(frames)
    assert tuple(video.video_grid_thw[0].tolist()) == grid
    # back to uint8 levels: value * std / rescale_factor, per channel (columns C, tps, p, p)
    std = torch.tensor(ip.image_std).repeat_interleave(2 * 14 * 14)
    levels = (video.pixel_values_videos - torch.from_numpy(ref)).abs() * std / ip.rescale_factor
    assert float(levels.max()) <= RESIZE_LEVELS + 1e-3, float(levels.max())
    assert float((levels > 0.5).float().mean()) <= RESIZE_SHARE


def test_video_inputs_refuse_bad_frames(tiny: QwenVL) -> None:
    with pytest.raises(ValueError, match="frames is empty"):
        tiny.video_inputs([])
    with pytest.raises(ValueError, match="one size, got shapes"):
        tiny.video_inputs([np.zeros((56, 56, 3), np.uint8), np.zeros((56, 84, 3), np.uint8)])
    with pytest.raises(ValueError, match="one size, got shapes"):
        tiny.video_inputs([np.zeros((56, 56, 4), np.uint8)])
    with pytest.raises(ValueError, match="got dtypes"):
        tiny.video_inputs([np.zeros((56, 56, 3), np.float32)] * 2)
    with pytest.raises(ValueError, match="aspect ratio"):
        tiny.video_inputs([np.zeros((1, 201, 3), np.uint8)] * 2)


def test_preprocessor_refuses_settings_it_does_not_reproduce() -> None:
    with pytest.raises(ValueError, match="resample"):
        VideoPreprocessor(Qwen2VLImageProcessorPil(resample=1))  # Lanczos
    with pytest.raises(ValueError, match="do_resize"):
        VideoPreprocessor(Qwen2VLImageProcessorPil(do_resize=False))


# -- the vision tower ------------------------------------------------------------------------


def _hf_features(visual, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return visual(pixels, grid_thw=grid).pooler_output


def _pixels(grid: torch.Tensor, seed: int) -> torch.Tensor:
    n = int(grid.prod(-1).sum())
    return torch.randn(n, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
@pytest.mark.parametrize(
    "grids",
    [
        [[1, 8, 8]],  # merged 4x4: whole 2x2 windows, no padding anywhere
        [[1, 4, 6]],  # merged 2x3: a column of narrow windows
        [[1, 6, 10]],  # merged 3x5: uneven windows at the right and bottom
        [[3, 6, 10]],  # three temporal patches
        [[1, 2, 2]],  # a single merged token
        [[2, 10, 6], [1, 4, 4], [1, 6, 14]],  # videos of different sizes in one call
    ],
)
def test_tower_equals_transformers(tiny: QwenVL, grids) -> None:
    grid = torch.tensor(grids)
    pixels = _pixels(grid, len(grids))
    ref = _hf_features(tiny.hf.model.visual, pixels, grid)
    ours = tiny.vision(pixels, grid)
    assert ours.shape == ref.shape == (int(grid.prod(-1).sum()) // 4, 64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)


def _visual_7b_shape() -> Qwen2_5_VisionTransformerPretrainedModel:
    """A narrow tower with Qwen2.5-VL-7B's window geometry: 112 px windows (4x4 merged
    tokens), full attention in blocks 1 and 3 of 4; O(1) weights."""
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 48,
            "window_size": 112,
            "fullatt_block_indexes": [1, 3],
        }
    ).vision_config
    visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(
        config, attn_implementation="sdpa"
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if "norm" in name or "ln_q" in name:
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                std = param[0].numel() ** -0.5
                param.copy_(std * torch.randn(param.shape, generator=generator))
    return visual


@torch.no_grad()
@pytest.mark.parametrize(
    "grids, padded_windows",
    [
        ([[1, 40, 72]], False),  # 1008x560: 5x9 whole windows of 64 patches
        ([[1, 42, 74]], True),  # 1036x588: a last row and column of 1-merged-token-wide windows
        ([[2, 34, 50]], True),  # two temporal patches, merged 17x25
    ],
)
def test_tower_at_7b_window_geometry_equals_transformers(grids, padded_windows) -> None:
    visual = _visual_7b_shape()
    tower = VisionTower(visual)
    grid = torch.tensor(grids)
    plan = tower.plan(grid, "cpu")
    assert (plan.windows.gather is not None) == padded_windows
    assert plan.frames.gather is None and plan.frames.count == grids[0][0]
    assert plan.windows.length == 64  # 4x4 merged tokens of 4 patches
    pixels = _pixels(grid, 1)
    torch.testing.assert_close(
        tower.forward(pixels, plan), _hf_features(visual, pixels, grid), rtol=0, atol=ATOL
    )


def test_plan_layout_pads_uneven_windows() -> None:
    """Merged 3x5 with 2x2 windows: windows of 4, 4, 2 / 2, 2, 1 merged tokens (x4 patches)."""
    tower = VisionTower(tiny_qwen_vl(seed=0).hf.model.visual)
    plan = tower.plan(torch.tensor([[1, 6, 10]]), "cpu")
    windows = plan.windows
    assert (windows.count, windows.length) == (6, 16)
    assert windows.keep[:, 0, 0].sum(-1).tolist() == [16, 16, 8, 8, 8, 4]
    assert windows.scatter.shape == (60,) and windows.gather.shape == (96,)
    # every token appears once, and sits where gather reads it
    assert torch.equal(windows.gather[windows.scatter], torch.arange(60))
    assert torch.equal(plan.window_order[plan.natural_order], torch.arange(15))


def test_plan_refuses_bad_grids(tiny: QwenVL) -> None:
    with pytest.raises(ValueError, match="merge size"):
        tiny.vision.plan(torch.tensor([[1, 5, 6]]), "cpu")
    with pytest.raises(ValueError, match="empty"):
        tiny.vision.plan(torch.zeros((0, 3), dtype=torch.int64), "cpu")
    with pytest.raises(ValueError, match="patches for grids"):
        grid = torch.tensor([[1, 4, 4]])
        tiny.vision.forward(torch.zeros(8, 3 * 2 * 14 * 14), tiny.vision.plan(grid, "cpu"))
