"""Where a full-size LongLive chunk's DiT time goes, on the lent accelerator (a probe, not a
benchmark: its JSON is a record of what was seen, for docs/perf-notes.md).

1. SDPA's kernels on the chunk and Rolling Forcing window shapes: flash, cuDNN, efficient.
2. A LongLive stream at 480x832 on random weights: after warm-up, one chunk's DiT under
   torch.profiler, its CUDA kernel time grouped (GEMM, attention, elementwise, ...) and the
   wall time beside the summed kernel time (the gap is launch and host time).
3. bf16 GEMMs against FP8 ``torch._scaled_mm`` (row-wise scales) and the per-token
   quantization on the DiT's linear shapes.

    python3 -m framestream.evals.devtools.probe_dit --out probe.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from framestream.evals.bench.loaders import ModelShelf, Target
from framestream.kernels.fp8_linear import quantize_rows
from framestream.stream.kvcache import CacheGeometry, KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.requests import GenerationRequest

SHAPES = {"wan_chunk": (4680, 18720), "rolling_window": (23400, 32760)}
GROUPS = [
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
    ("gemm", r"gemm|sm90_xmma|cutlass|nvjet|matmul|scaled_mm"),
    ("triton", r"^triton_|_kernel$"),
    ("elementwise", r"elementwise|vectorized|reduce|copy|cat|index|fill"),
]


def _ms(fn, *args, **kwargs) -> float:
    return triton.testing.do_bench(lambda: fn(*args, **kwargs), return_mode="median")


def sdpa_backends() -> dict:
    out = {}
    backends = (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION)
    backends += (SDPBackend.EFFICIENT_ATTENTION,)
    for name, (q_len, kv_len) in SHAPES.items():
        q = torch.randn(1, 12, q_len, 128, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(1, 12, kv_len, 128, device="cuda", dtype=torch.bfloat16) for _ in "kv")
        flops = 4.0 * q_len * kv_len * 12 * 128
        for backend in backends:
            try:
                with sdpa_kernel([backend]):
                    ms = _ms(F.scaled_dot_product_attention, q, k, v)
            except RuntimeError as error:
                out[f"{name}/{backend.name}"] = f"failed: {str(error).splitlines()[0]}"
                continue
            out[f"{name}/{backend.name}"] = {"ms": ms, "tflops": flops / ms / 1e9}
        out[f"{name}/default"] = {"ms": _ms(F.scaled_dot_product_attention, q, k, v)}
    return out


def gemms() -> dict:
    out = {}
    tokens = 4680
    for n, k in [(1536, 1536), (8960, 1536), (1536, 8960)]:
        x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        qx, sx = quantize_rows(x)
        qw, sw = quantize_rows(w)
        swt = sw.t().contiguous()
        flops = 2.0 * tokens * n * k
        bf16 = _ms(torch.matmul, x, w.t())
        fp8 = _ms(torch._scaled_mm, qx, qw.t(), scale_a=sx, scale_b=swt, out_dtype=torch.bfloat16)
        quant = _ms(quantize_rows, x)
        out[f"{tokens}x{k}->{n}"] = {
            "bf16_ms": bf16,
            "bf16_tflops": flops / bf16 / 1e9,
            "fp8_ms": fp8,
            "fp8_tflops": flops / fp8 / 1e9,
            "quantize_ms": quant,
        }
    return out


def profile_chunk() -> dict:
    shelf = ModelShelf(Target("wan2.1-t2v-1.3b", torch.device("cuda"), torch.bfloat16))
    models = shelf.wan
    rows, cols = models.token_grid(480, 832)
    cfg = models.dit.config
    geometry = CacheGeometry(cfg.num_layers, cfg.num_heads, cfg.head_dim, models.dtype)
    pool = 48 * rows * cols * geometry.bytes_per_token
    config = LongLiveConfig()
    pipe = LongLivePipeline(models, KVCacheManager(), pool, config, block_size=rows * cols)
    state = pipe.open(GenerationRequest("a red circle moves right", 0, 480, 832))
    for _ in range(6):
        pipe.denoise(state)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    walls = []
    for _ in range(3):
        start.record()
        pipe.denoise(state)
        end.record()
        torch.cuda.synchronize()
        walls.append(start.elapsed_time(end))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        pipe.denoise(state)
        torch.cuda.synchronize()
    groups: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    counts = 0
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = event.device_time / 1e3
        counts += 1
        kernels[event.name[:90]] += ms
        name = event.name.lower()
        group = next((g for g, pattern in GROUPS if re.search(pattern, name)), "other")
        groups[group] += ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    pipe.close(state)
    return {
        "chunk_ms_events": sorted(walls)[1],
        "kernel_ms_total": sum(groups.values()),
        "kernel_launches": counts,
        "groups_ms": dict(groups),
        "top_kernels_ms": dict(top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record = {
        "command": "python3 -m framestream.evals.devtools.probe_dit " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    record["sdpa"] = sdpa_backends()
    record["gemm"] = gemms()
    record["longlive_chunk"] = profile_chunk()
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
