"""``GET /toyworld/feed.mp4``: a toy-world video to watch when no camera exists.

The browser page's Watch tab plays it like a local file and sends its frames back for live
commentary, so a newcomer sees the understanding pipeline work on a feed whose ground truth is
known (:class:`models.toyworld.Feed`: sprites appear, bounce and leave over a background).
Query: ``seed`` (0 .. 2**31 - 1, default 0) and ``seconds`` (1 .. the server's limit).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from framestream.models.toyworld import Feed, render
from framestream.stream.media import Mp4Writer

__all__ = ["FeedRequest", "parse_feed_request", "toyworld_mp4"]

FPS = 16.0
SIZE = (64, 64)  # the toy world's native size; the page scales the video up


@dataclass(frozen=True)
class FeedRequest:
    seed: int
    seconds: int


def parse_feed_request(query: str, max_seconds: int) -> FeedRequest:
    """The request a query string names; ``ValueError`` with the reason when it is bad."""
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
    return FeedRequest(**values)


@functools.lru_cache(maxsize=4)  # a <video> element may fetch its source more than once
def toyworld_mp4(request: FeedRequest) -> bytes:
    """Render ``request.seconds`` of feed ``request.seed`` at 16 fps, 64x64, as H.264 MP4
    (about 13 KB a second); the last few are kept."""
    frames = render(Feed(request.seed, SIZE, FPS).window(0, int(request.seconds * FPS)))
    with tempfile.TemporaryDirectory(prefix="stream-toyfeed-") as folder:
        path = Path(folder) / "feed.mp4"
        with Mp4Writer(path, FPS) as writer:
            writer.write(frames)
        return path.read_bytes()
