"""The causal Wan2.1 text-to-video DiT (LongLive, Self-Forcing, CausVid), one file top to bottom.

Parameter names are the original Wan / LongLive checkpoint keys (no prefix), so a generator's
state dict loads as is. The model is frame-autoregressive only through its attention context:

* self-attention hands packed, un-rotated q/k/v to an :class:`~models.attention.AttentionContext`
  (the service's rolling KV cache, or :class:`~models.attention.DenseAttention`), which applies
  the 3D RoPE from logical positions and decides what each token sees;
* cross-attention reads a :class:`TextConditioning` (every layer's text K/V), built once per
  prompt by :meth:`CausalWanModel.encode_text`; a prompt switch is a new one;
* timesteps are per latent frame (``[B, F]``), and each frame's tokens are modulated by their
  frame's timestep.

Nothing per stream is stored on the module. One block::

    x ─ norm1 ─ ·(1+scale1)+shift1 ─ self_attn ─ ·gate1 ─(+x)─┐
    ┌─────────────────────────────────────────────────────────┘
    x ─ norm3 (affine) ─ cross_attn(text K/V) ───────────(+x)─┐
    ┌─────────────────────────────────────────────────────────┘
    x ─ norm2 ─ ·(1+scale2)+shift2 ─ ffn ─ ·gate2 ──────────(+x)── out

with ``shift1, scale1, gate1, shift2, scale2, gate2 = modulation + e0[frame]``. Norms and
modulation are computed in float32 (as diffusers does); parameters may be bf16 or fp16. On CUDA
the norms, modulation and gated residuals run as fused Triton kernels
(:mod:`kernels.triton_norms`: same float32 math, one pass each); :func:`kernels.fused_kernels`
decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from framestream.kernels.attention import fused_kernels
from framestream.kernels.norms import gated_residual_ref, layer_norm_ref, rms_norm_ref
from framestream.models.attention import AttentionContext
from framestream.models.wan.config import WanConfig, wan_config

__all__ = ["CausalWanModel", "TextConditioning", "sinusoidal_embedding"]


def _triton_norms():
    # Imported on first use: triton may be missing where the fused path never runs.
    from framestream.kernels import triton_norms

    return triton_norms


@dataclass(slots=True)
class TextConditioning:
    """One stream's prompt, as every layer's cross-attention keys and values.

    Built by :meth:`CausalWanModel.encode_text`; owned by the session, replaced on a prompt
    switch. ``k[i]`` / ``v[i]`` are layer ``i``'s tensors.
    """

    k: torch.Tensor  # [num_layers, B, L_text, H, D], norm_k applied, no rotary embedding
    v: torch.Tensor  # [num_layers, B, L_text, H, D]

    @classmethod
    def make_empty(
        cls,
        config: WanConfig,
        batch: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ) -> TextConditioning:
        """Zeros of the full shape: a static buffer to ``copy_`` prompts into (CUDA graphs)."""
        shape = (config.num_layers, batch, config.text_len, config.num_heads, config.head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: ``[cos, sin]`` halves, float64. ``t [...]`` → ``[..., dim]``."""
    half = dim // 2
    freqs = torch.pow(10_000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angle = t.to(torch.float64)[..., None] * freqs
    return torch.cat([angle.cos(), angle.sin()], dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32, with a learned scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_kernels(x.device):
            return _triton_norms().rms_norm(x, self.weight, self.eps)
        return rms_norm_ref(x, self.weight, self.eps)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input and parameter dtypes; float32 out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class WanSelfAttention(nn.Module):
    """q, k, v, o projections with RMSNorm on q and k over the full dim; attention is delegated."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, layer: int, attention: AttentionContext) -> torch.Tensor:
        """``x [B, L, dim]`` → ``[B, L, dim]``; q/k/v go to ``attention`` as ``[B*L, H, D]``."""
        b, n, dim = x.shape
        heads = (b * n, self.num_heads, dim // self.num_heads)
        if fused_kernels(x.device):  # both norms in one launch
            norm_q, norm_k = self.norm_q, self.norm_k
            q, k = _triton_norms().rms_norm_pair(
                self.q(x), self.k(x), norm_q.weight, norm_k.weight, norm_q.eps
            )
        else:
            q, k = self.norm_q(self.q(x)), self.norm_k(self.k(x))
        q, k = q.reshape(heads), k.reshape(heads)
        v = self.v(x).reshape(heads)
        out = attention.attend(layer, q, k, v)
        return self.o(out.reshape(b, n, dim).type_as(x))


class WanCrossAttention(nn.Module):
    """Video queries over the prompt's cached keys and values; plain SDPA, no rotary embedding."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded text ``[B, L_text, dim]`` → k, v ``[B, L_text, H, D]``."""
        heads = (*context.shape[:2], self.num_heads, -1)
        return self.norm_k(self.k(context)).reshape(heads), self.v(context).reshape(heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]``, ``k, v [B, L_text, H, D]`` → ``[B, L, dim]``."""
        b, n, dim = x.shape
        q = self.norm_q(self.q(x)).reshape(b, n, self.num_heads, -1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2).type_as(q), v.transpose(1, 2).type_as(q)
        )
        return self.o(out.transpose(1, 2).reshape(b, n, dim))


class WanBlock(nn.Module):
    """Self-attention, cross-attention and FFN, modulated per latent frame (see the diagram)."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, config.num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(dim, config.num_heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, dim),
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        layer: int,
        text_k: torch.Tensor,
        text_v: torch.Tensor,
        attention: AttentionContext,
    ) -> torch.Tensor:
        """One block.

        Args:
            x: ``[B, L, dim]`` tokens, frame-major (``L = F * tokens_per_frame``).
            e0: float32 ``[B, F, 6, dim]`` per-frame timestep projection.
            layer: this block's index, passed to ``attention``.
            text_k, text_v: ``[B, L_text, H, D]`` this layer's prompt K/V.
            attention: the step's attention context.

        Returns:
            ``[B, L, dim]`` in ``x.dtype``.
        """
        # each [B, F, 1, dim]: broadcasts over the frame's tokens once x is viewed [B, F, T, dim]
        mod = self.modulation.float() + e0
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=2)
        fused = fused_kernels(x.device)

        y = self.self_attn(_modulate(self.norm1, x, shift1, scale1, fused), layer, attention)
        x = _gated_residual(x, y, gate1, fused)

        norm3 = self.norm3
        if fused:
            y = _triton_norms().layer_norm(x, norm3.eps, norm3.weight, norm3.bias)
        else:
            y = layer_norm_ref(x, norm3.eps, norm3.weight, norm3.bias)
        x = x + self.cross_attn(y, text_k, text_v)

        y = self.ffn(_modulate(self.norm2, x, shift2, scale2, fused))
        return _gated_residual(x, y, gate2, fused)


def _modulate(
    norm: FP32LayerNorm,
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    fused: bool,
) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` per frame, in ``x.dtype`` (``norm`` has no affine)."""
    if fused:
        return _triton_norms().layer_norm(x, norm.eps, scale=scale, shift=shift)
    return layer_norm_ref(x, norm.eps, scale=scale, shift=shift)


def _gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, fused: bool
) -> torch.Tensor:
    """``x + y * gate`` per frame, in float32, rounded to ``x.dtype``."""
    if fused:
        return _triton_norms().gated_residual(x, y, gate)
    return gated_residual_ref(x, y, gate)


class WanHead(nn.Module):
    """Final norm, per-frame shift/scale from the time embedding, and the patch projection."""

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        dim = config.dim
        self.norm = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x [B, L, dim]``, time embedding ``e [B, F, dim]`` → ``[B, L, C_out * prod(patch)]``."""
        shift, scale = (self.modulation.float() + e.float()[:, :, None]).chunk(2, dim=2)
        return self.head(_modulate(self.norm, x, shift, scale, fused_kernels(x.device)))


class CausalWanModel(nn.Module):
    """Wan2.1 T2V DiT predicting the flow (velocity) of each latent frame.

    Build with ``CausalWanModel(config)`` (or :meth:`from_name`); random weights come from
    :meth:`init_weights`. Building under ``torch.device("meta")`` allocates nothing, for loading
    with ``load_state_dict(..., assign=True)``.
    """

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim

        # 1. Patch embedding: one token per (1, 2, 2) latent patch.
        self.patch_embedding = nn.Conv3d(
            config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )

        # 2. Conditions: text tokens and per-frame timesteps.
        self.text_embedding = nn.Sequential(
            nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

        # 3. Blocks.
        self.blocks = nn.ModuleList(WanBlock(config) for _ in range(config.num_layers))

        # 4. Output head.
        self.head = WanHead(config)

    @classmethod
    def from_name(cls, name: str) -> CausalWanModel:
        """Build a named preset of :data:`~models.wan.config.WAN_PRESETS` (uninitialised)."""
        return cls(wan_config(name))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random weights: Xavier-uniform linears (the head too, so outputs are not zero), zero
        biases, N(0, 0.02) embeddings, unit norms, modulation ~ N(0, 1/dim)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (RMSNorm, nn.LayerNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1), generator=generator)
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for module in seq:
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02, generator=generator)
        dim = self.config.dim
        for p in [block.modulation for block in self.blocks] + [self.head.modulation]:
            p.normal_(0.0, dim**-0.5, generator=generator)

    def encode_text(self, context: torch.Tensor) -> TextConditioning:
        """Embed a prompt and compute every layer's cross-attention K/V, once per prompt.

        Args:
            context: ``[B, L_text, text_dim]`` text-encoder output (padding rows zeroed, as
                LongLive does; all ``L_text`` rows are attended to).

        Returns:
            :class:`TextConditioning` with ``k, v [num_layers, B, L_text, H, D]``.
        """
        context = self.text_embedding(context.to(self.text_embedding[0].weight.dtype))
        kv = [block.cross_attn.kv(context) for block in self.blocks]
        return TextConditioning(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]))

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: TextConditioning,
        attention: AttentionContext,
    ) -> torch.Tensor:
        """Predict the flow of a chunk of latent frames.

        Args:
            x: ``[B, C_in, F, H, W]`` noisy latents.
            timestep: float ``[B, F]``, one timestep per latent frame (0..1000).
            text: the prompt of each of the ``B`` streams.
            attention: self-attention context whose plan lists the ``B`` sequences in batch
                order, each with its ``L = F*(H/p_h)*(W/p_w)`` tokens ordered frame, row, column
                (as ``patch_embedding(x).flatten(2).transpose(1, 2)``); it receives packed
                ``[B*L, H, D]`` un-rotated q/k/v and applies RoPE from its own positions.

        Returns:
            ``[B, C_out, F, H, W]`` flow prediction, in the parameters' dtype.
        """
        cfg = self.config
        b, _, f, h, w = x.shape
        if timestep.shape != (b, f // cfg.patch_size[0]):
            raise ValueError(
                f"timestep shape {tuple(timestep.shape)} must be (batch, latent frames) = "
                f"({b}, {f // cfg.patch_size[0]})"
            )
        dtype = self.patch_embedding.weight.dtype

        # 1. Patchify: [B, C, F, H, W] -> [B, L, dim], frame-major.
        tokens = self.patch_embedding(x.to(dtype))
        grid = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2).contiguous()

        # 2. Per-frame time embedding e [B, F, dim] and projection e0 [B, F, 6, dim].
        t_emb = sinusoidal_embedding(cfg.freq_dim, timestep)
        e = self.time_embedding(t_emb.to(self.time_embedding[0].weight.dtype))
        e0 = self.time_projection(e).unflatten(2, (6, cfg.dim)).float()

        # 3. Blocks.
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, e0, i, text.k[i], text.v[i], attention)

        # 4. Head and unpatchify: [B, L, C_out*pt*ph*pw] -> [B, C_out, F, H, W].
        out = self.head(tokens, e)
        pt, ph, pw = cfg.patch_size
        out = out.reshape(b, *grid, pt, ph, pw, cfg.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, cfg.out_channels, grid[0] * pt, grid[1] * ph, grid[2] * pw)
