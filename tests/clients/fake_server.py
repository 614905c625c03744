"""A scripted fake server that speaks docs/protocol.md on loopback, for the client's tests.

It builds binary frames with its own ``struct`` format string, not the client's
``FrameHeader``, so that both sides of each check come from the documented layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import cv2
import numpy as np
from websockets.asyncio.server import ServerConnection, serve

from framestream.clients.client import (
    Frame,
    StreamClient,
    UnderstandingSession,
)

WIRE_HEADER = "<2sBBIQdB3xHH"  # docs/protocol.md, "Binary frames"
FORMATS = {"jpeg": 1, "png": 2, "raw": 3, "h264": 4}
WELCOME = {
    "type": "welcome",
    "version": 1,
    "server": "fake/0",
    "pipelines": ["longlive"],
    "limits": {
        "max_message_bytes": 1 << 20,
        "max_sessions_per_connection": 4,
        "max_frame_pixels": 1 << 20,
        "output_queue_frames": 96,
    },
}


def run(coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pixels(seed: int, height: int = 32, width: int = 48) -> np.ndarray:
    """A smooth RGB test image (JPEG-friendly), different for each seed."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 4 + seed * 10, y * 6 + seed * 20, (x + y) * 2 + seed * 30], axis=-1)
    return (image % 256).astype(np.uint8)


def encode_payload(image: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return image.tobytes()
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ext, args = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]) if fmt == "jpeg" else (".png", [])
    ok, data = cv2.imencode(ext, bgr, args)
    assert ok
    return data.tobytes()


def frame_message(session: int, index: int, fmt: str, payload: bytes, width: int, height: int,
                  fps: float = 16.0) -> bytes:  # fmt: skip
    header = struct.pack(
        WIRE_HEADER, b"SV", 1, 1, session, index, index / fps, FORMATS[fmt], width, height
    )
    assert len(header) == 32
    return header + payload


class FakeServer:
    """Answers hello, then hands every client message to the test, which scripts the replies."""

    def __init__(self, refuse: dict[str, Any] | None = None) -> None:
        self.refuse = refuse
        self.hellos: list[dict[str, Any]] = []
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.ws: ServerConnection | None = None
        self.url = ""
        self.last_start: dict[str, Any] = {}  # the latest session.start of an understand()

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None and ws.request.path == "/ws"
        self.hellos.append(json.loads(await ws.recv()))
        if self.refuse is not None:
            await ws.send(json.dumps(self.refuse))
            await ws.close(1008)
            return
        await ws.send(json.dumps(WELCOME))
        self.ws = ws
        self.connected.set()
        with contextlib.suppress(Exception):
            async for message in ws:
                await self.received.put(
                    json.loads(message) if isinstance(message, str) else message
                )

    async def recv(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.received.get(), 5)

    async def send(self, kind: str, **fields: Any) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def send_frame(self, session: int, index: int, image: np.ndarray, fmt: str) -> None:
        assert self.ws is not None
        payload = encode_payload(image, fmt)
        height, width = image.shape[:2]
        await self.ws.send(frame_message(session, index, fmt, payload, width, height))

    async def start(self, client: StreamClient, session: int, fmt: str = "raw", **kw: Any):
        """Drive ``client.generate`` through a scripted ``session.started``."""
        task = asyncio.create_task(client.generate("a fox", format=fmt, **kw))
        start = await self.recv()
        assert start["type"] == "session.start"
        await self.send(
            "session.started",
            session=session,
            pipeline="longlive",
            fps=16.0,
            width=48,
            height=32,
            format=fmt,
            request_id=start["request_id"],
        )
        return await task

    async def start_understanding(
        self, client: StreamClient, session: int, **kw: Any
    ) -> UnderstandingSession:
        """Drive ``client.understand`` through a scripted ``session.started`` (kind
        understanding); returns the session and the ``session.start`` message."""
        task = asyncio.create_task(client.understand(**kw))
        start = await self.recv()
        assert start["type"] == "session.start"
        self.last_start = start
        started = {
            "type": "session.started",
            "session": session,
            "pipeline": start["pipeline"],
            "kind": "understanding",
            "fps": 2,
            "request_id": start["request_id"],
        }
        assert self.ws is not None
        await self.ws.send(json.dumps(started))
        return await task


def parse_input_frame(data: bytes) -> tuple[tuple[Any, ...], np.ndarray]:
    """(header fields, RGB pixels) of a client's input frame, decoded with the documented
    layout and cv2 alone."""
    fields = struct.unpack_from(WIRE_HEADER, data)
    magic, version, kind, _, _, _, fmt, width, height = fields
    assert (magic, version, kind) == (b"SV", 1, 2)
    payload = data[32:]
    if fmt == FORMATS["raw"]:
        assert len(payload) == width * height * 3
        image = np.frombuffer(payload, np.uint8).reshape(height, width, 3)
    else:
        bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return fields, image


@contextlib.asynccontextmanager
async def fake_server(**kwargs: Any) -> AsyncIterator[FakeServer]:
    fake = FakeServer(**kwargs)
    async with serve(fake.handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/ws"
        yield fake


async def collect(frames: AsyncIterator[Frame]) -> list[Frame]:
    return [frame async for frame in frames]
