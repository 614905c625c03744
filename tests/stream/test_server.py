"""The WebSocket server end to end: a real server on loopback, real websockets clients, the tiny
preset at 32x32. Every wait has a timeout, and nothing asserts on timings."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from framestream.models.registry import load_wan_models
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.wan import WanCalibration
from framestream.stream.protocol import HEADER, FrameFormat, FrameHeader, FrameKind
from framestream.stream.requests import GenerationRequest
from framestream.stream.server import Server, build_server
from tests.reliability.wire import expect_error, hello, recv

SIZE = {"height": 32, "width": 32}
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def models():
    return load_wan_models("tiny")


def connect(url: str):
    """A client that buffers what it does not read, so its closing handshake never waits on
    frames left unread."""
    return ws_connect(url, max_queue=None, close_timeout=2)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def running(
    models, cache_bytes: int = 64 << 20, engine: dict | None = None, **server
) -> AsyncIterator[Server]:
    pipeline = LongLivePipeline(models, KVCacheManager(), cache_bytes)
    config = EngineConfig(**{"lookahead_seconds": 0.5, **(engine or {})})
    async with build_server(
        ServerConfig(port=0, **server), Engine({"longlive": pipeline}, config)
    ) as srv:
        yield srv


async def start(ws: ClientConnection, request_id: str | None = None, **params) -> dict:
    params = {"prompt": "a red ball", **SIZE, **params}
    message = {"type": "session.start", "pipeline": "longlive", "params": params}
    await ws.send(json.dumps({**message, "request_id": request_id}))
    reply = await recv(ws)
    assert reply["type"] == "session.started", reply
    return reply


async def frames(
    ws: ClientConnection, session: int, count: int, timeout: float = TIMEOUT
) -> list[tuple[FrameHeader, bytes]]:
    """The next ``count`` video frames of ``session`` (other messages skipped)."""
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            data = await ws.recv()
            if isinstance(data, bytes):
                header = FrameHeader.unpack(data)
                if header.session == session:
                    got.append((header, data[HEADER.size :]))
    return got


def decode_jpeg(payload: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


async def http_get(server: Server, path: str) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{server.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(get)


async def until(predicate, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


# -- streaming ----------------------------------------------------------------------------------


def test_sessions_stream_switch_pause_resume_stop(models):
    async def main():
        async with running(models) as server, connect(server.url) as a, connect(server.url) as b:
            welcome = await hello(a)
            assert welcome["version"] == 1 and welcome["pipelines"] == ["longlive"]
            assert welcome["server"].startswith("stream/")
            assert welcome["limits"]["max_frame_pixels"] == 1920 * 1080
            await hello(b)
            s1 = await start(a, request_id="r1")
            s2 = await start(a)
            s3 = await start(b)
            assert s1["request_id"] == "r1"
            assert (s1["width"], s1["height"], s1["format"]) == (32, 32, "jpeg")
            assert len({s1["session"], s2["session"], s3["session"]}) == 3
            for ws, started in ((a, s1), (a, s2), (b, s3)):
                got = await frames(ws, started["session"], 3)
                for header, payload in got:
                    assert header.kind is FrameKind.VIDEO
                    assert header.format is FrameFormat.JPEG
                    assert (header.width, header.height) == (32, 32)
                    assert decode_jpeg(payload).shape == (32, 32, 3)
                indices = [h.index for h, _ in got]
                assert indices == sorted(indices)

            id1 = s1["session"]
            update = {"type": "prompt.update", "session": id1, "prompt": "a blue cube"}
            await a.send(json.dumps({**update, "transition_chunks": 2}))
            applied = await recv(a, "prompt.applied")
            assert applied["session"] == id1 and applied["prompt"] == "a blue cube"
            assert isinstance(applied["frame"], int) and applied["transition_chunks"] == 2
            await frames(b, s3["session"], 3)  # the other connection is unaffected
            await frames(a, s2["session"], 3)  # and so is the other session

            metrics = await recv(a, "metrics")
            assert {"frames_sent", "frames_dropped", "fps", "step_ms", "queue"} <= set(metrics)

            await a.send(json.dumps({"type": "pause", "session": id1}))
            # buffered frames still arrive; then none for a full second
            async with asyncio.timeout(TIMEOUT):
                while True:
                    try:
                        await asyncio.wait_for(frames(a, id1, 1), 1.0)
                    except TimeoutError:
                        break
            await a.send(json.dumps({"type": "resume", "session": id1}))
            await frames(a, id1, 2)

            await a.send(json.dumps({"type": "stop", "session": id1}))
            ended = await recv(a, "session.ended")
            assert ended == {"type": "session.ended", "session": id1, "reason": "stopped"}
            await a.send(json.dumps({"type": "stop", "session": id1}))
            await expect_error(a, "unknown_session")
            await frames(a, s2["session"], 2)

    run(main())


def test_formats_png_raw_h264(models):
    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            png = (await start(ws, format="png"))["session"]
            raw = (await start(ws, format="raw", realtime=False))["session"]
            h264 = (await start(ws, format="h264", quality=50))["session"]
            got: dict[int, list[tuple[FrameHeader, bytes]]] = {png: [], raw: [], h264: []}
            async with asyncio.timeout(TIMEOUT):  # one pass: the H.264 stream from its start
                while min(len(v) for v in got.values()) < 6:
                    data = await ws.recv()
                    if isinstance(data, bytes):
                        header = FrameHeader.unpack(data)
                        got[header.session].append((header, data[HEADER.size :]))
            header, payload = got[png][0]
            assert header.format is FrameFormat.PNG and decode_jpeg(payload).shape == (32, 32, 3)
            header, payload = got[raw][0]
            assert header.format is FrameFormat.RAW and len(payload) == 32 * 32 * 3
            decoder = av.CodecContext.create("h264", "r")
            decoded = []
            assert got[h264][0][0].index == 0
            for header, payload in got[h264]:
                assert header.format is FrameFormat.H264 and payload[:4] == b"\0\0\0\1"
                for packet in decoder.parse(payload):
                    decoded.extend(decoder.decode(packet))
            assert decoded and (decoded[0].width, decoded[0].height) == (32, 32)

    run(main())


# -- refusals -----------------------------------------------------------------------------------


def test_wrong_token_is_refused_and_the_connection_closed(models):
    """No second guess on one connection: unauthorized, then close 1008."""

    async def main():
        async with running(models, token="secret") as server, connect(server.url) as ws:
            await ws.send(json.dumps({"type": "hello", "version": 1, "token": "wrong"}))
            await expect_error(ws, "unauthorized")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1008

    run(main())


def test_refused_messages_keep_the_connection(models):
    async def main():
        limit = 4096
        config = {"token": "secret", "max_message_bytes": limit, "max_sessions_per_connection": 2}
        async with (
            running(models, **config) as server,
            connect(server.url) as other,
            connect(server.url) as ws,
        ):
            await hello(other, "secret")
            other_id = (await start(other))["session"]

            await ws.send(json.dumps({"type": "session.start", "pipeline": "longlive"}))
            await expect_error(ws, "not_ready")
            await ws.send(json.dumps({"type": "hello", "version": 2, "token": "secret"}))
            await expect_error(ws, "unsupported_version")
            await hello(ws, "secret")
            await ws.send(json.dumps({"type": "hello", "version": 1, "token": "secret"}))
            await expect_error(ws, "not_ready")

            await ws.send("{not json")
            await expect_error(ws, "bad_json")
            await ws.send(json.dumps({"type": "teleport"}))
            await expect_error(ws, "unknown_type")
            await ws.send(json.dumps({"type": "prompt.update", "session": 1}))
            await expect_error(ws, "invalid_message")
            await ws.send(json.dumps({"type": "x", "pad": "y" * (limit * 3 // 2)}))
            await expect_error(ws, "message_too_large")
            for session in (999, other_id):
                await ws.send(json.dumps({"type": "pause", "session": session}))
                assert (await expect_error(ws, "unknown_session"))["session"] == session
            start_ = {"type": "session.start", "pipeline": "longlive", "request_id": "big"}
            await ws.send(
                json.dumps({**start_, "params": {"prompt": "x", "height": 2048, "width": 2048}})
            )
            assert (await expect_error(ws, "frame_too_large"))["request_id"] == "big"
            await ws.send(json.dumps({**start_, "params": {"prompt": "x", "height": 30}}))
            await expect_error(ws, "invalid_message")
            await ws.send(json.dumps({**start_, "params": {"prompt": "x", "format": "gif"}}))
            await expect_error(ws, "invalid_message")
            await ws.send(json.dumps({**start_, "pipeline": "nope", "params": {"prompt": "x"}}))
            await expect_error(ws, "unknown_pipeline")
            await ws.send(json.dumps({**start_, "preset": "huge", "params": {"prompt": "x"}}))
            await expect_error(ws, "unknown_pipeline")

            first = (await start(ws))["session"]
            await start(ws)
            params = {"prompt": "x", **SIZE}
            await ws.send(json.dumps({**start_, "request_id": "third", "params": params}))
            error = await expect_error(ws, "too_many_sessions")
            assert error["request_id"] == "third"

            await ws.send(json.dumps({"type": "question", "session": first, "text": "why?"}))
            await expect_error(ws, "wrong_direction")
            frame = FrameHeader(FrameKind.INPUT, first, 0, 0.0, FrameFormat.RAW, 1, 1)
            await ws.send(frame.pack() + b"\0\0\0")
            await expect_error(ws, "wrong_direction")

            # the same connection still answers, and the other one still streams
            await ws.send(json.dumps({"type": "prompt.update", "session": first, "prompt": "y"}))
            assert (await recv(ws, "prompt.applied"))["session"] == first
            await frames(ws, first, 2)
            await frames(other, other_id, 2)

            # beyond twice the limit websockets itself closes the connection (1009)
            await ws.send("z" * (limit * 3))
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd.code == 1009
            await frames(other, other_id, 2)

            errors = (await http_get(server, "/metrics"))[1].decode()
            assert 'stream_errors_total{code="unknown_session"} 2' in errors

    run(main())


def test_cache_full_refuses_only_the_new_session(models):
    probe = LongLivePipeline(models, KVCacheManager(), 64 << 20)
    state = probe.open(GenerationRequest("x", 0, 32, 32))
    stats = probe.pool.stats()
    probe.close(state)
    one = stats.reserved_blocks + stats.used_blocks
    cache_bytes = (one + 1 + one // 2) * stats.bytes_per_block  # one session, not two

    async def main():
        async with running(models, cache_bytes=cache_bytes) as server, connect(server.url) as ws:
            await hello(ws)
            first = (await start(ws))["session"]
            message = {"type": "session.start", "pipeline": "longlive", "request_id": "2"}
            await ws.send(json.dumps({**message, "params": {"prompt": "x", **SIZE}}))
            assert (await expect_error(ws, "cache_full"))["request_id"] == "2"
            await frames(ws, first, 3)

    run(main())


def test_rate_limited(models):
    async def main():
        async with running(models, max_messages_per_second=5) as server, connect(server.url) as ws:
            await hello(ws)
            for _ in range(10):
                await ws.send(json.dumps({"type": "pause", "session": 7}))
            codes = [(await recv(ws, "error"))["code"] for _ in range(10)]
            assert "rate_limited" in codes and "unknown_session" in codes

    run(main())


# -- resources ----------------------------------------------------------------------------------


async def raw_client(server: Server, messages: list[str]) -> socket.socket:
    """A WebSocket client on a tiny receive buffer that sends ``messages`` and never reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)  # byte by byte: not a frame byte more
    assert response.startswith(b"HTTP/1.1 101"), response
    for message in messages:
        data = message.encode()
        assert len(data) < 65536
        length = bytes([0x80 | len(data)]) if len(data) < 126 else b"\xfe" + len(data).to_bytes(2)
        await loop.sock_sendall(sock, b"\x81" + length + b"\0\0\0\0" + data)  # zero mask
    return sock


def test_a_client_that_stops_reading_costs_no_memory(models):
    async def main():
        engine = {"output_queue_frames": 24}
        async with running(models, engine=engine, write_limit=1024) as server:
            start_ = {"type": "session.start", "pipeline": "longlive"}
            params = {"prompt": "x", "height": 64, "width": 64, "format": "raw"}
            sock = await raw_client(
                server,
                [
                    json.dumps({"type": "hello", "version": 1}),
                    json.dumps({**start_, "params": params}),
                ],
            )
            try:
                await until(lambda: len(server.sessions()) == 1)
                session = server.sessions()[0]
                (ws,) = server._ws.connections
                ws.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
                )
                await until(lambda: session.stats.frames_dropped > 24)
                assert len(session.output) <= 24
                # what websockets holds for the socket: the write limit plus a message per task
                assert ws.transport.get_write_buffer_size() <= 1024 + 3 * (64 * 64 * 3 + 256)
                assert session.stats.frames_generated > session.stats.frames_sent + 24
            finally:
                sock.close()
            await until(lambda: not server.sessions())

    run(main())


def test_a_dropped_connection_frees_its_cache_blocks(models):
    async def main():
        async with running(models) as server:
            (pipeline,) = server.engine.pipelines.values()
            async with connect(server.url) as ws:
                await hello(ws)
                session = (await start(ws))["session"]
                await start(ws)
                await frames(ws, session, 2)
                stats = pipeline.pool.stats()
                assert stats.used_blocks + stats.reserved_blocks > 0
                ws.transport.abort()

            def freed() -> bool:
                stats = pipeline.pool.stats()
                return stats.used_blocks == 0 and stats.reserved_blocks == 0

            await until(freed)
            await until(lambda: not server.engine.stats().sessions)
            assert not server.sessions()

    run(main())


# -- HTTP ---------------------------------------------------------------------------------------


def test_healthz_metrics_and_static_files(models, tmp_path: Path):
    (tmp_path / "index.html").write_text("<h1>stream</h1>")
    (tmp_path / "app.js").write_text("let x = 1;")
    (tmp_path.parent / "secret.txt").write_text("no")

    async def main():
        async with running(models, static_dir=tmp_path) as server:
            assert await http_get(server, "/healthz") == (200, b"ok\n")
            async with connect(server.url) as ws:
                await hello(ws)
                await frames(ws, (await start(ws))["session"], 3)
                status, body = await http_get(server, "/metrics")
            assert status == 200
            text = body.decode()
            for name in (
                'stream_sessions{pipeline="longlive"} 1',
                "stream_connections 1",
                "stream_frames_generated_total",
                "stream_frames_sent_total",
                "stream_frames_dropped_total",
                'stream_step_seconds{quantile="0.5"}',
                'stream_step_seconds{quantile="0.99"}',
                "stream_step_seconds_count",
                "stream_cache_bytes_used",
                "stream_cache_bytes_capacity",
                "stream_errors_total",
                "stream_messages_received_total 2",
            ):
                assert name in text, name
            values = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            assert (
                values["stream_frames_generated_total"] >= values["stream_frames_sent_total"] >= 3
            )
            assert values["stream_cache_bytes_capacity"] > 0
            assert 0 < values['stream_step_seconds{quantile="0.5"}'] < 60
            assert values["stream_step_seconds_count"] >= 1

            assert await http_get(server, "/") == (200, b"<h1>stream</h1>")
            assert await http_get(server, "/app.js") == (200, b"let x = 1;")
            for path in ("/nope", "/../secret.txt", "/%2e%2e/secret.txt", "/recordings/1.mp4"):
                assert (await http_get(server, path))[0] == 404, path
            # browsers from other origins are refused; same origin and no Origin are fine
            with pytest.raises(InvalidStatus) as refused:
                await ws_connect(server.url, origin="http://evil.example")
            assert refused.value.response.status_code == 403
            same = f"http://localhost:{server.port}"
            async with ws_connect(server.url, origin=same) as ws:
                await hello(ws)
            # a raw request, so no client normalises the path
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 404")
            writer.close()

    run(main())


def test_recording_is_served_after_the_session(models):
    async def main():
        async with running(models) as server, connect(server.url) as ws:
            await hello(ws)
            session = (await start(ws, record=True))["session"]
            await frames(ws, session, 15)
            assert (await http_get(server, f"/recordings/{session}.mp4"))[0] == 404  # not done
            await ws.send(json.dumps({"type": "stop", "session": session}))
            ended = await recv(ws, "session.ended")
            assert ended["reason"] == "stopped"
            assert re.fullmatch(rf"/recordings/{session}-[0-9a-f]{{32}}\.mp4", ended["recording"])
            status, body = await http_get(server, ended["recording"])
            assert status == 200
            generated = server.engine.stats().frames_generated
            with av.open(io.BytesIO(body)) as container:
                decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(decoded) == generated >= 15
            assert decoded[0].shape == (32, 32, 3)

    run(main())


def test_toyworld_feed_is_a_playable_mp4_of_the_world(models):
    """The Watch tab's camera-less source: the frames are the toy world's, rendered."""
    from framestream.models.toyworld import Feed, render
    from framestream.stream.toyfeed import FPS, SIZE

    async def main():
        async with running(models, toyworld_feed_max_seconds=5) as server:
            status, body = await http_get(server, "/toyworld/feed.mp4?seed=7&seconds=2")
            refused = [
                await http_get(server, f"/toyworld/feed.mp4?{query}")
                for query in ("seconds=6", "seconds=0", "seed=-3", "seed=x")
            ]
        return status, body, refused

    status, body, refused = asyncio.run(asyncio.wait_for(main(), 60))
    assert status == 200
    with av.open(io.BytesIO(body)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    truth = render(Feed(7, SIZE, FPS).window(0, 2 * int(FPS)))
    assert decoded.shape == truth.shape == (32, 64, 64, 3)
    assert np.abs(decoded.astype(int) - truth).mean() < 6  # H.264 at crf 18
    assert [code for code, _ in refused] == [400] * 4
    assert b"seconds must be in 1..5" in refused[0][1]


# -- lifecycle ----------------------------------------------------------------------------------


def test_graceful_shutdown_mid_stream(models):
    async def main():
        server = build_server(
            ServerConfig(port=0),
            Engine(
                {"longlive": LongLivePipeline(models, KVCacheManager(), 64 << 20)},
                EngineConfig(lookahead_seconds=0.5),
            ),
        )
        await server.start()
        clients = [await connect(server.url) for _ in range(2)]
        try:
            ids = []
            for ws in clients:
                await hello(ws)
                ids.append((await start(ws, record=True))["session"])
            for ws, session in zip(clients, ids, strict=True):
                await frames(ws, session, 2)
            closing = asyncio.create_task(server.close())
            for ws, session in zip(clients, ids, strict=True):
                ended = await recv(ws, "session.ended")
                assert ended["session"] == session and ended["reason"] == "server_shutdown"
                assert re.fullmatch(
                    rf"/recordings/{session}-[0-9a-f]{{32}}\.mp4", ended["recording"]
                )
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd.code == 1001
            await closing
            await server.close()  # idempotent
            assert server.draining
        finally:
            for ws in clients:
                await ws.close()
            await server.close()

    run(main())


def test_refuses_a_public_host_without_a_token():
    with pytest.raises(ValueError, match="token"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="max_connections"):
        ServerConfig(max_connections=0)
    assert ServerConfig(host="0.0.0.0", token="t").token == "t"
    assert ServerConfig(host="::1").host == "::1"


def test_welcome_says_which_sizes_run_in_real_time(models):
    """``welcome.sizes`` agrees with admission: a size marked realtime is admitted, one marked
    not is refused ``compute_full``; sizes over max_frame_pixels are left out, and a server
    without step costs (uncalibrated, or a cluster) sends no field at all."""
    pipeline = LongLivePipeline(models, KVCacheManager(), 64 << 20)
    # a made-up calibration, so the estimates do not depend on this machine
    pipeline.calibration = WanCalibration(dit_seconds=0.2, decode_seconds=0.05, frames=12)
    engine = Engine({"longlive": pipeline}, EngineConfig(lookahead_seconds=0.5))

    async def main():
        async with build_server(ServerConfig(port=0), engine) as server, connect(server.url) as ws:
            welcome = await hello(ws)
            entries = welcome["sizes"]["longlive"]
            sizes = [(e["height"], e["width"]) for e in entries]
            # the default first
            assert sizes == [(128, 128), (64, 64), (256, 256), (480, 832), (832, 480)]
            for entry in entries:
                cost = pipeline.step_cost(
                    GenerationRequest("x", height=entry["height"], width=entry["width"])
                )
                assert entry["fps"] == round(min(16.0, 16.0 / cost.load), 2)
                assert entry["realtime"] == (cost.load <= 0.9 and cost.step_seconds <= 1.0)
            by_size = {(e["height"], e["width"]): e for e in entries}
            assert by_size[(64, 64)]["realtime"] and by_size[(64, 64)]["fps"] == 16.0
            assert not by_size[(480, 832)]["realtime"] and by_size[(480, 832)]["fps"] < 16.0

            refused = {"type": "session.start", "pipeline": "longlive", "request_id": "big"}
            params = {"prompt": "a red ball", "height": 480, "width": 832}
            await ws.send(json.dumps({**refused, "params": params}))
            error = await expect_error(ws, "compute_full")
            assert error["request_id"] == "big"
            started = await start(ws, height=64, width=64)
            await ws.send(json.dumps({"type": "stop", "session": started["session"]}))
            await recv(ws, "session.ended")

        small = ServerConfig(port=0, max_frame_pixels=256 * 256)
        async with build_server(small, Engine({"longlive": pipeline})) as server:
            async with connect(server.url) as ws:
                sizes = [(e["height"], e["width"]) for e in (await hello(ws))["sizes"]["longlive"]]
        assert sizes == [(128, 128), (64, 64), (256, 256)]

        async with running(models) as server, connect(server.url) as ws:
            welcome = await hello(ws)  # not calibrated: nothing to estimate from
        assert "sizes" not in welcome and "models" not in welcome

    run(main())


def test_favicon_is_served_for_the_page(tmp_path: Path, models):
    """Browsers ask for /favicon.ico by themselves: the page's SVG answers it."""
    (tmp_path / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")

    async def main():
        async with running(models, static_dir=tmp_path) as server:
            for path in ("/favicon.ico", "/favicon.svg"):
                assert await http_get(server, path) == (
                    200,
                    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                ), path
            (tmp_path / "favicon.ico").write_bytes(b"\0\0\1\0")  # a page's own .ico wins
            assert await http_get(server, "/favicon.ico") == (200, b"\0\0\1\0")
        async with running(models) as server:  # no page, no icon
            assert (await http_get(server, "/favicon.ico"))[0] == 404

    run(main())
