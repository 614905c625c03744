"""A client vanishing at every point of a session's life, from a bare TCP connection to a round
of understanding in flight: the server frees everything it held for it, logs no error, and a
control session on another connection keeps streaming throughout."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from framestream.evals.fuzz_checks import ServerLog
from framestream.evals.fuzz_target import ControlStream
from framestream.evals.loopback import ServerThread
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from tests.admission import ANY_COMPUTE

from .wire import SIZE, connect, feed_seconds, frames, held_blocks, hello, run, start, until

# -- a client vanishing -------------------------------------------------------------------------


@dataclass
class Station:
    """One server for the vanishing clients, and a control session on its own connection."""

    served: ServerThread
    control: ControlStream
    blocks: int  # what the control session holds
    log: ServerLog


@pytest.fixture(scope="module")
def station(pipelines, tmp_path_factory):
    config = ServerConfig(port=0, record_dir=tmp_path_factory.mktemp("recordings"))
    engine = Engine(pipelines, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
    with ServerLog() as log, ServerThread(config, engine) as served_:
        control = ControlStream(served_.url, "longlive")
        control.start()
        assert control.ready.wait(60) and not control.problems, control.problems
        yield Station(served_, control, served_.call(held_blocks), log)
        assert control.stop_and_check()["problems"] == []


async def _vanish(url: str, port: int, point: str) -> None:
    """Connect, go as far as ``point`` in a session's life, and drop the connection."""
    if point in ("tcp_connected", "mid_handshake"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        if point == "mid_handshake":
            writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            await writer.drain()
        writer.transport.abort()
        return
    ws = await connect(url)
    try:
        if point == "before_hello":
            return
        await hello(ws)
        if point == "starting":  # the engine is still admitting it
            message = {"type": "session.start", "pipeline": "longlive", "params": SIZE}
            await ws.send(json.dumps({**message, "params": {"prompt": "x", **SIZE}}))
        elif point in ("streaming", "paused", "stopping", "recording"):
            session = await start(ws, record=point == "recording")
            await frames(ws, session, 3)
            if point in ("paused", "stopping"):
                kind = "pause" if point == "paused" else "stop"
                await ws.send(json.dumps({"type": kind, "session": session}))
        elif point == "understanding":  # frames buffered, a round in flight
            session = await start(ws, "streaming_vlm")
            await feed_seconds(ws, session, 2)
            await ws.send(json.dumps({"type": "question", "session": session, "text": "why?"}))
    finally:
        ws.transport.abort()  # no close frame: the peer is simply gone


POINTS = [
    "tcp_connected",
    "mid_handshake",
    "before_hello",
    "after_hello",
    "starting",
    "streaming",
    "paused",
    "stopping",
    "recording",
    "understanding",
]


@pytest.mark.parametrize("point", POINTS)
def test_a_client_vanishing_at_any_point_leaves_nothing_behind(station: Station, point: str):
    served_, control = station.served, station.control
    run(_vanish(served_.url, served_.server.port, point))

    def held() -> tuple[int, int, int, int]:
        return served_.call(
            lambda s: (
                len(s.sessions()),
                sum(s.engine.stats().sessions.values()),
                s.counters.connections,
                held_blocks(s),
            )
        )

    run(until(lambda: held() == (1, 1, 1, station.blocks)))  # the control's, nothing more
    seen = control.received
    assert control.wait_for_more(seen + 12), "the control session stopped streaming"
    assert not control.problems, control.problems
    assert station.log.take() == []
