"""Sessions on a real local Ray cluster of two engines, through the same WebSocket front as one
device: they spread over both engines, a full cluster refuses clearly, commands and events
cross the hop, several fronts share the engines, and an engine killed mid-stream ends only its
own sessions (``engine_lost``) while the other keeps streaming, until Ray brings it back.
Every wait has a timeout; nothing asserts on timings."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal

import pytest

pytest.importorskip("ray")

from framestream.stream.protocol import FrameHeader
from tests.cluster.conftest import front
from tests.reliability.wire import (
    SIZE,
    TIMEOUT,
    connect,
    expect_error,
    feed_seconds,
    frames,
    hello,
    recv,
    run,
    until,
)

REQUESTS = itertools.count(1)


async def start(ws, pipeline: str = "longlive", **params) -> int:
    """Start a session and return its id, matching the reply by its request id (the
    connection's other sessions send metrics meanwhile)."""
    request = f"r{next(REQUESTS)}"
    if pipeline != "streaming_vlm":
        params = {"prompt": "a red ball", **SIZE, **params}
    message = {"type": "session.start", "pipeline": pipeline, "params": params}
    await ws.send(json.dumps({**message, "request_id": request}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = await recv(ws)
            if reply.get("request_id") == request:
                assert reply["type"] == "session.started", reply
                return reply["session"]


async def frames_of(ws, sessions: tuple[int, ...], count: int) -> dict[int, list[FrameHeader]]:
    """The video frame headers of ``sessions`` until each has ``count``."""
    got: dict[int, list[FrameHeader]] = {session: [] for session in sessions}
    async with asyncio.timeout(TIMEOUT):
        while min(len(headers) for headers in got.values()) < count:
            data = await ws.recv()
            if isinstance(data, bytes) and (header := FrameHeader.unpack(data)).session in got:
                got[header.session].append(header)
    return got


def test_sessions_spread_over_both_engines(engines, cluster_config) -> None:
    async def main():
        async with front(engines, cluster_config) as server, connect(server.url) as ws:
            welcome = await hello(ws)
            assert welcome["pipelines"] == ["longlive", "streaming_vlm"]
            first, second = await start(ws), await start(ws)
            backend = server.engine
            assert {backend.engine_of(first), backend.engine_of(second)} == {0, 1}
            got = await frames_of(ws, (first, second), 12)
            for headers in got.values():  # each stream whole, from its first frame
                assert [h.index for h in headers[:12]] == list(range(12))
                assert (headers[0].width, headers[0].height) == (32, 32)
            await until(lambda: [s.sessions for s in backend.status()] == [1, 1])
            await until(lambda: backend.stats().sessions == {"longlive": 2})
            metrics = server.metrics()
            assert 'stream_sessions{pipeline="longlive"} 2' in metrics
            assert "stream_cache_bytes_capacity 0" not in metrics  # the engines' pools

    run(main())


def test_a_full_cluster_refuses_with_a_clear_error(engines, cluster_config) -> None:
    async def main():
        async with front(engines, cluster_config) as server:
            async with connect(server.url) as a, connect(server.url) as b:
                await hello(a), await hello(b)
                sessions = [await start(a), await start(a), await start(b), await start(b)]
                placed = [server.engine.engine_of(s) for s in sessions]
                assert sorted(placed) == [0, 0, 1, 1]
                await b.send(
                    json.dumps(
                        {
                            "type": "session.start",
                            "pipeline": "longlive",
                            "params": {"prompt": "one more"},
                            "request_id": "r",
                        }
                    )
                )
                refused = await expect_error(b, "too_many_sessions")
                assert "all 2 engines are full" in refused["message"]
                assert refused["request_id"] == "r"
                await a.send(json.dumps({"type": "stop", "session": sessions[0]}))
                assert (await recv(a, "session.ended"))["reason"] == "stopped"
                again = await start(b)  # room again, on the engine that lost one
                assert server.engine.engine_of(again) == placed[0]
                await frames(b, again, 1)

    run(main())


def test_commands_and_events_cross_the_hop(engines, cluster_config) -> None:
    async def main():
        async with front(engines, cluster_config) as server, connect(server.url) as ws:
            await hello(ws)
            video = await start(ws)
            await frames(ws, video, 1)
            await ws.send(
                json.dumps({"type": "prompt.update", "session": video, "prompt": "a blue box"})
            )
            applied = await recv(ws, "prompt.applied")
            assert (applied["session"], applied["prompt"]) == (video, "a blue box")
            feed = await start(ws, "streaming_vlm")
            await feed_seconds(ws, feed, 3)
            caption = await recv(ws, "caption")
            assert caption["session"] == feed and caption["start"] == 0.0
            await ws.send(json.dumps({"type": "stop", "session": feed}))
            ended = await recv(ws, "session.ended")
            assert (ended["session"], ended["reason"]) == (feed, "stopped")

    run(main())


def test_several_fronts_share_the_engines(engines, cluster_config) -> None:
    async def main():
        async with front(engines, cluster_config) as one, front(engines, cluster_config) as two:
            async with connect(one.url) as a, connect(two.url) as b:
                await hello(a), await hello(b)
                first = await start(a)
                taken = one.engine.engine_of(first)
                # the second front learns the first one's session from the engines' reports
                await until(lambda: two.engine.status()[taken].sessions == 1)
                second = await start(b)
                assert two.engine.engine_of(second) == 1 - taken
                assert first == second == 1  # each front numbers its own sessions
                assert {h.session for h in await frames(a, first, 12)} == {first}
                got = await frames(b, second, 12)
                assert [h.index for h in got] == list(range(12))  # its own stream, whole

    run(main())


def test_a_killed_engine_ends_its_sessions_and_comes_back(engines, cluster_config) -> None:
    async def main():
        async with front(engines, cluster_config) as server, connect(server.url) as ws:
            await hello(ws)
            backend = server.engine
            lost, kept = await start(ws), await start(ws)
            victim = backend.engine_of(lost)
            await frames(ws, lost, 1)
            await frames(ws, kept, 1)
            before = backend.status()[victim]
            os.kill(before.pid, signal.SIGKILL)  # as an out-of-memory kill or a crash would

            error = await expect_error(ws, "engine_lost")
            assert error["session"] == lost and "start a new session" in error["message"]
            ended = await recv(ws, "session.ended")
            assert (ended["session"], ended["reason"]) == (lost, "error")
            got = await frames(ws, kept, 24)  # the other engine's session streams on
            assert [h.index for h in got] == sorted(h.index for h in got)

            await until(lambda: backend.status()[victim].incarnation != before.incarnation, 180)
            assert backend.status()[victim].up and backend.status()[victim].pid != before.pid
            async with connect(server.url) as retry:  # the client's new session
                await hello(retry)
                again = await start(retry)  # on the least loaded: the engine that came back
                assert backend.engine_of(again) == victim
                assert len(await frames(retry, again, 6)) == 6
            assert 'stream_errors_total{code="engine_lost"} 1' in server.metrics()

    run(main())
