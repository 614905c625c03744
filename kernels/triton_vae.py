"""A fused Triton kernel for the Wan VAE's "SiLU of RMSNorm, into the causal conv's input".

Every 3x3x3 causal convolution of the Wan2.1 VAE decoder reads ``silu(norm(x))`` (the residual
blocks' ``norm1``/``norm2``, the head's ``norm_out``), with diffusers' ``WanRMS_norm``::

    y = silu(F.normalize(x, dim=1) * sqrt(C) * gamma)        # bias 0.0

over activations as large as ``96 x 12 x 480 x 832`` bf16 (920 MB). A profile of the decode of
a 3-latent chunk at 832x480 found much of its time in elementwise passes over such tensors,
not in the convolutions: the norm alone is ~5 passes (upcast, norm, divide and round back,
``* scale``, ``* gamma``), then SiLU, then ``WanCausalConv3d`` copies its input twice
(``torch.cat`` with the cached frames, ``F.pad``). :func:`rms_norm_silu_into` does all of it
in one pass: it reads ``x`` once and writes ``y`` straight into the time slots after the
history frames of the buffer the convolution reads (which pads H and W itself), computing in
float32 and rounding once.

Layout: channels-last (``channels_last_3d``, memory NDHWC), so each ``(b, t, h, w)`` position is
a contiguous row of ``C`` channels, and the rows of one batch entry are contiguous::

    x    [B, C, T, H, W]      batch stride  T    * H * W * C
    buf  [B, C, 2 + T, H, W]  batch stride (2+T) * H * W * C
    out = buf[:, :, 2:]       rows of batch b at buf + b * stride_b + 2 * H * W * C

Grid ``(cdiv(T * H * W, ROWS), B)``; a program normalises ``ROWS`` rows as one
``[ROWS, BLOCK_C]`` block. The torch twin is :func:`kernels.norms.rms_norm_silu_into_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from framestream.kernels.triton_launch import Launcher, cdiv, next_power_of_2

__all__ = ["rms_norm_silu_into"]

_BLOCK_ELEMENTS = 4096  # elements per program: 32 rows of C = 96..128, 8 rows of 384..512
_MAX_CHANNELS = 4096  # one row is one block
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _rms_norm_silu_kernel(
    x_ptr,
    g_ptr,
    o_ptr,
    rows,
    stride_xb,
    stride_ob,
    channels,
    scale,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Rows ``[program_id(0) * ROWS, +ROWS)`` of batch entry ``program_id(1)``."""
    batch = tl.program_id(1).to(tl.int64)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < channels
    mask = (row < rows)[:, None] & col_mask[None, :]
    offsets = row[:, None] * channels + cols[None, :]
    x = tl.load(x_ptr + batch * stride_xb + offsets, mask=mask, other=0.0).to(tl.float32)
    # sqrt(C) / max(||x||, eps), eps = 1e-12 as in F.normalize
    inv = scale / tl.maximum(tl.sqrt(tl.sum(x * x, 1)), 1e-12)
    gamma = tl.load(g_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = x * inv[:, None] * gamma[None, :]
    y = y / (1.0 + tl.exp(-y))
    tl.store(o_ptr + batch * stride_ob + offsets, y.to(o_ptr.dtype.element_ty), mask=mask)


_rms_norm_silu = Launcher(_rms_norm_silu_kernel)


def _rows_contiguous(t: torch.Tensor) -> bool:
    """Whether each batch entry of 5D ``t`` is dense NDHWC (the batch stride may be anything)."""
    return t[:1].is_contiguous(memory_format=torch.channels_last_3d)


def _check(x: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"x must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if out.shape != x.shape:
        raise ValueError(f"out {tuple(out.shape)} does not match x {tuple(x.shape)}")
    channels = x.shape[1]
    if gamma.numel() != channels:
        raise ValueError(f"gamma {tuple(gamma.shape)} does not hold {channels} channels")
    if not 0 < channels <= _MAX_CHANNELS:
        raise ValueError(f"x has {channels} channels, must be 1..{_MAX_CHANNELS}")
    for name, t in (("x", x), ("gamma", gamma), ("out", out)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} is not one of {_DTYPES}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    for name, t in (("x", x), ("out", out)):
        if x.shape[0] and not _rows_contiguous(t):
            raise ValueError(
                f"{name} (strides {t.stride()}) must be channels-last per batch entry "
                "(torch.channels_last_3d, or a time slice of such a tensor)"
            )


def rms_norm_silu_into(x: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor) -> None:
    """``out = silu(x / max(||x||, 1e-12) * sqrt(C) * gamma)``, the norm over channels.

    diffusers' ``WanRMS_norm`` (bias 0.0) then SiLU, in float32, rounded once to ``out.dtype``.

    Args:
        x: ``[B, C, T, H, W]`` float16 / bfloat16 / float32, channels-last
            (``torch.channels_last_3d``).
        gamma: ``C`` per-channel weights, any shape (diffusers' is ``[C, 1, 1, 1]``).
        out: ``[B, C, T, H, W]``, channels-last within each batch entry: ``x``'s layout, or a
            time slice ``buf[:, :, 2:]`` of a channels-last ``[B, C, 2 + T, H, W]`` buffer.

    Raises:
        ValueError: a shape, dtype, device or layout outside the above.
    """
    _check(x, gamma, out)
    batch, channels = x.shape[:2]
    rows = x[0, 0].numel()  # T * H * W positions per batch entry
    if not batch or not rows:
        return
    block_c = next_power_of_2(channels)
    block_rows = max(_BLOCK_ELEMENTS // block_c, 1)
    _rms_norm_silu(
        (cdiv(rows, block_rows), batch),
        x,
        gamma.reshape(channels).contiguous(),
        out,
        rows,
        x.stride(0),
        out.stride(0),
        channels,
        channels**0.5,
        ROWS=block_rows,
        BLOCK_C=block_c,
        num_warps=4 if x.device.type == "cuda" else 1,
    )
