"""clients/client.py's understanding sessions (StreamingVLM: input frames, captions,
questions) against the scripted fake server of tests/clients/fake_server.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from framestream.clients.client import (
    Caption,
    ClientError,
    SessionEnded,
    StreamClient,
    UnderstandingSession,
)

from .fake_server import (
    FORMATS,
    fake_server,
    parse_input_frame,
    pixels,
    run,
)

# -- understanding sessions --------------------------------------------------------------------


def test_understand_sends_session_start_and_picks_the_class() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start_understanding(
                client, 5, instruction="Commentate.", previous_text="Kick-off."
            )
            assert fake.last_start == {
                "type": "session.start",
                "pipeline": "streaming_vlm",
                "params": {"instruction": "Commentate.", "previous_text": "Kick-off."},
                "request_id": fake.last_start["request_id"],
            }
            assert isinstance(session, UnderstandingSession) and client.sessions[5] is session
            assert (session.id, session.pipeline, session.fps) == (5, "streaming_vlm", 2.0)
            plain = await fake.start_understanding(client, 6, pipeline="other_vlm")
            assert fake.last_start["params"] == {} and plain.pipeline == "other_vlm"

            # a generation reply to understand() (and vice versa) is stopped and refused
            task = asyncio.create_task(client.understand(pipeline="longlive"))
            start = await fake.recv()
            await fake.send(
                "session.started",
                session=7,
                pipeline="longlive",
                fps=16.0,
                width=48,
                height=32,
                format="raw",
                request_id=start["request_id"],
            )
            assert await fake.recv() == {"type": "stop", "session": 7}
            await fake.send("session.ended", session=7, reason="stopped")
            with pytest.raises(ClientError, match="GenerationSession"):
                await task

    run(main())


def test_understand_checks_arguments_before_sending() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            with pytest.raises(ValueError, match="instruction"):
                await client.understand(instruction="x" * 2001)
            session = await fake.start_understanding(client, 1)
            image = pixels(0)
            for bad, kwargs in (
                (ValueError, {"pixels": image[..., :2], "timestamp": 0.0}),
                (TypeError, {"pixels": image.astype(np.float32), "timestamp": 0.0}),
                (ValueError, {"pixels": image, "timestamp": -1.0}),
                (ValueError, {"pixels": image, "timestamp": float("nan")}),
                (ValueError, {"pixels": image, "timestamp": 0.0, "format": "h264"}),
                (ValueError, {"pixels": image, "timestamp": 0.0, "quality": 0}),
            ):
                with pytest.raises(bad):
                    await session.send_frame(**kwargs)
            await session.send_frame(image, 1.0, format="raw")
            with pytest.raises(ValueError, match="before the previous"):
                await session.send_frame(image, 0.5, format="raw")
            with pytest.raises(ValueError, match="question"):
                await session.ask("  ")
            # only the one good frame went out
            assert isinstance(await fake.recv(), bytes)
            assert fake.received.empty()

    run(main())


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg"])
def test_input_frames_carry_the_header_and_pixels(fmt: str) -> None:
    images = [pixels(i) for i in range(3)]
    timestamps = [0.0, 0.5, 0.5]

    async def main() -> list[bytes]:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start_understanding(client, 4)
            for image, timestamp in zip(images, timestamps, strict=True):
                await session.send_frame(image, timestamp, format=fmt, quality=95)
            assert session.frames_sent == 3
            return [await fake.recv() for _ in images]

    for i, data in enumerate(run(main())):
        assert isinstance(data, bytes)
        (_, _, _, session, index, timestamp, wire_fmt, width, height), image = parse_input_frame(
            data
        )
        assert (session, index, timestamp) == (4, i, timestamps[i])
        assert (wire_fmt, width, height) == (FORMATS[fmt], 48, 32)
        if fmt == "jpeg":
            assert np.abs(image.astype(int) - images[i].astype(int)).mean() < 4
        else:
            np.testing.assert_array_equal(image, images[i])


def test_captions_in_order_and_questions() -> None:
    async def main() -> None:
        async with fake_server() as fake, StreamClient.connect(fake.url) as client:
            session = await fake.start_understanding(client, 2)
            await session.ask("what colour is the car?")
            assert await fake.recv() == {
                "type": "question",
                "session": 2,
                "text": "what colour is the car?",
            }
            texts = ["a red car", "", "it turns left"]
            for k, text in enumerate(texts):
                await fake.send("caption", session=2, start=float(k), end=k + 1.0, text=text,
                                lag=0.25 * k)  # fmt: skip
            await fake.send("caption", session=2, start="x", end=None, text="bad")  # skipped
            await fake.send("error", session=2, code="bad_frame", message="cannot decode")
            await fake.send("session.ended", session=2, reason="stopped")
            captions = [caption async for caption in session.captions()]
            assert captions == [
                Caption(float(k), k + 1.0, text, 0.25 * k) for k, text in enumerate(texts)
            ]
            assert session.ended_reason == "stopped" and session.captions_dropped == 0
            events = [session.events.get_nowait() for _ in range(session.events.qsize())]
            assert [e["type"] for e in events] == ["caption"] * 4 + ["error", "session.ended"]
            with pytest.raises(SessionEnded):
                await session.ask("still there?")
            with pytest.raises(SessionEnded):
                await session.send_frame(pixels(0), 9.0)

    run(main())


def test_slow_caption_consumer_loses_the_oldest() -> None:
    async def main() -> None:
        async with (
            fake_server() as fake,
            StreamClient.connect(fake.url, max_queued_captions=2) as client,
        ):
            session = await fake.start_understanding(client, 3)
            for k in range(5):
                await fake.send("caption", session=3, start=float(k), end=k + 1.0, text=str(k),
                                lag=0.0)  # fmt: skip
            await fake.send("session.ended", session=3, reason="stopped")
            await session.wait_ended(5)
            captions = [caption.text async for caption in session.captions()]
            assert captions == ["3", "4"] and session.captions_dropped == 3

    run(main())


def test_understanding_session_stop_and_disconnect() -> None:
    async def main() -> None:
        async with fake_server() as fake:
            client = await StreamClient.open(fake.url)
            async with await fake.start_understanding(client, 8) as session:
                stop = asyncio.create_task(session.stop())
                assert await fake.recv() == {"type": "stop", "session": 8}
                await fake.send("session.ended", session=8, reason="stopped")
                await stop
            other = await fake.start_understanding(client, 9)
            captions = asyncio.create_task(collect_captions(other))
            assert fake.ws is not None
            await fake.ws.close()
            assert await asyncio.wait_for(captions, 5) == []
            assert other.ended_reason == "disconnected"
            await client.close()

    run(main())


async def collect_captions(session: UnderstandingSession) -> list[Caption]:
    return [caption async for caption in session.captions()]
