"""Fused Triton kernels for the elementwise work of a Wan DiT block and a Qwen decoder layer,
one launch per op.

In torch each of these is a chain of float32 passes over ``[B, L, dim]`` (upcast, normalise,
scale, shift, downcast: five or six launches, each reading and writing a float32 copy). Here
every op reads its inputs once, computes in float32 and rounds once to the output dtype (or
where the torch code it replaces rounds):

* :func:`layer_norm`: LayerNorm over ``dim``, optionally affine, optionally modulated per
  latent frame, ``norm(x) * (1 + scale) + shift`` with ``scale, shift [B, F, 1, dim]``;
* :func:`gated_residual`: ``x + y * gate`` with ``gate [B, F, 1, dim]``;
* :func:`rms_norm` / :func:`rms_norm_pair`: the model's RMSNorm (normalised value rounded to
  ``x.dtype``, then times the weight, as :class:`models.wan.model.RMSNorm` does); the pair
  normalises q and k in one launch;
* :func:`add_rms_norm`: a pre-norm decoder's residual add and the next RMSNorm, ``s = x + y``
  (rounded to ``x.dtype``, as torch adds) and ``rms_norm(s)``, both written;
* :func:`silu_mul`: ``silu(gate) * up`` of the concatenated gate/up projection (SiLU rounded
  to the input dtype before the product, as ``F.silu(gate) * up`` rounds).

One program per token row (``dim`` fits one block: 1536 for Wan2.1-1.3B, 3584 for
Qwen2.5-VL-7B); :func:`silu_mul` splits a row into blocks (18944 wide for Qwen2.5-VL-7B). A
row's frame is ``(row % L) // (L // F)``: tokens are frame-major, as the model lays them out.
The torch twins, same signatures, are in :mod:`kernels.norms`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from framestream.kernels.triton_launch import Launcher, cdiv, next_power_of_2

__all__ = ["add_rms_norm", "gated_residual", "layer_norm", "rms_norm", "rms_norm_pair", "silu_mul"]


@triton.jit
def _frame_row(ptr, row, seq_len, frame_len, stride_b, stride_f, cols, mask):
    """Row ``[dim]`` of a per-frame float32 ``[B, F, 1, dim]`` tensor for token row ``row``."""
    batch = row // seq_len
    frame = (row % seq_len) // frame_len
    return tl.load(ptr + batch * stride_b + frame * stride_f + cols, mask=mask, other=0.0)


@triton.jit
def _layer_norm_kernel(
    x_ptr,
    o_ptr,
    w_ptr,
    b_ptr,
    scale_ptr,
    shift_ptr,
    stride_x,
    stride_o,
    seq_len,
    frame_len,
    stride_sb,
    stride_sf,
    stride_hb,
    stride_hf,
    dim,
    eps,
    AFFINE: tl.constexpr,
    MODULATE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / dim
    centred = tl.where(mask, x - mean, 0.0)
    y = centred * tl.rsqrt(tl.sum(centred * centred, 0) / dim + eps)
    if AFFINE:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = y * w + b
    if MODULATE:
        scale = _frame_row(scale_ptr, row, seq_len, frame_len, stride_sb, stride_sf, cols, mask)
        shift = _frame_row(shift_ptr, row, seq_len, frame_len, stride_hb, stride_hf, cols, mask)
        y = y * (1.0 + scale) + shift
    tl.store(o_ptr + row * stride_o + cols, y.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(
    x_ptr,
    y_ptr,
    gate_ptr,
    o_ptr,
    stride_x,
    stride_y,
    stride_o,
    seq_len,
    frame_len,
    stride_gb,
    stride_gf,
    dim,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    gate = _frame_row(gate_ptr, row, seq_len, frame_len, stride_gb, stride_gf, cols, mask)
    tl.store(o_ptr + row * stride_o + cols, (x + y * gate).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_scaled(x, w_ptr, cols, mask, dim, eps):
    """RMSNorm of a loaded row ``x`` (zero where masked), rounded to its dtype, times the
    weight: float32."""
    xf = x.to(tl.float32)
    normed = xf * tl.rsqrt(tl.sum(xf * xf, 0) / dim + eps)
    # Rounded to x's dtype before the weight, as the torch module does.
    normed = normed.to(x.dtype).to(tl.float32)
    return normed * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rms_row(x_ptr, w_ptr, o_ptr, row, stride_x, stride_o, dim, eps, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    y = _rms_scaled(x, w_ptr, cols, mask, dim, eps)
    tl.store(o_ptr + row * stride_o + cols, y.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    o_ptr,
    x2_ptr,
    w2_ptr,
    o2_ptr,
    stride_x,
    stride_o,
    dim,
    eps,
    BLOCK_D: tl.constexpr,
):
    """Row ``program_id(0)`` of the first tensor, or of the second on ``program_id(1) == 1``."""
    row = tl.program_id(0).to(tl.int64)
    if tl.program_id(1) == 0:
        _rms_row(x_ptr, w_ptr, o_ptr, row, stride_x, stride_o, dim, eps, BLOCK_D)
    else:
        _rms_row(x2_ptr, w2_ptr, o2_ptr, row, stride_x, stride_o, dim, eps, BLOCK_D)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    s_ptr,
    o_ptr,
    stride_x,
    stride_y,
    stride_s,
    stride_o,
    dim,
    eps,
    ADD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if ADD:
        y = tl.load(y_ptr + row * stride_y + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + y.to(tl.float32)).to(x.dtype)  # rounded, as torch's add
        tl.store(s_ptr + row * stride_s + cols, x, mask=mask)
    out = _rms_scaled(x, w_ptr, cols, mask, dim, eps)
    tl.store(o_ptr + row * stride_o + cols, out.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_kernel(gu_ptr, o_ptr, stride_g, stride_o, inter, BLOCK: tl.constexpr):
    """Column block ``program_id(1)`` of row ``program_id(0)``: gate at ``cols``, up at
    ``inter + cols``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(gu_ptr + row * stride_g + cols, mask=mask, other=0.0)
    up = tl.load(gu_ptr + row * stride_g + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)  # F.silu rounds here
    out = act * up.to(tl.float32)
    tl.store(o_ptr + row * stride_o + cols, out.to(o_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Host code
# --------------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., dim]`` as ``[rows, dim]`` with unit stride along ``dim`` (a view when possible)."""
    x = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # no op call for 2-D (decode) inputs
    return x if x.stride(-1) == 1 else x.contiguous()


def _product_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    # promote_types is an op call; the model's weights mostly share the activations' dtype
    return x.dtype if weight.dtype == x.dtype else torch.promote_types(x.dtype, weight.dtype)


def _launch_options(x: torch.Tensor, dim: int) -> dict[str, int]:
    block = next_power_of_2(dim)
    # Tutorial sizing: about eight elements per thread, at most eight warps; one on the CPU.
    warps = min(max(block // 256, 1), 8) if x.device.type == "cuda" else 1
    return {"BLOCK_D": block, "num_warps": warps}


def _frame_geometry(x: torch.Tensor, *per_frame: torch.Tensor) -> tuple[int, int]:
    """``(L, L // F)`` for ``x [B, L, dim]`` and per-frame tensors ``[B, F, 1, dim]``."""
    b, seq_len, dim = x.shape
    frames = per_frame[0].shape[1]
    for t in per_frame:
        if t.shape != (b, frames, 1, dim) or t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError(
                f"per-frame tensor {tuple(t.shape)} {t.dtype} must be float32 "
                f"({b}, {frames}, 1, {dim}) with unit stride along dim"
            )
    if seq_len % frames:
        raise ValueError(f"{seq_len} tokens do not split into {frames} frames")
    return seq_len, seq_len // frames


def layer_norm(
    x: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm of ``x [B, L, dim]`` in float32, then ``* weight + bias`` if given, then
    ``* (1 + scale) + shift`` per frame if given (float32 ``[B, F, 1, dim]``); ``x.dtype``."""
    affine, modulate = weight is not None, scale is not None
    if affine != (bias is not None) or modulate != (shift is not None):
        raise ValueError("weight and bias, and scale and shift, come in pairs")
    dim = x.shape[-1]
    seq_len, frame_len = _frame_geometry(x, scale, shift) if modulate else (1, 1)
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    if rows.shape[0]:
        _layer_norm_kernel[(rows.shape[0],)](
            rows,
            out,
            weight if affine else rows,  # unread unless AFFINE / MODULATE
            bias if affine else rows,
            scale if modulate else rows,
            shift if modulate else rows,
            rows.stride(0),
            out.stride(0),
            seq_len,
            frame_len,
            *(scale.stride()[:2] if modulate else (0, 0)),
            *(shift.stride()[:2] if modulate else (0, 0)),
            dim,
            eps,
            AFFINE=affine,
            MODULATE=modulate,
            **_launch_options(x, dim),
        )
    return out.view(x.shape)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32 per frame (``x, y [B, L, dim]``, ``gate [B, F, 1, dim]``
    float32), in ``x.dtype``."""
    if y.shape != x.shape:
        raise ValueError(f"y {tuple(y.shape)} does not match x {tuple(x.shape)}")
    seq_len, frame_len = _frame_geometry(x, gate)
    dim = x.shape[-1]
    x_rows, y_rows = _rows(x), _rows(y)
    out = torch.empty(x_rows.shape, dtype=x.dtype, device=x.device)
    if x_rows.shape[0]:
        _gated_residual_kernel[(x_rows.shape[0],)](
            x_rows,
            y_rows,
            gate,
            out,
            x_rows.stride(0),
            y_rows.stride(0),
            out.stride(0),
            seq_len,
            frame_len,
            *gate.stride()[:2],
            dim,
            **_launch_options(x, dim),
        )
    return out.view(x.shape)


def rms_norm_pair(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm` of ``q`` and of ``k`` (same shape and dtype) in one launch."""
    if q.shape != k.shape or q.dtype != k.dtype or q_weight.dtype != k_weight.dtype:
        raise ValueError(f"q {tuple(q.shape)} {q.dtype} and k {tuple(k.shape)} {k.dtype} differ")
    dim = q.shape[-1]
    if q_weight.shape != (dim,) or k_weight.shape != (dim,):
        raise ValueError(f"weights {tuple(q_weight.shape)}, {tuple(k_weight.shape)} != ({dim},)")
    q_rows, k_rows = _rows(q), _rows(k)
    if q_rows.stride(0) != k_rows.stride(0):  # one row stride serves both in the kernel
        q_rows, k_rows = q_rows.contiguous(), k_rows.contiguous()
    dtype = torch.promote_types(q.dtype, q_weight.dtype)
    q_out = torch.empty(q_rows.shape, dtype=dtype, device=q.device)
    k_out = torch.empty_like(q_out)
    if q_rows.shape[0]:
        _rms_norm_kernel[(q_rows.shape[0], 2)](
            q_rows,
            q_weight,
            q_out,
            k_rows,
            k_weight,
            k_out,
            q_rows.stride(0),
            q_out.stride(0),
            dim,
            eps,
            **_launch_options(q, dim),
        )
    return q_out.view(q.shape), k_out.view(k.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim: ``(x / rms(x)).to(x.dtype) * weight``, in the promoted dtype
    of ``x`` and ``weight`` (as torch's product gives)."""
    dim = x.shape[-1]
    if weight.shape != (dim,):
        raise ValueError(f"weight {tuple(weight.shape)} != ({dim},)")
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0], 1)](
            rows,
            weight,
            out,
            rows,
            weight,
            out,
            rows.stride(0),
            out.stride(0),
            dim,
            eps,
            **_launch_options(x, dim),
        )
    return out.view(x.shape)


def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, rms_norm(s))`` with ``s = x + y`` rounded to ``x.dtype`` (``s = x`` when ``y`` is
    None, nothing written then): a residual add and the next RMSNorm in one launch. ``s`` has
    ``x.dtype``, the norm the promoted dtype of ``x`` and ``weight``."""
    dim = x.shape[-1]
    if weight.shape != (dim,):
        raise ValueError(f"weight {tuple(weight.shape)} != ({dim},)")
    if y is not None and (y.shape != x.shape or y.dtype != x.dtype):
        raise ValueError(
            f"y {tuple(y.shape)} {y.dtype} does not match x {tuple(x.shape)} {x.dtype}"
        )
    rows = _rows(x)
    y_rows = rows if y is None else _rows(y)
    s = rows if y is None else torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    out = torch.empty(rows.shape, dtype=_product_dtype(x, weight), device=x.device)
    if rows.shape[0]:
        _add_rms_norm(
            (rows.shape[0],),
            rows,
            y_rows,
            weight,
            s,
            out,
            rows.stride(0),
            y_rows.stride(0),
            s.stride(0),
            out.stride(0),
            dim,
            eps,
            ADD=y is not None,
            **_launch_options(x, dim),
        )
    if x.ndim == 2:
        return (x if y is None else s), out
    return (x if y is None else s.view(x.shape)), out.view(x.shape)


_SILU_BLOCK = 1024  # columns per program: 19 programs a row at Qwen2.5-VL-7B's 18944
# The decode path's kernels launch through Launcher (a few us of host time, not ~40).
_add_rms_norm = Launcher(_add_rms_norm_kernel)
_silu_mul = Launcher(_silu_mul_kernel)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up [..., 2 * I]`` (gate first, as one projection makes
    it), in its dtype: ``[..., I]``."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dim {gate_up.shape[-1]} is not gate and up halves")
    inter = gate_up.shape[-1] // 2
    rows = _rows(gate_up)
    out = torch.empty((rows.shape[0], inter), dtype=gate_up.dtype, device=gate_up.device)
    if rows.shape[0]:
        block = min(_SILU_BLOCK, next_power_of_2(inter))
        _silu_mul(
            (rows.shape[0], cdiv(inter, block)),
            rows,
            out,
            rows.stride(0),
            out.stride(0),
            inter,
            BLOCK=block,
            num_warps=4 if gate_up.device.type == "cuda" else 1,
        )
    return out if gate_up.ndim == 2 else out.view(*gate_up.shape[:-1], inter)
