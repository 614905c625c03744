"""The service suite's commentary and mixed-load workloads: real servers on loopback, the
project's client, feeds paced in real time (tiny models, a few video-seconds)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from framestream.clients.sessions import Caption
from framestream.evals.bench.commentary import (
    SERVED,
    CommentarySettings,
    FeedPlan,
    feed_frames,
    run_commentary,
    time_captions,
)
from framestream.evals.bench.loaders import ModelShelf, Target
from framestream.evals.bench.mixed import MixedSettings, run_mixed

SECONDS, WARMUP = 3, 1


@pytest.fixture(scope="module")
def shelf():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes: a second thread only spins on a shared machine
    yield ModelShelf(Target("tiny", torch.device("cpu"), torch.float32))
    torch.set_num_threads(threads)


class _EchoSession:
    """An understanding session whose caption of second ``k`` comes ``delay`` seconds after the
    frame at ``k + 1`` (the one that completes the second) is sent."""

    fps = 2.0

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[float] = []
        self._captions: asyncio.Queue[Caption] = asyncio.Queue()

    async def send_frame(self, pixels: np.ndarray, timestamp: float) -> None:
        self.sent.append(timestamp)
        if timestamp >= 1 and timestamp == int(timestamp):
            second = int(timestamp) - 1
            caption = Caption(second, second + 1, "", 0.0)
            asyncio.get_running_loop().call_later(self.delay, self._captions.put_nowait, caption)

    async def captions(self):
        while True:
            yield await self._captions.get()


def test_caption_latency_runs_from_the_frame_that_completes_the_second() -> None:
    session = _EchoSession(delay=0.15)

    async def measure():
        plan = FeedPlan(asyncio.get_running_loop().time(), warmup=1, seconds=2)
        return await time_captions(session, feed_frames((32, 48)), plan)

    times = asyncio.run(measure())
    assert session.sent == [j / 2 for j in range(7)]  # 2 a second, through t = 3 (completes 2)
    assert times.missing == 0 and sorted(times.latency_ms) == [1, 2]
    for ms in times.latency_ms.values():
        assert 150 <= ms < 150 + 100  # the delay, and the event loop's wake-up at most


def test_feed_frames_are_the_size_asked() -> None:
    frames = feed_frames((56, 100))
    assert all(f.shape == (56, 100, 3) and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == len(frames)


def test_commentary_clients_over_websocket(shelf) -> None:
    [(name, workload)] = run_commentary(shelf, CommentarySettings((1, 2), SECONDS, WARMUP))
    assert name == "commentary_websocket" and workload.ours == SERVED
    served = workload.variants[SERVED]
    tried = served.series["caption_ms_p95_by_clients"].x
    assert tried in ([1], [1, 2])  # 2 is not tried if 1 is far out
    for n in tried:
        assert served.value(f"captions_missing_{n}") == 0
        p50, p95 = served.value(f"caption_ms_p50_{n}"), served.value(f"caption_ms_p95_{n}")
        assert 0 < p50 <= p95
        per_second = served.series[f"caption_ms_{n}_clients"]
        assert per_second.x == list(range(WARMUP, WARMUP + SECONDS))
        assert all(ms > 0 for ms in per_second.y) and max(per_second.y) >= p95
        assert served.value(f"claimed_load_{n}") > 0
    if tried == [1, 2]:  # a second stream adds its batched share of a round
        assert served.value("claimed_load_2") >= served.value("claimed_load_1")
    assert served.value("real_time_clients") in (0, *tried)
    assert workload.config["clients"] == (1, 2) and workload.config["fps"] == 2


def test_mixed_load_on_one_server(shelf) -> None:
    settings = MixedSettings((0, 1), 1, SECONDS, WARMUP, (16, 16))
    [(name, workload)] = run_mixed(shelf, settings)
    assert name == "mixed_load"
    served = workload.variants[SERVED]
    for n in (0, 1):
        p50, p99 = served.value(f"lateness_ms_p50_{n}"), served.value(f"lateness_ms_p99_{n}")
        assert 0 <= p50 <= p99 <= served.value(f"lateness_ms_max_{n}")
        assert 0 < served.value(f"generation_fps_{n}") <= 2 * workload.config["fps"]
    assert "caption_ms_p50_0" not in served.figures  # no commentary beside it
    assert served.value("captions_missing_1") == 0
    assert 0 < served.value("caption_ms_p50_1") <= served.value("caption_ms_p95_1")
    assert served.series["caption_ms_1_clients"].x == list(range(WARMUP, WARMUP + SECONDS))
    assert served.series["lateness_ms_p99_by_clients"].x == [0, 1]
    assert served.series["caption_ms_p95_by_clients"].x == [1]
