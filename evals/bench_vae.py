"""Streaming Wan VAE decode: our chunk-parallel walk against diffusers' frame loop, same run.

    python -m evals.bench_vae --out evals/results/vae_h200_DATE.json [--size 480x832]

A LongLive / Rolling Forcing stream decodes 3 latent frames (12 video frames) per chunk and
carries the causal history from chunk to chunk. The baseline is what the published pipelines
run: diffusers' decoder called once per latent frame with its ``feat_cache`` (one pass through
every layer per frame). Ours is :func:`models.vae_causal.decode_frames` (one pass per chunk).
Both start a stream, decode a warm-up chunk, then time ``--chunks`` chunks of one stream
(CUDA events; median and p90). Random full-size Wan2.1 VAE weights: speed does not depend on
them. The outputs are checked equal before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from tqdm import tqdm

from models.vae_causal import decode_frames


def _frame_loop(vae: AutoencoderKLWan, x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
    """The published path: diffusers' decoder one latent frame at a time."""
    out = []
    for i in range(x.shape[2]):
        out.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=first)
        )
        first = False
    return torch.cat(out, dim=2)


def _time(fn, chunks: list[torch.Tensor]) -> list[float]:
    times = []
    for x in tqdm(chunks, desc=fn.__name__, leave=False):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _summary(times: list[float]) -> dict:
    return {
        "median": statistics.median(times),
        "p90": sorted(times)[int(0.9 * len(times))],
        "all": times,
    }


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="480x832", help="height x width in pixels")
    parser.add_argument("--chunks", type=int, default=12)
    parser.add_argument("--chunk-frames", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    device, dtype = torch.device("cuda"), torch.bfloat16
    torch.backends.cudnn.benchmark = True
    vae = AutoencoderKLWan().to(device, dtype).eval()
    gen = torch.Generator(device).manual_seed(0)
    shape = (1, vae.config.z_dim, args.chunk_frames, height // 8, width // 8)
    latents = [
        torch.randn(shape, generator=gen, device=device, dtype=dtype)
        for _ in range(args.chunks + 1)
    ]
    chunks = [vae.post_quant_conv(z) for z in latents]

    loop_cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    walk_history: list = []
    first_loop = _frame_loop(vae, chunks[0], loop_cache, True)
    first_walk = decode_frames(vae.decoder, chunks[0], walk_history)
    diff = (first_loop.float() - first_walk.float()).abs().max().item()

    def frame_loop(x: torch.Tensor) -> torch.Tensor:
        return _frame_loop(vae, x, loop_cache, False)

    def chunk_parallel(x: torch.Tensor) -> torch.Tensor:
        return decode_frames(vae.decoder, x, walk_history)

    torch.cuda.synchronize()
    loop = _time(frame_loop, chunks[1:])
    walk = _time(chunk_parallel, chunks[1:])
    result = {
        "benchmark": "vae_stream_decode",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "dtype": "bf16",
        "size": [height, width],
        "chunk_latent_frames": args.chunk_frames,
        "chunk_video_frames": 4 * args.chunk_frames,
        "first_chunk_max_abs_diff": diff,
        "frame_loop_ms": _summary(loop),
        "chunk_parallel_ms": _summary(walk),
        "speedup_median": statistics.median(loop) / statistics.median(walk),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "command": f"python -m evals.bench_vae --size {args.size} --chunks {args.chunks}",
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{args.size}, {args.chunk_frames} latent frames/chunk: frame loop "
        f"{result['frame_loop_ms']['median']:.1f} ms, chunk-parallel "
        f"{result['chunk_parallel_ms']['median']:.1f} ms ({result['speedup_median']:.2f}x); "
        f"first chunk max |diff| {diff:.3g}"
    )


if __name__ == "__main__":
    main()
