"""A loss on what the DiT draws, seen through the frozen codec's decoder: sprite shapes.

The DiT's flow loss is an MSE in latent space, where every direction counts alike. The
codec's decoder does not treat them alike: it was sharpened to draw a sprite's corners from
small differences in one or two latent pixels (BENCHMARKS.md, run 10), so a DiT whose latents
are close by that MSE can still decode to a lump where the prompt asked for a diamond. This
loss decodes the x0 the DiT's velocity implies, ``x0_hat = x_t - sigma v``, and compares it
with the decoded data, ``D(x0)``, with the codec's own sprite weighting and corner term
(:func:`~models.toyworld.train_codec.edge_loss`): the gradient reaches the DiT through the
decoder, in the latent directions that change pixels.

Only latent frames at or below ``sigma_max`` take part: at higher noise the best x0 is a
mean over layouts, which a pixel loss cannot sharpen. Each frame is decoded alone, as a
stream's first (one latent, one frame): both sides decode the same way, so the comparison
holds without a decoder stream per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from framestream.models.toyworld.generator_config import autocast
from framestream.models.toyworld.generator_data import foreground_mask
from framestream.models.toyworld.train_codec import edge_loss
from framestream.models.vae import WanVAE
from framestream.models.vae_causal import decode_frames

__all__ = ["DecodedLoss"]


@dataclass(frozen=True)
class DecodedLoss:
    """Sprite-weighted MSE and corner L1 between ``D(x0_hat)`` and ``D(x0)``.

    Attributes:
        codec: the codec the latents came from; its decoder is frozen here.
        frames: latent frames decoded a step (drawn among those at or below ``sigma_max``).
        sigma_max: the noisiest level a frame may be at to take part.
        foreground_weight: extra weight of a decoded sprite pixel (as the codec's training).
    """

    codec: WanVAE
    frames: int
    sigma_max: float
    foreground_weight: float

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 0 < self.sigma_max <= 1:
            raise ValueError(f"sigma_max must be in (0, 1], got {self.sigma_max}")
        self.codec.vae.requires_grad_(False).eval()

    def __call__(
        self, x_t: torch.Tensor, x0: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:  # fmt: skip
        """The loss over ``[R, C, chunk, h, w]`` rows: noisy input ``x_t``, the data ``x0``,
        the DiT's ``velocity`` and each row's ``sigma [R]`` (normalised latents)."""
        x0_hat = x_t.float() - sigma[:, None, None, None, None] * velocity
        pick, kept = self._draw(sigma, x_t.shape[2], gen)
        with torch.no_grad():
            target = self._decode(_frames(x0.float())[pick])
        recon = self._decode(_frames(x0_hat)[pick])
        weight = kept * (1.0 + self.foreground_weight * foreground_mask(target))
        mse = (weight * (recon - target).square()).mean() / weight.mean().clamp_min(1e-6)
        return mse + edge_loss(recon, target, weight)

    def _draw(
        self, sigma: torch.Tensor, chunk: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of ``frames`` latent frames, low-noise ones first in random order, and a
        ``[n, 1, 1, 1, 1]`` mask of those that are at or below ``sigma_max`` (a batch with
        fewer such frames decodes some it then ignores: choosing without a host sync)."""
        level = sigma.repeat_interleave(chunk)
        score = torch.rand(level.shape, generator=gen, device=level.device)
        score = torch.where(level <= self.sigma_max, score, score - 2.0)
        pick = score.topk(min(self.frames, len(score))).indices
        return pick, (level[pick] <= self.sigma_max).float()[:, None, None, None, None]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[n, 3, 1, H, W]`` frames of ``[n, C, 1, h, w]`` normalised latents."""
        codec = self.codec
        with autocast(latents.device):
            x = codec.vae.post_quant_conv(codec.denormalize(latents))
            return decode_frames(codec.vae.decoder, x, []).float()


def _frames(rows: torch.Tensor) -> torch.Tensor:
    """``[R, C, chunk, h, w]`` -> ``[R * chunk, C, 1, h, w]``, one latent frame a row."""
    return rows.transpose(1, 2).flatten(0, 1)[:, :, None]
