"""Bounds, one test each: every limit is a setting and a ``stream serve`` flag; the input-frame
inbox, the finished recordings and the rate limiter stay within theirs; an overloaded engine
starves no stream; the image-size reader that runs before any decode."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import threading

import cv2
import numpy as np
import pytest

from framestream.cli.main import build_parser
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.errors import EngineBusy
from framestream.stream.image_size import ImageHeaderError, jpeg_size, png_size
from framestream.stream.ratelimit import RateLimiter
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.session import OutputQueue, Session
from tests.stream.test_engine import FakeGeneration, FakeUnderstanding

from .wire import connect, frames, hello, recv, run, served, start

# settings that are not bounds (where and how to serve, pacing) or are set another way
NOT_FLAGS = {
    "host", "port", "token", "allowed_origins", "preset", "static_dir", "record_dir",
    "ping_interval", "ping_timeout", "lookahead_seconds",
}  # fmt: skip


def test_every_limit_is_a_setting_and_a_flag():
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    for config in (ServerConfig, EngineConfig):
        for field in dataclasses.fields(config):
            if field.name not in NOT_FLAGS:
                assert f"--{field.name.replace('_', '-')} " in help_text.getvalue(), field.name
    argv = ["serve", "--max-connections", "3", "--input-queue-frames", "5"]
    args = build_parser().parse_args(argv)
    assert (args.max_connections, args.input_queue_frames) == (3, 5)
    with pytest.raises(ValueError, match="max_recordings"):
        ServerConfig(max_recordings=0)
    with pytest.raises(ValueError):
        EngineConfig(input_queue_frames=0)


# -- the engine ---------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowGeneration(FakeGeneration):
    """Each 12-frame chunk (0.75 s of video) takes 2 s of the engine's clock: always late."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def step(self, state):
        self.clock.now += 2.0
        return super().step(state)


def test_late_generation_does_not_starve_understanding():
    async def main():
        clock = _Clock()
        engine = Engine({"gen": SlowGeneration(clock), "vlm": FakeUnderstanding()}, clock=clock)
        engine.start()
        try:
            video = await engine.open_session("gen", GenerationRequest("a", 1))
            feed = await engine.open_session("vlm", UnderstandingRequest())
            engine.push_frame(feed, 0.0, np.zeros((2, 2, 3), np.uint8))
            caption = await asyncio.wait_for(feed.events.get(), 30)
            assert caption["type"] == "caption"
            assert video.stats.frames_generated > 0  # and generation went on meanwhile
        finally:
            await engine.shutdown()

    run(main())


class GatedUnderstanding(FakeUnderstanding):
    """Holds the engine thread inside its first push_frame until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.pushed: list[float] = []

    def push_frame(self, state, timestamp, frame) -> None:
        self.entered.set()
        assert self.gate.wait(30)
        self.pushed.append(timestamp)


def test_input_frames_wait_in_a_bounded_inbox_the_newest_kept():
    async def main():
        pipeline = GatedUnderstanding()
        engine = Engine({"vlm": pipeline}, EngineConfig(input_queue_frames=4))
        engine.start()
        try:
            session = await engine.open_session("vlm", UnderstandingRequest())
            frame = np.zeros((2, 2, 3), np.uint8)
            engine.push_frame(session, 0.0, frame)
            await asyncio.to_thread(pipeline.entered.wait, 30)  # the engine is busy with it
            for i in range(1, 101):
                engine.push_frame(session, float(i), frame)
            stats = engine.stats()
            assert (stats.pending_input_frames, stats.pending_commands) == (4, 1)
            pipeline.gate.set()
            await asyncio.wait_for(_until(lambda: len(pipeline.pushed) == 5), 30)
            assert pipeline.pushed == [0.0, 97.0, 98.0, 99.0, 100.0]
            assert engine.stats().pending_input_frames == 0
        finally:
            pipeline.gate.set()
            await engine.shutdown()

    run(main())


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# -- the server ---------------------------------------------------------------------------------


def test_the_oldest_recordings_are_deleted_beyond_the_limit(pipelines, tmp_path):
    async def main():
        async with (
            served(pipelines, record_dir=tmp_path, max_recordings=2) as server,
            connect(server.url) as ws,
        ):
            await hello(ws)
            paths = []
            for _ in range(3):
                session = await start(ws, record=True)
                await frames(ws, session, 2)
                await ws.send(json.dumps({"type": "stop", "session": session}))
                paths.append((await recv(ws, "session.ended"))["recording"])
            return server, paths

    server, paths = run(main())
    kept = sorted(p.name for p in tmp_path.glob("*.mp4"))
    assert kept == sorted(p.rsplit("/", 1)[1] for p in paths[1:])


def test_the_rate_limiter_refills_at_its_rate():
    clock = _Clock()
    limiter = RateLimiter(2.0, clock)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]  # a second's burst
    clock.now += 0.5
    assert [limiter.allow(), limiter.allow()] == [True, False]
    slow = RateLimiter(0.5, clock)  # under one a second: one at a time, every 2 s
    assert [slow.allow(), slow.allow()] == [True, False]
    clock.now += 2.0
    assert slow.allow()
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0)


# -- sizes read before decoding -----------------------------------------------------------------


def _encoded(ext: str, width: int, height: int, params: list[int] | None = None) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(ext, pixels, params or [])
    assert ok
    return data.tobytes()


def test_image_sizes_are_read_from_the_headers():
    assert png_size(_encoded(".png", 37, 5)) == (37, 5)
    assert jpeg_size(_encoded(".jpg", 37, 5)) == (37, 5)
    progressive = _encoded(".jpg", 40, 24, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert jpeg_size(progressive) == (40, 24)
    jpeg = _encoded(".jpg", 16, 8)
    comment = b"\xff\xfe\x00\x07hello"  # a COM segment, then fill bytes before the next marker
    assert jpeg_size(jpeg[:2] + comment + b"\xff\xff" + jpeg[2:]) == (16, 8)
    for bad in (b"", b"GIF89a", jpeg[:20], b"\xff\xd8\xff\xda\x00\x02", b"\xff\xd8\x00\x00"):
        with pytest.raises(ImageHeaderError):
            jpeg_size(bad)
    png = _encoded(".png", 4, 4)
    for bad in (b"", png[:20], png[:12] + b"IDAT" + png[16:]):
        with pytest.raises(ImageHeaderError):
            png_size(bad)


def test_engine_commands_beyond_the_limit_are_refused():
    loop = asyncio.new_event_loop()
    try:
        session = Session(1, "gen", GenerationRequest("a"), OutputQueue(4, loop), 16.0)
        engine = Engine({"gen": FakeGeneration()}, EngineConfig(max_pending_commands=3))
        for _ in range(3):  # not started: nothing drains them
            engine.pause(session)
        with pytest.raises(EngineBusy):
            engine.resume(session)
        assert engine.stats().pending_commands == 3
    finally:
        loop.close()
