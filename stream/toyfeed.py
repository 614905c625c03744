"""``GET /toyworld/feed.mp4``: a toy-world video to watch when no camera exists.

The browser page's Watch tab plays it like a local file and sends its frames back for live
commentary, so a newcomer sees the understanding pipeline work on a feed whose ground truth is
known (:class:`models.toyworld.Feed`: sprites appear, bounce and leave over a background).
Query: ``seed`` (0 .. 2**31 - 1, default 0), ``seconds`` (1 .. the server's limit, default 60)
and, on a server with a token, ``token``.

Rendering is bounded: one feed at a time on a thread of its own (never the event loop, never the
engine), at most ``max_waiting`` more waiting (more are answered 503 at once), in windows of
frames so a long feed never holds its frames in memory, and the rendered MP4s kept up to
``cache_bytes``. A request waits for its render at most ``wait_seconds`` (the server's HTTP
answer must come within its handshake timeout): past that it is answered 503 with ``Retry-
After`` while the render goes on, and the retry is served from what it rendered. The MP4 is
fragmented (its header first), so a player or PyAV reads it as it arrives; ``Range`` requests
are answered from the rendered bytes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from framestream.models.toyworld import Feed, render
from framestream.stream.media import Mp4Writer
from framestream.stream.memory import release_free_memory

__all__ = ["FeedRequest", "ToyFeeds", "byte_range", "parse_feed_request"]

FPS = 16.0
SIZE = (64, 64)  # the toy world's native size; the page scales the video up
_WINDOW = 256  # frames rendered at once


@dataclass(frozen=True)
class FeedRequest:
    seed: int
    seconds: int


def parse_feed_request(query: str, max_seconds: int) -> tuple[FeedRequest, str | None]:
    """The feed a query string names, and its ``token`` if any; ``ValueError`` with the
    reason when it is bad."""
    fields = parse_qs(query, keep_blank_values=True, max_num_fields=4)
    values = {}
    for name, default, high in (("seed", 0, 2**31 - 1), ("seconds", 60, max_seconds)):
        raw = fields.get(name, [str(default)])[-1]
        if not raw.isdigit() or len(raw) > 10:
            raise ValueError(f"{name} must be a whole number, got {raw[:20]!r}")
        value = int(raw)
        if not (name == "seed" or value >= 1) or value > high:
            raise ValueError(f"{name} must be in {0 if name == 'seed' else 1}..{high}, got {value}")
        values[name] = value
    token = fields.get("token", [None])[-1]
    return FeedRequest(**values), token


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a single ``Range: bytes=a-b`` (or ``a-``, or ``-n``) within a body
    of ``size`` bytes; None when there is no header; ``ValueError`` when it cannot be served."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise ValueError(f"only one range of bytes is served, got {header[:64]!r}")
    first, _, last = spec.strip().partition("-")
    try:
        if first:
            start = int(first)
            stop = min(int(last) + 1, size) if last else size
        else:
            start, stop = max(size - int(last), 0), size
    except ValueError:
        raise ValueError(f"bad range {header[:64]!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"range {header[:64]!r} is outside the {size} bytes")
    return start, stop


class ToyFeeds:
    """Renders and keeps toy-world feeds for ``GET /toyworld/feed.mp4``.

    Args:
        max_waiting: renders that may wait behind the running one (more: :meth:`get` returns
            None at once, and the server answers 503).
        cache_bytes: rendered MP4s kept, newest first.
    """

    def __init__(self, max_waiting: int = 1, cache_bytes: int = 8 << 20) -> None:
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="toyfeed", initializer=_lowest_priority
        )
        self._slots = max_waiting + 1
        self._cache: collections.OrderedDict[FeedRequest, bytes] = collections.OrderedDict()
        self._cache_bytes = cache_bytes
        self._renders: dict[FeedRequest, asyncio.Future[bytes]] = {}

    async def get(self, request: FeedRequest, wait_seconds: float) -> bytes | None:
        """The feed's MP4, rendered now or kept from before; None when too many wait or the
        render takes longer than ``wait_seconds`` (it goes on, for the retry)."""
        if request in self._cache:
            self._cache.move_to_end(request)
            return self._cache[request]
        future = self._renders.get(request)  # the same feed asked twice: one render
        if future is None:
            if len(self._renders) >= self._slots:
                return None
            loop = asyncio.get_running_loop()
            future = asyncio.ensure_future(loop.run_in_executor(self._executor, _render, request))
            self._renders[request] = future
            future.add_done_callback(lambda done: self._finished(request, done))
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_seconds)
        except TimeoutError:
            return None

    def _finished(self, request: FeedRequest, done: asyncio.Future[bytes]) -> None:
        self._renders.pop(request, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._cache[request] = done.result()
        while sum(map(len, self._cache.values())) > self._cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _lowest_priority() -> None:
    """Renders yield the processor to the engine: on a host of few cores the feed's encoding
    would otherwise take the time a realtime session's step needs (Linux schedules threads
    alone, so this thread's niceness is its own)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _render(request: FeedRequest) -> bytes:
    try:
        return _mp4(request)
    finally:
        release_free_memory()  # the windows of frames and the encoder's buffers


def _mp4(request: FeedRequest) -> bytes:
    """``request.seconds`` of feed ``request.seed`` at 16 fps, 64x64, as fragmented H.264 MP4,
    rendered a window of frames at a time."""
    feed = Feed(request.seed, SIZE, FPS)
    total = int(request.seconds * FPS)
    with tempfile.TemporaryDirectory(prefix="stream-toyfeed-") as folder:
        path = Path(folder) / "feed.mp4"
        with Mp4Writer(path, FPS, fragmented=True) as writer:
            for start in range(0, total, _WINDOW):
                writer.write(render(feed.window(start, min(_WINDOW, total - start))))
        return path.read_bytes()
