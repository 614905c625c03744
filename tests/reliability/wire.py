"""Talking to a real server from the reliability tests: raw websockets clients, as a third party
would, with a timeout on every wait (nothing here asserts on timings)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import cv2
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.protocol import FrameFormat, FrameHeader, FrameKind
from framestream.stream.server import Server, build_server
from tests.admission import ANY_COMPUTE

TIMEOUT = 60.0
SIZE = {"height": 32, "width": 32}


def run(coro) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 180))


@contextlib.asynccontextmanager
async def served(
    pipelines: dict, engine: dict | None = None, **config: Any
) -> AsyncIterator[Server]:
    """A server on a free loopback port for ``pipelines`` (a fresh engine)."""
    settings = EngineConfig(**{"lookahead_seconds": 0.5, **ANY_COMPUTE, **(engine or {})})
    async with build_server(ServerConfig(port=0, **config), Engine(pipelines, settings)) as server:
        yield server


def connect(url: str, **kwargs: Any):
    """A client that buffers what it does not read, so closing never waits on unread frames."""
    return ws_connect(url, max_queue=None, close_timeout=2, **kwargs)


async def recv(ws: ClientConnection, kind: str | None = None, timeout: float = TIMEOUT) -> dict:
    """The next JSON message of type ``kind`` (any when None), skipping frames and others."""
    async with asyncio.timeout(timeout):
        while True:
            data = await ws.recv()
            if isinstance(data, str):
                message = json.loads(data)
                if kind is None or message["type"] == kind:
                    return message


async def expect_error(ws: ClientConnection, code: str) -> dict:
    message = await recv(ws, "error")
    assert message["code"] == code, message
    return message


async def hello(ws: ClientConnection, token: str | None = None) -> dict:
    await ws.send(json.dumps({"type": "hello", "version": 1, "token": token}))
    return await recv(ws, "welcome")


async def start(ws: ClientConnection, pipeline: str = "longlive", **params: Any) -> int:
    """Start a session (generation at 32x32 unless told) and return its id."""
    if pipeline != "streaming_vlm":
        params = {"prompt": "a red ball", **SIZE, **params}
    await ws.send(json.dumps({"type": "session.start", "pipeline": pipeline, "params": params}))
    reply = await recv(ws)
    assert reply["type"] == "session.started", reply
    return reply["session"]


async def frames(
    ws: ClientConnection, session: int, count: int, timeout: float = TIMEOUT
) -> list[FrameHeader]:
    """The headers of the next ``count`` video frames of ``session`` (others skipped)."""
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            data = await ws.recv()
            if isinstance(data, bytes) and (header := FrameHeader.unpack(data)).session == session:
                got.append(header)
    return got


def input_frame(
    session: int,
    index: int,
    timestamp: float,
    pixels: np.ndarray,
    fmt: FrameFormat = FrameFormat.JPEG,
    size: tuple[int, int] | None = None,
) -> bytes:
    """A binary input frame; ``size`` (width, height) overrides the header's true size."""
    if fmt is FrameFormat.RAW:
        payload = pixels.tobytes()
    else:
        ok, data = cv2.imencode(".png" if fmt is FrameFormat.PNG else ".jpg", pixels)
        assert ok
        payload = data.tobytes()
    width, height = size or (pixels.shape[1], pixels.shape[0])
    header = FrameHeader(FrameKind.INPUT, session, index, timestamp, fmt, width, height)
    return header.pack() + payload


def noise(height: int = 48, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


async def feed_seconds(ws: ClientConnection, session: int, seconds: int, first: int = 0) -> None:
    """Send ``seconds`` of feed at 4 frames a second, from second ``first``."""
    for i in range(4 * first, 4 * (first + seconds) + 1):
        await ws.send(input_frame(session, i, i / 4, noise(seed=i)))


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def held_blocks(server: Server) -> int:
    """Cache blocks allocated or reserved, over every pool of the server's pipelines."""
    managers = {id(p.manager): p.manager for p in server.engine.pipelines.values()}
    pools = [stats for manager in managers.values() for stats in manager.stats().values()]
    return sum(p.used_blocks + p.reserved_blocks for p in pools)


async def idle(server: Server) -> None:
    """Wait until no session, connection or cache block is held."""
    await until(
        lambda: (
            not server.sessions()
            and not server.engine.stats().sessions
            and not server.counters.connections
            and held_blocks(server) == 0
        )
    )
