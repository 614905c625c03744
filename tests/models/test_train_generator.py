"""CPU smoke run of the toy-world generator training script, and its attention layouts."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from framestream.kernels.rope import wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.positions import frame_positions
from framestream.models.registry import WanPaths, load_wan_models
from framestream.models.text import ByteTokenizer, WordTokenizer
from framestream.models.toyworld import train_generator as tg
from framestream.models.toyworld.embedded import (
    GENERATOR_DIR,
    TEXT_ENCODER_FILE,
    WORDS_FILE,
    toy_text_encoder,
)
from framestream.models.toyworld.generator_attention import (
    ClipBatchAttention,
    clip_attention,
    frame_mask,
    rolling_attention,
    rolling_layout,
    token_mask,
)
from framestream.models.toyworld.generator_config import SMOKE, TrainConfig
from framestream.models.toyworld.generator_data import (
    foreground_mask,
    latent_foreground,
    render_pool,
    to_signed,
)
from framestream.models.toyworld.generator_eval import generate, teacher_forced_x0
from framestream.models.toyworld.train_codec import per_frame_init
from framestream.models.toyworld.train_dit import (
    Guide,
    _Batch,
    _draw_clips,
    _guided_velocity,
    _longlive_batch,
    _own_rollout,
    _rolling_batch,
    _rolling_levels,
    _rollout_shortfall,
)
from framestream.models.vae import WanVAE, tiny_wan_vae
from framestream.models.wan import CausalWanModel, wan_config
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.requests import GenerationRequest


@pytest.mark.slow
def test_smoke_run_writes_loadable_weights(tmp_path):
    report = tg.main(["--smoke", "--out", str(tmp_path)])

    for name in ("vae/config.json", "dit.safetensors", "train.json", "sampling.json"):
        assert (tmp_path / name).is_file(), name
    sampling = json.loads((tmp_path / "sampling.json").read_text())
    assert sampling == {"shift": SMOKE.shift, "opening_steps": SMOKE.opening_steps}
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["command"].endswith(f"--smoke --out {tmp_path}")
    assert saved["text_encoder"]["seed"] == 0 and saved["text_encoder"]["text_len"] == 64
    assert saved["text_encoder"]["weights"] == TEXT_ENCODER_FILE

    # the encoder trained with the DiT is what the pipelines encode prompts with
    prompt = ["a red circle moves right on a black background"]
    text_len = wan_config("tiny").text_len
    trained = toy_text_encoder(text_len, tmp_path).encode(prompt)
    assert not torch.equal(trained, toy_text_encoder(text_len).encode(prompt))
    paths = WanPaths(dit=tmp_path / "dit.safetensors", dit_layout="wan", vae=tmp_path / "vae")
    models = load_wan_models("tiny", paths)
    assert torch.equal(models.text.encode(prompt), trained)

    vae = WanVAE.from_pretrained(tmp_path / "vae")
    assert vae.latents_mean.flatten().tolist() == report["latents_mean"]
    assert torch.allclose(vae.latents_std.flatten(), torch.tensor(report["latents_std"]))

    dit = CausalWanModel(wan_config("tiny"))
    dit.load_state_dict(load_file(tmp_path / "dit.safetensors"), strict=True)

    codec, gen = report["codec"], report["generator"]
    assert codec["steps"] == SMOKE.max_vae_steps and gen["steps"] == SMOKE.max_gen_steps
    losses = [loss for _, loss in codec["curve"]] + [loss for _, loss in gen["curve"]]
    assert all(math.isfinite(x) for x in losses)
    image_steps = math.ceil(SMOKE.vae_image_fraction * SMOKE.max_vae_steps)
    clip_losses = [loss for step, loss in codec["curve"] if step > image_steps]
    assert len(clip_losses) >= 2 and clip_losses[-1] < clip_losses[0]  # one batch, falling
    assert 0.0 <= report["eval"]["adherence"] <= 1.0
    assert math.isfinite(report["eval"]["recon_psnr"])
    stream = report["eval"]["recon_psnr_stream"]  # its first and last 45 frames apart
    assert stream["frames"] > 90 and math.isfinite(stream["first"] - stream["last"])


def test_frame_mask_is_longlive_sink_and_window():
    frames = np.arange(15)
    mask = frame_mask(frames, np.ones(15, bool), chunk=3, sink=3, window=9)
    # chunk 4 (frames 12-14) sees the sink 0-2 and the window 6-14 (itself included)
    expected = np.zeros(15, bool)
    expected[[0, 1, 2, *range(6, 15)]] = True
    assert (mask[12] == expected).all() and (mask[14] == expected).all()
    # chunk 1 sees frames 0-5: block-causal, whole chunks
    assert mask[3, :6].all() and not mask[3, 6:].any()

    # training layout: noisy chunk a sees clean chunks before it and its own noisy chunk
    both = np.concatenate([frames[:6]] * 2)
    clean = np.arange(12) < 6
    m = frame_mask(both, clean, chunk=3, sink=3, window=9)
    assert not m[6, :6].any() and m[6, 6:9].all() and not m[6, 9:].any()  # noisy chunk 0
    assert m[9, :3].all() and not m[9, 3:9].any() and m[9, 9:].all()  # noisy chunk 1


def test_clip_batch_attention_matches_block_diagonal_dense():
    torch.manual_seed(0)
    clips, frames, grid, heads, dim = 3, 4, (2, 2), 2, 32
    fr = np.concatenate([np.arange(frames)] * 2)
    clean = np.arange(2 * frames) < frames
    mask = token_mask(frame_mask(fr, clean, 2, 2, 4), grid[0] * grid[1])
    pos = torch.from_numpy(frame_positions(fr, grid))
    t = pos.shape[0]
    q, k, v = (torch.randn(clips * t, heads, dim) for _ in range(3))
    rope = wan_rope(dim)
    batched = ClipBatchAttention(pos, torch.from_numpy(mask), rope, clips)
    dense_mask = torch.block_diag(*[torch.from_numpy(mask)] * clips).bool()
    dense = DenseAttention(pos.repeat(clips, 1), (0, clips * t), rope, False, dense_mask)
    torch.testing.assert_close(batched.attend(0, q, k, v), dense.attend(0, q, k, v))


def test_far_sink_layout_moves_only_the_frames_after_the_sink():
    torch.manual_seed(0)
    clips, frames, grid, heads, dim, sink, gap = 2, 6, (2, 2), 2, 32, 2, 500
    fr = np.concatenate([np.arange(frames)] * 2)
    clean = np.arange(2 * frames) < frames
    mask = torch.from_numpy(token_mask(frame_mask(fr, clean, 2, sink, 4), grid[0] * grid[1]))
    rope = wan_rope(dim)
    near = ClipBatchAttention(torch.from_numpy(frame_positions(fr, grid)), mask, rope, clips)
    far = near.with_sink_gap(gap, sink)
    streamed = np.where(fr >= sink, fr + gap, fr)  # a stream `gap` frames on: the sink stays
    stream = ClipBatchAttention(
        torch.from_numpy(frame_positions(streamed, grid)), mask, rope, clips
    )
    q, k, v = (torch.randn(clips * mask.shape[0], heads, dim) for _ in range(3))
    torch.testing.assert_close(far.attend(0, q, k, v), stream.attend(0, q, k, v))
    # rotations are relative: the sink's own tokens attend as before, every later one anew
    in_sink = torch.from_numpy(np.repeat(fr < sink, grid[0] * grid[1])).repeat(clips)
    moved = (far.attend(0, q, k, v) - near.attend(0, q, k, v)).abs().amax((1, 2))
    assert moved[in_sink].max() < 1e-5 and moved[~in_sink].min() > 1e-3


@pytest.mark.parametrize(
    ("end", "context", "window"),
    [(1, [], [0]), (3, [], [0, 1, 2]), (5, [], [0, 1, 2, 3, 4]), (6, [0], [1, 2, 3, 4, 5]),
     (7, [0, 1], [2, 3, 4, 5, 6])],
)  # fmt: skip
def test_rolling_layout_is_sink_history_and_window(end, context, window):
    cfg = TrainConfig()
    assert rolling_layout(cfg, end) == (context, window)


def test_rolling_attention_context_is_causal_and_window_sees_all():
    cfg, grid = TrainConfig(), (2, 2)
    attention = rolling_attention(cfg, 7, grid, wan_rope(32), clips=1, device="cpu")
    per_block = cfg.chunk_frames * grid[0] * grid[1]
    blocks = attention._mask[::per_block, ::per_block].numpy()  # 2 context + 5 window blocks
    expected = np.ones((7, 7), bool)
    expected[0, 1:] = False  # the sink sees itself
    expected[1, 2:] = False  # the history sees the sink and itself
    np.testing.assert_array_equal(blocks, expected)
    positions = attention._pos[:: per_block // cfg.chunk_frames, 0].tolist()
    assert positions == list(range(7 * cfg.chunk_frames))  # contiguous, as the pipeline's


def test_rolling_batch_trains_window_rows_under_the_newest_prompt():
    cfg = TrainConfig()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, cfg.latent_frames, 4, 4, generator=gen)
    prompts = torch.arange(2 * cfg.num_chunks).view(2, cfg.num_chunks)
    attention = rolling_attention(cfg, 7, (2, 2), wan_rope(32), clips=2, device="cpu")
    weight = torch.rand(2, 1, cfg.latent_frames, 4, 4, generator=gen)
    levels = _rolling_levels(cfg, "cpu")
    batch = _rolling_batch(cfg, x0, weight, prompts, 7, attention, levels, gen)
    assert batch.rows.shape == (2 * 7, 16, 3, 4, 4)
    # the window is blocks 2..6, each block's weights those of its own latent frames
    torch.testing.assert_close(batch.weight.view(2, 5, 1, 3, 4, 4)[:, 0], weight[:, :, 6:9])
    assert batch.weight.shape[0] == batch.target.shape[0]
    assert batch.loss_rows.view(2, 7).tolist() == [[False] * 2 + [True] * 5] * 2
    assert batch.prompt_rows.view(2, 7).tolist() == [[6] * 7, [13] * 7]
    t = batch.t.view(2, 7, 3)[:, :, 0]
    assert (t[:, :2] == 0).all() and (t[:, 2:].diff(dim=1) >= 0).all()  # noise rises
    torch.testing.assert_close(batch.rows.view(2, 7, 16, 3, 4, 4)[:, 1], x0[:, :, 3:6])


def test_foreground_marks_sprites_not_the_background():
    from framestream.models.toyworld import render, sample_clip

    rng = np.random.default_rng(3)
    frames = render(sample_clip(rng, seconds=0.5, fps=16, size=(64, 64), max_objects=2))
    video = to_signed(torch.from_numpy(frames)[None])
    mask = foreground_mask(video)[0, 0].numpy()  # [T, H, W]
    background = frames[:, :1, :1].astype(int)  # the corner is background in these clips
    differs = np.abs(frames.astype(int) - background).sum(-1) > 0.1 * 127.5
    assert mask.shape == differs.shape and 0 < mask.mean() < 0.5
    assert (mask.astype(bool) == differs).mean() > 0.99


def test_per_frame_init_makes_temporal_resamplers_copy_frames():
    vae = tiny_wan_vae(seed=3, base_dim=8).vae
    per_frame_init(vae)
    resamplers = [m for m in vae.modules() if getattr(m, "time_conv", None) is not None]
    assert {m.mode for m in resamplers} == {"downsample3d", "upsample3d"}
    for m in resamplers:
        c = m.dim
        x = torch.randn(2, c, 5, 3, 3)
        with torch.no_grad():
            y = m.time_conv(x)
        if m.mode == "upsample3d":  # two copies of every frame, stacked in channels
            b, _, t, h, w = y.shape
            copies = y.reshape(b, 2, c, t, h, w)
            torch.testing.assert_close(copies[:, 0], x)
            torch.testing.assert_close(copies[:, 1], x)
        else:  # stride 2 over 3 taps, no padding: output i is input frame 2i + 2
            torch.testing.assert_close(y, x[:, :, 2::2])


@pytest.mark.slow
def test_stages_codec_then_generator_then_guidance_distillation(tmp_path):
    codec_run, generator_run = tmp_path / "codec", tmp_path / "generator"
    codec_report = tg.main(["--smoke", "--codec-only", "--out", str(codec_run)])
    assert codec_report["codec"]["steps"] == SMOKE.max_vae_steps
    assert "generator" not in codec_report and not (codec_run / "dit.safetensors").exists()
    assert 0.0 <= codec_report["codec_eval"]["recon_adherence"] <= 1.0

    far = ["--far-sink-fraction", "1.0"]  # every LongLive step in a long stream's layout
    rollout = ["--rolling-fraction", "0.5", "--rollout-fraction", "1.0"]
    decoded = ["--decoded-weight", "1.0", "--decoded-frames", "8"]  # x0 through the decoder
    argv = ["--smoke", "--codec", str(codec_run), *far, *rollout, *decoded]
    report = tg.main([*argv, "--out", str(generator_run)])
    assert "codec" not in report and report["codec_run"]["command"] == codec_report["command"]
    assert report["config"]["far_sink_fraction"] == 1.0
    assert report["config"]["decoded_weight"] == 1.0
    assert math.isfinite(report["generator"]["decoded_final_loss"])
    assert (report["config"]["rolling_fraction"], report["config"]["rollout_fraction"]) == (0.5, 1)
    assert all(math.isfinite(loss) for _, loss in report["generator"]["curve"])
    assert report["generator"]["steps"] == SMOKE.max_gen_steps
    trained = WanVAE.from_pretrained(codec_run / "vae").vae.state_dict()
    shipped = WanVAE.from_pretrained(generator_run / "vae").vae.state_dict()
    for name, weight in trained.items():
        torch.testing.assert_close(shipped[name], weight)
    assert report["latents_mean"] == codec_report["latents_mean"]  # same pool, same codec

    # sharpening trains the decoder alone: the encoder, so every latent, stays as it was
    sharp_run = tmp_path / "sharp"
    argv = ["--smoke", "--sharpen", str(codec_run), "--vae-edge-weight", "1.0"]
    sharp = tg.main([*argv, "--decoder-noise", "0.1", "--out", str(sharp_run)])
    assert sharp["codec"]["steps"] == SMOKE.max_vae_steps and "generator" not in sharp
    assert sharp["config"]["decoder_noise"] == 0.1 and math.isfinite(sharp["codec"]["final_loss"])
    assert sharp["sharpened_run"]["command"] == codec_report["command"]
    assert sharp["latents_mean"] == codec_report["latents_mean"]
    sharpened = WanVAE.from_pretrained(sharp_run / "vae").vae.state_dict()
    for name, weight in trained.items():
        if name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(sharpened[name], weight), name
    assert any(not torch.equal(sharpened[k], trained[k]) for k in trained if "decoder." in k)

    # two scales above 1, so distillation runs whichever the smoke teacher's sweep picks
    cfg = replace(SMOKE, guidance_scales=(2.0, 3.0))
    guided_run = tmp_path / "guided"
    guided = tg.train(cfg, guided_run, torch.device("cpu"), "test", teacher_from=generator_run)
    gen = guided["generator"]
    assert guided["teacher_run"]["command"] == report["command"] and "codec" not in guided
    assert gen["finetune"]["steps"] == gen["distill"]["steps"] == cfg.max_gen_steps
    assert gen["guidance"] in (2.0, 3.0) and set(gen["guidance_sweep"]) == {"2.0", "3.0"}
    assert all(math.isfinite(loss) for _, loss in gen["distill"]["curve"])
    student = load_file(guided_run / "dit.safetensors")
    teacher = load_file(generator_run / "dit.safetensors")
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    assert 0.0 <= guided["eval"]["color_adherence"] <= 1.0

    # a far-sink run distils even at scale 1: the student learns to read a far sink as its
    # teacher reads a near one
    argv = ["--smoke", "--teacher", str(guided_run), "--guidance-scales", "1.0", "--seed", "1"]
    argv += [*far, *rollout, "--finetune-lr", "3e-5", "--out", str(tmp_path / "itself")]
    itself = tg.main(argv)
    assert itself["config"]["finetune_lr"] == 3e-5
    assert itself["generator"]["guidance"] == 1.0
    assert itself["generator"]["guidance_sweep"] == {}  # one scale: nothing to choose, no sampling
    assert itself["generator"]["distill"]["steps"] == cfg.max_gen_steps
    assert all(math.isfinite(loss) for _, loss in itself["generator"]["distill"]["curve"])

    # distillation goes on from that student, not from a fresh copy of the teacher; a pool of
    # another seed leaves the latents' statistics the teacher and student learnt on as they were
    more_run = tmp_path / "more"
    more = tg.train(
        replace(cfg, seed=1), more_run, torch.device("cpu"), "test", teacher_from=generator_run,
        student_from=guided_run,
    )  # fmt: skip
    assert more["student_run"]["command"] == guided["command"]
    assert more["latents_mean"] == report["latents_mean"]
    assert more["latents_std"] == report["latents_std"]
    assert more["teacher_run"]["command"] == report["command"]
    continued = load_file(more_run / "dit.safetensors")

    def distance(a: dict, b: dict) -> float:
        return sum(float((a[k] - b[k]).square().sum()) for k in a) ** 0.5

    assert 0 < distance(continued, student) < distance(continued, teacher)


def test_decoder_noise_without_a_decoder_to_sharpen_is_refused(tmp_path):
    with pytest.raises(ValueError, match="decoder_noise trains a sharpened decoder"):
        tg.train(replace(SMOKE, decoder_noise=0.1), tmp_path, torch.device("cpu"), "test")


def test_a_student_without_its_teacher_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tg.main(["--smoke", "--student", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "--student goes on distilling from a --teacher" in capsys.readouterr().err
    with pytest.raises(ValueError, match="teacher_from"):
        tg.train(SMOKE, tmp_path / "out", torch.device("cpu"), "test", student_from=tmp_path)


def test_distillation_batches_draw_their_share_from_switch_clips():
    switches = torch.tensor([3, 7])
    idx = _draw_clips(10, 8, switches, 4, torch.Generator().manual_seed(0))
    assert idx.shape == (8,) and set(idx[:4].tolist()) <= {3, 7}
    assert _draw_clips(10, 8, switches[:0], 4, torch.Generator()).shape == (8,)  # none


def _tiny_batch(prompt_rows: torch.Tensor) -> tuple[CausalWanModel, _Batch]:
    """A seeded tiny DiT and a LongLive-layout batch of one clip (2 chunks)."""
    cfg = replace(SMOKE, latent_frames=6)
    model = CausalWanModel(wan_config("tiny")).eval()
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():  # zero-init output heads would make every velocity 0
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    grid = (4, 4)
    attention = clip_attention(cfg, grid, wan_rope(model.config.head_dim), 1, "cpu")
    x0 = torch.randn(
        1, model.config.in_channels, 6, 8, 8, generator=torch.Generator().manual_seed(1)
    )
    weight = torch.ones(1, 1, 6, 8, 8)
    levels = torch.tensor([1.0, 0.75, 0.5, 0.25])
    gen = torch.Generator().manual_seed(2)
    batch = _longlive_batch(cfg, x0, weight, prompt_rows, levels, attention, gen)
    return model, batch


def test_guided_velocity_interpolates_conditional_and_empty_prompt_velocities():
    text = torch.randn(
        3, wan_config("tiny").text_len, 32, generator=torch.Generator().manual_seed(3)
    )
    model, batch = _tiny_batch(torch.tensor([[0, 1]]))  # chunk 0 under prompt 0, chunk 1 under 1

    def velocity(prompts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(batch.rows, batch.t, model.encode_text(text[prompts]), batch.attention)
        return out[batch.loss_rows]

    conditional = velocity(batch.prompt_rows)
    empty = velocity(torch.full_like(batch.prompt_rows, 2))
    assert not torch.allclose(conditional, empty)  # the prompt reaches the velocity
    for scale in (0.0, 1.0, 3.0):
        guided = _guided_velocity(Guide(model, scale), batch, text, null=2)
        torch.testing.assert_close(guided, empty + scale * (conditional - empty))


def test_the_guide_reads_a_far_sink_batch_with_the_sink_near():
    text = torch.randn(
        3, wan_config("tiny").text_len, 32, generator=torch.Generator().manual_seed(3)
    )
    model, near = _tiny_batch(torch.tensor([[0, 1]]))
    far = replace(near, attention=near.attention.with_sink_gap(700, SMOKE.sink_frames))

    def velocity(attention: ClipBatchAttention, prompts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(near.rows, near.t, model.encode_text(text[prompts]), attention)
        return out[near.loss_rows]

    conditional = velocity(near.attention, near.prompt_rows)
    assert not torch.allclose(conditional, velocity(far.attention, near.prompt_rows), atol=1e-4)
    torch.testing.assert_close(_guided_velocity(Guide(model, 1.0), far, text, null=2), conditional)
    empty = velocity(near.attention, torch.full_like(near.prompt_rows, 2))
    guided = _guided_velocity(Guide(model, 3.0), far, text, null=2)
    torch.testing.assert_close(guided, empty + 3.0 * (conditional - empty))


def _tiny_rolling_batch() -> tuple[CausalWanModel, _Batch, torch.Tensor, torch.Tensor]:
    """The tiny DiT of :func:`_tiny_batch`, a Rolling Forcing batch of 2 clips at the published
    levels (sink, history, then a full window of 5 blocks), its clips' x0 and prompt states."""
    model, _ = _tiny_batch(torch.tensor([[0, 0]]))
    cfg = replace(TrainConfig(), inference_level_prob=0.0)  # overridden below
    gen = torch.Generator().manual_seed(6)
    x0 = torch.randn(2, 16, cfg.latent_frames, 8, 8, generator=gen)
    prompts = torch.tensor([[0] * cfg.num_chunks, [1] * cfg.num_chunks])
    attention = rolling_attention(cfg, 7, (4, 4), wan_rope(model.config.head_dim), 2, "cpu")
    weight = torch.ones(2, 1, cfg.latent_frames, 8, 8)
    levels = _rolling_levels(cfg, "cpu")
    batch = _rolling_batch(cfg, x0, weight, prompts, 7, attention, levels, gen, True)
    assert torch.equal(batch.t.view(2, 7, 3)[:, 2:, 0], (levels * 1000).expand(2, 5))
    text = torch.randn(2, model.config.text_len, 32, generator=torch.Generator().manual_seed(7))
    return model, batch, x0, text


def test_a_rollout_window_holds_the_models_own_blocks_a_level_down():
    """Each window block is the model's x0 from the pass a level up (the next block's level,
    pure noise for the newest), noised back to its own level with the batch's noise; the sink
    and history stay data, and the target still implies the data's x0."""
    model, batch, x0, text = _tiny_rolling_batch()
    gen = torch.Generator().manual_seed(8)
    fresh = torch.randn((10, 16, 3, 8, 8), generator=torch.Generator().set_state(gen.get_state()))
    rollout = _own_rollout(batch, 2, model, lambda rows: text[rows], gen)

    assert rollout.ideal is batch.rows and torch.equal(rollout.t, batch.t)
    sigma = batch.t.view(2, 7, 3)[:, 2:, 0] / 1000  # [clip, window block]
    assert sigma[:, -1].eq(1).all() and (sigma.diff(dim=1) > 0).all()
    above = torch.cat([sigma[:, 1:], torch.ones(2, 1)], 1)
    data = x0.unflatten(2, (7, 3)).transpose(1, 2)[:, 2:]  # [clip, block, C, 3, h, w]
    noise = batch.target.view(2, 5, 16, 3, 8, 8) + data
    earlier = batch.rows.clone().view(2, 7, 16, 3, 8, 8)
    t = batch.t.clone().view(2, 7, 3)
    for clip in range(2):
        for k in range(5):
            u = above[clip, k]
            earlier[clip, 2 + k] = (1 - u) * data[clip, k] + u * fresh.view(2, 5, 16, 3, 8, 8)[
                clip, k
            ]
            t[clip, 2 + k] = u * 1000
    with torch.no_grad():
        cond = model.encode_text(text[batch.prompt_rows])
        velocity = model(earlier.flatten(0, 1), t.view(-1, 3), cond, batch.attention)
    velocity = velocity.view(2, 7, 16, 3, 8, 8)
    rows = rollout.rows.view(2, 7, 16, 3, 8, 8)
    torch.testing.assert_close(rows[:, :2], batch.rows.view(2, 7, 16, 3, 8, 8)[:, :2])
    for clip in range(2):
        for k in range(5):
            u, s = above[clip, k], sigma[clip, k]
            own = earlier[clip, 2 + k] - u * velocity[clip, 2 + k]
            expected = (1 - s) * own + s * noise[clip, k]
            torch.testing.assert_close(rows[clip, 2 + k], expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(rows[:, -1], batch.rows.view(2, 7, 16, 3, 8, 8)[:, -1])  # fresh noise
    assert not torch.allclose(rows[:, 2:-1], batch.rows.view(2, 7, 16, 3, 8, 8)[:, 2:-1])

    implied = rollout.rows[rollout.loss_rows] - sigma.flatten()[:, None, None, None, None] * (
        rollout.target + _rollout_shortfall(rollout)
    )
    torch.testing.assert_close(implied, data.flatten(0, 1), atol=1e-4, rtol=1e-4)
    assert _rollout_shortfall(batch) == 0.0


def test_the_guide_reads_a_rollout_as_data():
    model, batch, _, text = _tiny_rolling_batch()
    rollout = _own_rollout(batch, 2, model, lambda rows: text[rows], torch.Generator())
    with torch.no_grad():
        cond = model.encode_text(text[batch.prompt_rows])
        on_data = model(batch.rows, batch.t, cond, batch.attention)[batch.loss_rows]
    torch.testing.assert_close(_guided_velocity(Guide(model, 1.0), rollout, text, 0), on_data)


def test_guided_sampling_at_scale_one_is_unguided_and_at_zero_ignores_the_prompt():
    model, _ = _tiny_batch(torch.tensor([[0, 0]]))
    text = torch.randn(
        2, wan_config("tiny").text_len, 32, generator=torch.Generator().manual_seed(4)
    )
    prompt, empty = text[:1], text[1:]

    def sample(context: torch.Tensor, **guidance) -> torch.Tensor:
        gen = torch.Generator().manual_seed(5)
        return generate(model, context, 6, (8, 8), gen, **guidance)

    torch.testing.assert_close(sample(prompt, guidance=1.0, null=empty), sample(prompt))
    torch.testing.assert_close(sample(prompt, guidance=0.0, null=empty), sample(empty))
    assert not torch.allclose(sample(prompt, guidance=3.0, null=empty), sample(prompt))
    with pytest.raises(ValueError, match="empty prompt"):
        sample(prompt, guidance=3.0)


def test_teacher_forcing_reads_the_true_chunks_before_each_chunk_and_none_after():
    model, _ = _tiny_batch(torch.tensor([[0, 0]]))
    context = torch.randn(1, wan_config("tiny").text_len, 32)
    latents = torch.randn(1, model.config.in_channels, 9, 8, 8)

    def forced(latents: torch.Tensor) -> torch.Tensor:
        return teacher_forced_x0(model, context, latents, 0.5, torch.Generator().manual_seed(6))

    before = forced(latents)
    later = latents.clone()
    later[:, :, 6:] += 1.0  # the last chunk's truth changes
    after = forced(later)
    torch.testing.assert_close(after[:, :, :6], before[:, :, :6])  # no chunk reads a later one
    earlier = latents.clone()
    earlier[:, :, :3] += 1.0  # the first chunk's truth changes
    changed = forced(earlier)
    assert not torch.allclose(changed[:, :, 3:6], before[:, :, 3:6])  # the next reads it
    with pytest.raises(ValueError, match="sigma"):
        teacher_forced_x0(model, context, latents, 0.0, torch.Generator())


def test_latent_foreground_marks_the_cells_a_sprite_crosses():
    cfg = replace(SMOKE, pool_clips=2)
    pool = render_pool(cfg, 2, np.random.default_rng(5))
    cells = latent_foreground(pool, torch.device("cpu"))
    f, (h, w) = cfg.latent_frames, (64 // 8, 64 // 8)
    assert cells.shape == (2, 1, f, h, w) and cells.dtype == torch.bool
    pixels = foreground_mask(to_signed(pool.video)).bool()  # [N, 1, T, H, W]
    for latent in range(f):
        frames = slice(0, 1) if latent == 0 else slice(4 * latent - 3, 4 * latent + 1)
        crossed = pixels[:, :, frames].unflatten(3, (h, 8)).unflatten(5, (w, 8))
        torch.testing.assert_close(cells[:, :, latent], crossed.any(2).any(3).any(4))
    assert 0 < cells.float().mean() < 0.5  # sprites, not the whole frame


def test_every_toyworld_prompt_fits_the_generator_text_length():
    from framestream.models.toyworld import VOCABULARY, prompt, sample_clip, switch_clip
    from framestream.models.wan import wan_config

    rng = np.random.default_rng(0)
    texts = [
        prompt(sample_clip(rng, seconds=5.0, fps=16, size=(64, 64), max_objects=2, transient=0.5))
        for _ in range(2000)
    ]
    texts += [t for _ in range(200) for t in (lambda s: (s.before, s.after))(switch_clip(rng))]
    for preset, tokenizer in (("toyworld", ByteTokenizer()), ("toyworld-words", None)):
        tokenizer = tokenizer or WordTokenizer(VOCABULARY)
        text_len = wan_config(preset).text_len
        mask = tokenizer(texts, max_length=text_len)["attention_mask"]
        assert (mask[:, -1] == 0).all(), preset  # room to spare: nothing was cut
        if isinstance(tokenizer, WordTokenizer):
            assert not any(tokenizer.unknown(t) for t in texts)


def test_a_patch_one_run_streams_a_token_per_latent_pixel(tmp_path):
    """A run whose ``train.json`` names a patch-1 preset loads with an 8x8 token grid at 64x64
    (sizes in multiples of 8 pixels), and LongLive's cache holds 64 tokens a frame."""
    config = wan_config("toyworld-p1")
    dit = CausalWanModel(config)
    dit.init_weights(torch.Generator().manual_seed(0))
    save_file(dit.state_dict(), tmp_path / "dit.safetensors")
    (tmp_path / "train.json").write_text(json.dumps({"config": {"dit_preset": "toyworld-p1"}}))
    paths = WanPaths(dit=tmp_path / "dit.safetensors", dit_layout="wan", vae=GENERATOR_DIR / "vae")
    models = load_wan_models("toyworld", paths)

    assert models.dit.config.patch_size == (1, 1, 1)
    assert models.token_grid(64, 64) == (8, 8) and models.token_grid(56, 64) == (7, 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        models.check_size(60, 64)
    pipe = LongLivePipeline(models, KVCacheManager(), 16 << 20, LongLiveConfig())
    state = pipe.open(GenerationRequest("a red circle is still on a black background", 0, 64, 64))
    frames = pipe.step(state).frames
    assert state.cache.config.tokens_per_frame == 64
    assert frames.shape[1:] == (64, 64, 3) and len(frames) > 0


def test_a_run_that_reads_words_loads_its_vocabulary_and_encoder(tmp_path):
    """A run folder with ``words.json`` is encoded by the pipelines as it trained: a word a
    token, under its trained encoder weights, at its preset's text length."""
    from framestream.models.toyworld import VOCABULARY

    config = wan_config("toyworld-words")
    dit = CausalWanModel(config)
    dit.init_weights(torch.Generator().manual_seed(0))
    save_file(dit.state_dict(), tmp_path / "dit.safetensors")
    (tmp_path / "train.json").write_text(json.dumps({"config": {"dit_preset": "toyworld-words"}}))
    trained = toy_text_encoder(config.text_len, words=VOCABULARY)
    with torch.no_grad():
        trained.model.shared.weight.mul_(2.0)  # unlike the seeded weights
    save_model(trained.model, str(tmp_path / TEXT_ENCODER_FILE))
    trained.tokenizer.save(tmp_path / WORDS_FILE)

    paths = WanPaths(dit=tmp_path / "dit.safetensors", dit_layout="wan", vae=GENERATOR_DIR / "vae")
    models = load_wan_models("toyworld", paths)
    prompt = ["a red circle is still on a black background"]
    assert models.text.text_len == 32 and isinstance(models.text.encoder.tokenizer, WordTokenizer)
    torch.testing.assert_close(models.text.encode(prompt), trained.encode(prompt), rtol=0, atol=0)
    assert not torch.equal(models.text.encode(prompt), toy_text_encoder(32).encode(prompt))
