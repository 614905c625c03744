"""Sampling and grading of the toy-world generator's weights (the last stage of a run).

:func:`generate` is the LongLive loop without ``stream/`` (``models/`` must not import it): per
chunk, noise, 4 warped steps ``[1000, 750, 500, 250]`` with re-noising, over a
:class:`~models.attention.DenseAttention` of the clean frames generated so far plus the chunk,
under the same block-causal sink/window mask the DiT trained under. Recomputing the clean frames
in every forward is the t=0 refresh: their keys and values equal what the cache would hold.

:func:`teacher_forced_x0` denoises each chunk of true latents in one step with the true chunks
before it as context: what the DiT keeps with no sampler in between.

:func:`grade_samples` generates held-out prompts and grades the decoded clips;
:func:`evaluate_codec` and :func:`stream_psnr` measure the codec, the ceiling of any generator
on it; :func:`evaluate` does both for a run's output folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from framestream.kernels.rope import RopeSpec, wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.positions import frame_positions
from framestream.models.schedule import FlowSchedule, opening_schedule
from framestream.models.text import UMT5TextEncoder
from framestream.models.toyworld.embedded import toy_text_encoder
from framestream.models.toyworld.generator_attention import frame_mask, token_mask
from framestream.models.toyworld.generator_config import (
    EVAL_SEED,
    FPS,
    SIZE,
    SPATIAL,
    TEMPORAL,
)
from framestream.models.toyworld.generator_data import encode_prompts, to_signed
from framestream.models.toyworld.measure import adherence, color_adherence, measure
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import sample_clip
from framestream.models.toyworld.text import prompt
from framestream.models.vae import WanVAE, to_uint8
from framestream.models.vae_causal import encode_video
from framestream.models.wan import CausalWanModel, TextConditioning, wan_config

__all__ = [
    "eval_clips",
    "evaluate",
    "evaluate_codec",
    "generate",
    "grade_samples",
    "load_dit",
    "reconstruct",
    "stream_psnr",
    "teacher_forced_x0",
]


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
    grid = dit.config.token_grid(h, w)
    rope = wan_rope(dit.config.head_dim)
    if guidance != 1.0 and null is None:
        raise ValueError("guided sampling needs the empty prompt's encoding (null)")
    conds = [dit.encode_text(context)] + ([dit.encode_text(null)] if guidance != 1.0 else [])
    channels = dit.config.in_channels
    clean: list[torch.Tensor] = []  # [1, C, chunk, h, w] each
    for c in range(latent_frames // chunk):
        attention = _chunk_attention(c, chunk, sink, window, grid, rope, device)
        rows = c + 1
        texts = [_rows_of(a, rows) for a in conds]
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


@torch.no_grad()
def teacher_forced_x0(
    dit: CausalWanModel,
    context: torch.Tensor,
    latents: torch.Tensor,
    sigma: float,
    generator: torch.Generator,
    *,
    chunk: int = 3,
    sink: int = 3,
    window: int = 9,
) -> torch.Tensor:
    """Each chunk of ``latents`` noised to ``sigma`` and denoised in one step, with the true
    chunks before it as its clean context (LongLive's layout, as :func:`generate` attends).

    What a stream would draw if every context it read were right: a sampler's shortfall is
    what :func:`generate` loses beyond this.

    Args:
        context: ``[1, L, 32]`` text-encoder output of the clip's prompt.
        latents: ``[1, C, F, h, w]`` normalised clean latents, ``F`` a multiple of ``chunk``.
        sigma: the noise level in ``(0, 1]``.

    Returns:
        ``[1, C, F, h, w]``: the one-step x0 of every chunk.
    """
    if not 0 < sigma <= 1:
        raise ValueError(f"sigma must be in (0, 1], got {sigma}")
    device = latents.device
    grid = dit.config.token_grid(*latents.shape[-2:])
    rope = wan_rope(dit.config.head_dim)
    cond = dit.encode_text(context)
    out = []
    for c in range(latents.shape[2] // chunk):
        rows = c + 1
        truth = latents[:, :, c * chunk : (c + 1) * chunk]
        noise = torch.randn(truth.shape, generator=generator, device=device)
        x = FlowSchedule.add_noise(truth, noise, sigma)
        timestep = torch.zeros((rows, chunk), device=device)
        timestep[-1] = sigma * 1000  # shift 1: the toy world's training levels
        context_rows = [latents[:, :, k * chunk : (k + 1) * chunk] for k in range(c)]
        inputs = torch.cat([*context_rows, x])  # a row per chunk, as generate() stacks them
        attention = _chunk_attention(c, chunk, sink, window, grid, rope, device)
        velocity = dit(inputs, timestep, _rows_of(cond, rows), attention)[-1:]
        out.append(FlowSchedule.to_x0(x, velocity, sigma))
    return torch.cat(out, dim=2)


def _chunk_attention(
    c: int,
    chunk: int,
    sink: int,
    window: int,
    grid: tuple[int, int],
    rope: RopeSpec,
    device: torch.device,
) -> DenseAttention:
    """Chunk ``c`` noisy after ``c`` clean chunks, under the DiT's sink/window mask."""
    frames = np.arange((c + 1) * chunk)
    frame_level = frame_mask(frames, frames < c * chunk, chunk, sink, window)
    mask = token_mask(frame_level, grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(frames, grid)).to(device)
    return DenseAttention(
        pos, (0, pos.shape[0]), rope, causal=False, mask=torch.from_numpy(mask).to(device)
    )


def _rows_of(text: TextConditioning, rows: int) -> TextConditioning:
    """A prompt's cross-attention K/V repeated for ``rows`` chunk rows."""
    return type(text)(text.k.expand(-1, rows, -1, -1, -1), text.v.expand(-1, rows, -1, -1, -1))


def load_dit(path: Path, device: torch.device, preset: str) -> CausalWanModel:
    """The DiT a run saved (``dit.safetensors``, original Wan names), in fp32 eval mode."""
    dit = CausalWanModel(wan_config(preset))
    dit.load_state_dict(load_file(path), strict=True)
    return dit.to(device).float().eval()


def eval_clips(n: int, video_frames: int, max_objects: int = 2) -> list:
    """The first ``n`` held-out clips of ``video_frames`` frames (seeded by ``EVAL_SEED``)."""
    rng = np.random.default_rng(EVAL_SEED)
    return [
        sample_clip(rng, seconds=video_frames / FPS, fps=FPS, size=SIZE, max_objects=max_objects)
        for _ in range(n)
    ]


@torch.no_grad()
def reconstruct(vae: WanVAE, video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` frames in ``[-1, 1]`` through the codec and back, each clip one
    decoder stream: what any generator on this codec can at best show."""
    z = encode_video(vae.vae, video)[:, : vae.z_dim]
    return vae.decode_chunk(vae.normalize(z), vae.new_decode_state())


@torch.no_grad()
def evaluate_codec(
    vae: WanVAE, n_clips: int = 8, latent_frames: int = 12, stream_seconds: float = 10.0
) -> dict:
    """How well the codec carries the held-out clips: the ceiling of any generator on it.

    Returns:
        ``truth_adherence`` / ``recon_adherence`` (:func:`~models.toyworld.adherence` of the
        rendered and the codec-reconstructed clips), ``recon_psnr`` (dB), and
        ``recon_psnr_stream`` (:func:`stream_psnr` over ``stream_seconds``).
    """
    device = vae.latents_mean.device
    clips = eval_clips(n_clips, 1 + TEMPORAL * (latent_frames - 1))
    truth, recon_adh, mses = [], [], []
    for clip in clips:
        frames, text = render(clip), prompt(clip)
        truth.append(adherence(frames, text))
        x = to_signed(torch.from_numpy(frames)[None]).to(device)
        recon = reconstruct(vae, x)
        mses.append(F.mse_loss(recon.float(), x).item())
        recon_adh.append(adherence(to_uint8(recon)[0].cpu().numpy(), text))
    return {
        "truth_adherence": float(np.mean(truth)),
        "recon_adherence": float(np.mean(recon_adh)),
        "recon_psnr": _psnr(float(np.mean(mses))),
        "recon_psnr_stream": stream_psnr(vae, min(4, n_clips), stream_seconds),
    }


@torch.no_grad()
def grade_samples(
    dit: CausalWanModel,
    vae: WanVAE,
    encoder: UMT5TextEncoder,
    n_clips: int = 8,
    latent_frames: int = 12,
    seed: int = 0,
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
    prompts = [prompt(c) for c in eval_clips(n_clips, 1 + TEMPORAL * (latent_frames - 1))]
    context = encode_prompts([*prompts, ""], encoder, device)
    generator = torch.Generator(device).manual_seed(seed)
    result: dict = {"prompts": prompts, "latent_frames": latent_frames, "guidance": guidance}
    strict, colors = [], []
    for i, text in enumerate(prompts):
        latents = generate(
            dit, context[i : i + 1], latent_frames, (SIZE[0] // SPATIAL, SIZE[1] // SPATIAL),
            generator, schedule=FlowSchedule((1000, 750, 500, 250), shift=shift),
            opening=None if opening_steps is None else opening_schedule(opening_steps, shift),
            guidance=guidance, null=context[-1:],
        )  # fmt: skip
        video = to_uint8(vae.decode_chunk(latents, vae.new_decode_state()))[0].cpu().numpy()
        measured = [measure(frame) for frame in video]  # scored 2 ways
        strict.append(adherence(measured, text))
        colors.append(color_adherence(measured, text))
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
    stream_seconds: float = 10.0,
) -> dict:
    """Grade the trained weights in ``out_dir``: :func:`grade_samples` (unguided, as the
    pipelines sample) and :func:`evaluate_codec`."""
    out_dir, device = Path(out_dir), torch.device(device)
    vae = WanVAE.from_pretrained(out_dir / "vae", device=device)
    dit = load_dit(out_dir / "dit.safetensors", device, preset)
    encoder = toy_text_encoder(wan_config(preset).text_len, out_dir)
    graded = grade_samples(dit, vae, encoder, n_clips, latent_frames, seed, shift, opening_steps)
    return graded | evaluate_codec(vae, n_clips, latent_frames, stream_seconds)


@torch.no_grad()
def stream_psnr(vae: WanVAE, n_clips: int, seconds: float = 10.0, chunk: int = 3) -> dict:
    """Codec PSNR over long clips decoded as a stream, ``chunk`` latents at a time: the
    ``first`` and ``last`` 45 frames, and every second (a decoder that only learned a stream's
    start decays here)."""
    device = vae.latents_mean.device
    latents = int(seconds * FPS) // TEMPORAL
    rng = np.random.default_rng(EVAL_SEED + 1)
    clips = [
        sample_clip(rng, seconds=(1 + TEMPORAL * (latents - 1)) / FPS, fps=FPS, size=SIZE)
        for _ in range(n_clips)
    ]
    x = to_signed(torch.from_numpy(np.stack([render(c) for c in clips]))).to(device)
    z = encode_video(vae.vae, x)[:, : vae.z_dim]
    z = (z - vae.latents_mean) / vae.latents_std
    state = vae.new_decode_state()
    recon = torch.cat([vae.decode_chunk(part, state) for part in z.split(chunk, dim=2)], dim=2)
    per_frame = (recon.float() - x).square().mean((0, 1, 3, 4)).tolist()
    per_second = [
        _psnr(float(np.mean(per_frame[i : i + int(FPS)])))
        for i in range(0, len(per_frame), int(FPS))
    ]
    return {
        "frames": len(per_frame),
        "first": _psnr(float(np.mean(per_frame[:45]))),
        "last": _psnr(float(np.mean(per_frame[-45:]))),
        "per_second": per_second,
    }


def _psnr(mse: float) -> float:
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))  # signal range [-1, 1]
