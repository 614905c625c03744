"""Stage 2 of the toy-world generator: the causal Wan DiT, by flow matching in both pipelines'
layouts, and the guidance distillation stage that may follow it.

:func:`train_dit` draws each step's batch in LongLive's layout (:func:`_longlive_batch`: a
clean copy and a noisy copy of every clip, one noise level per chunk) or, a ``rolling_fraction``
of the steps, in Rolling Forcing's (:func:`_rolling_batch`: a window at rising noise after a
clean sink and history); the attention of each layout is in
:mod:`models.toyworld.generator_attention`, the picture in
:mod:`models.toyworld.train_generator`'s docstring. :func:`guidance_stage` fine-tunes a trained
DiT with text dropout, sweeps the guidance scales on it, and distils the best (:class:`Guide`).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from framestream.kernels.rope import wan_rope
from framestream.models.schedule import FlowSchedule
from framestream.models.text import UMT5TextEncoder
from framestream.models.toyworld.decoded_loss import DecodedLoss
from framestream.models.toyworld.generator_attention import (
    ClipBatchAttention,
    clip_attention,
    rolling_attention,
    rolling_layout,
)
from framestream.models.toyworld.generator_config import TrainConfig, autocast, lr_factor
from framestream.models.toyworld.generator_eval import grade_samples
from framestream.models.vae import WanVAE
from framestream.models.wan import CausalWanModel, wan_config

__all__ = ["Guide", "PromptEncoder", "guidance_stage", "train_dit"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Batches in both pipelines' layouts
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
    # the rows as data noised to the same levels, where a rollout (:func:`_own_rollout`) put
    # the model's own blocks in their place: a teacher reads these
    ideal: torch.Tensor | None = None


def _longlive_batch(
    cfg: TrainConfig,
    x0: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    levels: torch.Tensor,
    attention: ClipBatchAttention,
    gen: torch.Generator,
) -> _Batch:
    """Clean copy + noisy copy of every clip, one noise level per chunk (the picture in
    ``train_generator``'s docstring). ``weight [B, 1, F, h, w]`` is every latent cell's loss
    weight."""
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


def _rolling_batch(
    cfg: TrainConfig,
    x0: torch.Tensor,
    weight: torch.Tensor,
    prompts: torch.Tensor,
    end: int,
    attention: ClipBatchAttention,
    levels: torch.Tensor,
    gen: torch.Generator,
    at_published_levels: bool = False,
) -> _Batch:
    """A Rolling Forcing pass: noise rising from the window's oldest block to its newest, every
    row under the prompt of the newest block (the stream's current prompt). ``levels`` are
    :func:`_rolling_levels`; ``at_published_levels`` puts every clip at them, not only an
    ``inference_level_prob`` share."""
    context, window = rolling_layout(cfg, end)
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
    use_published |= at_published_levels
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


@torch.no_grad()
def _own_rollout(
    batch: _Batch,
    clips: int,
    model: CausalWanModel,
    prompt_states: Callable[[torch.Tensor], torch.Tensor],
    gen: torch.Generator,
) -> _Batch:
    """``batch`` (Rolling Forcing's layout) with its window as a stream feeds it: every block
    the model's own x0 from its pass one level up (the newest block's from pure noise, as it
    entered), noised back down to its level with the batch's noise. A teacher-forced window
    holds data there instead, so a model trained only on it meets its own, softer blocks
    first in a stream and passes their errors on down the window (exposure bias; Self Forcing
    trains on its own rollouts for this). The target moves with the input
    (:func:`_rollout_shortfall`): the x0 it implies is still the data's. A stream's window
    holds the published levels, and so must ``batch``'s: the target's move grows as
    ``1 / sigma``, which the continuous levels take near 0 (BENCHMARKS.md, run 14's first call).

    ``prompt_states(prompt_rows)`` are the text encoder's states of those prompts.
    """
    window = batch.loss_rows
    sigma = batch.t[window, :1].view(clips, -1) / 1000  # [B, n], oldest block first
    above = torch.cat([sigma[:, 1:], torch.ones_like(sigma[:, :1])], 1).flatten()
    sigma, above = sigma.flatten()[:, None, None, None, None], above[:, None, None, None, None]
    ideal = batch.rows[window].float()
    x0 = ideal - sigma * batch.target
    fresh = torch.randn(x0.shape, generator=gen, device=x0.device)
    earlier_window = (1 - above) * x0 + above * fresh
    earlier, t = batch.rows.clone(), batch.t.clone()
    earlier[window] = earlier_window.to(earlier.dtype)
    t[window] = above.flatten()[:, None] * 1000
    with autocast(earlier.device):
        cond = model.encode_text(prompt_states(batch.prompt_rows))
        velocity = model(earlier, t, cond, batch.attention)[window].float()
    own_x0 = earlier_window - above * velocity
    rows = batch.rows.clone()  # (1 - sigma) own_x0 + sigma noise, the newest block exactly
    rows[window] = (ideal + (1 - sigma) * (own_x0 - x0)).to(rows.dtype)
    return replace(batch, rows=rows, ideal=batch.rows)


def _rollout_shortfall(batch: _Batch) -> torch.Tensor | float:
    """What a rollout's loss rows add to the velocity of their ideal rows (data's or a
    teacher's): ``(rows - ideal) / sigma``, so the x0 the model's velocity implies,
    ``rows - sigma v``, is the ideal rows' x0. Nothing for a batch of data."""
    if batch.ideal is None:
        return 0.0
    sigma = batch.t[batch.loss_rows][:, None, :, None, None] / 1000
    return (batch.rows - batch.ideal)[batch.loss_rows].float() / sigma


def _chunk_rows(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B * F/chunk, C, chunk, h, w]`` (clip-major rows)."""
    b, c, f, h, w = x.shape
    return x.reshape(b, c, f // chunk, chunk, h, w).transpose(1, 2).reshape(-1, c, chunk, h, w)


# --------------------------------------------------------------------------------------------
# Noise levels
# --------------------------------------------------------------------------------------------


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


def _shifted(u: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * u / (1 + (shift - 1) * u)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


class PromptEncoder:
    """A text encoder trained with the DiT over the pool's tokenized prompts: each step encodes
    only the prompts its rows use."""

    def __init__(self, encoder: UMT5TextEncoder, prompts: list[str]) -> None:
        self.encoder = encoder
        self.module = encoder.model
        self.ids, self.mask = encoder.tokenize(prompts)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """``[R, L, D]`` states of the prompts ``rows`` index."""
        used, inverse = torch.unique(rows, return_inverse=True)
        return self.encoder(self.ids[used], self.mask[used])[inverse]


@dataclass(frozen=True)
class Guide:
    """Classifier-free guidance of a trained teacher: its guided velocity
    ``v(empty) + scale * (v(prompt) - v(empty))`` is the student's target (guidance
    distillation), so the pipelines sample the student with one forward a step, as they sample
    the published distilled checkpoints. The teacher reads every batch with the sink where a
    training clip has it, so a student trained with ``far_sink_fraction`` learns to read a sink
    a long stream has left far behind as the teacher reads a near one, and reads a rollout's
    window (``rollout_fraction``) on the data it replaced, so the student learns to take its
    own blocks back to where the teacher takes data; at scale 1 those are all it learns (a
    generator distilled into itself)."""

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
    prompt_encoder: PromptEncoder | None = None,
    decoded: DecodedLoss | None = None,
) -> tuple[CausalWanModel, dict]:
    """Flow matching over normalised ``latents [N, 16, F, h, w]`` in both pipelines' layouts:
    LongLive's (clean + noisy copies, per-chunk levels; a ``far_sink_fraction`` of them with the
    sink as far behind as a long stream has it) and, a ``rolling_fraction`` of the
    steps, Rolling Forcing's (a window at rising noise after a clean sink and history; a
    ``rollout_fraction`` of them holding the model's own window, :func:`_own_rollout`).

    Args:
        foreground: bool ``[N, 1, F, h, w]``, latent cells that hold a sprite
            (:func:`latent_foreground`).
        chunk_prompt: int64 ``[N, num_chunks]`` prompt index of every chunk.
        text: ``[P, L, 32]`` text-encoder output of every prompt.
        null: the row of ``text`` that holds the empty prompt (``text_dropout`` trains on it).
        init: start from these weights (at ``finetune_lr``) instead of a seeded init.
        guide: distil this teacher's guided velocity instead of the data's (no dropout: the
            student learns the guided, conditional velocity only).
        prompt_encoder: train this text encoder with the DiT (``text`` is then unused; the
            encoder's EMA weights are written back into it at the end).
        decoded: add this loss on the decoded x0 (``decoded_weight`` of it) to the flow loss.

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
    if cfg.compile_blocks:
        for block in model.blocks:
            block.compile()
    peak_lr = cfg.gen_lr if init is None else cfg.finetune_lr
    dropout = cfg.text_dropout if guide is None else 0.0
    names = [k for k, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    if prompt_encoder is not None:
        prompt_encoder.module.train().requires_grad_(True)
        params += list(prompt_encoder.module.parameters())
    ema = [p.detach().clone().float() for p in params]
    opt = torch.optim.AdamW(
        params, lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.99), fused=device.type == "cuda"
    )
    grid = config.token_grid(latents.shape[3], latents.shape[4])
    rope = wan_rope(config.head_dim)
    b = cfg.gen_batch
    longlive = clip_attention(cfg, grid, rope, b, device)
    rolling = {
        end: rolling_attention(cfg, end, grid, rope, b, device)
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
    start, step, curve, losses, decoded_losses = time.perf_counter(), 0, [], [], []
    idx = None

    def prompt_states(rows: torch.Tensor) -> torch.Tensor:
        return text[rows] if prompt_encoder is None else prompt_encoder(rows)

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
            # drawn only when asked for, so runs without rollouts keep their recorded layouts
            rollout = cfg.rollout_fraction > 0 and layouts.random() < cfg.rollout_fraction
            batch = _rolling_batch(
                cfg, x0, weight, prompts, end, rolling[end], rolling_levels, gen, rollout
            )
            if rollout:
                batch = _own_rollout(batch, b, model, prompt_states, gen)
        else:
            attention = longlive
            if layouts.random() < cfg.far_sink_fraction:
                gap = layouts.randint(1, cfg.max_position - cfg.latent_frames)
                attention = longlive.with_sink_gap(gap, cfg.sink_frames)
            batch = _longlive_batch(cfg, x0, weight, prompts, levels, attention, gen)
        progress = (time.perf_counter() - start) / max(1e-6, deadline - start)
        for group in opt.param_groups:
            group["lr"] = peak_lr * lr_factor(step, cfg.warmup_steps, progress)
        with autocast(device):
            cond = model.encode_text(prompt_states(batch.prompt_rows))
            pred = model(batch.rows, batch.t, cond, batch.attention).float()
        target = batch.target if guide is None else _guided_velocity(guide, batch, text, null)
        target = target + _rollout_shortfall(batch)
        pred = pred[batch.loss_rows]
        error = (pred - target).square()
        loss = (batch.weight * error).mean() / batch.weight.mean()
        if decoded is not None:
            shape_loss = _decoded_loss(decoded, batch, pred, gen)
            decoded_losses.append(shape_loss.detach())
            loss = loss + cfg.decoded_weight * shape_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
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
    weights = dict(zip(names, ema[: len(names)], strict=True))
    final_model.load_state_dict({k: v.cpu() for k, v in weights.items()}, strict=True)
    if prompt_encoder is not None:
        with torch.no_grad():
            for p, averaged in zip(
                prompt_encoder.module.parameters(), ema[len(names) :], strict=True
            ):
                p.copy_(averaged)
        prompt_encoder.module.eval().requires_grad_(False)
    final = torch.stack(losses[-cfg.log_every :]).mean().item() if losses else float("nan")
    report = {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "final_loss": final,
        "first_loss": losses[0].item() if losses else float("nan"),
        "curve": curve,
    }
    if decoded_losses:  # the loss on the decoded x0 (in ``final_loss``, at its weight)
        report["decoded_first_loss"] = decoded_losses[0].item()
        report["decoded_final_loss"] = torch.stack(decoded_losses[-cfg.log_every :]).mean().item()
    return final_model.eval(), report


def _decoded_loss(
    decoded: DecodedLoss, batch: _Batch, velocity: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """``decoded`` over ``batch``'s loss rows: the data's x0 is the ideal rows' (a rollout's
    are the model's own blocks) less ``sigma`` times the data's velocity ``noise - x0``."""
    sigma = batch.t[batch.loss_rows][:, 0] / 1000
    ideal = batch.rows if batch.ideal is None else batch.ideal
    x0 = ideal[batch.loss_rows].float() - sigma[:, None, None, None, None] * batch.target
    return decoded(batch.rows[batch.loss_rows], x0, velocity, sigma, gen)


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
    """The teacher's guided velocity on ``batch``'s loss rows (``[R_loss, C, chunk, h, w]``),
    read in the batch's near-sink layout (a student's far-sink batch reads as the teacher's
    near one) and on its ideal rows (a student's rollout reads as data). At scale 1 that is the
    conditional velocity alone."""
    teacher, device = guide.teacher, batch.rows.device

    def velocity(prompts: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            context = teacher.encode_text(text[prompts])
            rows = batch.rows if batch.ideal is None else batch.ideal
            out = teacher(rows, batch.t, context, batch.attention.near)
        return out.float()[batch.loss_rows]

    cond = velocity(batch.prompt_rows)
    if guide.scale == 1.0:
        return cond
    uncond = velocity(torch.full_like(batch.prompt_rows, null))
    return uncond + guide.scale * (cond - uncond)


# --------------------------------------------------------------------------------------------
# Guidance distillation
# --------------------------------------------------------------------------------------------


def guidance_stage(
    cfg: TrainConfig,
    latents: torch.Tensor,
    foreground: torch.Tensor,
    chunk_prompt: torch.Tensor,
    text: torch.Tensor,
    null: int,
    codec: WanVAE,
    teacher: CausalWanModel,
    encoder: UMT5TextEncoder,
    deadline: float,
    student: CausalWanModel | None = None,
    decoded: DecodedLoss | None = None,
) -> tuple[CausalWanModel, dict]:
    """Guidance distillation of a trained DiT (its flow-matching run learned no unconditional
    velocity): fine-tune it with ``text_dropout`` for ``1 - distill_fraction`` of the time left,
    sample held-out prompts at each of ``guidance_scales`` (not when there is one), and distil
    the teacher guided at the scale whose clips carry the prompt's colours most often. If no
    scale beats unguided sampling, the fine-tuned teacher is the result, unless
    ``far_sink_fraction`` or ``rollout_fraction`` asks for its lesson (:class:`Guide`): then it
    is distilled at scale 1.

    ``encoder`` is the teacher's text encoder, frozen here (``text`` holds its states).
    ``student``, an earlier student of this teacher, goes on distilling instead of a fresh copy
    of the teacher: distillation is checkpointed between calls like flow matching.
    ``decoded`` joins both the fine-tuning's and the distillation's loss (:func:`train_dit`).

    Returns:
        The student (or teacher), and ``{"finetune", "guidance_sweep", "guidance", "distill"}``.
    """
    device = codec.latents_mean.device
    start = time.perf_counter()
    split = start + (1 - cfg.distill_fraction) * (deadline - start)
    args = (cfg, latents, foreground, chunk_prompt, text, device)
    teacher, finetune = train_dit(*args, split, null=null, init=teacher, decoded=decoded)
    teacher = teacher.to(device)
    sweep = {}
    # a single scale leaves nothing to choose, and grading it would cost guided sampling of
    # every eval clip out of the distillation's budget
    scales = cfg.guidance_scales if len(cfg.guidance_scales) > 1 else ()
    for scale in tqdm(scales, desc="guidance sweep", file=sys.stderr):
        graded = grade_samples(
            teacher, codec, encoder, cfg.eval_clips, cfg.latent_frames, cfg.seed, cfg.shift,
            cfg.opening_steps, guidance=scale,
        )  # fmt: skip
        sweep[str(scale)] = {k: graded[k] for k in ("color_adherence", "adherence")}
        logger.info("guidance %.1f: colours %.3f", scale, graded["color_adherence"])
    best = max(
        scales, key=lambda s: sweep[str(s)]["color_adherence"], default=cfg.guidance_scales[0]
    )
    report = {"finetune": finetune, "guidance_sweep": sweep, "guidance": best, "distill": None}
    lessons = cfg.far_sink_fraction or cfg.rolling_fraction * cfg.rollout_fraction
    if best == 1.0 and not lessons:
        return teacher.cpu(), report | finetune
    student, report["distill"] = train_dit(
        *args, deadline, null=null, init=teacher if student is None else student,
        guide=Guide(teacher.eval(), best), decoded=decoded,
    )  # fmt: skip
    return student, report | report["distill"]
