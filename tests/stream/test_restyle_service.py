"""Restyle sessions through the real server: a real server on loopback, raw websockets clients
and the Python client, the tiny preset at 32x32. Input frames go in, restyled frames come out
with their input slots' indices; strength and prompt change mid-stream; bad input gets its
error and the connection goes on; admission refuses a restyle session as it does any other.
Every wait has a timeout, and nothing asserts on timings."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection

from framestream.clients.client import RestyleSession, ServerError, StreamClient
from framestream.models.registry import load_wan_models
from framestream.stream.backend import describe_pipeline
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.pipelines.wan import WanCalibration
from framestream.stream.protocol import HEADER, FrameFormat, FrameHeader, FrameKind
from framestream.stream.requests import GenerationRequest, RestyleRequest
from framestream.stream.server import Server, build_server
from tests.admission import ANY_COMPUTE
from tests.reliability.wire import connect, expect_error, hello, recv

SIZE = {"height": 32, "width": 32}
TIMEOUT = 60.0
FPS = 16.0
FIRST, LATER = 9, 12  # output frames of a stream's first chunk, then of each later one


@pytest.fixture(scope="module")
def models():
    return load_wan_models("tiny")


def run(coro) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 240))


@contextlib.asynccontextmanager
async def running(
    models, cache_bytes: int = 64 << 20, engine: dict | None = None
) -> AsyncIterator[Server]:
    manager = KVCacheManager()
    pipelines = {
        "longlive": LongLivePipeline(models, manager, cache_bytes),
        "rolling_forcing": RollingForcingPipeline(models, manager, cache_bytes),
    }
    # room for a burst of input frames between two steps (the default, 16, drops the oldest)
    settings = {"lookahead_seconds": 0.5, "input_queue_frames": 64, **ANY_COMPUTE, **(engine or {})}
    async with build_server(
        ServerConfig(port=0), Engine(pipelines, EngineConfig(**settings))
    ) as srv:
        yield srv


async def start(
    ws: ClientConnection, pipeline: str = "longlive", request_id: str | None = None, **params
) -> dict:
    params = {"prompt": "a red ball", **SIZE, "format": "raw", **params}
    message = {"type": "session.start", "pipeline": pipeline, "params": params}
    await ws.send(json.dumps({**message, "request_id": request_id}))
    reply = await recv(ws)
    assert reply["type"] == "session.started", reply
    return reply


def picture(i: int, height: int = 48, width: int = 64) -> np.ndarray:
    """An input frame of another size than the session's (the server crops and resizes it)."""
    y, x = np.mgrid[0:height, 0:width]
    return ((np.stack([x * 3 + i * 9, y * 5, (x + y + i * 7)], axis=-1)) % 256).astype(np.uint8)


async def send_input(ws: ClientConnection, session: int, index: int, timestamp: float) -> None:
    pixels = picture(index)
    height, width = pixels.shape[:2]
    header = FrameHeader(FrameKind.INPUT, session, index, timestamp, FrameFormat.RAW, width, height)
    await ws.send(header.pack() + pixels.tobytes())


async def outputs(
    ws: ClientConnection, session: int, count: int, events: list[dict] | None = None
) -> list[tuple[FrameHeader, np.ndarray]]:
    """The next ``count`` video frames of ``session``; its JSON messages go to ``events``."""
    got = []
    async with asyncio.timeout(TIMEOUT):
        while len(got) < count:
            data = await ws.recv()
            if isinstance(data, bytes):
                header = FrameHeader.unpack(data)
                if header.session == session:
                    pixels = np.frombuffer(data[HEADER.size :], np.uint8)
                    got.append((header, pixels.reshape(header.height, header.width, 3)))
            elif events is not None:
                events.append(json.loads(data))
    return got


async def no_frame_of(ws: ClientConnection, session: int, seconds: float = 1.0) -> None:
    """No frame of ``session`` comes for ``seconds`` (its input is not complete)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                data = await ws.recv()
                if isinstance(data, bytes):
                    assert FrameHeader.unpack(data).session != session, "a frame came early"


# -- streaming -----------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["longlive", "rolling_forcing"])
def test_input_frames_come_back_restyled_with_their_slots_indices(models, pipeline: str):
    async def main():
        async with running(models) as server, connect(server.url) as ws:
            # frames reach the engine already fitted: cropped and resized in a decode thread
            pushed, push = [], server.engine.push_frame
            server.engine.push_frame = lambda *args: (pushed.append(args[2].shape), push(*args))
            await hello(ws)
            started = await start(ws, pipeline, request_id="r1", restyle={"strength": 0.5})
            session = started["session"]
            lead = {"longlive": 12, "rolling_forcing": 12}[pipeline]  # 0.5: one level at most
            assert started["restyle"] == {"strength": 0.5, "input_lead_frames": lead}
            assert started["request_id"] == "r1"
            assert (started["width"], started["height"], started["fps"]) == (32, 32, FPS)
            await no_frame_of(ws, session)  # paced by its input: nothing before it

            # slots 0..29 are in: the first two chunks (slots 0..20), not the third (21..32)
            for i in range(30):
                await send_input(ws, session, i, i / FPS)
            got = await outputs(ws, session, FIRST + LATER)
            assert [h.index for h, _ in got] == list(range(FIRST + LATER))
            for header, pixels in got:
                assert header.kind is FrameKind.VIDEO and header.format is FrameFormat.RAW
                assert pixels.shape == (32, 32, 3)
                assert header.timestamp == pytest.approx(header.index / FPS)
            await no_frame_of(ws, session)

            for i in range(30, 33):  # slot 32 in: the third chunk
                await send_input(ws, session, i, i / FPS)
            got = await outputs(ws, session, LATER)
            assert [h.index for h, _ in got] == list(range(21, 33))

            metrics = await recv(ws, "metrics")
            assert metrics["frames_received"] == 33 and metrics["frames_skipped"] == 0
            assert pushed == [(32, 32, 3)] * 33  # sent at 48 x 64
            assert metrics["latency_ms"]["p50"] > 0
            assert metrics["latency_ms"]["p95"] >= metrics["latency_ms"]["p50"]
            await ws.send(json.dumps({"type": "stop", "session": session}))
            assert (await recv(ws, "session.ended"))["reason"] == "stopped"

    run(main())


def test_strength_and_prompt_change_mid_stream(models):
    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            session = (await start(ws, restyle=True))["session"]
            for i in range(21):  # slot 20 in: the first two chunks
                await send_input(ws, session, i, i / FPS)
            await outputs(ws, session, FIRST + LATER)

            update = {"type": "restyle.update", "session": session, "strength": 0.9}
            await ws.send(json.dumps(update))
            applied = await recv(ws, "restyle.applied")
            assert applied == {
                "type": "restyle.applied", "session": session, "strength": 0.9, "frame": 21,
                "input_lead_frames": 12,
            }  # fmt: skip
            prompt = {"type": "prompt.update", "session": session, "prompt": "a blue cube"}
            await ws.send(json.dumps(prompt))
            switched = await recv(ws, "prompt.applied")
            assert switched["prompt"] == "a blue cube" and switched["frame"] == 21

            for i in range(21, 45):  # two more chunks
                await send_input(ws, session, i, i / FPS)
            got = await outputs(ws, session, 2 * LATER)
            assert [h.index for h, _ in got] == list(range(21, 45))

            # paused, its input still comes in (bounded) and waits; resumed, it is restyled
            await ws.send(json.dumps({"type": "pause", "session": session}))
            assert (await recv(ws, "session.paused"))["frame"] == 45
            for i in range(45, 57):
                await send_input(ws, session, i, i / FPS)
            await no_frame_of(ws, session)
            await ws.send(json.dumps({"type": "resume", "session": session}))
            got = await outputs(ws, session, LATER)
            assert [h.index for h, _ in got] == list(range(45, 57))

    run(main())


def test_input_faster_than_it_is_restyled_skips_the_oldest_slots(models):
    """A feed that jumps 20 s ahead completes 321 slots at once; the pipeline keeps at most the
    newest ``max_input_frames`` of them, skips the others (``metrics.frames_skipped``, their
    indices missing), and goes on."""
    kept = LongLiveConfig().max_input_frames

    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            session = (await start(ws, restyle=True))["session"]
            await send_input(ws, session, 0, 0.0)
            await send_input(ws, session, 1, 20.0)  # slots 0..320 are all in
            slots = int(20.0 * FPS) + 1
            got = await outputs(ws, session, FIRST)
            first = got[0][0].index
            assert first > 0 and slots - first <= kept
            assert [h.index for h, _ in got] == list(range(first, first + FIRST))
            metrics = await recv(ws, "metrics")
            assert metrics["frames_skipped"] == first and metrics["frames_received"] == 2

            for i in range(1, 25):  # it goes on: frames of the input sent after the jump
                await send_input(ws, session, 1 + i, 20.0 + i / FPS)
            async with asyncio.timeout(TIMEOUT):
                while (await outputs(ws, session, 1))[0][0].index < slots:
                    pass

    run(main())


def test_input_held_by_a_pause_is_restyled_on_resume_and_not_counted_late(models):
    """A chunk whose input completes while the session is paused waits for the resume, and the
    time it waited is the pause's, not the device's: no late step, the health stays ok. Input
    far past the bounds while paused skips its oldest chunks (counted), and the session goes on."""
    kept = LongLiveConfig().max_input_frames

    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            session = (await start(ws, restyle=True))["session"]
            for i in range(10):
                await send_input(ws, session, i, i / FPS)
            await outputs(ws, session, FIRST)

            await ws.send(json.dumps({"type": "pause", "session": session}))
            assert (await recv(ws, "session.paused"))["frame"] == FIRST
            for i in range(10, 22):  # slot 21 in: the second chunk, held by the pause
                await send_input(ws, session, i, i / FPS)
            await no_frame_of(ws, session, 1.5)  # longer than late_seconds
            await ws.send(json.dumps({"type": "resume", "session": session}))
            got = await outputs(ws, session, LATER)
            assert [h.index for h, _ in got] == list(range(FIRST, FIRST + LATER))
            stats = server.engine.stats()
            assert stats.late_steps == 0 and stats.health == "ok"

            await ws.send(json.dumps({"type": "pause", "session": session}))
            await recv(ws, "session.paused")
            await send_input(ws, session, 22, 20.0)  # slots up to 320 in at once
            await no_frame_of(ws, session)
            await ws.send(json.dumps({"type": "resume", "session": session}))
            first = (await outputs(ws, session, 1))[0][0].index
            assert first > 21 and int(20.0 * FPS) + 1 - first <= kept
            metrics = await recv(ws, "metrics")
            assert metrics["frames_skipped"] == first - 21 and metrics["frames_received"] == 23
            await ws.send(json.dumps({"type": "stop", "session": session}))
            assert (await recv(ws, "session.ended"))["reason"] == "stopped"

    run(main())


def test_the_python_client_restyles_a_source_and_changes_strength(models):
    # 20 frames at 8 fps; the last lasts one slot (frame_seconds unset): slots 0..38
    source = [(i / 8, picture(i)) for i in range(20)]

    async def main():
        async with running(models) as server:
            async with StreamClient.connect(server.url) as client:
                session = await client.restyle(
                    source, "a watercolour", strength=0.7, format="raw", record=True, **SIZE
                )
                assert isinstance(session, RestyleSession) and session.strength == 0.7
                assert session.feeding is not None
                indices = []
                async for frame in session.frames():
                    indices.append(frame.index)
                    assert frame.pixels.shape == (32, 32, 3)
                    if frame.index == 9:
                        applied = await session.set_strength(0.3)
                        assert applied["strength"] == 0.3 and applied["frame"] >= 10
                    if frame.index >= 38:
                        break
                assert await session.feeding == 39
                assert indices == list(range(39))
                assert session.strength == 0.3
                await session.stop()
                assert session.recording is not None  # recorded as any generation session
                assert session.recording.startswith("/recordings/")

    run(main())


# -- refusals ------------------------------------------------------------------------------


def test_bad_restyle_messages_get_their_errors_and_the_connection_goes_on(models):
    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            message = {"type": "session.start", "pipeline": "longlive", "request_id": "bad"}
            params = {"prompt": "x", **SIZE, "restyle": {"strength": 0}}
            await ws.send(json.dumps({**message, "params": params}))
            error = await expect_error(ws, "invalid_message")
            assert error["request_id"] == "bad" and "params.restyle.strength" in error["message"]

            restyle = (await start(ws, restyle={"strength": 0.5}))["session"]
            plain = (await start(ws))["session"]
            for bad in (0, 1.5, "0.5", None):
                update = {"type": "restyle.update", "session": restyle, "strength": bad}
                await ws.send(json.dumps(update))
                assert (await expect_error(ws, "invalid_message"))["session"] == restyle
            await ws.send(json.dumps({"type": "restyle.update", "session": plain, "strength": 0.5}))
            assert (await expect_error(ws, "wrong_direction"))["session"] == plain
            await ws.send(json.dumps({"type": "restyle.update", "session": 999, "strength": 0.5}))
            await expect_error(ws, "unknown_session")
            await send_input(ws, plain, 0, 0.0)  # a plain generation session takes no input
            assert (await expect_error(ws, "wrong_direction"))["session"] == plain
            await ws.send(json.dumps({"type": "question", "session": restyle, "text": "why?"}))
            await expect_error(ws, "wrong_direction")

            await send_input(ws, restyle, 0, 1.0)
            await send_input(ws, restyle, 1, 0.5)  # older than the one before
            assert (await expect_error(ws, "timestamps_backwards"))["session"] == restyle
            header = FrameHeader(FrameKind.INPUT, restyle, 2, 1.0, FrameFormat.JPEG, 64, 48)
            await ws.send(header.pack() + b"not a jpeg")
            assert (await expect_error(ws, "bad_frame"))["session"] == restyle

            # both sessions still run: the plain one streams, the restyle one restyles
            await outputs(ws, plain, 3)
            for i in range(1, 22):
                await send_input(ws, restyle, i, 1.0 + i / FPS)
            got = await outputs(ws, restyle, FIRST)
            assert [h.index for h, _ in got] == list(range(FIRST))

    run(main())


def test_admission_refuses_a_restyle_session_like_any_other(models):
    """By compute, with a made-up calibration whose encoder makes the restyle step too long for
    real time where a plain step fits; by cache, when the pool holds one session."""
    pipeline = LongLivePipeline(models, KVCacheManager(), 64 << 20)
    pipeline.calibration = WanCalibration(
        dit_seconds=0.2, decode_seconds=0.05, frames=12, encode_seconds=0.5
    )
    size = {"height": 128, "width": 128}  # the calibrated size: 0.25 s a step, 0.75 s restyled
    plain = pipeline.step_cost(GenerationRequest("x", **size))
    restyle = pipeline.step_cost(GenerationRequest("x", **size, restyle=RestyleRequest()))
    assert plain.load <= 0.9 < restyle.load  # the premise: the encoder's time counts
    assert restyle.step_seconds <= 1.0  # and a step of it is not too long to run at all
    assert describe_pipeline(pipeline).restyles  # the Wan VAE encodes
    no_encoder = SimpleNamespace(vae=object(), default_size=(64, 64))  # as a tiny decoder
    tiny = SimpleNamespace(kind="generation", config=pipeline.config, models=no_encoder)
    assert not describe_pipeline(tiny).restyles
    engine = Engine({"longlive": pipeline}, EngineConfig(lookahead_seconds=0.5))

    async def main():
        async with build_server(ServerConfig(port=0), engine) as server, connect(server.url) as ws:
            await hello(ws)
            message = {"type": "session.start", "pipeline": "longlive", "request_id": "rs"}
            params = {"prompt": "x", **size, "restyle": True}
            await ws.send(json.dumps({**message, "params": params}))
            assert (await expect_error(ws, "compute_full"))["request_id"] == "rs"
            started = await start(ws, **size)  # a plain session of that size fits
            await ws.send(json.dumps({"type": "stop", "session": started["session"]}))
            await recv(ws, "session.ended")
            # in the background (realtime false) it claims no realtime share, and is admitted
            background = await start(ws, **size, restyle=True, realtime=False)
            assert background["restyle"] == {"strength": 0.6, "input_lead_frames": 12}

    run(main())

    probe = LongLivePipeline(models, KVCacheManager(), 64 << 20)
    state = probe.open(GenerationRequest("x", 0, 32, 32, RestyleRequest()))
    stats = probe.pool.stats()
    probe.close(state)
    one = stats.reserved_blocks + stats.used_blocks
    cache_bytes = (one + 1 + one // 2) * stats.bytes_per_block  # one session, not two

    async def full():
        async with running(models, cache_bytes=cache_bytes) as server:
            async with StreamClient.connect(server.url) as client:
                first = await client.restyle(None, "x", format="raw", **SIZE)
                with pytest.raises(ServerError) as refused:
                    await client.restyle(None, "y", format="raw", **SIZE)
                assert refused.value.code == "cache_full"
                for i in range(10):
                    await first.send(picture(i), i / FPS, format="raw")
                frames = []
                async for frame in first.frames():
                    frames.append(frame.index)
                    if len(frames) == FIRST:
                        break
                assert frames == list(range(FIRST))

    run(full())
