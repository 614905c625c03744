"""What decides a run of the toy-world generator's training (``train_generator``).

:class:`TrainConfig` is recorded whole in each run's ``train.json``; :data:`SMOKE` is the
few-step CPU run the tests take. Beside it: the toy world's video geometry and the seeds that
are not configuration (the frozen text encoder's, the held-out clips'), and the two rules of
optimisation both stages follow (:func:`lr_factor`, :func:`autocast`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "EVAL_SEED",
    "FPS",
    "SIZE",
    "SMOKE",
    "SPATIAL",
    "TEMPORAL",
    "TEXT_SEED",
    "TrainConfig",
    "autocast",
    "lr_factor",
]

FPS = 16.0  # video frames per second
SIZE = (64, 64)  # video frame (height, width)
SPATIAL = 8  # VAE pixels per latent pixel
TEMPORAL = 4  # VAE frames per latent frame after the first
TEXT_SEED = 0  # the frozen tiny umT5 encoder's seed
EVAL_SEED = 1_000_003  # held-out clips: no training rng stream uses this entropy


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
        vae_edge_weight: weight of an L1 loss on the spatial gradients of sprite pixels (the
            codec rounded corners, so squares and diamonds read as circles; BENCHMARKS.md's
            runs 5 and 10).
        vae_foreground_weight: extra loss weight of pixels off the background: sprites cover
            a few percent of a frame, and an unweighted loss learns the background first and
            leaves grey blobs for sprites (what the second H200 run showed).
        vae_noise: scale of the posterior sample in training (0: decode the means, a plain
            autoencoder; the small KL then only keeps the latents near unit scale).
        decoder_noise: in a decoder-only run (``--sharpen``), Gaussian noise of this many of
            the generator's per-channel latent standard deviations added to the latents the
            decoder trains on: a DiT's latents lie a little off the encoder's, and a decoder
            that has only seen the encoder's may draw them as ragged lumps.
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
        rollout_fraction: share of Rolling Forcing's steps whose window holds the model's own
            blocks, from its pass a level up, as a stream feeds it
            (:func:`~models.toyworld.train_dit._own_rollout`), not data noised to each level;
            an extra forward without gradients a step. Off by default, as ``far_sink_fraction``.
        far_sink_fraction: share of LongLive's steps whose frames after the sink are moved a
            random distance (1 to ``max_position`` minus a clip) away from it, as a stream has
            them: its sink keeps positions 0-2 while the window counts on to ``max_position``
            (a clip alone only ever puts the sink within 20 frames of the chunk). Off by
            default, so the shipped generator's recorded commands train what they trained. In
            a ``--teacher`` run the teacher reads those batches with the sink near
            (:class:`~models.toyworld.train_dit.Guide`), even at guidance scale 1.
        max_position: LongLive's (``LongLiveConfig.max_position``): past it the window's
            positions stop growing, so the sink is at most this far from a chunk.
        rolling_window: Rolling Forcing's window, in chunks (one per denoising step).
        shift: sigma shift of training and sampling. 64x64 video (8x8 latents) loses its
            content at far lower noise than 480p, so the toy world samples unshifted; the
            pipelines read it from ``train.json``.
        opening_steps: Euler ODE steps that take a stream's first chunk from pure noise
            (:func:`~models.schedule.opening_schedule`; the pipelines read it from
            ``sampling.json``). Four re-noised steps of this undistilled model leave the first
            chunk at the mean, without sprites; an ODE opening lets a layout form, and more
            steps than the default gave no more (BENCHMARKS.md, "Why the ODE opening").
        decoded_weight: weight of :class:`~models.toyworld.decoded_loss.DecodedLoss`, the
            DiT's x0 decoded by the frozen codec and compared with the decoded data in pixels
            (sprite-weighted, with a corner term): the flow loss weighs every latent direction
            alike, the decoder draws corners from a few of them. Off by default, so the
            shipped generator's recorded commands train what they trained.
        decoded_frames: latent frames decoded a step for that loss.
        decoded_sigma_max: the noisiest level a latent frame may be at to take part in it.
        train_text_encoder: train the tiny umT5 with the DiT (saved beside it as
            ``text_encoder.safetensors``) instead of keeping its seeded random weights frozen:
            a random byte-level encoder leaves the DiT to untangle which colour word belongs to
            which sprite and which to the background, and runs 6-8 followed their prompts' colours
            in about half the frames.
        tokenizer: what a fresh DiT's text encoder reads a prompt as: ``"bytes"`` (UTF-8, the
            shipped generator's) or ``"words"`` (the toy world's closed vocabulary, a token a
            word: a colour or a background is then one token the cross-attention can find,
            not a run of bytes it must first learn to delimit; a ``text_len`` of 32 holds the
            longest prompt).
        text_dropout: chance a clip trains under the empty prompt, so the model also learns the
            unconditional velocity that classifier-free guidance needs.
        guidance_scales: the guidance scales tried on the teacher (the best by colour adherence
            on held-out prompts is distilled); 1.0 is the unguided teacher.
        distill_fraction: share of a guidance run's budget spent distilling (the rest
            fine-tunes the teacher with ``text_dropout``).
        distill_switch_fraction: share of a distillation batch drawn from the pool's
            prompt-switch clips (a quarter of the pool): following a switch, against a context
            that still shows the old prompt, is where a guided student was weakest.
        finetune_lr: peak learning rate when a stage starts from trained weights (a resumed or
            distilled DiT, a sharpened decoder).
        max_vae_steps, max_gen_steps: step caps (``None``: the budget decides).
        fixed_batch: reuse the first batch every step (smoke runs: loss must fall).
        compile_blocks: compile the trained DiT's blocks (``torch.compile`` on each block: one
            block's code serves every layer, and once the layout first changes the compiler
            makes its shapes dynamic, so a run compiles a handful of graphs, not one per layer
            or layout). Training runs the torch code of the norms, the modulation and the rotation
            in fp32, not the fused Triton kernels (they have no backward), so a step is many
            small elementwise passes over the batch's tokens, which the compiler fuses.
            :mod:`evals.devtools.probe_train_step` times a step both ways.
        log_every: steps between logged losses.
        eval_clips: prompts generated by the final evaluation.
        eval_stream_seconds: length of the final evaluation's streamed codec decode
            (:func:`~models.toyworld.generator_eval.stream_psnr`); from 6 s on, its first and
            last 45 frames, which it compares, are apart.
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
    decoder_noise: float = 0.0
    vae_image_fraction: float = 0.3
    vae_image_batch: int = 128
    vae_foreground_weight: float = 9.0
    vae_edge_weight: float = 0.0
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
    rollout_fraction: float = 0.0
    far_sink_fraction: float = 0.0
    max_position: int = 1024
    rolling_window: int = 5
    shift: float = 1.0
    opening_steps: int = 16
    decoded_weight: float = 0.0
    decoded_frames: int = 256
    decoded_sigma_max: float = 0.5
    train_text_encoder: bool = True
    tokenizer: str = "bytes"
    text_dropout: float = 0.1
    guidance_scales: tuple[float, ...] = (1.0, 3.0, 4.5, 6.0, 8.0, 10.0)
    distill_fraction: float = 0.5
    distill_switch_fraction: float = 0.5
    finetune_lr: float = 3e-4
    max_vae_steps: int | None = None
    max_gen_steps: int | None = None
    fixed_batch: bool = False
    compile_blocks: bool = False
    log_every: int = 50
    eval_clips: int = 8
    eval_stream_seconds: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.codec_frames - 1) % TEMPORAL or self.codec_frames > self.video_frames:
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
        if not 0 <= self.distill_fraction <= 1:
            raise ValueError(f"distill_fraction must be in [0, 1], got {self.distill_fraction}")
        if self.tokenizer not in ("bytes", "words"):
            raise ValueError(f"tokenizer must be 'bytes' or 'words', got {self.tokenizer!r}")
        if not self.guidance_scales:
            raise ValueError("guidance_scales must name at least one scale")

    @property
    def video_frames(self) -> int:
        return 1 + TEMPORAL * (self.latent_frames - 1)

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
    eval_stream_seconds=6.0,  # 93 frames: the least whose first and last 45 do not overlap
)


# --------------------------------------------------------------------------------------------
# Optimisation both stages share
# --------------------------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warmup, then cosine from 1 to 0.1 over the stage's elapsed-time ``progress``."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU runs stay in fp32)."""
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda"
    )
