"""Stage 1 of the toy-world generator: the codec, a small Wan VAE (``AutoencoderKLWan``).

:func:`train_codec` trains on single frames first (colours and shapes, cheaply), then on
``codec_frames``-frame windows of pool clips, one pass per window (:mod:`models.vae_causal`),
with a sprite-weighted MSE + L1 and a small KL. The decoder streams: its history carries over
``vae_stream_steps`` steps (a new clip continues the stream from its second latent), so it
learns the steady state of an endless stream, not only a stream's first frames. The temporal
resamplers start per-frame (:func:`per_frame_init`). Afterwards :func:`encode_pool` encodes the
pool and :func:`set_latent_stats` writes the per-channel mean/std of the encoder means into the
VAE config (``latents_mean`` / ``latents_std``), so the generator's latents are ~N(0, 1).
"""

from __future__ import annotations

import sys
import time

import torch
from diffusers import AutoencoderKLWan
from tqdm import tqdm

from framestream.models.toyworld.generator_config import TrainConfig, autocast, lr_factor
from framestream.models.toyworld.generator_data import Pool, foreground_mask, to_signed
from framestream.models.vae import tiny_wan_vae
from framestream.models.vae_causal import decode_frames, encode_video

__all__ = ["edge_loss", "encode_pool", "per_frame_init", "set_latent_stats", "train_codec"]


def train_codec(
    cfg: TrainConfig,
    pool: Pool,
    device: torch.device,
    deadline: float,
    decoder_of: AutoencoderKLWan | None = None,
) -> tuple[AutoencoderKLWan, dict]:
    """Train a small Wan VAE: single frames first (colours and shapes, cheaply), then clips
    with the decoder as persistent streams (motion, and an endless stream's steady state).

    ``decoder_of``: fine-tune only this trained codec's decoder (at ``finetune_lr``, reading
    its latents with ``decoder_noise`` added); its encoder stays frozen, so its latents, and any
    DiT trained on them, stay valid.
    """
    if decoder_of is None:
        vae = tiny_wan_vae(seed=cfg.seed, base_dim=cfg.vae_dim).vae
        per_frame_init(vae)
        peak_lr = cfg.vae_lr
    else:
        vae, peak_lr = decoder_of, cfg.finetune_lr
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    vae = vae.to(device).train()
    latent_noise = None
    if decoder_of is not None and cfg.decoder_noise:
        std = torch.tensor(vae.config.latents_std, device=device)[None, :, None, None, None]
        latent_noise = cfg.decoder_noise * std
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n, t = pool.video.shape[:2]
    start, step, curve, losses = time.perf_counter(), 0, [], []
    batch, history, image_steps = None, [], 0
    bar = tqdm(desc="codec", unit="step", mininterval=2.0, file=sys.stderr)
    while time.perf_counter() < deadline and (
        cfg.max_vae_steps is None or step < cfg.max_vae_steps
    ):
        progress = (time.perf_counter() - start) / max(1e-6, deadline - start)
        if cfg.max_vae_steps is None:
            images = progress < cfg.vae_image_fraction
        else:  # step-capped runs (smoke) split by steps, so both phases run
            images = step < cfg.vae_image_fraction * cfg.max_vae_steps
        if batch is None or not cfg.fixed_batch or (batch.shape[2] == 1) != images:
            size = cfg.vae_image_batch if images else cfg.vae_batch
            frames = 1 if images else cfg.codec_frames
            idx = torch.randint(n, (size,), generator=gen)
            off = torch.randint(t - frames + 1, (size,), generator=gen)
            batch = to_signed(pool.video[idx[:, None], off[:, None] + torch.arange(frames)])
            batch = batch.to(device)
        image_steps += images
        restart = images or (step - image_steps) % cfg.vae_stream_steps == 0
        if restart:
            history = []
        for group in opt.param_groups:
            group["lr"] = peak_lr * lr_factor(step, 20, progress)
        with autocast(device, cfg.vae_bf16):
            with torch.set_grad_enabled(decoder_of is None):
                mean, logvar = encode_video(vae, batch).float().chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution
            z = mean + cfg.vae_noise * torch.exp(0.5 * logvar) * torch.randn_like(mean)
            if latent_noise is not None:
                z = z + latent_noise * torch.randn_like(z)
            x = vae.post_quant_conv(z)
            # a continuing stream decodes the new clip from its second latent (4 frames each)
            recon = decode_frames(vae.decoder, x if restart else x[:, :, 1:], history).float()
        target = batch if restart else batch[:, :, 1:]
        weight = 1.0 + cfg.vae_foreground_weight * foreground_mask(target)
        mse = (weight * (recon - target).square()).mean() / weight.mean()
        l1 = (weight * (recon - target).abs()).mean() / weight.mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        loss = mse + l1 + cfg.kl_weight * kl
        if cfg.vae_edge_weight:
            loss = loss + cfg.vae_edge_weight * edge_loss(recon, target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.detach())
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == 1:
            recent = torch.stack(losses[-cfg.log_every :]).mean().item()
            curve.append((step, recent))
            bar.set_postfix(loss=f"{recent:.4f}", mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
    bar.close()
    vae.eval()
    final = torch.stack(losses[-cfg.log_every :]).mean().item() if losses else float("nan")
    return vae, {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "final_loss": final,
        "first_loss": losses[0].item() if losses else float("nan"),
        "curve": curve,
    }


def edge_loss(recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 between the spatial differences of ``[B, 3, T, H, W]`` clips: a corner is
    where both differences turn, which a plain pixel loss smooths away at a sprite's size."""
    loss = recon.new_zeros(())
    for dim in (-1, -2):
        d_recon, d_target = recon.diff(dim=dim), target.diff(dim=dim)
        w = weight.narrow(dim, 1, weight.shape[dim] - 1)
        loss = loss + (w * (d_recon - d_target).abs()).mean() / w.mean().clamp_min(1e-6)
    return loss


@torch.no_grad()
def per_frame_init(vae: AutoencoderKLWan) -> None:
    """Start every temporal resampler as a per-frame one: the encoder's stride-2 time conv
    keeps the newest frame, the decoder's doubling conv copies each frame twice.

    The image phase trains only the first-frame path, which skips these convs; from random
    weights they would scramble the first clip step's frames and undo the image phase (without
    it the loss jumped at the switch to clips). Identity on the newest tap makes a clip start
    as a stack of images, so clips only have to learn what motion adds.
    """
    for module in vae.modules():
        conv = getattr(module, "time_conv", None)
        if conv is None:
            continue
        out_channels, in_channels, taps = conv.weight.shape[:3]
        conv.weight.zero_()
        conv.bias.zero_()
        eye = torch.arange(in_channels)
        for copy in range(out_channels // in_channels):
            conv.weight[copy * in_channels + eye, eye, taps - 1] = 1.0


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKLWan, pool: Pool, device: torch.device, batch: int = 64
) -> torch.Tensor:
    """Encoder means ``[N, 16, F, h, w]`` (fp32, on ``device``) of every pool clip."""
    out = []
    for i in range(0, len(pool.video), batch):
        moments = encode_video(vae, to_signed(pool.video[i : i + batch]).to(device))
        out.append(moments[:, : vae.config.z_dim].float())
    return torch.cat(out)


def set_latent_stats(vae: AutoencoderKLWan, latents: torch.Tensor) -> tuple[list, list]:
    """Write per-channel mean/std of ``latents [N, C, F, h, w]`` into the VAE config."""
    dims = (0, 2, 3, 4)
    mean = latents.mean(dims).tolist()
    std = latents.std(dims).clamp_min(1e-3).tolist()
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return mean, std
