"""The whole service as a newcomer runs it: every pipeline on one engine (LongLive and Rolling
Forcing sharing the Wan models and one KV pool), driven through the project's own Python
client over a real loopback server."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect as ws_connect

from framestream.cli.main import main
from framestream.clients.client import StreamClient
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.protocol import FrameFormat, FrameHeader, FrameKind
from framestream.stream.server import build_server
from framestream.stream.service import PIPELINES, ServiceModels, build_pipelines
from tests.admission import ANY_COMPUTE

SIZE = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def pipelines():
    """Uncalibrated: every engine here admits any compute (ANY_COMPUTE), so the warm-up's timed
    steps at the default size were read by nothing; the warm-up test calls warm_up itself."""
    manager = KVCacheManager()
    models = ServiceModels(cache_bytes=64 << 20, calibrate=False)
    return manager, build_pipelines(models, manager)


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 90))


def test_one_pool_serves_both_generation_pipelines(pipelines) -> None:
    manager, built = pipelines
    assert sorted(built) == sorted(PIPELINES)
    assert built["longlive"].pool is built["rolling_forcing"].pool
    assert len(manager.stats()) == 2  # the Wan geometry and the Qwen geometry


def test_generation_pipelines_through_the_client(pipelines) -> None:
    manager, built = pipelines

    async def main() -> None:
        engine = Engine(built, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
        async with build_server(ServerConfig(port=0), engine) as server:
            async with StreamClient.connect(server.url) as client:
                assert sorted(client.pipelines) == sorted(PIPELINES)
                longlive = await client.generate("a red ball", **SIZE)
                rolling = await client.generate("a blue cube", pipeline="rolling_forcing", **SIZE)
                seen = {longlive.id: [], rolling.id: []}
                applied = None

                async def watch(session, count):
                    nonlocal applied
                    async for frame in session.frames():
                        if len(seen[session.id]) == count:
                            continue  # already in flight when stop was sent
                        assert frame.pixels.shape == (32, 32, 3)
                        seen[session.id].append(frame.index)
                        if session is rolling and frame.index == 12:
                            applied = await session.switch_prompt("a green star")
                        if len(seen[session.id]) == count:
                            await session.stop()

                await asyncio.gather(watch(longlive, 30), watch(rolling, 30))
                assert seen[longlive.id] == list(range(30)) == seen[rolling.id]
                assert applied["type"] == "prompt.applied" and applied["frame"] >= 12
                assert longlive.ended_reason == rolling.ended_reason == "stopped"
        for stats in manager.stats().values():
            assert stats.used_blocks == 0  # every session gave its blocks back

    run(main())


def test_understanding_round_trip_over_raw_websockets(pipelines) -> None:
    """Frames in as binary messages, one caption per second of feed out."""
    _, built = pipelines

    async def main() -> None:
        engine = Engine(built, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
        async with build_server(ServerConfig(port=0), engine) as server:
            async with ws_connect(server.url, max_queue=None) as ws:
                await ws.send(json.dumps({"type": "hello", "version": 1}))
                json.loads(await ws.recv())
                start = {
                    "type": "session.start",
                    "pipeline": "streaming_vlm",
                    "params": {"instruction": "Say what moves."},
                }
                await ws.send(json.dumps(start))
                started = json.loads(await ws.recv())
                assert started["type"] == "session.started" and started["kind"] == "understanding"
                session = started["session"]
                rng = np.random.default_rng(0)
                for i in range(9):  # 4.5 s at 2 fps: seconds 0-3 complete
                    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                    header = FrameHeader(
                        FrameKind.INPUT, session, i, i / 2, FrameFormat.RAW, 64, 48
                    )
                    await ws.send(header.pack() + pixels.tobytes())
                old = FrameHeader(FrameKind.INPUT, session, 9, 1.0, FrameFormat.RAW, 64, 48)
                await ws.send(old.pack() + bytes(64 * 48 * 3))
                captions, errors = [], []
                async with asyncio.timeout(60):
                    while len(captions) < 4 or not errors:
                        message = json.loads(await ws.recv())
                        if message["type"] == "caption":
                            captions.append(message)
                        elif message["type"] == "error":
                            errors.append(message["code"])
                assert [(c["start"], c["end"]) for c in captions] == [
                    (s, s + 1.0) for s in range(4)
                ]
                assert all(isinstance(c["text"], str) for c in captions)
                assert errors[0] == "timestamps_backwards"
                await ws.send(json.dumps({"type": "question", "session": session, "text": "why?"}))
                await ws.send(json.dumps({"type": "stop", "session": session}))
                async with asyncio.timeout(30):
                    while json.loads(await ws.recv())["type"] != "session.ended":
                        pass

    run(main())


def test_a_checkpoint_folder_samples_as_published(pipelines, tmp_path) -> None:
    """The embedded toy model answers greedily; a model folder (--vlm-dir) gets the published
    StreamingVLM sampler, its top-k from the folder's generation_config.json."""
    from framestream.models.qwen_vl_tiny import tiny_qwen_vl
    from framestream.stream.pipelines.sampling import GREEDY, PUBLISHED

    _, built = pipelines
    assert built["streaming_vlm"].config.sampling == GREEDY
    tiny = tiny_qwen_vl()
    for part in (tiny.hf, tiny.tokenizer, tiny.image_processor):
        part.save_pretrained(tmp_path)
    # uncalibrated: the sampler is what is checked, a timed round would be read by nothing
    spec = ServiceModels(
        vlm_dir=tmp_path, pipelines=("streaming_vlm",), vlm_cache_bytes=16 << 20, calibrate=False
    )
    assert build_pipelines(spec)["streaming_vlm"].config.sampling == PUBLISHED
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 20}))
    assert build_pipelines(spec)["streaming_vlm"].config.sampling.top_k == 20


def test_warm_up_steps_each_generator_and_leaves_no_trace(pipelines, monkeypatch) -> None:
    from framestream.stream.requests import GenerationRequest
    from framestream.stream.service import warm_up

    manager, built = pipelines
    stepped = []
    for name in ("longlive", "rolling_forcing"):
        step = built[name].step
        monkeypatch.setattr(
            built[name], "step", lambda s, n=name, f=step: stepped.append(n) or f(s)
        )
    request = GenerationRequest("a red circle on a blue background", seed=3, **SIZE)

    def first_frames(pipe) -> np.ndarray:
        state = pipe.open(request)
        try:
            return pipe.step(state).frames
        finally:
            pipe.close(state)

    before = {name: first_frames(built[name]) for name in ("longlive", "rolling_forcing")}
    stepped.clear()
    warm_up(built)
    assert sorted(stepped) == ["longlive", "rolling_forcing"]
    assert all(s.used_blocks == s.reserved_blocks == 0 for s in manager.stats().values())
    for name, frames in before.items():  # no state carried into the next session
        np.testing.assert_array_equal(first_frames(built[name]), frames)


def test_the_fp8_cache_is_one_pool_for_both_generators() -> None:
    """ServiceModels(kv_cache_dtype="fp8_e4m3"): LongLive and Rolling Forcing share one FP8
    pool; a bad value is refused by the config and by ``stream serve``. Not calibrated: what is
    checked is the pool, and the timed steps at the default size cost seconds (steps on FP8
    rows: tests/stream/test_longlive.py and test_rolling_forcing.py; calibration:
    test_warm_up_steps_each_generator_and_leaves_no_trace)."""
    manager = KVCacheManager()
    spec = ServiceModels(
        preset="tiny",
        cache_bytes=4 << 20,
        pipelines=("longlive", "rolling_forcing"),
        kv_cache_dtype="fp8_e4m3",
        calibrate=False,
    )
    built = build_pipelines(spec, manager)
    assert built["longlive"].pool is built["rolling_forcing"].pool
    assert built["longlive"].pool.kv.dtype == torch.float8_e4m3fn
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8_e4m3"):
        ServiceModels(kv_cache_dtype="fp16")


def test_stream_serve_refuses_an_unknown_kv_cache_dtype(capsys) -> None:
    assert main(["serve", "--port", "0", "--kv-cache-dtype", "fp16"]) == 2
    assert "stream serve: kv_cache_dtype must be one of auto, fp8_e4m3" in capsys.readouterr().err
