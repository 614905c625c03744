"""Train the tiny toy-world video generator: the codec (tiny Wan VAE), then the causal Wan DiT.

Run ``python -m framestream.models.toyworld.train_generator --out DIR [--device cuda]
[--seconds-budget 150] [--smoke]``. Everything is seeded; the wall-clock budget decides how many
steps each stage gets.
The stages also run one at a time, each with a whole budget (the form for a machine lent in
10-minute calls): ``--codec-only --out A``, then ``--codec A --out B`` (``--resume B --out B2``
goes on training B's DiT and text encoder), then ``--teacher B --out C`` (guidance
distillation, below). ``--sharpen A --out A2`` trains only A's decoder (``--vae-edge-weight``:
corners; ``--decoder-noise``: latents a little off the encoder's, as a DiT gives them), keeping
the latents every DiT on A was trained on. ``--dit-preset`` picks the DiT's
Wan preset; the tiny umT5 text encoder trains with the DiT (``train_text_encoder``; saved as
``text_encoder.safetensors``, which the registry loads beside the DiT) unless
``--frozen-text-encoder`` keeps its seeded weights; ``--tokenizer words`` has it read the toy
world's closed vocabulary, a word a token (saved as ``words.json``), instead of bytes.

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
    2. generator  rest CausalWanModel (--dit-preset; "toyworld"), flow matching + diffusion forcing
    3. save       vae/ (diffusers), dit.safetensors (original Wan keys), train.json,
                       text_encoder.safetensors and words.json (when trained, when it reads words)
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
student is sampled like any other checkpoint, one forward a step. With ``--far-sink-fraction``
the student reads those batches with the sink up to ``max_position`` frames behind while the
teacher reads them with it near, so ``--teacher`` of an already distilled generator with
``--guidance-scales 1.0`` distils it into itself, unchanged but for how it reads a far sink.
With ``--rollout-fraction`` a share of Rolling Forcing's batches holds the student's own window
(each block its x0 from the pass a level up, noised back down, as a stream feeds it) where the
teacher reads data, and the student learns to take its own blocks where the teacher takes data.

A loss through the decoder (``--decoded-weight``, in any DiT stage;
:class:`~models.toyworld.decoded_loss.DecodedLoss`). The flow loss weighs every latent direction
alike; the sharpened decoder draws a sprite's corners from a few of them. With a weight, a stage
also decodes the x0 the DiT's velocity implies at low noise (``--decoded-sigma-max``) with the
frozen decoder, and adds the codec's own sprite-weighted pixel and corner loss against the
decoded data.

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
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file, save_model

from framestream.models.text import WordTokenizer
from framestream.models.toyworld.decoded_loss import DecodedLoss
from framestream.models.toyworld.deepen import deepened_dit
from framestream.models.toyworld.embedded import TEXT_ENCODER_FILE, WORDS_FILE, toy_text_encoder
from framestream.models.toyworld.generator_config import (
    FPS,
    SIZE,
    SMOKE,
    TEXT_SEED,
    TrainConfig,
)
from framestream.models.toyworld.generator_data import (
    encode_prompts,
    latent_foreground,
    render_pool,
)
from framestream.models.toyworld.generator_eval import evaluate, evaluate_codec, load_dit
from framestream.models.toyworld.text import VOCABULARY
from framestream.models.toyworld.train_codec import encode_pool, set_latent_stats, train_codec
from framestream.models.toyworld.train_dit import PromptEncoder, guidance_stage, train_dit
from framestream.models.vae import WanVAE
from framestream.models.wan import wan_config

# The stages, each in a module of its own, in the order a run takes them:
#   generator_config     TrainConfig, SMOKE, the video geometry, the shared optimisation rules
#   generator_data       the clip pool, sprite masks, the prompts' text encodings
#   train_codec          stage 1: the codec, then the pool's latents and their statistics
#   generator_attention  the masks of both pipelines' layouts the DiT trains under
#   train_dit            stage 2: the DiT (both layouts) and guidance distillation
#   generator_eval       sampling (generate) and grading (evaluate, grade_samples, stream_psnr)
# This module is the driver: train() runs them and writes the output folder; main() is the CLI.

__all__ = ["main", "train"]

logger = logging.getLogger(__name__)


def train(
    cfg: TrainConfig,
    out: Path,
    device: torch.device,
    command: str,
    *,
    codec_from: Path | None = None,
    codec_only: bool = False,
    teacher_from: Path | None = None,
    student_from: Path | None = None,
    resume_from: Path | None = None,
    sharpen_from: Path | None = None,
) -> dict:
    """Render the pool, then the stages; writes ``vae/``, ``dit.safetensors`` and
    ``train.json`` into ``out``.

    Args:
        codec_from: the folder of an earlier run whose codec (``vae/``) the generator trains
            on; the whole budget then goes to the generator, and that run's ``train.json``
            is kept in this one's under ``codec_run``.
        codec_only: train (and grade) only the codec, with the whole budget.
        resume_from: the folder of an earlier generator run whose codec, DiT and text encoder
            go on training by flow matching (at ``finetune_lr``), with the whole budget; that
            run's ``train.json`` is kept under ``resumed_run``. A DiT of fewer layers than
            ``dit_preset`` is deepened (:func:`~models.toyworld.deepen.deepened_dit`).
        teacher_from: the folder of an earlier generator run: its codec is kept, its DiT
            fine-tuned with ``text_dropout`` and then distilled at the best of
            ``guidance_scales`` (:func:`guidance_stage`), with the whole budget.
        student_from: with ``teacher_from``, the folder of an earlier run distilled from that
            teacher: its DiT goes on distilling; its ``train.json`` is kept under
            ``student_run``.
        sharpen_from: the folder of an earlier run whose codec's decoder alone trains on, with
            the whole budget (its encoder frozen: the latents, and a DiT trained on them, stay
            valid); writes and grades only ``vae/``, as ``codec_only`` does.
    """
    # the earlier run a stage starts from, under the key its train.json is kept by in this one's
    starts = {
        "codec_run": codec_from,
        "teacher_run": teacher_from,
        "resumed_run": resume_from,
        "sharpened_run": sharpen_from,
    }
    starts = {key: run for key, run in starts.items() if run is not None}
    if len(starts) + codec_only > 1:
        raise ValueError(
            "codec_from, codec_only, teacher_from, resume_from and sharpen_from exclude each other"
        )
    if student_from is not None and teacher_from is None:
        raise ValueError("student_from goes on distilling from a teacher_from, which is missing")
    if cfg.decoder_noise and sharpen_from is None:
        raise ValueError("decoder_noise trains a sharpened decoder: sharpen_from is missing")
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
        "size": list(SIZE),
        "fps": FPS,
        "pool": {"clips": len(pool.video), "prompts": len(pool.prompts)},
    }
    if not starts:
        codec_end = budget_end if codec_only else t0 + cfg.vae_fraction * cfg.seconds_budget
        vae, report["codec"] = train_codec(cfg, pool, device, codec_end)
    else:
        ((key, earlier),) = starts.items()
        vae = WanVAE.from_pretrained(earlier / "vae", device=device).vae
        report[key] = json.loads((earlier / "train.json").read_text())
    if sharpen_from is not None:
        vae, report["codec"] = train_codec(cfg, pool, device, budget_end, decoder_of=vae)
    vae_only = codec_only or sharpen_from is not None

    t_encode = time.perf_counter()
    if sharpen_from is None:
        raw = encode_pool(vae, pool, device)
    if not starts:
        mean, std = set_latent_stats(vae, raw)
    else:  # an earlier run's DiT (or one trained on its codec) learnt latents normalised by
        # that run's statistics: a pool of another seed must not shift them (its encoder, when
        # sharpened, is frozen: the latents are the earlier run's too)
        mean, std = list(vae.config.latents_mean), list(vae.config.latents_std)
    report |= {"latents_mean": mean, "latents_std": std}
    vae.to("cpu").save_pretrained(out / "vae", safe_serialization=True)
    if vae_only:
        report["train_seconds"] = time.perf_counter() - t0
        t_eval = time.perf_counter()
        codec = WanVAE.from_pretrained(out / "vae", device=device)
        report["codec_eval"] = evaluate_codec(
            codec, cfg.eval_clips, cfg.latent_frames, cfg.eval_stream_seconds
        )
        return _finish(report, out, t0, t_eval)

    m = torch.tensor(mean, device=device)[None, :, None, None, None]
    sd = torch.tensor(std, device=device)[None, :, None, None, None]
    latents = (raw - m) / sd
    del raw
    # a guidance run keeps its teacher's encoder (frozen) and a resumed one its own, with the
    # tokenizer each was trained with; a fresh DiT trains its own
    text_len = wan_config(cfg.dit_preset).text_len
    words = VOCABULARY if cfg.tokenizer == "words" else None
    encoder = toy_text_encoder(text_len, teacher_from or resume_from, words).to(device)
    reads_words = isinstance(encoder.tokenizer, WordTokenizer)
    prompts = [*pool.prompts, ""]
    text = encode_prompts(prompts, encoder, device)
    null = len(pool.prompts)  # the empty prompt's row
    report["encode_seconds"] = time.perf_counter() - t_encode
    logger.info("encoded the pool to %s in %.1fs", tuple(latents.shape), report["encode_seconds"])

    foreground = latent_foreground(pool, device)
    codec, decoded = None, None  # the codec as saved, for the stages that decode with it
    if teacher_from is not None or cfg.decoded_weight:
        codec = WanVAE.from_pretrained(out / "vae", device=device)
    if cfg.decoded_weight:
        decoded = DecodedLoss(
            codec, cfg.decoded_frames, cfg.decoded_sigma_max, cfg.gen_foreground_weight
        )
    trains_encoder = teacher_from is None and cfg.train_text_encoder
    if teacher_from is None:
        init = None
        if resume_from is not None:
            init, grown = deepened_dit(resume_from / "dit.safetensors", cfg.dit_preset)
            init = init.to(device)
            if grown["to_layers"] > grown["from_layers"]:
                report["deepened"] = grown
        dit, report["generator"] = train_dit(
            cfg, latents, foreground, pool.chunk_prompt, text, device, budget_end, null=null,
            init=init, prompt_encoder=PromptEncoder(encoder, prompts) if trains_encoder else None,
            decoded=decoded,
        )  # fmt: skip
    else:
        teacher = load_dit(teacher_from / "dit.safetensors", device, cfg.dit_preset)
        student = None
        if student_from is not None:
            student = load_dit(student_from / "dit.safetensors", device, cfg.dit_preset)
            report["student_run"] = json.loads((student_from / "train.json").read_text())
        dit, report["generator"] = guidance_stage(
            cfg, latents, foreground, pool.chunk_prompt, text, null, codec, teacher, encoder,
            budget_end, student, decoded,
        )  # fmt: skip
    state = {k: v.detach().float().contiguous() for k, v in dit.state_dict().items()}
    save_file(state, out / "dit.safetensors", metadata={"format": "pt", "layout": "wan"})
    trained = trains_encoder or (
        teacher_from is not None and (teacher_from / TEXT_ENCODER_FILE).is_file()
    )
    if trained:  # its token embedding is tied to umT5's shared one: save_model keeps one
        save_model(encoder.model.float().cpu(), str(out / TEXT_ENCODER_FILE))
    if reads_words:
        encoder.tokenizer.save(out / WORDS_FILE)
    report["text_encoder"] = {
        "builder": "framestream.models.text.tiny_umt5_encoder",
        "seed": TEXT_SEED,
        "text_len": text_len,
        "weights": TEXT_ENCODER_FILE if trained else None,
        "tokenizer": WORDS_FILE if reads_words else "bytes",
        "note": "trained with the DiT"
        if trains_encoder
        else (
            "the teacher's, frozen" if trained else "the frozen seeded encoder, rebuilt in memory"
        ),
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
        cfg.eval_stream_seconds,
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
    p.add_argument("--vae-batch", type=int, default=None, help="codec clips per step")
    p.add_argument("--vae-image-batch", type=int, default=None, help="codec frames per image step")
    p.add_argument("--batch", type=int, default=None, help="generator clips per step")
    p.add_argument("--lr", type=float, default=None, help="a fresh generator's peak learning rate")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="peak learning rate of a DiT that starts trained (--resume, --teacher, --student)",
    )
    p.add_argument("--eval-clips", type=int, default=None)
    p.add_argument("--vae-dim", type=int, default=None, help="the codec's base width")
    p.add_argument("--vae-edge-weight", type=float, default=None, help="codec corner loss")
    p.add_argument(
        "--decoder-noise",
        type=float,
        default=None,
        help="with --sharpen: noise on the latents the decoder trains on, in latent stds",
    )
    p.add_argument("--dit-preset", default=None, help="the generator's Wan preset")
    p.add_argument(
        "--tokenizer",
        choices=("bytes", "words"),
        default=None,
        help="what a fresh DiT's text encoder reads prompts as (a run started from keeps its own)",
    )
    p.add_argument(
        "--guidance-scales",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=None,
        help="comma-separated scales a --teacher run sweeps before distilling the best",
    )
    p.add_argument(
        "--distill-fraction", type=float, default=None, help="share of a --teacher run distilling"
    )
    p.add_argument(
        "--far-sink-fraction",
        type=float,
        default=None,
        help="share of LongLive's steps with the sink as far behind as a long stream has it",
    )
    p.add_argument(
        "--rolling-fraction",
        type=float,
        default=None,
        help="share of the steps in Rolling Forcing's layout",
    )
    p.add_argument(
        "--rollout-fraction",
        type=float,
        default=None,
        help="share of Rolling Forcing's steps whose window holds the model's own blocks",
    )
    p.add_argument(
        "--decoded-weight",
        type=float,
        default=None,
        help="weight of the loss on the DiT's x0 through the frozen decoder (sprite shapes)",
    )
    p.add_argument(
        "--decoded-frames", type=int, default=None, help="latent frames that loss decodes a step"
    )
    p.add_argument(
        "--decoded-sigma-max",
        type=float,
        default=None,
        help="the noisiest level a latent frame may be at to take part in that loss",
    )
    p.add_argument(
        "--frozen-text-encoder", action="store_true", help="keep the seeded text encoder frozen"
    )
    p.add_argument(
        "--compile-blocks",
        action="store_true",
        help="compile the trained DiT's blocks (torch.compile; fuses the step's elementwise work)",
    )
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
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="go on training an earlier generator run's DiT and text encoder",
    )
    stage.add_argument(
        "--sharpen",
        type=Path,
        default=None,
        metavar="RUN",
        help="fine-tune only the decoder of an earlier run's codec (its latents stay valid)",
    )
    stage.add_argument(
        "--teacher",
        type=Path,
        default=None,
        metavar="RUN",
        help="distil an earlier generator run's DiT under classifier-free guidance",
    )
    p.add_argument(
        "--student",
        type=Path,
        default=None,
        metavar="RUN",
        help="with --teacher: go on distilling an earlier student of that teacher",
    )
    args = p.parse_args(argv)
    if args.student is not None and args.teacher is None:
        p.error("--student goes on distilling from a --teacher")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = SMOKE if args.smoke else TrainConfig()
    overrides = {
        "seconds_budget": args.seconds_budget,
        "pool_clips": args.pool_clips,
        "vae_batch": args.vae_batch,
        "vae_image_batch": args.vae_image_batch,
        "gen_batch": args.batch,
        "gen_lr": args.lr,
        "finetune_lr": args.finetune_lr,
        "eval_clips": args.eval_clips,
        "vae_dim": args.vae_dim,
        "vae_edge_weight": args.vae_edge_weight,
        "decoder_noise": args.decoder_noise,
        "dit_preset": args.dit_preset,
        "tokenizer": args.tokenizer,
        "guidance_scales": args.guidance_scales,
        "distill_fraction": args.distill_fraction,
        "far_sink_fraction": args.far_sink_fraction,
        "rolling_fraction": args.rolling_fraction,
        "rollout_fraction": args.rollout_fraction,
        "decoded_weight": args.decoded_weight,
        "decoded_frames": args.decoded_frames,
        "decoded_sigma_max": args.decoded_sigma_max,
        "train_text_encoder": False if args.frozen_text_encoder else None,
        "compile_blocks": args.compile_blocks or None,
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
        student_from=args.student,
        resume_from=args.resume,
        sharpen_from=args.sharpen,
    )
    codec_only = args.codec_only or args.sharpen is not None
    codec_eval = report["codec_eval"] if codec_only else report["eval"]
    logger.info(
        "codec PSNR %.1f dB (stream: first %.1f, last %.1f), reconstructed adherence %.3f",
        codec_eval["recon_psnr"],
        codec_eval["recon_psnr_stream"]["first"],
        codec_eval["recon_psnr_stream"]["last"],
        codec_eval["recon_adherence"],
    )
    if not codec_only:
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
