"""A generation session with commentary, through a real loopback server and the embedded
toy-world models: the server watches the generated frames with StreamingVLM and streams the
captions beside them, admitted, bounded and closed with the session."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect as ws_connect

from framestream.clients.client import ServerError, StreamClient
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.server import build_server
from framestream.stream.service import ServiceModels, build_pipelines
from tests.admission import ANY_COMPUTE


@pytest.fixture(scope="module")
def pipelines():
    manager = KVCacheManager()
    spec = ServiceModels(
        cache_bytes=32 << 20,
        vlm_cache_bytes=64 << 20,
        pipelines=("longlive", "streaming_vlm"),
        calibrate=False,
    )
    return manager, build_pipelines(spec, manager)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))


async def _idle(engine: Engine) -> None:
    """Until the engine runs no session (closes are applied between its steps)."""
    async with asyncio.timeout(10):
        while engine.stats().sessions:
            await asyncio.sleep(0.02)


def test_frames_and_captions_on_one_session_and_stop_ends_both(pipelines) -> None:
    manager, built = pipelines

    async def main() -> None:
        engine = Engine(built, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
        async with build_server(ServerConfig(port=0), engine) as server:
            async with StreamClient.connect(server.url) as client:
                session = await client.generate(
                    "a red ball", realtime=False, commentary={"instruction": "Say what moves."}
                )
                assert session.commentary
                assert engine.stats().sessions == {"longlive": 1, "streaming_vlm": 1}
                frames, captions = [], []

                async def watch_frames() -> None:
                    async for frame in session.frames():
                        frames.append(frame.index)
                        if frame.index == 20:
                            applied = await session.switch_prompt("a blue square")
                            assert applied["frame"] > 20  # switches still land with commentary
                        if len(captions) >= 3 and not session.ended:
                            await session.stop()

                async def watch_captions() -> None:
                    async for caption in session.captions():
                        captions.append(caption)

                await asyncio.gather(watch_frames(), watch_captions())
                assert session.ended_reason == "stopped"
                assert frames[:48] == list(range(48))
                fps = 16.0
                starts = [c.start for c in captions]
                assert starts == sorted(set(starts)) and len(starts) >= 3
                for caption in captions:
                    assert caption.end == caption.start + 1 and caption.start == int(caption.start)
                    assert caption.frame == round(caption.start * fps)
                    assert caption.end_frame == round(caption.end * fps)
                    assert caption.end_frame <= frames[-1] + 1  # only frames that were made
                    assert isinstance(caption.text, str)
                assert any(c.text for c in captions)  # the toy VLM names the shapes it sees
            await _idle(engine)  # closing the generation session closed its commentary
        for stats in manager.stats().values():
            assert stats.used_blocks == 0

    run(main())


def test_a_refused_commentary_refuses_the_start_with_the_engines_code(pipelines) -> None:
    manager, built = pipelines

    async def main() -> None:
        engine = Engine(built, EngineConfig(max_sessions=1, **ANY_COMPUTE))
        config = ServerConfig(port=0, max_sessions_per_connection=2)
        async with build_server(config, engine) as server:
            async with StreamClient.connect(server.url) as client:
                with pytest.raises(ServerError) as refused:
                    await client.generate("a red ball", commentary=True)
                assert refused.value.code == "too_many_sessions"
                assert "commentary" in refused.value.message
                await _idle(engine)  # the admitted generation session was closed again
                session = await client.generate("a red ball")  # the engine's slot is free
                with pytest.raises(ServerError) as per_connection:
                    await client.generate("a cube", commentary=True)
                assert per_connection.value.code == "too_many_sessions"
                assert "commentary counts" in per_connection.value.message
                await session.stop()
        for stats in manager.stats().values():
            assert stats.used_blocks == 0

    run(main())


def test_bad_commentary_params_are_invalid_message(pipelines) -> None:
    _, built = pipelines

    async def main() -> None:
        engine = Engine(built, EngineConfig(**ANY_COMPUTE))
        async with build_server(ServerConfig(port=0), engine) as server:
            async with ws_connect(server.url) as ws:
                await ws.send(json.dumps({"type": "hello", "version": 1}))
                json.loads(await ws.recv())
                for value, says in (
                    ("yes", "params.commentary must be true, false or an object"),
                    ({"temperature": -1}, "params.commentary.temperature"),
                ):
                    start = {
                        "type": "session.start",
                        "pipeline": "longlive",
                        "request_id": "c",
                        "params": {"prompt": "a ball", "commentary": value},
                    }
                    await ws.send(json.dumps(start))
                    error = json.loads(await ws.recv())
                    assert error["type"] == "error" and error["code"] == "invalid_message"
                    assert says in error["message"] and error["request_id"] == "c"
        assert not engine.stats().sessions

    run(main())
