"""Plain-torch twins of the fused norm kernels in :mod:`kernels.triton_norms` (same signatures).

They are what :mod:`models.wan.model` and :mod:`models.qwen_vl` run where the fused kernels do
not (a CPU, training): float32 math with the intermediate float32 tensors torch materialises,
rounded to ``x.dtype`` at the end (RMSNorm: before the weight). The Qwen decoder's twins
(:func:`add_rms_norm_ref`, :func:`silu_mul_ref`) round where transformers' Qwen2 modules do.
Tests compare the kernels with them; the kernels bench times them as the unfused baseline.
:func:`rms_norm_silu_into_ref` is the twin of :mod:`kernels.triton_vae`'s VAE kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "add_rms_norm_ref",
    "gated_residual_ref",
    "layer_norm_ref",
    "rms_norm_pair_ref",
    "rms_norm_ref",
    "rms_norm_silu_into_ref",
    "silu_mul_ref",
]


def layer_norm_ref(
    x: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """LayerNorm of ``x [B, L, dim]`` (affine if ``weight``/``bias``), then per frame
    ``* (1 + scale) + shift`` if given (float32 ``[B, F, 1, dim]``); ``x.dtype``."""
    weight = None if weight is None else weight.float()
    bias = None if bias is None else bias.float()
    y = F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps)
    if scale is not None:
        y = (y.unflatten(1, (scale.shape[1], -1)) * (1 + scale) + shift).flatten(1, 2)
    return y.type_as(x)


def gated_residual_ref(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32 per frame (``gate [B, F, 1, dim]``), in ``x.dtype``."""
    frames = gate.shape[1]
    out = x.float().unflatten(1, (frames, -1)) + y.float().unflatten(1, (frames, -1)) * gate
    return out.flatten(1, 2).type_as(x)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x / rms(x)).to(x.dtype) * weight``, the product in the promoted dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.type_as(x) * weight


def rms_norm_pair_ref(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_ref` of ``q`` and of ``k``."""
    return rms_norm_ref(q, q_weight, eps), rms_norm_ref(k, k_weight, eps)


def add_rms_norm_ref(
    x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add then :func:`rms_norm_ref`: ``(s, rms_norm_ref(s))`` with ``s = x + y``
    rounded to ``x.dtype`` (``s = x`` when ``y`` is None), as a pre-norm decoder adds."""
    s = x if y is None else x + y
    return s, rms_norm_ref(s, weight, eps)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up [..., 2 * I]`` (gate first), each op rounded to the
    input dtype as torch's ``F.silu(gate) * up`` rounds; ``[..., I]``."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rms_norm_silu_into_ref(x: torch.Tensor, gamma: torch.Tensor, out: torch.Tensor) -> None:
    """``out = silu(F.normalize(x, dim=1) * sqrt(C) * gamma)`` for ``x [B, C, T, H, W]``: the Wan
    VAE's ``WanRMS_norm`` (bias 0.0) then SiLU, in float32 (float64 for float64 ``x``, where it
    equals diffusers' modules exactly), rounded once to ``out.dtype``. Any layouts; differentiable
    (``out`` is written in place)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    scaled = F.normalize(x.to(dtype), dim=1) * x.shape[1] ** 0.5
    out.copy_(F.silu(scaled * gamma.to(dtype).reshape(1, -1, 1, 1, 1)))
