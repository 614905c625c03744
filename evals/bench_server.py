"""Server overhead per frame (protocol + encoding + WebSocket) against the step time, on the
embedded tiny default.

    python -m evals.bench_server --out server.json

Side by side in one process: (a) the LongLive pipeline stepped directly, (b) the same pipeline
behind a real loopback server, one benchmark (non-realtime) session read by the project's own
client, for each frame format. Overhead per frame = (b) wall time per delivered frame - (a) step
time per frame. On a CPU machine the engine, the encoder threads and the client share the cores,
so the figures are ratios to read, not absolute costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from clients import StreamClient
from models.registry import load_wan_models
from stream.engine import Engine
from stream.kvcache import KVCacheManager
from stream.pipelines.base import GenerationRequest
from stream.pipelines.longlive import LongLivePipeline
from stream.server import ServerConfig, build_server


def direct_ms_per_frame(pipe: LongLivePipeline, size: int, chunks: int) -> list[float]:
    state = pipe.open(GenerationRequest("a red ball", 0, size, size))
    try:
        pipe.step(state)  # warm-up (the first chunk has 9 frames)
        times = []
        for _ in range(chunks):
            start = time.perf_counter()
            chunk = pipe.step(state)
            times.append((time.perf_counter() - start) * 1e3 / len(chunk))
        return times
    finally:
        pipe.close(state)


async def served_ms_per_frame(pipe: LongLivePipeline, size: int, frames: int, fmt: str) -> float:
    engine = Engine({"longlive": pipe})
    async with build_server(ServerConfig(port=0), engine) as server:
        async with StreamClient.connect(server.url, max_queued_frames=1024) as client:
            session = await client.generate(
                "a red ball", height=size, width=size, format=fmt, realtime=False
            )
            start, count = None, 0
            async for frame in session.frames():
                if frame.index == 9:  # after the 9-frame first chunk, as the direct run
                    start = time.perf_counter()
                elif start is not None:
                    count += 1
                if count == frames:
                    break
            elapsed = time.perf_counter() - start
            await session.stop()
    return elapsed * 1e3 / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128, help="square frame side, pixels")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--formats", default="jpeg,raw,png,h264")
    args = parser.parse_args()
    models = load_wan_models("tiny")
    pipe = LongLivePipeline(models, KVCacheManager(), 256 << 20)
    direct = direct_ms_per_frame(pipe, args.size, args.chunks)
    step = statistics.median(direct)
    results = {
        "benchmark": "server_overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "preset": "tiny",
        "size": f"{args.size}x{args.size}",
        "direct_step_ms_per_frame": direct,
        "direct_step_ms_per_frame_median": step,
        "served": {},
    }
    for fmt in tqdm(args.formats.split(","), desc="formats"):
        served = asyncio.run(served_ms_per_frame(pipe, args.size, 12 * args.chunks, fmt))
        results["served"][fmt] = {
            "ms_per_frame": served,
            "overhead_ms_per_frame": served - step,
            "overhead_fraction_of_step": (served - step) / step,
        }
    args.out.write_text(json.dumps(results, indent=2))
    print(f"tiny LongLive {results['size']}: step {step:.2f} ms per frame (direct)")
    for fmt, r in results["served"].items():
        print(
            f"  {fmt:5} served {r['ms_per_frame']:.2f} ms per frame: overhead "
            f"{r['overhead_ms_per_frame']:+.2f} ms ({100 * r['overhead_fraction_of_step']:+.0f}%)"
        )


if __name__ == "__main__":
    main()
