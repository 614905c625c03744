"""What a client of a live server observes, measured alike by the soak (evals.soak) and the
fuzzer (evals.fuzz_target): how late a stream's frames arrive, and what a feed URL answers."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FrameLateness", "feed_url", "fetch_status", "percentiles_ms"]


@dataclass
class FrameLateness:
    """A stream's frame lateness, as a viewer sees a stall: how much later than its predecessor
    plus the frames' nominal interval each frame arrives (0 when on time; a stall shows in the
    frame after it). ``seconds`` may be shared by the streams of one kind."""

    fps: float
    seconds: list[float] = field(default_factory=list)
    _previous: tuple[int, float] | None = None

    def note(self, index: int, now: float) -> None:
        """Frame ``index`` arrived at clock time ``now`` (seconds)."""
        if self._previous is not None:
            due = self._previous[1] + (index - self._previous[0]) / self.fps
            self.seconds.append(max(0.0, now - due))
        self._previous = (index, now)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """``p50``, ``p99`` and ``max`` of lateness ``seconds``, in milliseconds."""
    late = np.array(seconds) * 1000
    return {
        "p50": round(float(np.percentile(late, 50)), 1),
        "p99": round(float(np.percentile(late, 99)), 1),
        "max": round(float(late.max()), 1),
    }


def feed_url(server_url: str, seed: int, seconds: int, token: str | None = None) -> str:
    """``/toyworld/feed.mp4`` of the server whose WebSocket is at ``server_url``."""
    base = server_url.replace("ws://", "http://").removesuffix("/ws")
    query = f"seed={seed}&seconds={seconds}" + (f"&token={token}" if token else "")
    return f"{base}/toyworld/feed.mp4?{query}"


def fetch_status(url: str, timeout: float) -> int:
    """GET ``url`` to its end and return the HTTP status; ``OSError`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code
