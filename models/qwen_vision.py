"""Qwen2.5-VL's vision side on the model's device: frames -> patches -> vision features.

Both parts work over what transformers loaded (the image processor's settings, the vision
tower's modules and parameters; nothing is copied) and run the same code on the CPU and CUDA::

    frames uint8 [F, H, W, 3] --VideoPreprocessor.prepare--> pixels [t*h*w, C*tps*p*p]
        one upload; resize only when smart_resize changes the size; rescale + normalise as one
        table look-up (the processor's own numpy arithmetic, exact); patchify
    pixels --VisionTower.forward(pixels, VisionTower.plan(grid_thw))--> [t*h*w / 4, out_hidden]
        plan: numpy on the host, once per call, one upload; forward: one SDPA per block

transformers' tower (``Qwen2_5_VLVisionAttention`` with ``sdpa``) splits every block's tokens by
``cu_seqlens`` and calls SDPA once per window: 45 windows x 28 windowed blocks = 1,260 small
calls per second of 1008x560 video, bound by the host. :class:`VisionTower` lays each block's
segments (windows, or whole frames in the full-attention blocks) out as one padded batch
``[S, L]`` and calls SDPA once per block (see :class:`SegmentLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL
import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
    smart_resize,
)

__all__ = ["SegmentLayout", "VideoPreprocessor", "VisionPlan", "VisionTower"]

# PIL resampling filters (PIL.Image.Resampling values) that F.interpolate(antialias=True)
# reproduces: the same kernels (bicubic with a = -0.5), support widened when downscaling.
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}
# Pillow resamples in two passes; from Pillow 13 the vertical pass goes first when the height
# shrinks by more than twice as many pixels as the width (Resample.c), before always last.
_PIL_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13


# --------------------------------------------------------------------------------------------
# 1. Frames -> pixel values
# --------------------------------------------------------------------------------------------


class VideoPreprocessor:
    """transformers' ``Qwen2VLImageProcessorPil`` + Qwen2-VL's video patch layout, as torch ops.

    Frames are uploaded once (uint8, pinned when the device is CUDA), resized only when
    ``smart_resize`` changes their size, rescaled and normalised, then patchified into
    ``Qwen2VLVideoProcessor``'s layout (pairs of frames form one temporal patch).

    Exactness against the PIL processor:

    * without a resize the output is bit-identical: rescale and normalise map the uint8 value
      ``v`` of channel ``c`` to ``table[c, v]``, a table computed on the host with the
      processor's own numpy arithmetic (float64 rescale, float32 ``(x - mean) / std``);
    * with a resize, PIL resamples uint8 in two separable passes (horizontal first, except
      that Pillow >= 13 goes vertical first when the height shrinks by over twice as many
      pixels as the width) with fixed-point weights, rounding half up and clipping to uint8
      after each pass. Here each pass is ``F.interpolate(antialias=True)`` in float32 (the
      same kernels: bicubic a = -0.5, support widened when downscaling; normalised weights),
      in Pillow's order, rounded half up and clipped the same way. Float rounding still moves
      values that sit within ~1e-4 of a half level: resized values differ from PIL's by at
      most 2 uint8 levels, on under 0.5% of values (held in
      ``tests/models/test_qwen_vision.py``), i.e. by at most ``2 / 255 / std`` = 0.030 after
      normalising with CLIP's std.

    Args:
        image_processor: supplies resample filter, rescale factor, mean, std and patch sizes.

    Raises:
        ValueError: a processor setting this class does not reproduce (no resize, or a
            resample filter other than bilinear/bicubic).
    """

    def __init__(self, image_processor: Qwen2VLImageProcessorPil) -> None:
        ip = image_processor
        if not ip.do_resize:
            raise ValueError("image processor has do_resize=False; Qwen frames must be resized")
        resample = int(ip.resample)
        if resample not in _RESAMPLE_MODES:
            raise ValueError(
                f"image processor resample={ip.resample!r} is not supported "
                f"(only {sorted(_RESAMPLE_MODES)}: bilinear, bicubic)"
            )
        self.mode = _RESAMPLE_MODES[resample]
        self.patch_size, self.merge_size = ip.patch_size, ip.merge_size
        self.temporal_patch_size = ip.temporal_patch_size
        self.table = self._value_table(ip)  # float32 [C * 256], host
        # channel of each pixel-value column (C, tps, p, p)
        self.column_channel = torch.arange(3 * self.temporal_patch_size * self.patch_size**2)
        self.column_channel //= self.temporal_patch_size * self.patch_size**2
        self._device_tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _value_table(ip: Qwen2VLImageProcessorPil) -> torch.Tensor:
        """float32 ``[3 * 256]``: the processor's output for each (channel, uint8 value), by the
        processor's arithmetic (``transformers.image_transforms.rescale`` and ``normalize``)."""
        values = np.arange(256, dtype=np.uint8)
        if ip.do_rescale:
            x = (values.astype(np.float64) * ip.rescale_factor).astype(np.float32)
        else:
            x = values.astype(np.float32)
        x = np.broadcast_to(x, (3, 256))
        if ip.do_normalize:
            mean = np.broadcast_to(np.asarray(ip.image_mean, dtype=np.float32), (3,))
            std = np.broadcast_to(np.asarray(ip.image_std, dtype=np.float32), (3,))
            x = (x - mean[:, None]) / std[:, None]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))

    def _device_table(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The value table on ``device`` in ``dtype`` (rounding each entry once equals rounding
        each looked-up value), and int32 ``[C*tps*p*p]`` offsets of each column's channel."""
        key = (device, dtype)
        if key not in self._device_tables:
            offsets = self.column_channel * 256
            self._device_tables[key] = (
                self.table.to(device=device, dtype=dtype),
                offsets.to(device=device, dtype=torch.int32),
            )
        return self._device_tables[key]

    def output_size(self, height: int, width: int, min_pixels: int, max_pixels: int):
        """``(height, width)`` after Qwen's ``smart_resize`` (raises ``ValueError`` over 200:1)."""
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor, min_pixels=min_pixels, max_pixels=max_pixels)

    def prepare(
        self,
        frames: list[np.ndarray],
        min_pixels: int,
        max_pixels: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pixel values of a chunk of frames, on ``device``.

        Args:
            frames: uint8 ``[H, W, 3]`` arrays of one size (checked by the caller); an odd
                count repeats the last frame, as ``Qwen2VLVideoProcessor`` does.
            min_pixels, max_pixels: per-frame pixel bounds of ``smart_resize``.
            device, dtype: where and in what the pixel values are returned.

        Returns:
            ``(pixels [t*h*w, C*tps*p*p], (t, h, w))``, the grid in patches.
        """
        device = torch.device(device)
        tps, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        frames = list(frames) + [frames[-1]] * (-len(frames) % tps)
        height, width, channels = frames[0].shape
        out_h, out_w = self.output_size(height, width, min_pixels, max_pixels)
        if device.type == "cuda":  # one pinned, asynchronous upload
            shape = (len(frames), height, width, channels)
            host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            np.stack(frames, out=host.numpy())
            x = host.to(device, non_blocking=True)
        else:
            x = torch.from_numpy(np.stack(frames)).to(device)
        x = x.permute(0, 3, 1, 2)  # [F, C, H, W]
        if (out_h, out_w) != (height, width):
            x = self._resize(x, out_h, out_w)
        t, gh, gw = len(frames) // tps, out_h // p, out_w // p
        # [t*tps, C, H, W] -> (t, GH, GW, mh, mw, C, tps, ph, pw), GH = gh / m: rows in merged-
        # block order, columns (C, tps, p, p); uint8 until the look-up
        x = x.reshape(t, tps, channels, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * gh * gw, -1)
        table, offsets = self._device_table(device, dtype)
        index = x.to(torch.int32).add_(offsets)  # row of the value table
        pixels = table.index_select(0, index.view(-1))
        return pixels.view(x.shape), (t, gh, gw)

    def _resize(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """uint8 ``[F, C, H, W]`` -> ``[F, C, height, width]`` as PIL resamples: one pass per
        side in Pillow's order, each rounded half up and clipped to uint8 (a pass is skipped
        when its side keeps its size)."""
        y = x.float()
        in_h, in_w = y.shape[2:]
        if _PIL_VERTICAL_FIRST and in_h - height > max(0, 2 * (in_w - width)):
            passes = ((height, in_w), (height, width))
        else:
            passes = ((in_h, width), (height, width))
        for size in passes:
            if tuple(y.shape[2:]) != size:
                y = F.interpolate(y, size=size, mode=self.mode, antialias=True)
                y = y.add_(0.5).floor_().clamp_(0, 255)
        return y.to(torch.uint8)


# --------------------------------------------------------------------------------------------
# 2. The vision tower: one attention call per block
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentLayout:
    """Packed tokens cut into ``count`` attention segments, laid out as one batch
    ``[count, length]`` so that a single SDPA call attends within every segment::

        tokens [N = 11]   | a0 a1 a2 a3 | b0 b1 | c0 c1 c2 c3 c4 |      lengths 4, 2, 5
        batch [3, 5]        a0 a1 a2 a3 a3       gather  0 1 2 3 3  4 5 5 5 5  6 7 8 9 10
                            b0 b1 b1 b1 b1       keep    T T T T F  T T F F F  T T T T T
                            c0 c1 c2 c3 c4       scatter 0 1 2 3  5 6  10 11 12 13 14

    A padding slot repeats its segment's last token; it is masked out as a key, and its query
    row is computed and dropped. When all segments have one length (every window of a frame
    whose merged sides are multiples of the window, e.g. 1008x560; the frames of one video in
    the full-attention blocks) the batch is a view of the tokens: no gather, scatter or mask,
    so SDPA may take its flash kernel.

    Cost: attention work is ``count * length**2`` against ``sum(lengths**2)`` for the loop;
    windows (at most 64 patches) only pad at the frame's right and bottom edges. It stops
    paying when one call mixes segments of very different lengths in the full-attention
    blocks (videos of different sizes in one call: every frame is padded to the largest);
    call the tower once per frame size then. A block-diagonal ``[N, N]`` mask over all tokens
    was the alternative: at N = 2,880 patches a second it does 45x the windows' attention work
    (1.36 instead of 0.20 TFLOP a second over the 32 blocks) and keeps SDPA off flash kernels.
    """

    count: int  # S segments
    length: int  # L, the longest segment
    gather: torch.Tensor | None  # int64 [S * L]: token of each batch slot; None when unpadded
    scatter: torch.Tensor | None  # int64 [N]: batch slot of each token; None when unpadded
    keep: torch.Tensor | None  # bool [S, 1, 1, L]: real key slots; None when unpadded


@dataclass(frozen=True, slots=True)
class VisionPlan:
    """Where each patch of one tower call goes; made on the host by :meth:`VisionTower.plan`.

    The tower runs in window order: merged units (``merge**2`` patches each) regrouped so
    that every attention window is contiguous, frame after frame, video after video.
    """

    grid_thw: tuple[tuple[int, int, int], ...]  # (t, h, w) in patches, per video
    window_order: torch.Tensor  # int64 [N / unit]: merged unit at each window-order place
    natural_order: torch.Tensor  # int64 [N / unit]: window-order place of each merged unit
    positions: torch.Tensor  # int64 [N, 2]: (row, column) of each patch in its frame
    windows: SegmentLayout  # attention segments of the windowed blocks
    frames: SegmentLayout  # attention segments of the full blocks: one per temporal patch

    @property
    def patches(self) -> int:
        return int(self.positions.shape[0])


def _upload(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """int64 copies of ``arrays`` on ``device``, in one (pinned, asynchronous) transfer."""
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays]).astype(np.int64))
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    parts = flat.split([a.size for a in arrays])
    return [part.view(a.shape) for part, a in zip(parts, arrays, strict=True)]


def _layout_arrays(lengths: np.ndarray) -> tuple[int, int, list[np.ndarray]]:
    """``(count, length, [gather, scatter, lengths])`` of :class:`SegmentLayout`, numpy; the
    list is empty when every segment has the same length."""
    count, length = len(lengths), int(lengths.max())
    if (lengths == length).all():
        return count, length, []
    starts = np.cumsum(lengths) - lengths
    slot = np.arange(length)
    gather = starts[:, None] + np.minimum(slot[None, :], lengths[:, None] - 1)  # [S, L]
    segment = np.repeat(np.arange(count), lengths)  # [N]
    scatter = segment * length + np.arange(int(lengths.sum())) - starts[segment]
    return count, length, [gather.reshape(-1), scatter, lengths]


def _layout(count: int, length: int, arrays: list[torch.Tensor]) -> SegmentLayout:
    if not arrays:
        return SegmentLayout(count, length, None, None, None)
    gather, scatter, lengths = arrays
    slots = torch.arange(length, device=lengths.device)
    keep = (slots[None, :] < lengths[:, None]).view(count, 1, 1, length)
    return SegmentLayout(count, length, gather, scatter, keep)


class VisionTower:
    """Qwen2.5-VL's vision tower on transformers' modules, one SDPA call per block.

    Same parameters and arithmetic as ``Qwen2_5_VisionTransformerPretrainedModel.forward``
    (window permutation, 2D rotary applied in float32, windowed blocks and full-attention
    blocks ``fullatt_block_indexes``, the merger, the reverse permutation); the patch
    embedding's stride-equal ``Conv3d`` is computed as the matmul it equals. Attention runs
    per block over a :class:`SegmentLayout` instead of a Python loop over ``cu_seqlens``.

    Args:
        visual: ``model.visual`` of a transformers Qwen2.5-VL (its blocks, merger, rotary
            frequencies and window settings are used in place).
    """

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual
        self.merge = visual.spatial_merge_size
        self.unit = self.merge**2  # patches per merged token
        self.window = visual.window_size // self.merge // visual.patch_size  # merged units a side
        self.full_blocks = frozenset(int(i) for i in visual.fullatt_block_indexes)

    def plan(self, grid_thw: torch.Tensor | np.ndarray, device: torch.device | str) -> VisionPlan:
        """Host work of one call (numpy), uploaded to ``device`` in one copy.

        Args:
            grid_thw: int ``[num_videos, 3]`` patch grids ``(t, h, w)``; keep it on the CPU
                (a device tensor costs a synchronisation to read).

        Raises:
            ValueError: a grid that is empty or whose sides are not multiples of the merge size.
        """
        grids = tuple(
            tuple(int(v) for v in row)
            for row in np.asarray(torch.as_tensor(grid_thw).cpu()).reshape(-1, 3)
        )
        if not grids:
            raise ValueError("grid_thw is empty")
        m, win = self.merge, self.window
        orders, window_lengths, positions, frame_lengths = [], [], [], []
        units_before = 0
        for t, h, w in grids:
            if min(t, h, w) < 1 or h % m or w % m:
                raise ValueError(
                    f"grid (t, h, w) = {(t, h, w)} must be positive, h and w "
                    f"multiples of the merge size {m}"
                )
            gh, gw = h // m, w // m
            nh, nw = -(-gh // win), -(-gw // win)
            # merged units of each window, windows row-major per frame, -1 outside the frame
            padded = np.full((t, nh * win, nw * win), -1, dtype=np.int64)
            padded[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
            padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4)
            padded = padded.reshape(t * nh * nw, win * win)
            orders.append(padded[padded >= 0] + units_before)
            window_lengths.append((padded >= 0).sum(1) * self.unit)
            # (row, column) of each patch, merged-block order, the same for every frame
            rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            block = np.stack([rows, cols], -1).reshape(gh, m, gw, m, 2).transpose(0, 2, 1, 3, 4)
            positions.append(np.tile(block.reshape(-1, 2), (t, 1)))
            frame_lengths.append(np.full(t, h * w))
            units_before += t * gh * gw
        order = np.concatenate(orders)
        pos = np.concatenate(positions).reshape(-1, self.unit, 2)[order].reshape(-1, 2)
        win_count, win_length, win_arrays = _layout_arrays(np.concatenate(window_lengths))
        frame_count, frame_length, frame_arrays = _layout_arrays(np.concatenate(frame_lengths))
        uploaded = _upload(
            [order, np.argsort(order), pos, *win_arrays, *frame_arrays], torch.device(device)
        )
        order_t, natural_t, pos_t = uploaded[:3]
        win_t = uploaded[3 : 3 + len(win_arrays)]
        frame_t = uploaded[3 + len(win_arrays) :]
        return VisionPlan(
            grid_thw=grids,
            window_order=order_t,
            natural_order=natural_t,
            positions=pos_t,
            windows=_layout(win_count, win_length, win_t),
            frames=_layout(frame_count, frame_length, frame_t),
        )

    def forward(self, pixels: torch.Tensor, plan: VisionPlan) -> torch.Tensor:
        """Run the tower.

        Args:
            pixels: ``[N, C*tps*p*p]`` patches of the plan's videos, back to back (e.g.
                ``VideoInputs.pixel_values_videos``), on the tower's device.
            plan: :meth:`plan` of their grids.

        Returns:
            ``[N / merge**2, out_hidden]`` merged features, video after video, each in its
            merged grid's (t, h, w) row-major order (as transformers' ``pooler_output``).
        """
        visual = self.visual
        proj = visual.patch_embed.proj  # Conv3d, stride == kernel: one matmul per patch
        x = F.linear(pixels.to(proj.weight.dtype), proj.weight.flatten(1), proj.bias)
        n, hidden = x.shape
        if n != plan.patches:
            raise ValueError(f"{n} patches for grids {plan.grid_thw} ({plan.patches} patches)")
        x = x.view(-1, self.unit, hidden).index_select(0, plan.window_order).view(n, hidden)
        cos, sin = self._rotary(plan.positions)
        for i, block in enumerate(visual.blocks):
            layout = plan.frames if i in self.full_blocks else plan.windows
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, layout)
            x = x + block.mlp(block.norm2(x))
        merged = visual.merger(x)
        return merged.index_select(0, plan.natural_order)

    def __call__(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` over :meth:`plan` of ``grid_thw`` (on ``pixels``' device)."""
        return self.forward(pixels, self.plan(grid_thw, pixels.device))

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``cos, sin [N, 1, 1, head_dim]``: row frequencies then column frequencies,
        repeated over both halves (transformers' ``Qwen2_5_VLVisionRotaryEmbedding``)."""
        inv_freq = self.visual.rotary_pos_emb.inv_freq.to(positions.device, torch.float32)
        freqs = (positions[..., None].float() * inv_freq).flatten(1)  # [N, 2 * D/4]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, None]
        return emb.cos(), emb.sin()

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layout: SegmentLayout,
    ) -> torch.Tensor:
        """``Qwen2_5_VLVisionAttention`` over ``x [N, hidden]`` within each segment of
        ``layout``: one SDPA over ``[S, heads, L, head_dim]``."""
        n, hidden = x.shape
        heads = attn.num_heads
        qkv = attn.qkv(x).view(n, 3, heads, -1)
        qk = qkv[:, :2].float()  # rotate q and k together, in float32 (apply_rotary_pos_emb_vision)
        half = qk.shape[-1] // 2
        rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
        qk = (qk * cos + rotated * sin).to(x.dtype)
        q, k, v = qk[:, 0], qk[:, 1], qkv[:, 2]  # [N, heads, head_dim]
        if layout.gather is not None:
            q, k, v = (t.index_select(0, layout.gather) for t in (q, k, v))
        s, length = layout.count, layout.length
        q, k, v = (t.view(s, length, heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.keep)  # [S, H, L, D]
        out = out.transpose(1, 2).reshape(s * length, hidden)
        if layout.scatter is not None:
            out = out.index_select(0, layout.scatter)
        return attn.proj(out)
