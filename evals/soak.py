"""Soak: sessions of every pipeline on the embedded default, one after another for as long as
asked, through the project's own client over a real loopback server; what the server holds
must stay flat and nothing may leak.

    python -m framestream.evals.soak --seconds 600 --sessions 2   # the long form (10 minutes)
    python -m framestream.evals.soak --seconds 30                # about what CI runs
    python -m framestream.evals.soak --seconds 600 --sessions 2 --large 128x128 --feed-clients 2
                                                                 # the mixed load

Each worker runs sessions of ``--session-seconds`` back to back, on a fresh connection each:
generation workers read frames (every other session records an MP4), understanding workers send
a toy-world feed at 4 frames a second and read captions; every third session the client
vanishes (the connection closes without a ``stop``). A sampler reads, every
``--sample-seconds``: resident memory, cache blocks in use, the sessions' output and event
queues, the engine's pending commands and input frames, asyncio tasks, threads and open files.

The mixed load adds, beside those small realtime sessions, one large LongLive session
(``--large HxW``, ``realtime: false``: a realtime one that large is refused ``compute_full``)
for the whole soak, and ``--feed-clients`` clients fetching ``/toyworld/feed.mp4`` of
``--feed-seconds`` back to back (new seeds, so each is rendered). The small sessions' frame
lateness is measured where a viewer sees it: how much later than its predecessor plus the
frames' nominal interval each frame arrives (a stall of the stream; 0 when on time).

Verdict (``ok`` only when all hold):

* memory flat: the memory in use (resident memory after glibc's ``malloc_trim``, see
  :func:`_trim`; plain resident memory elsewhere) differs by less than ``--rss-growth-mb``
  between the first and the last third of the soak after its warm-up (medians: it swings
  with the sessions' rounds);
* bounded queues: no output queue over ``output_queue_frames``, no event queue over 256, no
  inbox over ``input_queue_frames`` per session;
* small sessions on time, when ``--max-p99-lateness-ms`` is given: the p99 frame lateness of
  the small generation sessions is under it (a timing, so for a quiet machine: the tests leave
  it out);
* nothing leaks: once the workers are done and the server is idle again, every cache block is
  free and the asyncio tasks, threads and open files are those of the idle server before the
  soak (threads of the pools that grow on demand to a fixed size excepted: the encoders,
  ``encode_workers``, and asyncio's default executor).

Writes ``evals/results/soak_<machine>_<date>.json`` with the samples and the verdict. Resident
memory is the whole process's (server and clients share it); the idle states before and after
record it as the server leaves it (it returns free memory itself once idle, stream.memory) and
after a ``malloc_trim`` of the soak's own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from framestream.clients.client import ServerError, StreamClient
from framestream.evals.observed import FrameLateness, feed_url, fetch_status, percentiles_ms
from framestream.models.toyworld import Feed, render
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.server import Server, build_server
from framestream.stream.service import PIPELINES, ServiceModels, build_pipelines

__all__ = ["SoakConfig", "run_soak"]

RESULTS = Path(__file__).parent / "results"
FEED_FPS = 4.0
EVENTS_CAPACITY = 256  # stream.session.Session.events
STALL_SECONDS = 60.0  # a session that delivers nothing for this long is a failure


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 30.0  # how long sessions keep being started
    sessions: int = 1  # sessions of each pipeline at once
    session_seconds: float = 8.0  # each session's length
    sample_seconds: float = 1.0
    warmup_seconds: float = 10.0  # memory is compared from the first sample after this
    rss_growth_mb: float = 64.0
    pipelines: tuple[str, ...] = PIPELINES
    large: tuple[int, int] | None = None  # (height, width) of a background LongLive session
    feed_clients: int = 0  # clients fetching /toyworld/feed.mp4 back to back
    feed_seconds: int = 60  # each feed's length
    max_p99_lateness_ms: float | None = None  # None: lateness reported, not judged


@dataclass
class _Tally:
    sessions: collections.Counter = field(default_factory=collections.Counter)
    frames: int = 0
    captions: int = 0
    recordings: int = 0
    vanished: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    lateness: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    large_frames: int = 0
    large_longest_wait: float = 0.0  # seconds between two of its frames, at most
    feeds: collections.Counter = field(default_factory=collections.Counter)  # by HTTP status


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _trim() -> bool:
    """Ask glibc to return its free pages to the system (False where there is no glibc).

    What stays resident after it is memory in use; before it, resident memory also counts pages
    freed but kept by the allocator, which grow with fragmentation however flat the use is.
    """
    try:
        release = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    release(0)
    return True


# thread pools that grow on demand up to a fixed size: the server's encoders, its feed renderer
# and asyncio's default executor (asyncio.to_thread); a new thread of theirs is growth, not a
# leak
_POOLS = ("encode", "asyncio_", "toyfeed")


def _threads() -> list[str]:
    """Names of live threads, those of the bounded pools left out."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith(_POOLS))


def _idle_state() -> dict[str, Any]:
    resident = _rss_mb()
    _trim()
    return {
        "resident_mb": round(resident, 1),  # as the server left it
        "tasks": len(asyncio.all_tasks()),
        "threads": _threads(),
        "open_files": _open_files(),
        "memory_mb": round(_rss_mb(), 1),  # in use, where _trim works
    }


def _sample(server: Server, started: float) -> dict[str, Any]:
    engine = server.engine.stats()
    sessions = server.sessions()
    managers = {id(p.manager): p.manager for p in server.engine.pipelines.values()}
    pools = [s for m in managers.values() for s in m.stats().values()]
    return {
        "t": round(time.monotonic() - started, 2),
        "rss_mb": round(_rss_mb(), 1),
        "rss_in_use_mb": round(_rss_mb(), 1) if _trim() else None,
        "blocks_used": sum(p.used_blocks for p in pools),
        "blocks_reserved": sum(p.reserved_blocks for p in pools),
        "sessions": len(sessions),
        "connections": server.counters.connections,
        "output_queue_max": max((len(s.output) for s in sessions), default=0),
        "events_queue_max": max((s.events.qsize() for s in sessions), default=0),
        "pending_commands": engine.pending_commands,
        "pending_input_frames": engine.pending_input_frames,
        "tasks": len(asyncio.all_tasks()),
        "threads": len(_threads()),
        "open_files": _open_files(),
        "loadavg_1min": os.getloadavg()[0],  # the host's: other work on it shows here
    }


async def _generation(
    url: str, pipeline: str, worker: int, until: float, tally: _Tally, seconds: float
) -> None:
    loop = asyncio.get_running_loop()
    number = 0
    while loop.time() < until:
        number += 1
        async with StreamClient.connect(url) as client:
            try:
                session = await client.generate(
                    f"a red ball number {worker}",
                    pipeline=pipeline,
                    seed=number,
                    record=number % 2 == 0,
                )
            except ServerError as exc:
                tally.refused[exc.code] += 1
                await asyncio.sleep(0.5)
                continue
            tally.sessions[pipeline] += 1
            end = min(until, loop.time() + seconds)
            frames = session.frames().__aiter__()
            lateness = FrameLateness(session.fps, tally.lateness[pipeline])
            while loop.time() < end:
                async with asyncio.timeout(STALL_SECONDS):
                    frame = await frames.__anext__()  # StopAsyncIteration: ended early, a failure
                lateness.note(frame.index, loop.time())
                tally.frames += 1
            if number % 3 == 0:
                tally.vanished += 1
                await client.close()  # gone without a stop
                continue
            await session.stop()
            tally.recordings += session.recording is not None


async def _understanding(
    url: str, worker: int, until: float, tally: _Tally, seconds: float
) -> None:
    loop = asyncio.get_running_loop()
    number = 0
    while loop.time() < until:
        number += 1
        async with StreamClient.connect(url) as client:
            try:
                session = await client.understand(instruction="Say what moves.")
            except ServerError as exc:
                tally.refused[exc.code] += 1
                await asyncio.sleep(0.5)
                continue
            tally.sessions["streaming_vlm"] += 1
            feed = render(Feed(worker * 1000 + number, (64, 64), FEED_FPS).window(0, 64))

            reader = asyncio.create_task(_count_captions(session, tally))
            start, sent = loop.time(), 0
            end = min(until, start + seconds)
            while loop.time() < end:
                await session.send_frame(feed[sent % len(feed)], sent / FEED_FPS)
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / FEED_FPS - loop.time()))
            if number % 3 == 0:
                tally.vanished += 1
                await client.close()
            else:
                await session.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, STALL_SECONDS)


async def _large(url: str, size: tuple[int, int], until: float, tally: _Tally) -> None:
    """One background LongLive session of ``size`` for the whole soak, read as fast as it comes.
    It runs in the time the realtime sessions leave, so a long wait is reported, not failed."""
    loop = asyncio.get_running_loop()
    async with StreamClient.connect(url) as client:
        try:
            session = await client.generate(
                "a large red ball", height=size[0], width=size[1], realtime=False
            )
        except ServerError as exc:
            tally.refused[f"large:{exc.code}"] += 1
            tally.failures.append(f"the large session was refused: {exc}")
            return
        frames = session.frames().__aiter__()
        last = loop.time()
        while loop.time() < until:
            try:
                async with asyncio.timeout(until - loop.time()):
                    await frames.__anext__()  # StopAsyncIteration: it ended early, a failure
            except TimeoutError:
                break
            tally.large_frames += 1
            tally.large_longest_wait = max(tally.large_longest_wait, loop.time() - last)
            last = loop.time()
        tally.large_longest_wait = max(tally.large_longest_wait, loop.time() - last)
        await session.stop()


async def _feeds(url: str, worker: int, until: float, tally: _Tally, seconds: int) -> None:
    """Fetch toy-world feeds back to back, each a new seed (so the server renders it)."""
    loop = asyncio.get_running_loop()
    number = 0
    while loop.time() < until:
        number += 1
        feed = feed_url(url, worker * 100_000 + number, seconds)
        status = await asyncio.to_thread(fetch_status, feed, STALL_SECONDS)
        tally.feeds[status] += 1
        if status != 200:
            await asyncio.sleep(1.0)  # 503: busy; it says when to come back


async def _count_captions(session: Any, tally: _Tally) -> None:
    async for _ in session.captions():
        tally.captions += 1


async def _idle(server: Server, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while server.sessions() or server.counters.connections or server.engine.stats().sessions:
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # recorders' and closed connections' threads and files wind down


async def run_soak(
    config: SoakConfig,
    pipelines: dict[str, Any] | None = None,
    engine_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the soak and return its record (see the module docstring); ``pipelines`` default
    to those of ``config.pipelines`` on the embedded default, loaded here; ``engine_settings``
    override the engine's (:class:`EngineConfig` fields)."""
    engine_config = EngineConfig(
        **{"max_sessions": 4 * config.sessions * len(config.pipelines), **(engine_settings or {})}
    )
    if pipelines is None:
        models = ServiceModels(
            cache_bytes=128 << 20, vlm_cache_bytes=64 << 20, pipelines=config.pipelines
        )
        pipelines = build_pipelines(models, KVCacheManager())
    engine = Engine(pipelines, engine_config)
    tally = _Tally()
    with tempfile.TemporaryDirectory(prefix="soak-recordings-") as folder:
        server_config = ServerConfig(port=0, record_dir=Path(folder), max_recordings=4)
        async with build_server(server_config, engine) as server:
            warm = min(config.session_seconds, 3.0)
            await _workers(server.url, config, tally, 1, warm)  # pools, threads, caches made
            await _idle(server)
            before = _idle_state()
            started = time.monotonic()
            samples: list[dict[str, Any]] = []

            async def sampler() -> None:
                while True:
                    samples.append(_sample(server, started))
                    await asyncio.sleep(config.sample_seconds)

            sampling = asyncio.create_task(sampler())
            try:
                await _workers(
                    server.url, config, tally, config.sessions, config.seconds, mixed=True
                )
                await _idle(server)
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            after = _idle_state()
            end = _sample(server, started)
    return _verdict(config, engine_config, tally, samples, before, after, end)


async def _workers(
    url: str, config: SoakConfig, tally: _Tally, count: int, seconds: float, mixed: bool = False
) -> None:
    until = asyncio.get_running_loop().time() + seconds
    jobs = []
    if mixed and config.large is not None:
        jobs.append(_large(url, config.large, until, tally))
    for worker in range(config.feed_clients if mixed else 0):
        jobs.append(_feeds(url, worker, until, tally, config.feed_seconds))
    for worker in range(count):
        for pipeline in config.pipelines:
            if pipeline == "streaming_vlm":
                jobs.append(_understanding(url, worker, until, tally, config.session_seconds))
            else:
                jobs.append(
                    _generation(url, pipeline, worker, until, tally, config.session_seconds)
                )
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(outcome, BaseException):
            tally.failures.append(f"{type(outcome).__name__}: {outcome}")


def _verdict(
    config: SoakConfig,
    engine_config: EngineConfig,
    tally: _Tally,
    samples: list[dict[str, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    end: dict[str, Any],
) -> dict[str, Any]:
    # memory in use where it can be told apart from the allocator's free pages, else resident
    key = "rss_in_use_mb" if samples[0]["rss_in_use_mb"] is not None else "rss_mb"
    active = [s for s in samples if s["t"] >= config.warmup_seconds and s["sessions"]] or samples
    third = max(1, len(active) // 3)
    early = float(np.median([s[key] for s in active[:third]]))
    late = float(np.median([s[key] for s in active[-third:]]))
    times = np.array([s["t"] for s in active])
    slope = np.polyfit(times, [s[key] for s in active], 1)[0] * 60 if len(active) > 2 else 0.0
    peak = {
        k: max(s[k] for s in samples) for k in samples[0] if k != "t" and samples[0][k] is not None
    }
    memory = {
        "measure": key,
        "first_third_median_mb": round(early, 1),
        "last_third_median_mb": round(late, 1),
        "growth_mb": round(late - early, 1),
        "slope_mb_per_min": round(float(slope), 2),
        "idle_before_mb": before["memory_mb"],
        "idle_after_mb": after["memory_mb"],
        "idle_resident_before_mb": before["resident_mb"],
        "idle_resident_after_mb": after["resident_mb"],
        "resident_mb": {
            "first": active[0]["rss_mb"],
            "last": active[-1]["rss_mb"],
            "peak": peak["rss_mb"],
        },
    }
    sessions_at_once = config.sessions * len(config.pipelines)
    leaks = {
        "blocks": end["blocks_used"] + end["blocks_reserved"],
        "tasks": after["tasks"] - before["tasks"],
        "threads": sorted(set(after["threads"]) - set(before["threads"])),
        "open_files": after["open_files"] - before["open_files"],
    }
    lateness = {
        pipeline: {
            "frames": len(values),
            **{f"{name}_ms": ms for name, ms in percentiles_ms(values).items()},
        }
        for pipeline, values in sorted(tally.lateness.items())
        if values
    }
    checks = {
        "memory_flat": late - early < config.rss_growth_mb,
        "queues_bounded": peak["output_queue_max"] <= engine_config.output_queue_frames
        and peak["events_queue_max"] <= EVENTS_CAPACITY
        and peak["pending_input_frames"] <= engine_config.input_queue_frames * sessions_at_once,
        "nothing_leaked": not any(leaks.values()),
        "no_failures": not tally.failures,
    }
    if config.max_p99_lateness_ms is not None:
        checks["small_sessions_on_time"] = all(
            row["p99_ms"] < config.max_p99_lateness_ms for row in lateness.values()
        )
    return {
        "config": asdict(config),
        "seconds": samples[-1]["t"] if samples else 0.0,
        "sessions_run": dict(tally.sessions),
        "frames": tally.frames,
        "captions": tally.captions,
        "recordings": tally.recordings,
        "vanished": tally.vanished,
        "refused": dict(tally.refused),
        "lateness": lateness,
        "large_frames": tally.large_frames,
        "large_longest_wait_s": round(tally.large_longest_wait, 1),
        "feeds": {str(status): n for status, n in sorted(tally.feeds.items())},
        "failures": tally.failures,
        "memory": memory,
        "first": active[0],
        "last": active[-1],
        "peak": peak,
        "idle_before": before,
        "idle_after": after,
        "leaks": leaks,
        "checks": checks,
        "ok": all(checks.values()),
        "samples": samples[:: max(1, len(samples) // 300)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m framestream.evals.soak", description=__doc__.split("\n")[0]
    )
    defaults = SoakConfig()
    floats = ("seconds", "session_seconds", "sample_seconds", "warmup_seconds", "rss_growth_mb")
    for name in floats:
        parser.add_argument(
            "--" + name.replace("_", "-"), type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--sessions", type=int, default=defaults.sessions, help="per pipeline")
    parser.add_argument("--max-p99-lateness-ms", type=float, help="judge lateness (else report)")
    parser.add_argument("--large", type=_size, help="HxW of a background LongLive session")
    parser.add_argument("--feed-clients", type=int, default=defaults.feed_clients)
    parser.add_argument("--feed-seconds", type=int, default=defaults.feed_seconds)
    parser.add_argument("--pipelines", default=",".join(defaults.pipelines))
    parser.add_argument(
        "--out", type=Path, help="default: evals/results/soak_<machine>_<date>.json"
    )
    args = parser.parse_args(argv)
    config = SoakConfig(
        seconds=args.seconds,
        sessions=args.sessions,
        session_seconds=args.session_seconds,
        sample_seconds=args.sample_seconds,
        warmup_seconds=args.warmup_seconds,
        rss_growth_mb=args.rss_growth_mb,
        pipelines=tuple(args.pipelines.split(",")),
        large=args.large,
        feed_clients=args.feed_clients,
        feed_seconds=args.feed_seconds,
        max_p99_lateness_ms=args.max_p99_lateness_ms,
    )
    record = asyncio.run(run_soak(config))
    now = datetime.now(timezone.utc)
    record = {
        "command": " ".join(["python -m framestream.evals.soak", *sys.argv[1:]]),
        "date": now.isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        **record,
    }
    out = args.out or RESULTS / f"soak_cpu_{now:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    summary = ("seconds", "sessions_run", "lateness", "feeds", "memory", "leaks", "checks", "ok")
    print(json.dumps({k: record[k] for k in summary}))
    print(f"-> {out}")
    return 0 if record["ok"] else 1


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 128x128, got {text!r}") from None
    return height, width


if __name__ == "__main__":
    sys.exit(main())
