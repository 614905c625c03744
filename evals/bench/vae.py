"""VAE: the streamed Wan decode of one stream, our chunk-parallel walk beside diffusers' frame
loop, on the run's VAE (full size: Wan2.1's, random weights) at the generation size.

A LongLive / Rolling Forcing stream decodes 3 latent frames (12 video frames) per chunk and
carries the causal history from chunk to chunk. The baseline ``frame_loop`` is what the
published pipelines run: diffusers' decoder once per latent frame with its ``feat_cache``.
``ours`` is :func:`models.vae_causal.decode_frames`, one pass per chunk. Both decode a warm-up
chunk (their outputs checked equal), then ``chunks`` chunks of one stream.

``tiny`` is the tiny streaming decoder (:mod:`models.vae_tiny`, the shelf's:
:attr:`~evals.bench.loaders.ModelShelf.tiny_decoder`) on the same latents, its whole
``decode_chunk`` timed (it has no ``post_quant_conv``; its output clamp is included). Where both
decoders have trained weights (the toy world's, or files given) its frames are graded against
the Wan VAE's: ``psnr_vs_wan_db`` over toy-world clips rendered at the run's size, encoded by
the Wan VAE and streamed 3 latent frames a chunk through each decoder. Random weights (full
size without files) give its speed only: a PSNR between two random decoders means nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from framestream.evals.bench.console import progress
from framestream.evals.bench.loaders import ModelShelf
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import Clock, percentiles
from framestream.evals.bench.variants import OURS
from framestream.models.toyworld.generator_config import FPS
from framestream.models.toyworld.generator_data import to_signed
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import sample_clip
from framestream.models.vae import WanVAE
from framestream.models.vae_causal import decode_frames, encode_video
from framestream.models.vae_tiny import TinyWanDecoder

__all__ = ["run_vae"]

CHUNK_LATENT_FRAMES = 3
TINY = "tiny"
# the clips graded: latent frames each (two chunks), and clips at the toy world's own size
_GRADED_LATENT_FRAMES = 6
_GRADED_CLIPS = {True: 1, False: 4}  # full size: one clip, else four


def _frame_loop(vae: AutoencoderKLWan, x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
    """The published path: diffusers' decoder one latent frame at a time."""
    out = []
    for i in range(x.shape[2]):
        out.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first)
        )
        first = False
    return torch.cat(out, dim=2)


@torch.inference_mode()
def run_vae(
    shelf: ModelShelf, size: tuple[int, int], chunks: int
) -> Iterator[tuple[str, Workload]]:
    models = shelf.wan
    vae = models.vae.vae
    clock = Clock(models.device)
    height, width = size
    stride = models.vae.spatial_stride
    gen = torch.Generator(models.device).manual_seed(0)
    shape = (1, vae.config.z_dim, CHUNK_LATENT_FRAMES, height // stride, width // stride)
    latents = [
        torch.randn(shape, generator=gen, device=models.device).to(models.dtype)
        for _ in range(chunks + 1)
    ]
    inputs = [vae.post_quant_conv(z) for z in latents]

    loop_cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    history: list = []
    first_loop = _frame_loop(vae, inputs[0], loop_cache, True)
    first_walk = decode_frames(vae.decoder, inputs[0], history)
    max_abs_diff = (first_loop.float() - first_walk.float()).abs().max().item()
    tiny = shelf.tiny_decoder
    tiny_state = tiny.new_decode_state()
    tiny.decode_chunk(latents[0], tiny_state)

    runs = {
        OURS: (lambda x: decode_frames(vae.decoder, x, history), inputs[1:]),
        "frame_loop": (lambda x: _frame_loop(vae, x, loop_cache, False), inputs[1:]),
        TINY: (lambda z: tiny.decode_chunk(z, tiny_state), latents[1:]),
    }
    weights = "trained" if shelf.tiny_decoder_trained else "random, speed only"
    descriptions = {
        OURS: "chunk-parallel walk (models/vae_causal.py): one pass per chunk",
        "frame_loop": "diffusers' frame loop, one pass per latent frame (the published path)",
        TINY: f"tiny streaming decoder (models/vae_tiny.py, widths {list(tiny.config.widths)}, "
        f"{weights} weights): one pass per chunk",
    }
    variants = {}
    for name, (decode, chunk_inputs) in runs.items():
        times = [clock.time(decode, x)[1] for x in progress(chunk_inputs, f"VAE {name}")]
        variant = variants[name] = Variant(descriptions[name])
        variant.add_figure("chunk_ms", statistics.median(times), "ms", "per chunk, median")
        variant.add_figure("chunk_ms_p90", percentiles(times)[90], "ms", "per chunk, p90")
        variant.add_figure(
            "fps", 4e3 * CHUNK_LATENT_FRAMES / statistics.median(times), "fps", "decode alone"
        )
        chunk_index = list(range(1, len(times) + 1))
        variant.series["chunk_ms"] = Series("decode per chunk", "ms", "chunk", chunk_index, times)
    graded = "none: random weights, speed only"
    if shelf.tiny_decoder_trained:
        clips = _GRADED_CLIPS[shelf.target.full_size]
        psnr = _psnr_vs_wan(models.vae, tiny, size, clips)
        variants[TINY].add_figure(
            "psnr_vs_wan_db", psnr, "dB", "its frames against the Wan VAE's, same latents"
        )
        graded = (
            f"{clips} toy-world clip(s) of {_GRADED_LATENT_FRAMES} latent frames at {width}x"
            f"{height}, encoded by the Wan VAE, streamed {CHUNK_LATENT_FRAMES} a chunk"
        )
    config = {
        "preset": shelf.target.preset,
        "size": f"{width}x{height}",
        "dtype": str(models.dtype).removeprefix("torch."),
        "chunk_latent_frames": CHUNK_LATENT_FRAMES,
        "chunks": chunks,
        "first_chunk_max_abs_diff": max_abs_diff,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # the service leaves it off
        "tiny_decoder": str(shelf.target.tiny_decoder or "the preset's"),
        "tiny_psnr_over": graded,
    }
    title = f"Wan VAE streaming decode ({shelf.target.preset}, {width}x{height})"
    yield "vae_stream_decode", Workload(title, config, variants, OURS)


def _psnr_vs_wan(wan: WanVAE, tiny: TinyWanDecoder, size: tuple[int, int], clips: int) -> float:
    """PSNR (dB, signal range [-1, 1]) of the tiny decoder's streamed frames against the Wan
    VAE's, both decoding the Wan encoder's latents of rendered toy-world clips."""
    rng = np.random.default_rng(0)
    seconds = (1 + wan.temporal_stride * (_GRADED_LATENT_FRAMES - 1)) / FPS
    video = np.stack(
        [
            render(sample_clip(rng, seconds=seconds, fps=FPS, size=size, max_objects=2))
            for _ in range(clips)
        ]
    )
    device, dtype = wan.latents_mean.device, wan.vae.post_quant_conv.weight.dtype
    squared, count = 0.0, 0
    for clip in torch.from_numpy(video).split(1):
        x = to_signed(clip).to(device, dtype)
        z = encode_video(wan.vae, x)[:, : wan.z_dim].float()
        z = ((z - wan.latents_mean) / wan.latents_std).to(dtype)
        full_state, tiny_state = wan.new_decode_state(), tiny.new_decode_state()
        for part in z.split(CHUNK_LATENT_FRAMES, dim=2):
            full = wan.decode_chunk(part, full_state).float()
            error = tiny.decode_chunk(part, tiny_state).float() - full
            squared, count = squared + error.square().sum().item(), count + error.numel()
    return 10.0 * math.log10(4.0 / max(squared / count, 1e-12))
