"""clients/restyle_session.py and the restyle parts of clients/client.py (input frames in,
restyled frames out, strength updates, feeding a source at the session's rate within a lead)
against the scripted fake server of tests/clients/fake_server.py. The real server end to end is
tests/stream/test_restyle_service.py."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from framestream.clients.client import (
    GenerationSession,
    RestyleSession,
    ServerError,
    SessionEnded,
    StreamClient,
)
from framestream.clients.restyle_session import check_strength

from .fake_server import FORMATS, WIRE_HEADER, FakeServer, fake_server, parse_input_frame, pixels
from .fake_server import run as run_

FPS = 16.0


def run(coro: Any) -> Any:
    return run_(coro, timeout=20.0)


async def start_restyle(
    fake: FakeServer, client: StreamClient, session: int, source: Any = None, **kw: Any
) -> tuple[RestyleSession, dict[str, Any]]:
    """Drive ``client.restyle`` through a scripted ``session.started``; returns the session and
    its ``session.start``."""
    task = asyncio.create_task(client.restyle(source, "a watercolour", **kw))
    start = await fake.recv()
    assert start["type"] == "session.start"
    await fake.send(
        "session.started",
        session=session,
        pipeline=start["pipeline"],
        fps=FPS,
        width=48,
        height=32,
        format="raw",
        request_id=start["request_id"],
        restyle=start["params"]["restyle"],
    )
    return await task, start


async def next_input(fake: FakeServer) -> tuple[tuple[Any, ...], Any]:
    while True:
        message = await fake.recv()
        if isinstance(message, bytes):
            return parse_input_frame(message)


def test_restyle_starts_a_restyle_session_and_frames_flow_both_ways() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session, start = await start_restyle(
                fake, client, 3, strength=0.4, height=32, width=48, format="raw"
            )
            assert start["params"]["restyle"] == {"strength": 0.4}
            assert start["params"]["prompt"] == "a watercolour" and start["pipeline"] == "longlive"
            assert isinstance(session, RestyleSession) and isinstance(session, GenerationSession)
            assert session.strength == 0.4 and client.sessions[3] is session

            image = pixels(1)
            await session.send(image, 0.0, format="png")
            await session.send(pixels(2), 0.0625, format="raw")
            (fields, got) = await next_input(fake)
            assert fields[4] == 0 and fields[5] == 0.0 and fields[6] == FORMATS["png"]
            assert (got == image).all()
            (fields, _) = await next_input(fake)
            assert (fields[3], fields[4], fields[6]) == (3, 1, FORMATS["raw"])
            assert session.frames_sent == 2
            with pytest.raises(ValueError, match="before the previous"):
                await session.send(image, 0.01)

            for index in (0, 1, 2):
                await fake.send_frame(3, index, pixels(index), "raw")
            frames = []
            async for frame in session.frames():
                frames.append(frame)
                if len(frames) == 3:
                    break
            assert [f.index for f in frames] == [0, 1, 2] and session.frames_received == 3

            # a plain generation reply to restyle() is stopped and refused
            task = asyncio.create_task(client.restyle(None, "x"))
            start = await fake.recv()
            await fake.send(
                "session.started", session=9, pipeline="longlive", fps=FPS, width=48,
                height=32, format="jpeg", request_id=start["request_id"],
            )  # fmt: skip
            assert await fake.recv() == {"type": "stop", "session": 9}
            await fake.send("session.ended", session=9, reason="stopped")
            with pytest.raises(Exception, match="not a RestyleSession"):
                await task

    run(main())


def test_set_strength_waits_for_restyle_applied_and_input_errors_answer_no_update() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session, _ = await start_restyle(fake, client, 4)
            assert session.strength == 0.6  # the default

            update = asyncio.create_task(session.set_strength(0.25))
            assert await fake.recv() == {"type": "restyle.update", "session": 4, "strength": 0.25}
            # an input frame's refusal comes first: it must not answer the update
            await fake.send("error", code="bad_frame", message="cannot decode", session=4)
            await asyncio.sleep(0.05)
            assert not update.done()
            await fake.send("restyle.applied", session=4, strength=0.25, frame=21)
            applied = await update
            assert applied["frame"] == 21 and session.strength == 0.25

            update = asyncio.create_task(session.set_strength(1))
            await fake.recv()
            await fake.send("error", code="wrong_direction", message="no", session=4)
            with pytest.raises(ServerError) as info:
                await update
            assert info.value.code == "wrong_direction" and session.strength == 0.25

            for bad in (0, -1, 1.5, float("nan"), True, "0.5"):
                with pytest.raises(ValueError, match="strength"):
                    await session.set_strength(bad)
            assert await session.set_strength(0.5, wait=False) is None
            await fake.recv()

            waiting = asyncio.create_task(session.set_strength(0.3))
            await fake.recv()
            await fake.send("session.ended", session=4, reason="stopped")
            with pytest.raises(SessionEnded):
                await waiting
            with pytest.raises(SessionEnded):
                await session.send(pixels(0), 1.0)

    run(main())


def test_feed_sends_the_newest_frame_of_each_slot_within_its_lead_then_pads() -> None:
    """A 32 fps source of 1.5 s: 48 frames, of which the newest of each 16 fps slot is sent
    (slot n's time is n/16: it takes the frame at n/16), at most ``max_lead`` seconds ahead of
    the frames received, then the last frame once more a pad later."""
    source = [(i / 32, pixels(i % 8)) for i in range(48)]

    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session, _ = await start_restyle(fake, client, 5, source, max_lead=0.5)
            assert session.feeding is not None
            sent = []
            while len(sent) < 9:  # nothing received yet: slots up to 0.5 s
                fields, _ = await next_input(fake)
                sent.append(fields[5])
            await asyncio.sleep(0.1)
            assert fake.received.empty()  # it waits for restyled frames
            assert sent == [i / 16 for i in range(9)]
            for index in range(25):
                await fake.send_frame(5, index, pixels(0), "raw")
            while len(sent) < 26:
                fields, _ = await next_input(fake)
                sent.append(fields[5])
            assert sent[:24] == [i / 16 for i in range(24)]
            assert sent[24] == 47 / 32  # slot 24 (1.5 s) has only the last frame, after it
            assert sent[25] == pytest.approx(24 / 16 + 1.0)  # the pad: the last slot + 1 s
            # the last frame lasts a slot (frame_seconds unset): it ends at 1.53 s, slot 24 in
            assert await session.feeding == 25

    run(main())


def test_feed_of_a_live_source_does_not_wait_and_a_session_end_stops_it() -> None:
    async def source():
        for i in range(20):
            yield i / 16, pixels(i % 4)

    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session, _ = await start_restyle(fake, client, 6, source(), max_lead=None)
            for _ in range(21):  # every frame and the pad, nothing received back
                await next_input(fake)
            assert await session.feeding == 20

            stalled, _ = await start_restyle(fake, client, 7, source(), max_lead=1.0)
            await fake.send("session.ended", session=7, reason="error", message="boom")
            with pytest.raises(SessionEnded):
                await stalled.feeding

    run(main())


def test_restyle_checks_its_arguments_before_sending() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            for kwargs in ({"strength": 0}, {"strength": 2.0}, {"height": 30}, {"format": "gif"}):
                with pytest.raises(ValueError):
                    await client.restyle(None, "x", **kwargs)
            with pytest.raises(ValueError, match="prompt"):
                await client.restyle(None, " ")
            assert fake.received.empty()

    run(main())
    assert check_strength(1) == 1.0 and check_strength(0.5) == 0.5
    assert struct.calcsize(WIRE_HEADER) == 32
