"""StreamingVLM at full size with random weights: per-second latency of N concurrent streams and
the largest N that stays real time (p95 of the per-second time under 1 s).

Run on the accelerator (speed does not depend on weight values)::

    python -m evals.bench_vlm --out vlm.json

The model has Qwen2.5-VL-7B's geometry (vision tower included) with random bf16 weights; the
tokenizer is the tiny toy-world one (its special tokens are written into the config), which
changes nothing measured. Every stream sees 2 random frames of 1008x560 a second = 720 vision
tokens and writes 20 reply tokens (random weights never stop early). A second of N streams is
N prefills (vision tower + the round) and 20 decode steps batched over the N streams; its wall
time is every stream's per-second latency. Streams first warm up until their cache holds the
full 16-second window (about 13k tokens with the 1024-token previous text), as at steady state.
The published anchor (shared/reference/anchors_h200.md): 616-635 ms for one stream.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from models.qwen_vl import QwenSpecialTokens, QwenVL, tiny_qwen_vl
from models.qwen_vl_tiny import tiny_tokenizer
from stream.kvcache import KVCacheManager
from stream.pipelines.streaming_vlm import (
    StreamingVLMPipeline,
    UnderstandingConfig,
    UnderstandingRequest,
)

FRAME = (560, 1008)  # 16:9 after Qwen's resize: 20 x 36 merged tokens = 720 per second


def qwen_7b_random(device: str) -> QwenVL:
    tokenizer = tiny_tokenizer()
    ids = QwenSpecialTokens.from_tokenizer(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": ids.endoftext,
            "eos_token_id": ids.im_end,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids.image_pad,
        video_token_id=ids.video_pad,
        vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        hf = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    processor = Qwen2VLImageProcessorPil(
        min_pixels=100 * 28 * 28,
        max_pixels=768 * 28 * 28,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return QwenVL(hf, tokenizer, processor, 100 * 28 * 28, 768 * 28 * 28)


def run_streams(pipe, n: int, warmup: int, rounds: int, frame, seed: int):
    """Per-second wall times of ``rounds`` measured seconds with ``n`` streams, and the tokens
    one stream's cache held at the end."""
    rng = np.random.default_rng(seed)
    previous = " ".join(["the"] * 1024)  # fills the previous-text sink and window
    streams = [pipe.open(UnderstandingRequest("Commentate.", previous)) for _ in range(n)]
    times = []
    try:
        for second in tqdm(range(warmup + rounds), desc=f"{n} streams", leave=False):
            pixels = [rng.integers(0, 255, frame + (3,), dtype=np.uint8) for _ in range(2)]
            for s in streams:
                for j, p in enumerate(pixels):
                    pipe.push_frame(s, second + j / 2, p)
                pipe.push_frame(s, second + 1.0, pixels[-1])
            sync()
            start = time.perf_counter()
            for s in streams:
                pipe.prefill(s)
            while decoding := [s for s in streams if s.decoding]:
                pipe.decode(decoding)
            sync()
            if second >= warmup:
                times.append(time.perf_counter() - start)
        return times, len(streams[0].cache.cache)
    finally:
        for s in streams:
            pipe.close(s)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--streams", default="1,4,8,16", help="concurrent streams to try")
    parser.add_argument("--warmup", type=int, default=17, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=6, help="measured seconds per N")
    parser.add_argument("--cache-gb", type=float, default=24.0)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    args = parser.parse_args()
    if args.smoke:
        model, frame = tiny_qwen_vl(), (56, 112)
    elif not torch.cuda.is_available():
        raise SystemExit("this benchmark measures the accelerator; no CUDA device is present")
    else:
        model, frame = qwen_7b_random("cuda"), FRAME
    pipe = StreamingVLMPipeline(
        model, KVCacheManager(), int(args.cache_gb * (1 << 30)), UnderstandingConfig()
    )
    results = {
        "benchmark": "streaming_vlm",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "frame": f"{frame[1]}x{frame[0]}",
        "reply_tokens": UnderstandingConfig().max_new_tokens,
        "runs": {},
    }
    for n in (int(x) for x in args.streams.split(",")):
        times, tokens = run_streams(pipe, n, args.warmup, args.rounds, frame, seed=n)
        p95 = float(np.percentile(times, 95))
        results["runs"][str(n)] = {
            "cache_tokens_per_stream": tokens,
            "second_ms": [1000 * t for t in times],
            "median_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * p95,
            "real_time": p95 < 1.0,
        }
        print(
            f"{n:3d} streams: median {1000 * statistics.median(times):7.1f} ms, "
            f"p95 {1000 * p95:7.1f} ms per second of video",
            flush=True,
        )
        if p95 > 1.5:
            break
    live = [int(n) for n, r in results["runs"].items() if r["real_time"]]
    results["max_real_time_streams_tried"] = max(live, default=0)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"largest tried N with p95 < 1 s: {results['max_real_time_streams_tried']}")


if __name__ == "__main__":
    main()
