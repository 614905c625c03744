"""A generation pipeline at full size with random weights: ms per step, FPS with and without
the streamed VAE decode, and the extra latency of a prompt switch, per attention backend.

Run on the accelerator (speed does not depend on weight values)::

    python -m evals.bench_generation --pipeline longlive --out longlive.json
    python -m evals.bench_generation --pipeline rolling_forcing --out rolling.json

Each backend runs the same stream: ``--chunks`` steps of 12 video frames (LongLive: a chunk of
3 latent frames; Rolling Forcing: one window pass + the exiting block's cache pass, the first
step including the 4 ramp-up passes); medians are over the steps after ``--warmup``. A prompt
switch is then made ``--switches`` times; its stall is the switch step's DiT time minus the
steady median. The ``sdpa`` backend (torch's fused SDPA, cuDNN on H200, over keys gathered and
rotated from our cache) is the in-run baseline; published anchors are in
shared/reference/anchors_h200.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import UMT5Config, UMT5EncoderModel

from models.registry import load_wan_models
from models.text import ByteTokenizer, UMT5TextEncoder
from stream.kvcache import KVCacheManager
from stream.pipelines.base import GenerationRequest
from stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from stream.pipelines.rolling_forcing import RollingForcingConfig, RollingForcingPipeline

FRAMES_PER_CHUNK = 12


def random_umt5(dim: int, text_len: int, device: str, dtype: torch.dtype) -> UMT5TextEncoder:
    """A one-layer umT5 of the real output width: the text encoder is not what is measured."""
    config = UMT5Config(
        vocab_size=384,
        d_model=dim,
        d_kv=64,
        d_ff=256,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    model = UMT5EncoderModel(config).to(device, dtype).eval()
    return UMT5TextEncoder(model, ByteTokenizer(), text_len=text_len)


def timed(fn, *args):
    """``fn(*args)`` and its wall time in ms, the device drained before and after."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    sync()
    start = time.perf_counter()
    out = fn(*args)
    sync()
    return out, (time.perf_counter() - start) * 1e3


def run_backend(models, backend: str, args: argparse.Namespace) -> dict:
    cache_bytes = int(args.cache_gb * (1 << 30))
    if args.pipeline == "longlive":
        config = LongLiveConfig(attention_backend=backend)
        pipe = LongLivePipeline(models, KVCacheManager(), cache_bytes, config)
    else:
        config = RollingForcingConfig(attention_backend=backend)
        pipe = RollingForcingPipeline(models, KVCacheManager(), cache_bytes, config)
    height, width = args.size
    state = pipe.open(GenerationRequest("a corgi surfing a wave at sunset", 0, height, width))
    dit_ms, decode_ms = [], []
    for _ in tqdm(range(args.chunks), desc=f"{backend}: chunks"):
        latents, t_dit = timed(pipe.denoise, state)
        _, t_dec = timed(pipe.decode, state, latents)
        dit_ms.append(t_dit)
        decode_ms.append(t_dec)
    steady = slice(args.warmup, None)
    dit_med = statistics.median(dit_ms[steady])
    dec_med = statistics.median(decode_ms[steady])
    switch_ms = []
    for i in tqdm(range(args.switches), desc=f"{backend}: switches"):
        pipe.switch_prompt(state, f"a corgi surfing, shot {i}")
        latents, t = timed(pipe.denoise, state)
        pipe.decode(state, latents)
        switch_ms.append(t)
    stats = pipe.pool.stats()
    pipe.close(state)
    return {
        "dit_ms_per_step": dit_ms,
        "decode_ms_per_step": decode_ms,
        "dit_ms_median": dit_med,
        "decode_ms_median": dec_med,
        "fps_dit_only": FRAMES_PER_CHUNK / dit_med * 1e3,
        "fps_dit_plus_decode_serial": FRAMES_PER_CHUNK / (dit_med + dec_med) * 1e3,
        "switch_step_ms": switch_ms,
        "switch_stall_ms_median": statistics.median(switch_ms) - dit_med,
        "cache_bytes_per_session": max(stats.bytes_by_session.values(), default=0),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pipeline", choices=["longlive", "rolling_forcing"], default="longlive")
    parser.add_argument("--backends", default="triton,sdpa")
    parser.add_argument("--chunks", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4, help="chunks left out of the medians")
    parser.add_argument("--switches", type=int, default=3)
    parser.add_argument("--size", default="480x832", help="HEIGHTxWIDTH in pixels")
    parser.add_argument("--cache-gb", type=float, default=8.0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny preset on the CPU with the torch twin: checks the script runs",
    )
    args = parser.parse_args()
    args.size = tuple(int(x) for x in args.size.split("x"))
    if args.smoke:
        models = load_wan_models("tiny")
    elif not torch.cuda.is_available():
        raise SystemExit("this benchmark measures the accelerator; no CUDA device is present")
    else:
        encoder = random_umt5(4096, 512, "cuda", torch.bfloat16)
        models = load_wan_models(
            "wan2.1-t2v-1.3b",
            device="cuda",
            dtype=torch.bfloat16,
            random_weights=True,
            text_encoder=encoder,
        )
    results = {
        "benchmark": args.pipeline,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "size": f"{args.size[1]}x{args.size[0]}",
        "dtype": str(models.dtype).removeprefix("torch."),
        "chunks": args.chunks,
        "warmup_chunks": args.warmup,
        "backends": {},
    }
    for backend in args.backends.split(","):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        results["backends"][backend] = run_backend(models, backend, args)
    args.out.write_text(json.dumps(results, indent=2))
    print(
        f"\n{args.pipeline} {results['size']} {results['dtype']} on {results['device']} "
        f"(medians, steps {args.warmup}..{args.chunks - 1})"
    )
    print(
        f"{'backend':8} {'DiT ms':>8} {'VAE ms':>8} {'FPS DiT':>8} {'FPS e2e':>8} {'switch+ms':>9}"
    )
    for name, r in results["backends"].items():
        print(
            f"{name:8} {r['dit_ms_median']:8.1f} {r['decode_ms_median']:8.1f} "
            f"{r['fps_dit_only']:8.1f} {r['fps_dit_plus_decode_serial']:8.1f} "
            f"{r['switch_stall_ms_median']:9.1f}"
        )


if __name__ == "__main__":
    main()
