"""Train the tiny toy-world video generator: the codec (tiny Wan VAE), then the causal Wan DiT.

Run ``python -m framestream.models.toyworld.train_generator --out DIR [--device cuda]
[--seconds-budget 150] [--smoke]``. Everything is seeded; the wall-clock budget decides how many
steps each stage gets.
The stages also run one at a time, each with a whole budget (the form for a machine lent in
10-minute calls): ``--codec-only --out A``, then ``--codec A --out B``, then ``--teacher B --out
C`` (guidance distillation, below).

Stages (fractions of the training budget; evaluation runs after it)::

    render pool   N toy clips of 81 frames (64x64, 16 fps) with per-chunk prompts
    1. codec      45%  small AutoencoderKLWan: single frames first, then 17-frame windows
                       of pool clips (temporal resamplers start per-frame, per_frame_init);
                       sprite-weighted MSE + L1 + small KL, one pass per window
                       (models.vae_causal). The decoder streams: its history
                       carries over ``vae_stream_steps`` steps (a new clip continues the
                       stream from its second latent), so it learns the steady state of an
                       endless stream, not only a stream's first frames. Then per-channel
                       mean/std of the encoder means over the pool go into the VAE config
                       (latents_mean / latents_std), so latents are ~N(0, 1)
    2. generator  rest CausalWanModel ("toyworld" preset), flow matching + diffusion forcing
    3. save       vae/ (diffusers), dit.safetensors (original Wan keys), train.json
    4. evaluate   LongLive-style sampling, decode, adherence + codec PSNR into train.json

Generator training ("teacher-forced" diffusion forcing). Each clip of 21 latent frames is split
into 7 chunks of 3 frames and laid out twice, a clean copy at t=0 (what LongLive's cache holds
after its t=0 refresh) and a noisy copy with one noise level per chunk::

    tokens of one clip  [ clean c0 | clean c1 | ... | clean c6 | noisy c0 | ... | noisy c6 ]
    clean chunk a sees  clean frames g <= its own last frame, within sink + window
    noisy chunk a sees  clean frames g <  its first frame, within sink + window, and itself

    sink + window of chunk a (frames 3a .. 3a+2), LongLive sink 3 / window 9 (chunk included):
        g < 3   or   3a + 3 - 9 <= g < 3a + 3

The loss is the MSE of the velocity ``noise - x0`` on the noisy copy only. Every chunk is a batch
row of the DiT (3 latent frames), so each chunk cross-attends to the prompt of its own time:
prompt-switch clips (``switch_clip``, switching at a chunk boundary) condition the chunks before
the switch on the old prompt and those after on the new one. The K/V of earlier chunks are
computed under their own prompt (LongLive recaches them under the new one at a switch).

Guidance distillation (``--teacher``, :func:`guidance_stage`). A small flow-matching DiT follows
its prompt weakly: its conditional velocity barely differs from the unconditional one, so the
sprites it draws rarely carry the prompt's colours. Classifier-free guidance amplifies that
difference, but costs a second forward per step (and, in a causal stream, a second KV cache).
So, as the published few-step checkpoints bake guidance in, the stage fine-tunes the teacher
with ``text_dropout`` (a tenth of the clips under the empty prompt, so it learns the
unconditional velocity), samples held-out prompts at each of ``guidance_scales``, and trains a
student on the same batches to output the teacher's velocity guided at the best scale. The
student is sampled like any other checkpoint, one forward a step.

Sampling (:func:`evaluate`) is the LongLive loop without ``stream/`` (``models/`` must not import
it): per chunk, noise, 4 warped steps ``[1000, 750, 500, 250]`` (shift 5) with re-noising, over a
:class:`~models.attention.DenseAttention` of the clean frames generated so far plus the chunk, under
the same block-causal sink/window mask. Recomputing the clean frames in every forward is the
t=0 refresh: their keys and values equal what the cache would hold.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from framestream.kernels.rope import RopeSpec, apply_rope, wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.positions import frame_positions
from framestream.models.schedule import FlowSchedule, opening_schedule
from framestream.models.text import tiny_umt5_encoder
from framestream.models.toyworld.measure import adherence, color_adherence
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import sample_clip, switch_clip
from framestream.models.toyworld.text import prompt
from framestream.models.vae import WanVAE, tiny_wan_vae, to_uint8
from framestream.models.vae_causal import decode_frames, encode_video
from framestream.models.wan import CausalWanModel, wan_config

__all__ = ["TrainConfig", "evaluate", "grade_samples", "guidance_stage", "main", "train"]

logger = logging.getLogger(__name__)

_FPS = 16.0
_SIZE = (64, 64)
_SPATIAL = 8  # VAE pixels per latent pixel
_TEMPORAL = 4  # VAE frames per latent frame after the first
_PATCH = 2  # DiT latent pixels per token side
_TEXT_SEED = 0
_EVAL_SEED = 1_000_003  # held-out clips: no training rng stream uses this entropy


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run; recorded in ``train.json``.

    Attributes:
        seconds_budget: wall-clock seconds for rendering + codec + generator (eval runs after).
        vae_fraction: share of the budget for the codec stage.
        pool_clips: toy clips rendered once and shared by both stages.
        switch_fraction: share of the pool that are prompt-switch clips.
        max_objects, transient: ``sample_clip`` arguments of the pool.
        vae_stream_steps: steps a codec decoder stream continues before it restarts.
        vae_dim: the codec's base width (``tiny_wan_vae(base_dim=...)``).
        vae_bf16: run the codec under bf16 autocast on CUDA (else fp32 with TF32).
        vae_image_fraction: share of the codec stage on single frames (the first-frame path;
            colours and shapes learn in far cheaper steps) before clips.
        vae_image_batch: frames per single-frame step.
        vae_foreground_weight: extra loss weight of pixels off the background: sprites cover
            a few percent of a frame, and an unweighted loss learns the background first and
            leaves grey blobs for sprites (what the second H200 run showed).
        vae_noise: scale of the posterior sample in training (0: decode the means, a plain
            autoencoder; the small KL then only keeps the latents near unit scale).
        vae_batch, vae_lr, kl_weight: codec optimisation (KL is per element, mean-reduced).
        dit_preset: the Wan preset of the generator.
        latent_frames: latent frames per pool clip (video frames ``1 + 4 (F - 1)``): 7 chunks,
            so LongLive's window evicts and Rolling Forcing's window fills.
        codec_frames: video frames of a codec training window (``1 + 4k``), cut at random from
            a pool clip.
        chunk_frames, sink_frames, window_frames: LongLive's chunking and cache geometry.
        gen_batch, gen_lr, warmup_steps, ema_decay: generator optimisation.
        gen_foreground_weight: extra loss weight of latent cells that hold a sprite pixel (a
            sprite covers one to four of a frame's 64 cells; the background, all of them).
        inference_level_prob: chance a chunk's noise level is one of the 4 sampling levels
            (else a continuous shifted level); for a Rolling Forcing window, chance its levels
            are the published ones (else sorted continuous levels).
        rolling_fraction: share of the steps in Rolling Forcing's layout.
        rolling_window: Rolling Forcing's window, in chunks (one per denoising step).
        shift: sigma shift of training and sampling. 64x64 video (8x8 latents) loses its
            content at far lower noise than 480p, so the toy world samples unshifted; the
            pipelines read it from ``train.json``.
        opening_steps: Euler ODE steps that take a stream's first chunk from pure noise
            (:func:`~models.schedule.opening_schedule`; the pipelines read it from
            ``sampling.json``). Four re-noised steps of this undistilled model leave the first
            chunk at the mean, without sprites (0.02 of frames with the prompt's colours on the
            H200 run's DiT), 16 ODE steps give 0.38, 48 no more.
        text_dropout: chance a clip trains under the empty prompt, so the model also learns the
            unconditional velocity that classifier-free guidance needs.
        guidance_scales: the guidance scales tried on the teacher (the best by colour adherence
            on held-out prompts is distilled); 1.0 is the unguided teacher.
        distill_fraction: share of a guidance run's budget spent distilling (the rest
            fine-tunes the teacher with ``text_dropout``).
        distill_switch_fraction: share of a distillation batch drawn from the pool's
            prompt-switch clips (a quarter of the pool): following a switch, against a context
            that still shows the old prompt, is where a guided student was weakest.
        finetune_lr: peak learning rate when a stage starts from trained weights.
        max_vae_steps, max_gen_steps: step caps (``None``: the budget decides).
        fixed_batch: reuse the first batch every step (smoke runs: loss must fall).
        log_every: steps between logged losses.
        eval_clips: prompts generated by the final evaluation.
        seed: the seed of everything.
    """

    seconds_budget: float = 150.0
    vae_fraction: float = 0.45
    pool_clips: int = 3072
    switch_fraction: float = 0.25
    max_objects: int = 2
    transient: float = 0.1
    vae_stream_steps: int = 6
    vae_dim: int = 24
    vae_bf16: bool = True
    vae_noise: float = 0.0
    vae_image_fraction: float = 0.3
    vae_image_batch: int = 128
    vae_foreground_weight: float = 9.0
    vae_batch: int = 32
    vae_lr: float = 1.5e-3
    kl_weight: float = 1e-4
    dit_preset: str = "toyworld"
    latent_frames: int = 21
    codec_frames: int = 17
    chunk_frames: int = 3
    sink_frames: int = 3
    window_frames: int = 9
    gen_batch: int = 64
    gen_lr: float = 1e-3
    gen_foreground_weight: float = 4.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    inference_level_prob: float = 0.5
    rolling_fraction: float = 0.4
    rolling_window: int = 5
    shift: float = 1.0
    opening_steps: int = 16
    text_dropout: float = 0.1
    guidance_scales: tuple[float, ...] = (1.0, 3.0, 4.5, 6.0, 8.0, 10.0)
    distill_fraction: float = 0.5
    distill_switch_fraction: float = 0.5
    finetune_lr: float = 3e-4
    max_vae_steps: int | None = None
    max_gen_steps: int | None = None
    fixed_batch: bool = False
    log_every: int = 50
    eval_clips: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.codec_frames - 1) % _TEMPORAL or self.codec_frames > self.video_frames:
            raise ValueError(
                f"codec_frames must be 1 + 4k and at most {self.video_frames}, "
                f"got {self.codec_frames}"
            )
        if self.vae_stream_steps < 1:
            raise ValueError(f"vae_stream_steps must be >= 1, got {self.vae_stream_steps}")
        if self.latent_frames % self.chunk_frames:
            raise ValueError(
                f"latent_frames={self.latent_frames} must be a multiple of "
                f"chunk_frames={self.chunk_frames}"
            )
        if not 0 < self.vae_fraction < 1:
            raise ValueError(f"vae_fraction must be in (0, 1), got {self.vae_fraction}")

    @property
    def video_frames(self) -> int:
        return 1 + _TEMPORAL * (self.latent_frames - 1)

    @property
    def num_chunks(self) -> int:
        return self.latent_frames // self.chunk_frames


SMOKE = TrainConfig(
    seconds_budget=600.0,  # the step caps end the stages
    pool_clips=4,
    vae_stream_steps=2,
    vae_dim=8,
    vae_batch=1,
    vae_image_batch=2,
    vae_lr=3e-3,
    max_vae_steps=5,
    latent_frames=6,
    codec_frames=9,
    rolling_window=2,
    dit_preset="tiny",
    gen_batch=2,
    warmup_steps=1,
    max_gen_steps=4,
    fixed_batch=True,
    log_every=1,
    eval_clips=1,
)


# --------------------------------------------------------------------------------------------
# Data: one pool of rendered clips with per-chunk prompts
# --------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """Rendered clips and what conditions each of their chunks."""

    video: torch.Tensor  # uint8 [N, T, H, W, 3]
    chunk_prompt: torch.Tensor  # int64 [N, num_chunks], index into ``prompts``
    prompts: list[str]


def _chunk_first_video_frame(chunk: int, chunk_frames: int) -> int:
    """First video frame decoded from latent chunk ``chunk`` (latent 0 gives one frame)."""
    return 0 if chunk == 0 else 1 + _TEMPORAL * (chunk * chunk_frames - 1)


def render_pool(cfg: TrainConfig, n: int, rng: np.random.Generator) -> Pool:
    """Render ``n`` clips of ``cfg.video_frames`` frames; a ``switch_fraction`` of them switch
    prompt at a random chunk boundary."""
    seconds = cfg.video_frames / _FPS
    video = np.empty((n, cfg.video_frames, *_SIZE, 3), np.uint8)
    index: dict[str, int] = {}
    chunk_prompt = np.empty((n, cfg.num_chunks), np.int64)
    for i in range(n):
        if cfg.num_chunks > 1 and rng.random() < cfg.switch_fraction:
            at = int(rng.integers(1, cfg.num_chunks))
            frame = _chunk_first_video_frame(at, cfg.chunk_frames)
            sw = switch_clip(rng, seconds, frame / _FPS, fps=_FPS, size=_SIZE)
            clip, texts = sw.clip, [sw.before] * at + [sw.after] * (cfg.num_chunks - at)
        else:
            clip = sample_clip(
                rng,
                seconds=seconds,
                fps=_FPS,
                size=_SIZE,
                max_objects=cfg.max_objects,
                transient=cfg.transient,
            )
            texts = [prompt(clip)] * cfg.num_chunks
        video[i] = render(clip)
        chunk_prompt[i] = [index.setdefault(t, len(index)) for t in texts]
    return Pool(torch.from_numpy(video), torch.from_numpy(chunk_prompt), list(index))


def to_signed(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, H, W]`` in ``[-1, 1]``."""
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


# --------------------------------------------------------------------------------------------
# Block-causal sink/window attention
# --------------------------------------------------------------------------------------------


def frame_mask(
    frames: np.ndarray, clean: np.ndarray, chunk: int, sink: int, window: int
) -> np.ndarray:
    """Keep-mask ``[S, S]`` between frame slots (see the module docstring's diagram).

    Args:
        frames: ``[S]`` latent frame index of each slot.
        clean: ``[S]`` bool, whether the slot holds the clean (t=0) copy of its frame.
        chunk, sink, window: LongLive's chunk, sink and window sizes in latent frames.
    """
    q_chunk, k_chunk = (frames // chunk)[:, None], (frames // chunk)[None, :]
    end = (q_chunk + 1) * chunk  # one past the query chunk's last frame
    g = frames[None, :]
    in_cache = (g < sink) | (g >= end - window)
    q_clean, k_clean = clean[:, None], clean[None, :]
    sees_clean = k_clean & in_cache & np.where(q_clean, g < end, k_chunk < q_chunk)
    sees_self_noisy = ~q_clean & ~k_clean & (k_chunk == q_chunk)
    return sees_clean | sees_self_noisy


def token_mask(mask: np.ndarray, tokens_per_frame: int) -> np.ndarray:
    """Frame-slot mask -> token mask (every token of a slot shares the slot's row/column)."""
    return np.repeat(np.repeat(mask, tokens_per_frame, 0), tokens_per_frame, 1)


class ClipBatchAttention:
    """``B`` clips of identical layout: one shared keep-mask, SDPA batched over the clips.

    Equivalent to :class:`~models.attention.DenseAttention` over the packed clips with a
    block-diagonal mask, without the ``(B T)^2`` mask.

    Args:
        pos: int32 ``[T, 3]`` positions of one clip's tokens.
        mask: bool ``[T, T]`` keep-mask of one clip.
        rope: the model's rotation.
        clips: ``B``.
    """

    def __init__(self, pos: torch.Tensor, mask: torch.Tensor, rope: RopeSpec, clips: int) -> None:
        self._pos = pos.repeat(clips, 1)
        self._mask = mask
        self._rope = rope
        self._clips = clips

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self._clips

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B*T, H, D] -> [B, H, T, D]
            return x.unflatten(0, (b, -1)).transpose(1, 2)

        qr = heads(apply_rope(q, self._pos, self._rope))
        kr = heads(apply_rope(k, self._pos, self._rope))
        out = F.scaled_dot_product_attention(qr, kr, heads(v.float()), attn_mask=self._mask)
        return out.transpose(1, 2).flatten(0, 1).to(q.dtype)


def _clip_attention(
    cfg: TrainConfig, grid: tuple[int, int], rope: RopeSpec, clips: int, device: torch.device
) -> ClipBatchAttention:
    """The training layout: clean copy then noisy copy of ``cfg.latent_frames`` frames."""
    frames = np.concatenate([np.arange(cfg.latent_frames)] * 2)
    clean = np.arange(2 * cfg.latent_frames) < cfg.latent_frames
    mask = frame_mask(frames, clean, cfg.chunk_frames, cfg.sink_frames, cfg.window_frames)
    mask = token_mask(mask, grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(frames, grid)).to(device)
    return ClipBatchAttention(pos, torch.from_numpy(mask).to(device), rope, clips)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warmup, then cosine from 1 to 0.1 over the stage's elapsed-time ``progress``."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda"
    )


def _shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


def _chunk_rows(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B * F/chunk, C, chunk, h, w]`` (clip-major rows)."""
    b, c, f, h, w = x.shape
    return x.reshape(b, c, f // chunk, chunk, h, w).transpose(1, 2).reshape(-1, c, chunk, h, w)


@torch.no_grad()
def _encode_prompts(
    prompts: list[str], device: torch.device, preset: str, batch: int = 256
) -> torch.Tensor:
    """``[P, text_len, 32]``: the frozen seeded encoder the pipelines build for ``preset``
    (:func:`models.registry.load_wan_models`)."""
    text_len = wan_config(preset).text_len
    encoder = tiny_umt5_encoder(seed=_TEXT_SEED, text_len=text_len).to(device)
    out = [encoder.encode(prompts[i : i + batch]) for i in range(0, len(prompts), batch)]
    return torch.cat(out).float()  # [P, L, 32]


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))  # signal range [-1, 1]


# --------------------------------------------------------------------------------------------
# Stage 1: codec
# --------------------------------------------------------------------------------------------


def train_codec(
    cfg: TrainConfig, pool: Pool, device: torch.device, deadline: float
) -> tuple[AutoencoderKLWan, dict]:
    """Train a small Wan VAE: single frames first (colours and shapes, cheaply), then clips
    with the decoder as persistent streams (motion, and an endless stream's steady state)."""
    vae = tiny_wan_vae(seed=cfg.seed, base_dim=cfg.vae_dim).vae
    per_frame_init(vae)
    vae = vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
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
            group["lr"] = cfg.vae_lr * _lr_factor(step, 20, progress)
        with _autocast(device, cfg.vae_bf16):
            mean, logvar = encode_video(vae, batch).float().chunk(2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution
            z = mean + cfg.vae_noise * torch.exp(0.5 * logvar) * torch.randn_like(mean)
            x = vae.post_quant_conv(z)
            # a continuing stream decodes the new clip from its second latent (4 frames each)
            recon = decode_frames(vae.decoder, x if restart else x[:, :, 1:], history).float()
        target = batch if restart else batch[:, :, 1:]
        weight = 1.0 + cfg.vae_foreground_weight * _foreground(target)
        mse = (weight * (recon - target).square()).mean() / weight.mean()
        l1 = (weight * (recon - target).abs()).mean() / weight.mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        loss = mse + l1 + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
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


@torch.no_grad()
def per_frame_init(vae: AutoencoderKLWan) -> None:
    """Start every temporal resampler as a per-frame one: the encoder's stride-2 time conv
    keeps the newest frame, the decoder's doubling conv copies each frame twice.

    The image phase trains only the first-frame path, which skips these convs; from random
    weights they would scramble the first clip step's frames and undo the image phase (the
    loss jumped 0.09 -> 0.76 at the switch on the H200). Identity on the newest tap makes a
    clip start as a stack of images, so clips only have to learn what motion adds.
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


def _foreground(video: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """``[B, 1, T, H, W]`` 1.0 where a pixel differs from its frame's background (the median
    of the border pixels, as :func:`~models.toyworld.measure` reads it), else 0.0."""
    border = torch.cat(
        [video[..., 0, :], video[..., -1, :], video[..., :, 0], video[..., :, -1]], dim=-1
    )
    background = border.median(dim=-1).values[..., None, None]  # [B, 3, T, 1, 1]
    return ((video - background).abs().sum(1, keepdim=True) > threshold).float()


@torch.no_grad()
def latent_foreground(pool: Pool, device: torch.device, batch: int = 64) -> torch.Tensor:
    """bool ``[N, 1, F, h, w]``: latent cells whose pixels hold a sprite, over the frames the
    cell encodes (the first latent frame one frame, every later one four)."""
    out = []
    for i in range(0, len(pool.video), batch):
        fg = _foreground(to_signed(pool.video[i : i + batch]).to(device))  # [B, 1, T, H, W]
        first = F.max_pool3d(fg[:, :, :1], (1, _SPATIAL, _SPATIAL))
        rest = F.max_pool3d(fg[:, :, 1:], (_TEMPORAL, _SPATIAL, _SPATIAL))
        out.append(torch.cat([first, rest], dim=2).bool())
    return torch.cat(out)


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


# --------------------------------------------------------------------------------------------
# Stage 2: generator
# --------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """One training batch in the DiT's row layout (one row per 3-frame block)."""

    rows: torch.Tensor  # [R, C, chunk, h, w] model input
    t: torch.Tensor  # [R, chunk] timesteps
    prompt_rows: torch.Tensor  # [R] prompt index of each row
    attention: ClipBatchAttention
    loss_rows: torch.Tensor  # [R] bool, rows whose velocity is trained
    target: torch.Tensor  # [R_loss, C, chunk, h, w] velocity ``noise - x0`` of those rows
    weight: torch.Tensor  # [R_loss, 1, chunk, h, w] loss weight of each latent cell


def _longlive_batch(
    cfg: TrainConfig,
    x0: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    levels: torch.Tensor,
    attention: ClipBatchAttention,
    gen: torch.Generator,
) -> _Batch:
    """Clean copy + noisy copy of every clip, one noise level per chunk (module docstring).
    ``weight [B, 1, F, h, w]`` is every latent cell's loss weight."""
    b, nc, ch = x0.shape[0], cfg.num_chunks, cfg.chunk_frames
    device = x0.device
    noise = torch.randn(x0.shape, generator=gen, device=device)
    sigma = _sample_levels(cfg, levels, (b, nc), gen)  # [B, nc]
    s = sigma.repeat_interleave(ch, 1)[:, None, :, None, None]  # [B, 1, F, 1, 1]
    xt = (1 - s) * x0 + s * noise
    rows = torch.stack([_chunk_rows(x0, ch), _chunk_rows(xt, ch)])  # [2, B*nc, C, ch, h, w]
    rows = rows.unflatten(1, (b, nc)).transpose(0, 1).flatten(0, 2)  # clip, copy, chunk
    t = torch.stack([torch.zeros_like(sigma), sigma * 1000], 1)  # [B, 2, nc]
    t = t.flatten().repeat_interleave(ch).view(-1, ch)  # [B*2*nc, ch]
    noisy = torch.zeros((b, 2, nc), dtype=torch.bool, device=device)
    noisy[:, 1] = True
    return _Batch(
        rows=rows,
        t=t,
        prompt_rows=prompts[:, None, :].expand(b, 2, nc).flatten(),
        attention=attention,
        loss_rows=noisy.flatten(),
        target=_chunk_rows(noise - x0, ch),
        weight=_chunk_rows(weight, ch),
    )


def _rolling_layout(cfg: TrainConfig, end: int) -> tuple[list[int], list[int]]:
    """Rolling Forcing's attention for the window ending before block ``end``: clean context
    blocks (the sink, then the block before the window) and the window's blocks."""
    window = list(range(max(0, end - cfg.rolling_window), end))
    context = sorted({0, window[0] - 1} - {-1}) if window[0] > 0 else []
    return context, window


def _rolling_attention(
    cfg: TrainConfig, end: int, grid: tuple[int, int], rope: RopeSpec, clips: int, device
) -> ClipBatchAttention:
    """Contiguous positions (sink, history, window), as the pipeline lays them out; clean
    blocks see the clean blocks up to themselves, window blocks see everything."""
    context, window = _rolling_layout(cfg, end)
    ch = cfg.chunk_frames
    slots = len(context) + len(window)
    block = np.repeat(np.arange(slots), ch)
    clean = block < len(context)
    mask = np.where(clean[:, None], clean[None, :] & (block[None, :] <= block[:, None]), True)
    mask = token_mask(mask, grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(np.arange(slots * ch), grid)).to(device)
    return ClipBatchAttention(pos, torch.from_numpy(mask).to(device), rope, clips)


def _rolling_batch(
    cfg: TrainConfig,
    x0: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    end: int,
    attention: ClipBatchAttention,
    levels: torch.Tensor,
    gen: torch.Generator,
) -> _Batch:
    """A Rolling Forcing pass: noise rising from the window's oldest block to its newest, every
    row under the prompt of the newest block (the stream's current prompt). ``levels`` are
    :func:`_rolling_levels`."""
    context, window = _rolling_layout(cfg, end)
    b, ch, n = x0.shape[0], cfg.chunk_frames, len(window)
    device = x0.device
    blocks = x0.unflatten(2, (cfg.num_chunks, ch))  # [B, C, nc, ch, h, w]
    clean = blocks[:, :, context].transpose(1, 2)  # [B, k, C, ch, h, w]
    target_x0 = blocks[:, :, window].transpose(1, 2)  # [B, n, C, ch, h, w]
    noise = torch.randn(target_x0.shape, generator=gen, device=device)
    published = levels[-n:]  # a window still ramping up holds the noisiest levels
    u = torch.rand((b, n), generator=gen, device=device)
    random_levels = _shifted(u, cfg.shift).sort(dim=1).values
    use_published = torch.rand((b, 1), generator=gen, device=device) < cfg.inference_level_prob
    sigma = torch.where(use_published, published.expand(b, n), random_levels)  # [B, n]
    s = sigma[:, :, None, None, None, None]
    noisy = (1 - s) * target_x0 + s * noise
    rows = torch.cat([clean, noisy], dim=1)  # [B, k + n, C, ch, h, w]
    t = torch.cat([torch.zeros((b, len(context)), device=device), sigma * 1000], dim=1)
    loss_rows = torch.zeros((b, len(context) + n), dtype=torch.bool, device=device)
    loss_rows[:, len(context) :] = True
    return _Batch(
        rows=rows.flatten(0, 1),
        t=t.flatten().repeat_interleave(ch).view(-1, ch),
        prompt_rows=prompts[:, end - 1 : end].expand(b, len(context) + n).flatten(),
        attention=attention,
        loss_rows=loss_rows.flatten(),
        target=(noise - target_x0).flatten(0, 1),
        weight=weight.unflatten(2, (cfg.num_chunks, ch))[:, :, window]
        .transpose(1, 2)
        .flatten(0, 1),
    )


def _rolling_levels(cfg: TrainConfig, device: torch.device | str) -> torch.Tensor:
    """Rolling Forcing's published window levels, oldest (least noisy) block first."""
    schedule = FlowSchedule((1000, 800, 600, 400, 200), shift=cfg.shift)
    return torch.tensor(schedule.sigmas[::-1], device=device)


def _sample_levels(
    cfg: TrainConfig, levels: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator
) -> torch.Tensor:
    """Sigmas: one of the sampling ``levels`` with ``inference_level_prob``, else continuous."""
    device = levels.device
    u = torch.rand(shape, generator=gen, device=device)
    pick = torch.randint(len(levels), shape, generator=gen, device=device)
    use_level = torch.rand(shape, generator=gen, device=device) < cfg.inference_level_prob
    return torch.where(use_level, levels[pick], _shifted(u, cfg.shift))


@dataclass(frozen=True)
class Guide:
    """Classifier-free guidance of a trained teacher: its guided velocity
    ``v(empty) + scale * (v(prompt) - v(empty))`` is the student's target (guidance
    distillation), so the pipelines sample the student with one forward a step, as they sample
    the published distilled checkpoints."""

    teacher: CausalWanModel
    scale: float


def train_dit(
    cfg: TrainConfig,
    latents: torch.Tensor,
    foreground: torch.Tensor,
    chunk_prompt: torch.Tensor,
    text: torch.Tensor,
    device: torch.device,
    deadline: float,
    *,
    null: int,
    init: CausalWanModel | None = None,
    guide: Guide | None = None,
) -> tuple[CausalWanModel, dict]:
    """Flow matching over normalised ``latents [N, 16, F, h, w]`` in both pipelines' layouts:
    LongLive's (clean + noisy copies, per-chunk levels) and, a ``rolling_fraction`` of the
    steps, Rolling Forcing's (a window at rising noise after a clean sink and history).

    Args:
        foreground: bool ``[N, 1, F, h, w]``, latent cells that hold a sprite
            (:func:`latent_foreground`).
        chunk_prompt: int64 ``[N, num_chunks]`` prompt index of every chunk.
        text: ``[P, L, 32]`` text-encoder output of every prompt.
        null: the row of ``text`` that holds the empty prompt (``text_dropout`` trains on it).
        init: start from these weights (at ``finetune_lr``) instead of a seeded init.
        guide: distil this teacher's guided velocity instead of the data's (no dropout: the
            student learns the guided, conditional velocity only).

    Returns:
        The EMA weights in a fresh model, and the stage's statistics.
    """
    config = wan_config(cfg.dit_preset)
    model = CausalWanModel(config).to(device)
    if init is None:
        model.init_weights(torch.Generator(device).manual_seed(cfg.seed))
    else:
        model.load_state_dict(init.state_dict())
    model.train()
    peak_lr = cfg.gen_lr if init is None else cfg.finetune_lr
    dropout = cfg.text_dropout if guide is None else 0.0
    names = [k for k, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.99))
    grid = (latents.shape[3] // _PATCH, latents.shape[4] // _PATCH)
    rope = wan_rope(config.head_dim)
    b = cfg.gen_batch
    longlive = _clip_attention(cfg, grid, rope, b, device)
    rolling = {
        end: _rolling_attention(cfg, end, grid, rope, b, device)
        for end in range(1, cfg.num_chunks + 1)
    }
    levels = torch.tensor(
        FlowSchedule((1000, 750, 500, 250), shift=cfg.shift).sigmas, device=device
    )
    rolling_levels = _rolling_levels(cfg, device)
    gen = torch.Generator(device).manual_seed(cfg.seed + 2)
    layouts = random.Random(cfg.seed + 3)  # on the host: choosing a layout must not sync a step
    chunk_prompt, text = chunk_prompt.to(device), text.to(device)
    n = latents.shape[0]
    switches = torch.nonzero((chunk_prompt != chunk_prompt[:, :1]).any(1)).flatten()
    from_switches = round(b * cfg.distill_switch_fraction) if guide is not None else 0
    start, step, curve, losses = time.perf_counter(), 0, [], []
    idx = None
    bar = tqdm(desc="generator", unit="step", mininterval=2.0, file=sys.stderr)
    while time.perf_counter() < deadline and (
        cfg.max_gen_steps is None or step < cfg.max_gen_steps
    ):
        if idx is None or not cfg.fixed_batch:
            idx = _draw_clips(n, b, switches, from_switches, gen)
        x0, prompts = latents[idx], chunk_prompt[idx]
        if dropout:
            dropped = torch.rand((b, 1), generator=gen, device=device) < dropout
            prompts = prompts.masked_fill(dropped, null)
        weight = 1.0 + cfg.gen_foreground_weight * foreground[idx].float()
        if layouts.random() < cfg.rolling_fraction:
            end = layouts.randint(1, cfg.num_chunks)
            batch = _rolling_batch(cfg, x0, weight, prompts, end, rolling[end], rolling_levels, gen)
        else:
            batch = _longlive_batch(cfg, x0, weight, prompts, levels, longlive, gen)
        progress = (time.perf_counter() - start) / max(1e-6, deadline - start)
        for group in opt.param_groups:
            group["lr"] = peak_lr * _lr_factor(step, cfg.warmup_steps, progress)
        with _autocast(device):
            cond = model.encode_text(text[batch.prompt_rows])
            pred = model(batch.rows, batch.t, cond, batch.attention).float()
        target = batch.target if guide is None else _guided_velocity(guide, batch, text, null)
        error = (pred[batch.loss_rows] - target).square()
        loss = (batch.weight * error).mean() / batch.weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.float() for p in params], 1 - decay)
        losses.append(loss.detach())
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == 1:
            recent = torch.stack(losses[-cfg.log_every :]).mean().item()
            curve.append((step, recent))
            bar.set_postfix(loss=f"{recent:.4f}")
    bar.close()
    final_model = CausalWanModel(config)
    final_model.load_state_dict({k: v.cpu() for k, v in zip(names, ema, strict=True)}, strict=True)
    final = torch.stack(losses[-cfg.log_every :]).mean().item() if losses else float("nan")
    return final_model.eval(), {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "final_loss": final,
        "first_loss": losses[0].item() if losses else float("nan"),
        "curve": curve,
    }


def _draw_clips(
    n: int, b: int, switches: torch.Tensor, from_switches: int, gen: torch.Generator
) -> torch.Tensor:
    """``b`` pool indices: the first ``from_switches`` among ``switches`` (when there are
    any), the rest uniform over all ``n`` clips."""
    idx = torch.randint(n, (b,), generator=gen, device=switches.device)
    if from_switches and len(switches):
        pick = torch.randint(len(switches), (from_switches,), generator=gen, device=idx.device)
        idx[:from_switches] = switches[pick]
    return idx


@torch.no_grad()
def _guided_velocity(guide: Guide, batch: _Batch, text: torch.Tensor, null: int) -> torch.Tensor:
    """The teacher's guided velocity on ``batch``'s loss rows (``[R_loss, C, chunk, h, w]``)."""
    teacher, device = guide.teacher, batch.rows.device
    velocities = []
    for prompts in (batch.prompt_rows, torch.full_like(batch.prompt_rows, null)):
        with _autocast(device):
            cond = teacher.encode_text(text[prompts])
            velocities.append(teacher(batch.rows, batch.t, cond, batch.attention).float())
    cond, uncond = (v[batch.loss_rows] for v in velocities)
    return uncond + guide.scale * (cond - uncond)


# --------------------------------------------------------------------------------------------
# Sampling and evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    dit: CausalWanModel,
    context: torch.Tensor,
    latent_frames: int,
    latent_hw: tuple[int, int],
    generator: torch.Generator,
    *,
    chunk: int = 3,
    sink: int = 3,
    window: int = 9,
    schedule: FlowSchedule | None = None,
    opening: FlowSchedule | None = None,
    guidance: float = 1.0,
    null: torch.Tensor | None = None,
) -> torch.Tensor:
    """LongLive's loop over one stream, with dense attention instead of the cache.

    Args:
        context: ``[1, L, 32]`` text-encoder output of the prompt.
        latent_frames: frames to generate, a multiple of ``chunk``.
        latent_hw: ``(h, w)`` latent pixels per frame.
        opening: ODE steps in place of the first chunk's first step, as the pipelines take
            them (``stream.pipelines.wan.WanStreamPipeline._open``).
        guidance: classifier-free guidance scale (1: one conditional forward a step).
        null: ``[1, L, 32]`` text-encoder output of the empty prompt (needed when guided).

    Returns:
        ``[1, 16, latent_frames, h, w]`` normalised clean latents.
    """
    schedule = schedule or FlowSchedule((1000, 750, 500, 250), shift=5.0)
    device = context.device
    h, w = latent_hw
    grid = (h // _PATCH, w // _PATCH)
    rope = wan_rope(dit.config.head_dim)
    if guidance != 1.0 and null is None:
        raise ValueError("guided sampling needs the empty prompt's encoding (null)")
    conds = [dit.encode_text(context)] + ([dit.encode_text(null)] if guidance != 1.0 else [])
    channels = dit.config.in_channels
    clean: list[torch.Tensor] = []  # [1, C, chunk, h, w] each
    for c in range(latent_frames // chunk):
        frames = np.arange((c + 1) * chunk)
        is_clean = frames < c * chunk
        mask = token_mask(frame_mask(frames, is_clean, chunk, sink, window), grid[0] * grid[1])
        pos = torch.from_numpy(frame_positions(frames, grid)).to(device)
        attention = DenseAttention(
            pos, (0, pos.shape[0]), rope, causal=False, mask=torch.from_numpy(mask).to(device)
        )
        rows = c + 1
        texts = [
            type(a)(a.k.expand(-1, rows, -1, -1, -1), a.v.expand(-1, rows, -1, -1, -1))
            for a in conds
        ]
        x = torch.randn((1, channels, chunk, h, w), generator=generator, device=device)

        def predict(x: torch.Tensor, t: float, sigma: float, rows=rows, texts=texts, att=attention):
            timestep = torch.zeros((rows, chunk), device=device)
            timestep[-1] = t
            inputs = torch.cat([*clean, x])
            velocity, *uncond = (dit(inputs, timestep, text, att)[-1:] for text in texts)
            if uncond:
                velocity = uncond[0] + guidance * (velocity - uncond[0])
            return FlowSchedule.to_x0(x, velocity, sigma)

        for i, (sigma, t) in enumerate(zip(schedule.sigmas, schedule.timesteps, strict=True)):
            if i == 0 and c == 0 and opening is not None:
                steps = list(zip(opening.sigmas, opening.timesteps, strict=True))
                for j, (s, tj) in enumerate(steps):
                    x0 = predict(x, tj, s)
                    if j + 1 < len(steps):
                        x = FlowSchedule.ode_step(x, x0, s, steps[j + 1][0])
            else:
                x0 = predict(x, t, sigma)
            if i + 1 < len(schedule.sigmas):
                noise = torch.randn(x.shape, generator=generator, device=device)
                x = FlowSchedule.add_noise(x0, noise, schedule.sigmas[i + 1])
        clean.append(x0)
    return torch.cat(clean, dim=2)


def _load_dit(path: Path, device: torch.device, preset: str) -> CausalWanModel:
    dit = CausalWanModel(wan_config(preset))
    dit.load_state_dict(load_file(path), strict=True)
    return dit.to(device).float().eval()


def _eval_clips(n: int, video_frames: int, max_objects: int = 2) -> list:
    rng = np.random.default_rng(_EVAL_SEED)
    return [
        sample_clip(rng, seconds=video_frames / _FPS, fps=_FPS, size=_SIZE, max_objects=max_objects)
        for _ in range(n)
    ]


@torch.no_grad()
def evaluate_codec(vae: WanVAE, n_clips: int = 8, latent_frames: int = 12) -> dict:
    """How well the codec carries the held-out clips: the ceiling of any generator on it.

    Returns:
        ``truth_adherence`` / ``recon_adherence`` (:func:`~models.toyworld.adherence` of the
        rendered and the codec-reconstructed clips), ``recon_psnr`` (dB), and
        ``recon_psnr_stream`` (:func:`stream_psnr`).
    """
    device = vae.latents_mean.device
    clips = _eval_clips(n_clips, 1 + _TEMPORAL * (latent_frames - 1))
    truth, recon_adh, mses = [], [], []
    for clip in clips:
        frames, text = render(clip), prompt(clip)
        truth.append(adherence(frames, text))
        x = to_signed(torch.from_numpy(frames)[None]).to(device)
        z = encode_video(vae.vae, x)[:, : vae.z_dim]
        recon = vae.decode_chunk((z - vae.latents_mean) / vae.latents_std, vae.new_decode_state())
        mses.append(F.mse_loss(recon.float(), x).item())
        recon_adh.append(adherence(to_uint8(recon)[0].cpu().numpy(), text))
    return {
        "truth_adherence": float(np.mean(truth)),
        "recon_adherence": float(np.mean(recon_adh)),
        "recon_psnr": _psnr(float(np.mean(mses))),
        "recon_psnr_stream": stream_psnr(vae, n_clips=min(4, n_clips)),
    }


@torch.no_grad()
def grade_samples(
    dit: CausalWanModel,
    vae: WanVAE,
    n_clips: int = 8,
    latent_frames: int = 12,
    seed: int = 0,
    preset: str = "toyworld",
    shift: float = 1.0,
    opening_steps: int | None = None,
    guidance: float = 1.0,
) -> dict:
    """Generate ``n_clips`` held-out prompts with ``dit`` and grade the decoded clips.

    Returns:
        ``adherence`` and ``color_adherence`` (means over clips of
        :func:`~models.toyworld.adherence` / :func:`~models.toyworld.color_adherence`), their
        per-clip values, and the prompts.
    """
    device = vae.latents_mean.device
    prompts = [prompt(c) for c in _eval_clips(n_clips, 1 + _TEMPORAL * (latent_frames - 1))]
    context = _encode_prompts([*prompts, ""], device, preset)
    generator = torch.Generator(device).manual_seed(seed)
    result: dict = {"prompts": prompts, "latent_frames": latent_frames, "guidance": guidance}
    strict, colors = [], []
    for i, text in enumerate(prompts):
        latents = generate(
            dit, context[i : i + 1], latent_frames, (_SIZE[0] // _SPATIAL, _SIZE[1] // _SPATIAL),
            generator, schedule=FlowSchedule((1000, 750, 500, 250), shift=shift),
            opening=None if opening_steps is None else opening_schedule(opening_steps, shift),
            guidance=guidance, null=context[-1:],
        )  # fmt: skip
        video = to_uint8(vae.decode_chunk(latents, vae.new_decode_state()))[0].cpu().numpy()
        strict.append(adherence(video, text))
        colors.append(color_adherence(video, text))
        if i == 0:
            result["sample_shape"] = list(video.shape)
    return result | {
        "adherence_per_clip": strict,
        "color_adherence_per_clip": colors,
        "adherence": float(np.mean(strict)),
        "color_adherence": float(np.mean(colors)),
    }


@torch.no_grad()
def evaluate(
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    n_clips: int = 8,
    latent_frames: int = 12,
    seed: int = 0,
    preset: str = "toyworld",
    shift: float = 1.0,
    opening_steps: int | None = None,
) -> dict:
    """Grade the trained weights in ``out_dir``: :func:`grade_samples` (unguided, as the
    pipelines sample) and :func:`evaluate_codec`."""
    out_dir, device = Path(out_dir), torch.device(device)
    vae = WanVAE.from_pretrained(out_dir / "vae", device=device)
    dit = _load_dit(out_dir / "dit.safetensors", device, preset)
    graded = grade_samples(dit, vae, n_clips, latent_frames, seed, preset, shift, opening_steps)
    return graded | evaluate_codec(vae, n_clips, latent_frames)


@torch.no_grad()
def stream_psnr(vae: WanVAE, n_clips: int, seconds: float = 10.0, chunk: int = 3) -> dict:
    """Codec PSNR over long clips decoded as a stream, ``chunk`` latents at a time: the
    ``first`` and ``last`` 45 frames, and every second (a decoder that only learned a stream's
    start decays here)."""
    device = vae.latents_mean.device
    latents = int(seconds * _FPS) // _TEMPORAL
    rng = np.random.default_rng(_EVAL_SEED + 1)
    clips = [
        sample_clip(rng, seconds=(1 + _TEMPORAL * (latents - 1)) / _FPS, fps=_FPS, size=_SIZE)
        for _ in range(n_clips)
    ]
    x = to_signed(torch.from_numpy(np.stack([render(c) for c in clips]))).to(device)
    z = encode_video(vae.vae, x)[:, : vae.z_dim]
    z = (z - vae.latents_mean) / vae.latents_std
    state = vae.new_decode_state()
    recon = torch.cat([vae.decode_chunk(part, state) for part in z.split(chunk, dim=2)], dim=2)
    per_frame = (recon.float() - x).square().mean((0, 1, 3, 4)).tolist()
    per_second = [
        _psnr(float(np.mean(per_frame[i : i + int(_FPS)])))
        for i in range(0, len(per_frame), int(_FPS))
    ]
    return {
        "frames": len(per_frame),
        "first": _psnr(float(np.mean(per_frame[:45]))),
        "last": _psnr(float(np.mean(per_frame[-45:]))),
        "per_second": per_second,
    }


def guidance_stage(
    cfg: TrainConfig,
    latents: torch.Tensor,
    foreground: torch.Tensor,
    chunk_prompt: torch.Tensor,
    text: torch.Tensor,
    null: int,
    codec: WanVAE,
    teacher: CausalWanModel,
    deadline: float,
) -> tuple[CausalWanModel, dict]:
    """Guidance distillation of a trained DiT (its flow-matching run learned no unconditional
    velocity): fine-tune it with ``text_dropout`` for ``1 - distill_fraction`` of the time left,
    sample held-out prompts at each of ``guidance_scales``, and distil the teacher guided at the
    scale whose clips carry the prompt's colours most often. If no scale beats unguided
    sampling, the fine-tuned teacher is the result.

    Returns:
        The student (or teacher), and ``{"finetune", "guidance_sweep", "guidance", "distill"}``.
    """
    device = codec.latents_mean.device
    start = time.perf_counter()
    split = start + (1 - cfg.distill_fraction) * (deadline - start)
    args = (cfg, latents, foreground, chunk_prompt, text, device)
    teacher, finetune = train_dit(*args, split, null=null, init=teacher)
    teacher = teacher.to(device)
    sweep = {}
    for scale in tqdm(cfg.guidance_scales, desc="guidance sweep", file=sys.stderr):
        graded = grade_samples(
            teacher, codec, cfg.eval_clips, cfg.latent_frames, cfg.seed, cfg.dit_preset,
            cfg.shift, cfg.opening_steps, guidance=scale,
        )  # fmt: skip
        sweep[str(scale)] = {k: graded[k] for k in ("color_adherence", "adherence")}
        logger.info("guidance %.1f: colours %.3f", scale, graded["color_adherence"])
    best = max(cfg.guidance_scales, key=lambda s: sweep[str(s)]["color_adherence"])
    report = {"finetune": finetune, "guidance_sweep": sweep, "guidance": best, "distill": None}
    if best == 1.0:
        return teacher.cpu(), report | finetune
    student, report["distill"] = train_dit(
        *args, deadline, null=null, init=teacher, guide=Guide(teacher.eval(), best)
    )
    return student, report | report["distill"]


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    out: Path,
    device: torch.device,
    command: str,
    *,
    codec_from: Path | None = None,
    codec_only: bool = False,
    teacher_from: Path | None = None,
) -> dict:
    """Render the pool, then the stages; writes ``vae/``, ``dit.safetensors`` and
    ``train.json`` into ``out``.

    Args:
        codec_from: the folder of an earlier run whose codec (``vae/``) the generator trains
            on; the whole budget then goes to the generator, and that run's ``train.json``
            is kept in this one's under ``codec_run``.
        codec_only: train (and grade) only the codec, with the whole budget.
        teacher_from: the folder of an earlier generator run: its codec is kept, its DiT
            fine-tuned with ``text_dropout`` and then distilled at the best of
            ``guidance_scales`` (:func:`guidance_stage`), with the whole budget.
    """
    if sum((codec_from is not None, codec_only, teacher_from is not None)) > 1:
        raise ValueError("codec_from, codec_only and teacher_from exclude each other")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed conv shapes in the codec

    pool = render_pool(cfg, cfg.pool_clips, np.random.default_rng([cfg.seed, 1]))
    logger.info(
        "rendered %d clips, %d prompts in %.1fs",
        len(pool.video),
        len(pool.prompts),
        time.perf_counter() - t0,
    )
    budget_end = t0 + cfg.seconds_budget
    report: dict = {
        "command": command,
        "seed": cfg.seed,
        "config": asdict(cfg),
        "device": str(device),
        "torch": torch.__version__,
        "size": list(_SIZE),
        "fps": _FPS,
        "pool": {"clips": len(pool.video), "prompts": len(pool.prompts)},
    }
    if codec_from is None and teacher_from is None:
        codec_end = budget_end if codec_only else t0 + cfg.vae_fraction * cfg.seconds_budget
        vae, report["codec"] = train_codec(cfg, pool, device, codec_end)
    else:
        earlier = codec_from or teacher_from
        vae = WanVAE.from_pretrained(earlier / "vae", device=device).vae
        run = json.loads((earlier / "train.json").read_text())
        report["codec_run" if codec_from else "teacher_run"] = run

    t_encode = time.perf_counter()
    raw = encode_pool(vae, pool, device)
    mean, std = set_latent_stats(vae, raw)
    report |= {"latents_mean": mean, "latents_std": std}
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    if codec_only:
        report["train_seconds"] = time.perf_counter() - t0
        t_eval = time.perf_counter()
        codec = WanVAE.from_pretrained(out / "vae", device=device)
        report["codec_eval"] = evaluate_codec(codec, cfg.eval_clips, cfg.latent_frames)
        return _finish(report, out, t0, t_eval)

    m = torch.tensor(mean, device=device)[None, :, None, None, None]
    sd = torch.tensor(std, device=device)[None, :, None, None, None]
    latents = (raw - m) / sd
    del raw
    text = _encode_prompts([*pool.prompts, ""], device, cfg.dit_preset)
    null = len(pool.prompts)  # the empty prompt's row
    report["encode_seconds"] = time.perf_counter() - t_encode
    logger.info("encoded the pool to %s in %.1fs", tuple(latents.shape), report["encode_seconds"])

    foreground = latent_foreground(pool, device)
    if teacher_from is None:
        dit, report["generator"] = train_dit(
            cfg, latents, foreground, pool.chunk_prompt, text, device, budget_end, null=null
        )
    else:
        codec = WanVAE.from_pretrained(out / "vae", device=device)
        teacher = _load_dit(teacher_from / "dit.safetensors", device, cfg.dit_preset)
        dit, report["generator"] = guidance_stage(
            cfg, latents, foreground, pool.chunk_prompt, text, null, codec, teacher, budget_end
        )
    state = {k: v.detach().float().contiguous() for k, v in dit.state_dict().items()}
    save_file(state, out / "dit.safetensors", metadata={"format": "pt", "layout": "wan"})
    report["text_encoder"] = {
        "builder": "framestream.models.text.tiny_umt5_encoder",
        "seed": _TEXT_SEED,
        "text_len": wan_config(cfg.dit_preset).text_len,
        "note": "not saved: the frozen seeded encoder is rebuilt in memory",
    }
    report["train_seconds"] = time.perf_counter() - t0

    t_eval = time.perf_counter()
    sampling = {"shift": cfg.shift, "opening_steps": cfg.opening_steps}
    (out / "sampling.json").write_text(json.dumps(sampling, indent=2) + "\n")
    report["eval"] = evaluate(
        out,
        device,
        cfg.eval_clips,
        cfg.latent_frames,
        cfg.seed,
        cfg.dit_preset,
        cfg.shift,
        cfg.opening_steps,
    )
    return _finish(report, out, t0, t_eval)


def _finish(report: dict, out: Path, t0: float, t_eval: float) -> dict:
    report["eval_seconds"] = time.perf_counter() - t_eval
    report["wall_seconds"] = time.perf_counter() - t0
    (out / "train.json").write_text(json.dumps(report, indent=2))
    return report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m framestream.models.toyworld.train_generator", description=__doc__
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seconds-budget", type=float, default=None, help="training wall seconds")
    p.add_argument("--smoke", action="store_true", help="a few steps of each stage, tiny batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool-clips", type=int, default=None)
    p.add_argument("--vae-batch", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="generator clips per step")
    p.add_argument("--eval-clips", type=int, default=None)
    p.add_argument("--vae-dim", type=int, default=None, help="the codec's base width")
    stage = p.add_mutually_exclusive_group()
    stage.add_argument(
        "--codec-only", action="store_true", help="train only the codec, with the whole budget"
    )
    stage.add_argument(
        "--codec",
        type=Path,
        default=None,
        metavar="RUN",
        help="train the generator on the codec of an earlier run's output folder",
    )
    stage.add_argument(
        "--teacher",
        type=Path,
        default=None,
        metavar="RUN",
        help="distil an earlier generator run's DiT under classifier-free guidance",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SMOKE if args.smoke else TrainConfig()
    overrides = {
        "seconds_budget": args.seconds_budget,
        "pool_clips": args.pool_clips,
        "vae_batch": args.vae_batch,
        "gen_batch": args.batch,
        "eval_clips": args.eval_clips,
        "vae_dim": args.vae_dim,
    }
    cfg = replace(cfg, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None})
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m framestream.models.toyworld.train_generator", *map(str, argv)])
    report = train(
        cfg,
        args.out,
        torch.device(args.device),
        command,
        codec_from=args.codec,
        codec_only=args.codec_only,
        teacher_from=args.teacher,
    )
    codec_eval = report["codec_eval"] if args.codec_only else report["eval"]
    logger.info(
        "codec PSNR %.1f dB (stream: first %.1f, last %.1f), reconstructed adherence %.3f",
        codec_eval["recon_psnr"],
        codec_eval["recon_psnr_stream"]["first"],
        codec_eval["recon_psnr_stream"]["last"],
        codec_eval["recon_adherence"],
    )
    if not args.codec_only:
        logger.info(
            "generator %d steps, loss %.4f, adherence %.3f",
            report["generator"]["steps"],
            report["generator"]["final_loss"],
            report["eval"]["adherence"],
        )
    logger.info("%.0fs in all", report["wall_seconds"])
    return report


if __name__ == "__main__":
    main()
