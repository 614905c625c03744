"""clients/client.py's wire format, connection and generation sessions against a scripted fake
server (tests/clients/fake_server.py) on loopback; understanding sessions are in
test_understanding_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import struct
import threading
from typing import Any

import av
import numpy as np
import pytest
from websockets.sync.server import ServerConnection as SyncServerConnection
from websockets.sync.server import serve as sync_serve

from framestream.clients.client import (
    ClientError,
    Frame,
    FrameFormat,
    FrameHeader,
    FrameKind,
    ServerError,
    SessionEnded,
    StreamClient,
    generate_frames,
)

from .fake_server import (
    WELCOME,
    WIRE_HEADER,
    collect,
    fake_server,
    frame_message,
    pixels,
    run,
)

# -- the wire format ---------------------------------------------------------------------------


def test_header_matches_documented_layout() -> None:
    header = FrameHeader(FrameKind.VIDEO, 7, 2**40 + 3, 1.25, FrameFormat.PNG, 832, 480)
    packed = header.pack()
    assert packed == struct.pack(WIRE_HEADER, b"SV", 1, 1, 7, 2**40 + 3, 1.25, 2, 832, 480)
    assert len(packed) == 32 and packed[25:28] == b"\0\0\0"
    assert FrameHeader.unpack(packed + b"payload") == header


@pytest.mark.parametrize(
    "data",
    [
        b"SV\x01",  # too short
        b"XX" + struct.pack(WIRE_HEADER, b"SV", 1, 1, 1, 0, 0.0, 1, 1, 1)[2:],  # magic
        struct.pack(WIRE_HEADER, b"SV", 2, 1, 1, 0, 0.0, 1, 1, 1),  # version
        struct.pack(WIRE_HEADER, b"SV", 1, 9, 1, 0, 0.0, 1, 1, 1),  # kind
        struct.pack(WIRE_HEADER, b"SV", 1, 1, 1, 0, 0.0, 7, 1, 1),  # format
    ],
)
def test_bad_header_raises_client_error(data: bytes) -> None:
    with pytest.raises(ClientError):
        FrameHeader.unpack(data)


# -- connecting --------------------------------------------------------------------------------


def test_hello_welcome() -> None:
    async def main() -> None:
        async with fake_server() as fake:
            async with StreamClient.connect(fake.url, token="secret") as client:
                assert client.welcome == WELCOME
                assert client.pipelines == ["longlive"]
                assert client.limits["output_queue_frames"] == 96
            assert fake.hellos == [{"type": "hello", "version": 1, "token": "secret"}]
            async with StreamClient.connect(fake.url):
                pass
            assert fake.hellos[1] == {"type": "hello", "version": 1}

    run(main())


def test_hello_refused_raises_server_error() -> None:
    refusal = {"type": "error", "code": "unauthorized", "message": "a valid token is required"}

    async def main() -> None:
        async with fake_server(refuse=refusal) as fake:
            with pytest.raises(ServerError) as info:
                await StreamClient.open(fake.url, token="wrong")
            assert (info.value.code, info.value.message) == ("unauthorized", refusal["message"])
            assert info.value.session is None

    run(main())


# -- starting sessions -------------------------------------------------------------------------


def test_generate_sends_session_start() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(
                client, 5, "png", seed=3, height=480, width=832, quality=70, record=True
            )
            assert (session.id, session.pipeline, session.fps) == (5, "longlive", 16.0)
            assert (session.width, session.height, session.format) == (48, 32, "png")
            assert client.sessions == {5: session} and not session.ended

    run(main())

    async def wire() -> dict[str, Any]:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            task = asyncio.create_task(client.generate("a fox", preset="tiny", realtime=False))
            start = await fake.recv()
            task.cancel()
            return start

    start = run(wire())
    assert start == {
        "type": "session.start",
        "request_id": start["request_id"],
        "pipeline": "longlive",
        "preset": "tiny",
        "params": {
            "prompt": "a fox",
            "seed": 0,
            "format": "jpeg",
            "quality": 85,
            "realtime": False,
            "record": False,
        },
    }
    assert isinstance(start["request_id"], str)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "  "},
        {"format": "gif"},
        {"quality": 0},
        {"quality": 101},
        {"height": 100},
        {"width": 0},
    ],
)
def test_generate_checks_arguments_before_sending(kwargs: dict[str, Any]) -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            args = {"prompt": "a fox", **kwargs}
            with pytest.raises(ValueError):
                await client.generate(args.pop("prompt"), **args)
            assert fake.received.empty()

    run(main())


@pytest.mark.parametrize("code", ["cache_full", "too_many_sessions", "unknown_pipeline"])
def test_start_refused_raises_server_error(code: str) -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            task = asyncio.create_task(client.generate("a fox"))
            start = await fake.recv()
            await fake.send("error", code=code, message="no", request_id=start["request_id"])
            with pytest.raises(ServerError) as info:
                await task
            assert info.value.code == code and info.value.request_id == start["request_id"]
            assert client.sessions == {}

    run(main())


def test_unattributed_error_fails_the_oldest_pending_start() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            task = asyncio.create_task(client.generate("a fox"))
            await fake.recv()
            await fake.send("error", code="message_too_large", message="too big")
            with pytest.raises(ServerError, match="message_too_large"):
                await task
            error = await asyncio.wait_for(client.errors.get(), 1)
            assert error.code == "message_too_large"

    run(main())


def test_started_for_a_cancelled_request_is_stopped() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            task = asyncio.create_task(client.generate("a fox", timeout=0.05))
            start = await fake.recv()
            with pytest.raises(asyncio.TimeoutError):
                await task
            await fake.send(
                "session.started",
                session=9,
                pipeline="longlive",
                fps=16.0,
                width=48,
                height=32,
                format="jpeg",
                request_id=start["request_id"],
            )
            assert await fake.recv() == {"type": "stop", "session": 9}

    run(main())


# -- frames ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_frames_decode_to_the_sent_pixels(fmt: str) -> None:
    images = [pixels(i) for i in range(3)]

    async def main() -> list[Frame]:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 1, fmt)
            for i, image in enumerate(images):
                await fake.send_frame(1, i, image, fmt)
            await fake.send(
                "session.ended", session=1, reason="stopped", recording="/recordings/1.mp4"
            )
            frames = await collect(session.frames())
            assert session.ended_reason == "stopped" and session.ended_message is None
            assert session.recording == "/recordings/1.mp4"
            assert session.frames_dropped == 0
            return frames

    frames = run(main())
    assert [(f.index, f.timestamp, f.format, f.session) for f in frames] == [
        (i, i / 16, fmt, 1) for i in range(3)
    ]
    for frame, image in zip(frames, images, strict=True):
        assert frame.pixels.dtype == np.uint8 and frame.pixels.shape == (32, 48, 3)
        if fmt == "jpeg":
            error = np.abs(frame.pixels.astype(int) - image.astype(int)).mean()
            assert error < 4, error
        else:
            np.testing.assert_array_equal(frame.pixels, image)


def test_h264_frames_decode_in_order() -> None:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 48, 32, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 16)
    encoder.options = {"tune": "zerolatency", "preset": "ultrafast", "qp": "0"}
    images = [pixels(i) for i in range(4)]
    units: list[bytes] = []
    for i, image in enumerate([*images, None]):
        frame = None
        if image is not None:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
        units += [bytes(packet) for packet in encoder.encode(frame)]
    assert len(units) == len(images)

    async def main() -> list[Frame]:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 2, "h264")
            assert fake.ws is not None
            for i, unit in enumerate(units):
                await fake.ws.send(frame_message(2, i, "h264", unit, 48, 32))
            await fake.send("session.ended", session=2, reason="stopped")
            return await collect(session.frames())

    frames = run(main())
    assert [(f.index, f.format) for f in frames] == [(i, "h264") for i in range(4)]
    for frame, image in zip(frames, images, strict=True):
        # yuv420p chroma subsampling: close, not exact
        assert np.abs(frame.pixels.astype(int) - image.astype(int)).mean() < 8


def test_slow_consumer_loses_the_oldest_frames() -> None:
    async def main() -> None:
        async with fake_server() as fake:
            client = await StreamClient.open(fake.url, max_queued_frames=2)
            session = await fake.start(client, 1, "raw")
            for i in range(5):
                await fake.send_frame(1, i, pixels(i), "raw")
            await fake.send("session.ended", session=1, reason="stopped")
            await session.wait_ended(timeout=2)  # the reader has read every frame
            frames = await collect(session.frames())
            assert [f.index for f in frames] == [3, 4]
            assert session.frames_dropped == 3
            await client.close()
            await client.close()  # idempotent

    run(main())


def test_undecodable_and_foreign_frames_are_skipped() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 1, "jpeg")
            assert fake.ws is not None
            await fake.ws.send(frame_message(1, 0, "jpeg", b"not a jpeg", 48, 32))
            await fake.ws.send(frame_message(99, 0, "raw", pixels(0).tobytes(), 48, 32))
            await fake.ws.send(b"garbage")
            await fake.ws.send("not json")
            await fake.send_frame(1, 1, pixels(1), "jpeg")
            await fake.send("session.ended", session=1, reason="stopped")
            frames = await collect(session.frames())
            assert [f.index for f in frames] == [1]

    run(main())


# -- control and events ------------------------------------------------------------------------


def test_control_messages_and_events() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 3, "raw")
            switch = asyncio.create_task(session.switch_prompt("a bird", transition_chunks=2))
            update = await fake.recv()
            assert update == {
                "type": "prompt.update",
                "session": 3,
                "prompt": "a bird",
                "transition_chunks": 2,
            }
            applied = {
                "type": "prompt.applied",
                "session": 3,
                "prompt": "a bird",
                "frame": 24,
                "transition_chunks": 2,
            }
            assert fake.ws is not None
            await fake.ws.send(json.dumps(applied))
            assert await switch == applied
            assert await session.events.get() == applied

            assert await session.switch_prompt("a cat", wait=False) is None
            assert (await fake.recv())["prompt"] == "a cat"

            await session.pause()
            assert await fake.recv() == {"type": "pause", "session": 3}
            await session.resume()
            assert await fake.recv() == {"type": "resume", "session": 3}

            metrics = {
                "type": "metrics",
                "session": 3,
                "frames_sent": 40,
                "frames_dropped": 1,
                "fps": 15.9,
                "step_ms": 610.0,
                "queue": 3,
            }
            await fake.ws.send(json.dumps(metrics))
            assert await session.events.get() == metrics
            assert session.metrics == metrics

            stop = asyncio.create_task(session.stop())
            assert await fake.recv() == {"type": "stop", "session": 3}
            await fake.send("session.ended", session=3, reason="stopped")
            await stop
            assert session.ended and session.ended_reason == "stopped"
            assert (await session.events.get())["type"] == "session.ended"
            with pytest.raises(SessionEnded):
                await session.pause()

    run(main())


def test_session_error_fails_a_waiting_switch() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 4, "raw")
            switch = asyncio.create_task(session.switch_prompt("a bird"))
            await fake.recv()
            await fake.send("error", code="wrong_direction", message="no prompts", session=4)
            with pytest.raises(ServerError) as info:
                await switch
            assert (info.value.code, info.value.session) == ("wrong_direction", 4)
            assert (await session.events.get())["code"] == "wrong_direction"

            switch = asyncio.create_task(session.switch_prompt("a cat"))
            await fake.recv()
            await fake.send("session.ended", session=4, reason="error", message="step failed")
            with pytest.raises(SessionEnded):
                await switch
            assert (session.ended_reason, session.ended_message) == ("error", "step failed")

    run(main())


def test_two_sessions_interleaved_on_one_connection() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            a = await fake.start(client, 11, "raw")
            b = await fake.start(client, 12, "png")
            for i in range(3):
                await fake.send_frame(12, i, pixels(100 + i), "png")
                await fake.send_frame(11, i, pixels(i), "raw")
                await fake.send("metrics", session=11 if i % 2 else 12, frames_sent=i,
                                frames_dropped=0, fps=16.0, step_ms=1.0, queue=0)  # fmt: skip
            await fake.send("caption", session=12, start=0.0, end=0.5, text="ignored by generation")
            await fake.send("session.ended", session=11, reason="stopped")
            frames_a = await collect(a.frames())
            assert not b.ended
            await fake.send("session.ended", session=12, reason="server_shutdown")
            frames_b = await collect(b.frames())
            assert [f.index for f in frames_a] == [0, 1, 2]
            assert [f.index for f in frames_b] == [0, 1, 2]
            for i in range(3):
                np.testing.assert_array_equal(frames_a[i].pixels, pixels(i))
                np.testing.assert_array_equal(frames_b[i].pixels, pixels(100 + i))
            assert {f.session for f in frames_a} == {11} and {f.session for f in frames_b} == {12}
            events_a = [a.events.get_nowait()["type"] for _ in range(a.events.qsize())]
            events_b = [b.events.get_nowait()["type"] for _ in range(b.events.qsize())]
            assert events_a == ["metrics", "session.ended"]
            assert events_b == ["metrics", "metrics", "caption", "session.ended"]
            assert b.ended_reason == "server_shutdown"

    run(main())


def test_connection_closed_ends_sessions_and_requests() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start(client, 1, "raw")
            await fake.send_frame(1, 0, pixels(0), "raw")
            pending = asyncio.create_task(client.generate("another"))
            await fake.recv()
            assert fake.ws is not None
            await fake.ws.close(1001)
            frames = await collect(session.frames())
            assert [f.index for f in frames] == [0]
            assert session.ended_reason == "disconnected"
            with pytest.raises(SessionEnded):
                await pending

    run(main())


# -- the synchronous convenience -----------------------------------------------------------------


def test_generate_frames() -> None:
    """A fake on a thread answers like a server would: started, frames until stop, ended."""
    messages: list[dict[str, Any]] = []

    def handler(ws: SyncServerConnection) -> None:
        messages.append(json.loads(ws.recv()))
        ws.send(json.dumps(WELCOME))
        start = json.loads(ws.recv())
        messages.append(start)
        started = {
            "type": "session.started",
            "session": 1,
            "pipeline": "longlive",
            "fps": 4.0,
            "width": 48,
            "height": 32,
            "format": "raw",
            "request_id": start["request_id"],
        }
        ws.send(json.dumps(started))
        for i in range(12):
            ws.send(frame_message(1, i, "raw", pixels(i).tobytes(), 48, 32, fps=4.0))
        stop = json.loads(ws.recv())
        messages.append(stop)
        ws.send(json.dumps({"type": "session.ended", "session": 1, "reason": "stopped"}))
        with contextlib.suppress(Exception):
            ws.recv()

    with sync_serve(handler, "127.0.0.1", 0, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        frames = generate_frames(f"ws://127.0.0.1:{port}/ws", "a fox", 2.0, format="raw")
        server.shutdown()
        thread.join(5)

    assert [f.index for f in frames] == list(range(8))  # 2 s at 4 fps
    np.testing.assert_array_equal(frames[5].pixels, pixels(5))
    assert messages[1]["params"]["format"] == "raw"
    assert messages[2] == {"type": "stop", "session": 1}
