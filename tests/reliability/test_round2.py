"""What a hostile client found in the second round, each against a real server on loopback:
admission by compute, health, the toy-world feed, duplicate headers, budgets a stranger could
spend for everyone, and what docs/protocol.md promises about pause, metrics, stop and frames."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import urllib.error
import urllib.request

import av
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from framestream.stream.engine import EngineConfig
from framestream.stream.scheduler import StepCost
from tests.stream.test_engine import FakeGeneration

from .wire import (
    TIMEOUT,
    connect,
    expect_error,
    frames,
    hello,
    input_frame,
    noise,
    recv,
    run,
    served,
    start,
)


def get(url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def decoded_frames(source) -> int:
    with av.open(source) as container:
        return sum(1 for _ in container.decode(video=0))


# -- 1. one admitted session must never stall the others ----------------------------------------

# the served() helper admits any session by compute (tests.admission); these tests are about
# admission, so they keep the engine's defaults
ADMISSION = {"max_load": EngineConfig.max_load, "max_step_seconds": EngineConfig.max_step_seconds}


def test_a_session_too_big_for_the_device_is_refused_and_the_small_one_streams(pipelines):
    """The calibrated toy default: 1072x1920 (within max_frame_pixels) would take minutes a
    step; 256x256 seconds. Both are refused at once with compute_full naming the figures,
    while a 32x32 session streams beside them."""

    async def main():
        async with served(pipelines, engine=ADMISSION) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                small = await start(ws)
                for height, width in ((1072, 1920), (256, 256)):
                    params = {"prompt": "a red ball", "height": height, "width": width}
                    await ws.send(
                        json.dumps(
                            {"type": "session.start", "pipeline": "longlive", "params": params}
                        )
                    )
                    refused = await expect_error(ws, "compute_full")
                    # over the step bound, or over what is free of the device: both say so
                    assert "max_step_seconds" in refused["message"] or (
                        height == 256 and "of the device" in refused["message"]
                    ), refused
                await frames(ws, small, 24)
            status, _, body = await asyncio.to_thread(
                get, f"http://127.0.0.1:{server.port}/metrics"
            )
            assert (
                status == 200 and b"stream_realtime_load" in body and b"stream_degraded 0" in body
            )

    run(main())


class _Late(FakeGeneration):
    """Each 12-frame chunk (0.75 s of video) takes 1 s: every realtime step is late."""

    def step(self, state):
        import time

        time.sleep(1.0)
        return super().step(state)


def test_health_says_degraded_while_deadlines_are_missed():
    async def main():
        async with served({"gen": _Late()}, engine={"late_seconds": 0.2}) as server:
            base = f"http://127.0.0.1:{server.port}"
            assert (await asyncio.to_thread(get, f"{base}/healthz"))[2] == b"ok\n"
            async with connect(server.url) as ws:
                await hello(ws)
                session = await start(ws, "gen")
                await frames(ws, session, 40)
                status, _, body = await asyncio.to_thread(get, f"{base}/healthz")
                assert (status, body) == (200, b"degraded\n")
                metrics = (await asyncio.to_thread(get, f"{base}/metrics"))[2].decode()
                assert "stream_degraded 1" in metrics and "stream_late_steps_total" in metrics

    run(main())


def test_a_realtime_session_over_the_device_s_budget_is_refused_a_background_one_runs():
    gen = FakeGeneration(cost=StepCost(step_seconds=0.5, media_seconds=0.75))  # 67% each

    async def main():
        async with served({"gen": gen}, engine=ADMISSION) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                await start(ws, "gen")
                start_ = {"type": "session.start", "pipeline": "gen", "params": {"prompt": "b"}}
                await ws.send(json.dumps(start_))
                refused = await expect_error(ws, "compute_full")
                assert "67% of the device" in refused["message"]
                background = {**start_, "params": {"prompt": "b", "realtime": False}}
                await ws.send(json.dumps(background))
                assert (await recv(ws, "session.started"))["session"] > 0

    run(main())


# -- 2. the toy-world feed ----------------------------------------------------------------------


def test_the_feed_plays_as_it_arrives_answers_ranges_and_keeps_its_token(pipelines):
    async def main():
        async with served(pipelines, token="s3cret") as server:
            base = f"http://127.0.0.1:{server.port}/toyworld/feed.mp4?seed=3&seconds=4"
            status, _, _ = await asyncio.to_thread(get, base)
            assert status == 401  # behind the token when one is set
            url = f"{base}&token=s3cret"
            status, headers, data = await asyncio.to_thread(get, url)
            assert status == 200 and headers["Accept-Ranges"] == "bytes"
            # fragmented: the header first, so a reader needs no index at the end
            assert data[4:8] == b"ftyp" and b"moov" in data[:2048]
            assert decoded_frames(io.BytesIO(data)) == 64
            # the README's command: PyAV reading the URL itself, as it arrives (on a thread:
            # the server answers on this one)
            assert await asyncio.to_thread(decoded_frames, url) == 64
            status, headers, part = await asyncio.to_thread(get, url, {"Range": "bytes=10-99"})
            assert status == 206 and part == data[10:100]
            assert headers["Content-Range"] == f"bytes 10-99/{len(data)}"
            status, _, _ = await asyncio.to_thread(get, url, {"Range": f"bytes={len(data)}-"})
            assert status == 416

    run(main())


def test_feed_renders_wait_in_a_bounded_line(pipelines):
    async def main():
        async with served(pipelines, toyworld_feed_max_waiting=0) as server:
            base = f"http://127.0.0.1:{server.port}/toyworld/feed.mp4?seconds=600&seed="
            replies = await asyncio.gather(
                *(asyncio.to_thread(get, f"{base}{seed}") for seed in range(4))
            )
            statuses = sorted(status for status, _, _ in replies)
            assert statuses[0] == 200 and 503 in statuses  # one renders, the others are told
            busy = next(headers for status, headers, _ in replies if status == 503)
            assert busy["Retry-After"] == "5"

    run(main())


def test_a_render_longer_than_the_handshake_allows_is_answered_then_served(pipelines):
    async def main():
        # the failure: websockets closes a request unanswered at its open_timeout
        async with served(pipelines, open_timeout=1.0) as server:
            url = f"http://127.0.0.1:{server.port}/toyworld/feed.mp4?seconds=600&seed=9"
            status, headers, _ = await asyncio.to_thread(get, url)
            assert status == 503 and headers["Retry-After"] == "5"  # answered, not dropped
            for _ in range(60):  # the render went on: the retry is served from it
                await asyncio.sleep(0.5)
                status, _, data = await asyncio.to_thread(get, url)
                if status == 200:
                    break
            assert status == 200 and decoded_frames(io.BytesIO(data)) == 600 * 16

    run(main())


# -- 3. two Origin headers ------------------------------------------------------------------------


def raw_http(port: int, lines: list[str]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_two_origin_headers_are_a_bad_request_not_a_crash(pipelines):
    async def main():
        async with served(pipelines) as server:
            lines = [
                "GET /ws HTTP/1.1",
                f"Host: 127.0.0.1:{server.port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
                "Origin: http://evil.example",
                f"Origin: http://127.0.0.1:{server.port}",
            ]
            reply = await asyncio.to_thread(raw_http, server.port, lines)
            assert reply.startswith(b"HTTP/1.1 400"), reply[:100]

    run(main())


# -- 4. budgets a stranger could spend for everyone -----------------------------------------------


def test_invalid_starts_do_not_spend_the_server_s_start_budget(pipelines):
    async def main():
        async with served(pipelines, max_session_starts_per_second=2) as server:
            async with connect(server.url) as attacker, connect(server.url) as user:
                await hello(attacker)
                await hello(user)
                for _ in range(10):
                    await attacker.send(json.dumps({"type": "session.start", "pipeline": "nope"}))
                    await expect_error(attacker, "unknown_pipeline")
                for _ in range(2):
                    assert await start(user) > 0

    run(main())


def test_one_connection_cannot_spend_the_server_s_start_budget(pipelines):
    async def main():
        settings = {
            "max_session_starts_per_second": 4,
            "max_session_starts_per_second_per_connection": 2,
            "max_sessions_per_connection": 8,
        }
        async with served(pipelines, **settings) as server:
            async with connect(server.url) as greedy, connect(server.url) as user:
                await hello(greedy)
                await hello(user)
                codes = []
                start_ = {"type": "session.start", "pipeline": "streaming_vlm"}
                for _ in range(4):
                    await greedy.send(json.dumps(start_))
                    reply = await recv(greedy, None)
                    codes.append(reply.get("code", reply["type"]))
                assert codes == ["session.started"] * 2 + ["rate_limited"] * 2  # its own budget
                assert await start(user, "streaming_vlm") > 0

    run(main())


def test_a_connection_that_never_says_hello_is_closed(pipelines):
    async def main():
        async with served(pipelines, hello_timeout=0.5) as server:
            async with connect(server.url) as ws:
                with pytest.raises(ConnectionClosed):
                    await recv(ws, timeout=10)
                assert ws.close_code == 1008 and ws.close_reason == "no hello"

    run(main())


def test_connections_before_hello_cannot_take_every_slot(pipelines):
    async def main():
        settings = {"max_connections": 4, "max_unauthenticated_connections": 2}
        async with served(pipelines, **settings) as server:
            async with connect(server.url) as member:
                await hello(member)
                idle = [await connect(server.url).__aenter__() for _ in range(2)]
                try:
                    with pytest.raises(InvalidStatus) as refused:
                        await connect(server.url)
                    assert refused.value.response.status_code == 503
                    assert await start(member) > 0  # the member is not locked out
                finally:
                    for ws in idle:
                        await ws.close()

    run(main())


# -- 5. what docs/protocol.md promises ----------------------------------------------------------


def test_pause_and_resume_are_acknowledged_and_no_metrics_follow_a_pause(pipelines):
    async def main():
        async with served(pipelines) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                session = await start(ws)
                await recv(ws, "metrics")
                await ws.send(json.dumps({"type": "pause", "session": session}))
                paused = await recv(ws, "session.paused")
                assert paused["session"] == session and paused["frame"] >= 0
                with pytest.raises(TimeoutError):  # paused: no metrics for seconds
                    await recv(ws, "metrics", timeout=2.5)
                await ws.send(json.dumps({"type": "resume", "session": session}))
                assert (await recv(ws, "session.resumed"))["session"] == session
                await recv(ws, "metrics")

    run(main())


def test_understanding_sessions_send_metrics(pipelines):
    async def main():
        async with served(pipelines) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                session = await start(ws, "streaming_vlm")
                for i in range(9):
                    await ws.send(input_frame(session, i, i / 4, noise(seed=i)))
                metrics = await recv(ws, "metrics")
                assert metrics["session"] == session and metrics["frames_received"] > 0
                assert "captions" in metrics and "fps" not in metrics

    run(main())


def test_no_frame_after_stop(pipelines):
    async def main():
        async with served(pipelines) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                session = await start(ws)
                await frames(ws, session, 4)
                await ws.send(json.dumps({"type": "stop", "session": session}))
                late = 0
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        data = await ws.recv()
                        if isinstance(data, bytes):
                            late += 1
                        elif json.loads(data)["type"] == "session.ended":
                            break
                # frames already on the wire when the stop arrived may still land; no more
                assert late <= 1

    run(main())


def test_bad_frame_names_the_session_and_reserved_bytes_must_be_zero(pipelines):
    async def main():
        async with served(pipelines) as server:
            async with connect(server.url) as ws:
                await hello(ws)
                session = await start(ws, "streaming_vlm")
                good = input_frame(session, 0, 0.0, noise())
                bad_format = good[:24] + bytes([99]) + good[25:]
                await ws.send(bad_format)
                error = await expect_error(ws, "bad_frame")
                assert error["session"] == session
                reserved = good[:25] + b"\x00\x07\x00" + good[28:]
                await ws.send(reserved)
                error = await expect_error(ws, "bad_frame")
                assert "reserved" in error["message"] and error["session"] == session
                assert struct.unpack_from("<I", good, 4)[0] == session

    run(main())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_only_get_is_answered(pipelines, method):
    async def main():
        async with served(pipelines) as server:
            status, headers, _ = await asyncio.to_thread(
                get, f"http://127.0.0.1:{server.port}/healthz", None, method
            )
            assert status == 405 and headers["Allow"] == "GET"

    run(main())
