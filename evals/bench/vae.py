"""VAE: the streamed Wan decode of one stream, our chunk-parallel walk beside diffusers' frame
loop, on the run's VAE (full size: Wan2.1's, random weights) at the generation size.

A LongLive / Rolling Forcing stream decodes 3 latent frames (12 video frames) per chunk and
carries the causal history from chunk to chunk. The baseline ``frame_loop`` is what the
published pipelines run: diffusers' decoder once per latent frame with its ``feat_cache``.
``ours`` is :func:`models.vae_causal.decode_frames`, one pass per chunk. Both decode a warm-up
chunk (their outputs checked equal), then ``chunks`` chunks of one stream.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from framestream.evals.bench.console import progress
from framestream.evals.bench.loaders import ModelShelf
from framestream.evals.bench.record import Series, Variant, Workload
from framestream.evals.bench.timing import Clock, percentiles
from framestream.evals.bench.variants import OURS
from framestream.models.vae_causal import decode_frames

__all__ = ["run_vae"]

CHUNK_LATENT_FRAMES = 3


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

    runs = {
        OURS: lambda x: decode_frames(vae.decoder, x, history),
        "frame_loop": lambda x: _frame_loop(vae, x, loop_cache, False),
    }
    descriptions = {
        OURS: "chunk-parallel walk (models/vae_causal.py): one pass per chunk",
        "frame_loop": "diffusers' frame loop, one pass per latent frame (the published path)",
    }
    variants = {}
    for name, decode in runs.items():
        times = [clock.time(decode, x)[1] for x in progress(inputs[1:], f"VAE {name}")]
        variant = variants[name] = Variant(descriptions[name])
        variant.add_figure("chunk_ms", statistics.median(times), "ms", "per chunk, median")
        variant.add_figure("chunk_ms_p90", percentiles(times)[90], "ms", "per chunk, p90")
        variant.add_figure(
            "fps", 4e3 * CHUNK_LATENT_FRAMES / statistics.median(times), "fps", "decode alone"
        )
        chunk_index = list(range(1, len(times) + 1))
        variant.series["chunk_ms"] = Series("decode per chunk", "ms", "chunk", chunk_index, times)
    config = {
        "preset": shelf.target.preset,
        "size": f"{width}x{height}",
        "dtype": str(models.dtype).removeprefix("torch."),
        "chunk_latent_frames": CHUNK_LATENT_FRAMES,
        "chunks": chunks,
        "first_chunk_max_abs_diff": max_abs_diff,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,  # the service leaves it off
    }
    title = f"Wan VAE streaming decode ({shelf.target.preset}, {width}x{height})"
    yield "vae_stream_decode", Workload(title, config, variants, OURS)
