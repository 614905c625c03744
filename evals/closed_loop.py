"""The commentary as an adherence monitor: generate with prompt switches through the service,
with the server's StreamingVLM watching the frames it makes, and ask after each switch whether
the commentary names the new prompt's object, and how soon; beside it, the toy world's own
measure of the same frames (:func:`models.toyworld.color_adherence` over one-second windows, as
``evals.toyworld_quality``'s switch part).

    python -m framestream.evals.closed_loop --out evals/results/closed_loop_cpu_2026-12-06.json
        [--switches 6] [--threads 1]

Everything runs through a real loopback server on the embedded toy-world models (LongLive and
StreamingVLM on one engine), driven by the project's client with ``commentary: true``. Each
switch scenario (:func:`models.toyworld.switch_clip`) turns one sprite into another colour and
shape; the switch is sent ahead with ``at_frame`` and lands at the chunk ``prompt.applied``
names. Per switch:

- ``named_after_seconds``: from the switch to the end of the first caption (at or after the
  switch's second) naming the new (colour, shape) pair: when a viewer could read it;
  ``None`` when no caption of the rest of the clip names it. ``colour_named_after_seconds``:
  the same for the new colour alone.
- ``followed_after_seconds``: from the switch to the start of the first one-second window whose
  frames show the new prompt's colours on at least half of them (the toy world's measure),
  plus the window's second, so both figures count to the end of a second that shows it.
- ``old_named_before``: whether a caption before the switch named the old pair, beside
  ``old_colour_before``, the toy world's measure of the frames before the switch (what the
  monitor could have named: it names what it was shown, not what was asked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from framestream.clients.client import StreamClient
from framestream.clients.sessions import Caption
from framestream.models.toyworld import COLORS, SHAPES, color_adherence, switch_clip
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.server import build_server
from framestream.stream.service import ServiceModels, build_pipelines

__all__ = ["SwitchResult", "measure_switch", "pairs", "run"]

SIZE = 64
FPS = 16
_PAIR = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def pairs(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a prompt or caption names."""
    return set(_PAIR.findall(text))


@dataclass(frozen=True, slots=True)
class SwitchResult:
    before: str
    after: str
    switch_frame: int  # prompt.applied's frame
    named_after_seconds: float | None
    colour_named_after_seconds: float | None
    followed_after_seconds: float | None
    old_named_before: bool
    old_colour_before: float  # the toy world's measure of the frames before the switch
    captions: list[tuple[float, str]]  # (start second, text), for reading


def measure_switch(
    frames: np.ndarray,
    captions: list[Caption],
    before: str,
    after: str,
    switch_frame: int,
    fps: float = FPS,
) -> SwitchResult:
    """Both delays of one switch from the frames ``[T, H, W, 3]`` and the captions."""
    switch_seconds = switch_frame / fps
    new = pairs(after) - pairs(before)
    new_colours = {colour for colour, _ in new}

    def named(predicate) -> float | None:
        for caption in captions:
            # the caption of the second the switch lands in may already show it
            if caption.end > switch_seconds and predicate(caption.text):
                return round(caption.end - switch_seconds, 3)
        return None

    per_frame = np.array([color_adherence(f[None], after) for f in frames[switch_frame:]])
    window = round(fps)
    followed = None
    if len(per_frame) >= window:
        means = np.convolve(per_frame, np.ones(window) / window, mode="valid")
        hits = np.flatnonzero(means >= 0.5)
        if len(hits):
            followed = round((int(hits[0]) + window) / fps, 3)
    old = pairs(before)
    return SwitchResult(
        before,
        after,
        switch_frame,
        named(lambda text: bool(new & pairs(text))),
        named(lambda text: any(colour for colour, _ in pairs(text) if colour in new_colours)),
        followed,
        any(old & pairs(c.text) for c in captions if c.end <= switch_seconds),
        round(float(color_adherence(frames[:switch_frame], before)), 3),
        [(c.start, c.text) for c in captions],
    )


async def _one_switch(client: StreamClient, seed: int, rng: np.random.Generator, seconds: float):
    scenario = switch_clip(rng, seconds=seconds, switch_at=2.0, fps=FPS, size=(SIZE, SIZE))
    session = await client.generate(
        scenario.before, seed=seed, height=SIZE, width=SIZE, realtime=False, commentary=True
    )
    total = round(seconds * FPS)
    frames: dict[int, np.ndarray] = {}
    captions: list[Caption] = []
    switch = asyncio.create_task(session.switch_prompt(scenario.after, at_frame=2 * FPS))

    async def watch_frames() -> None:
        async for frame in session.frames():
            frames[frame.index] = frame.pixels
            if len(frames) >= total and not session.ended:
                await session.stop()

    async def watch_captions() -> None:
        async for caption in session.captions():
            captions.append(caption)

    await asyncio.gather(watch_frames(), watch_captions())
    applied = await switch
    video = np.stack([frames[i] for i in range(total)])  # background: nothing is dropped
    return measure_switch(
        video,
        [c for c in captions if c.end <= seconds],
        scenario.before,
        scenario.after,
        applied["frame"],
    )


async def run(switches: int, seconds: float, seed: int) -> list[SwitchResult]:
    """``switches`` scenarios, one after the other, through one loopback server."""
    manager = KVCacheManager()
    spec = ServiceModels(
        cache_bytes=64 << 20, vlm_cache_bytes=64 << 20, pipelines=("longlive", "streaming_vlm")
    )
    built = build_pipelines(spec, manager)
    # background sessions: admitted whatever the machine's speed, nothing dropped
    engine = Engine(built, EngineConfig(max_step_seconds=1e9))
    rng = np.random.default_rng(seed)
    results = []
    async with build_server(ServerConfig(port=0), engine) as server:
        async with StreamClient.connect(server.url) as client:
            for i in range(switches):
                results.append(await _one_switch(client, seed + i, rng, seconds))
    return results


def summarize(results: list[SwitchResult]) -> dict:
    def median(values: list[float | None]) -> float | None:
        shown = [v for v in values if v is not None]
        return round(float(statistics.median(shown)), 3) if shown else None

    named = [r.named_after_seconds for r in results]
    colour = [r.colour_named_after_seconds for r in results]
    followed = [r.followed_after_seconds for r in results]
    return {
        "switches": len(results),
        "commentary_named_new_pair": sum(v is not None for v in named),
        "commentary_named_new_pair_seconds_median": median(named),
        "commentary_named_new_colour": sum(v is not None for v in colour),
        "commentary_named_new_colour_seconds_median": median(colour),
        "pixels_followed": sum(v is not None for v in followed),
        "pixels_followed_seconds_median": median(followed),
        "both_agree": sum(
            (n is not None) == (f is not None) for n, f in zip(named, followed, strict=True)
        ),
        "old_pair_named_before_switch": sum(r.old_named_before for r in results),
        "pixels_old_colour_before_switch_mean": round(
            float(np.mean([r.old_colour_before for r in results])), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="each clip; the switch at 2 s")
    parser.add_argument("--seed", type=int, default=10_400, help="held out from training seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads")
    args = parser.parse_args()
    if args.switches <= 0 or not math.isfinite(args.seconds) or args.seconds < 4:
        parser.error("--switches must be positive and --seconds at least 4")
    torch.set_num_threads(args.threads)
    results = asyncio.run(run(args.switches, args.seconds, args.seed))
    summary = summarize(results)
    out = {
        "benchmark": "closed_loop",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "threads": args.threads,
        "size": f"{SIZE}x{SIZE}",
        "command": " ".join(["python -m framestream.evals.closed_loop", *sys.argv[1:]]),
        "summary": summary,
        "per_switch": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
