"""FP8 (e4m3) linear layers through cuBLASLt's scaled matrix product (``torch._scaled_mm``).

Hopper's tensor cores multiply e4m3 at twice bf16's rate. Weights are quantized once, one
scale per output row; activations per token (row) at each call, so an outlier token costs only
its own row's precision. The product accumulates in float32 and is written in the input's
dtype with the bias added, so a block sees the same dtypes as with ``nn.Linear``.

Only the DiT blocks' projections and FFN take it (:func:`quantize_dit_linears`): the embedding,
time and head layers are small and sit where an error would reach every token.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FP8_E4M3_MAX", "Fp8Linear", "quantize_dit_linears", "quantize_rows"]

FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max
_MIN_SCALE = 1e-12  # an all-zero row keeps a finite scale


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> e4m3 ``[M, K]`` and float32 scales ``[M, 1]`` with ``x ~ q * scale``."""
    amax = x.abs().amax(dim=1, keepdim=True).float()
    scale = (amax / FP8_E4M3_MAX).clamp(min=_MIN_SCALE)
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """``nn.Linear`` with e4m3 weights (per-row scales) and per-token e4m3 activations."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(
                f"FP8 GEMMs need dims divisible by 16, got {linear.in_features}x"
                f"{linear.out_features}"
            )
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N]
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        q, scale = quantize_rows(rows)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        out = torch._scaled_mm(
            q,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=bias,
            out_dtype=x.dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3"


def quantize_dit_linears(dit: nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` inside ``dit.blocks`` by :class:`Fp8Linear`;
    returns how many were replaced."""
    replaced = 0
    for block in dit.blocks:
        for module in list(block.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, Fp8Linear(child))
                    replaced += 1
    return replaced
