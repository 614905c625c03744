"""Faults, each against a real loopback server: a step raising, a corrupt or mismatched
checkpoint, undecodable input frames, a recording target that fails, the server stopped
mid-stream, the cache exhausted (a client vanishing: test_vanishing.py).

Elsewhere already: a dropped connection freeing its blocks and a client that stops reading
(tests/stream/test_server.py), the loader's missing/extra/misshaped keys
(tests/models/test_wan_loader.py), a failing step at the engine level (tests/stream/test_engine.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import threading
from pathlib import Path

import av
import pytest
import torch
from safetensors.torch import load_file, save_file
from websockets.exceptions import ConnectionClosed

from framestream.cli import main as cli
from framestream.evals.fuzz_checks import ServerLog
from framestream.models.toyworld.embedded import GENERATOR_DIR, TEXT_ENCODER_FILE, WORDS_FILE
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline
from framestream.stream.protocol import FrameFormat
from framestream.stream.requests import UnderstandingRequest
from framestream.stream.server import build_server
from tests.admission import ANY_COMPUTE

from .wire import (
    SIZE,
    connect,
    expect_error,
    feed_seconds,
    frames,
    held_blocks,
    hello,
    idle,
    input_frame,
    noise,
    recv,
    run,
    served,
    start,
    until,
)

# -- a step raising -----------------------------------------------------------------------------


class FailingLongLive(LongLivePipeline):
    """LongLive whose steps fail for the prompt "boom": a model or device error mid-stream."""

    def denoise(self, state):
        if state.prompt == "boom":
            raise RuntimeError("the device fell over")
        return super().denoise(state)


def test_a_step_raising_ends_that_session_only(pipelines):
    pipeline = FailingLongLive(pipelines["longlive"].models, KVCacheManager(), 64 << 20)

    async def main():
        async with (
            served({"longlive": pipeline}) as server,
            connect(server.url) as ws,
            connect(server.url) as other,
        ):
            await hello(ws)
            await hello(other)
            good = await start(other)
            neighbour = await start(ws)
            bad = await start(ws, prompt="boom")
            error = await expect_error(ws, "internal")
            assert error["session"] == bad and "fell over" in error["message"]
            ended = await recv(ws, "session.ended")
            assert ended["session"] == bad and ended["reason"] == "error"
            await frames(other, good, 12)  # another connection goes on
            await frames(ws, neighbour, 12)  # and so does the same connection's other session
            await until(lambda: len(server.sessions()) == 2)
            blocks = held_blocks(server)
            await ws.send(json.dumps({"type": "stop", "session": neighbour}))
            await recv(ws, "session.ended")
            await until(lambda: held_blocks(server) < blocks)
        assert server.engine.stats().errors == {"internal": 1}

    with ServerLog() as log:
        run(main())
    assert [m for m in log.take() if "fell over" not in m] == []


# -- a corrupt or mismatched checkpoint ---------------------------------------------------------


def _serve_with(dit: Path, capsys) -> tuple[int, str]:
    vae = GENERATOR_DIR / "vae"
    argv = ["serve", "--dit", str(dit), "--vae", str(vae), "--pipelines", "longlive", "--port", "0"]
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_a_corrupt_or_mismatched_checkpoint_is_refused_naming_it(tmp_path, capsys):
    weights = GENERATOR_DIR / "dit.safetensors"
    for name in ("train.json", "sampling.json", TEXT_ENCODER_FILE, WORDS_FILE):
        shutil.copy(GENERATOR_DIR / name, tmp_path)  # the run folder the DiT is read with
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = _serve_with(truncated, capsys)
    assert code == 2 and "cannot load the models" in err and str(truncated) in err, err
    assert "Traceback" not in err

    state = load_file(weights)
    name = next(k for k in state if k.endswith("ffn.0.weight"))
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(state, mismatched)
    code, err = _serve_with(mismatched, capsys)
    assert code == 2 and name in err and "expected" in err, err


# -- undecodable input frames -------------------------------------------------------------------


def test_undecodable_input_frames_are_refused_and_the_feed_goes_on(pipelines):
    async def main():
        async with served(pipelines) as server, connect(server.url) as ws:
            await hello(ws)
            session = await start(ws, "streaming_vlm")
            jpeg = input_frame(session, 0, 0.0, noise())
            header, payload = jpeg[:32], jpeg[32:]
            png = input_frame(session, 0, 0.0, noise(), FrameFormat.PNG)
            for bad in (
                header + b"not an image at all",
                header + payload[:40],  # truncated inside the JPEG headers
                png[:32] + png[32:60],  # a PNG cut after its header chunk
                input_frame(session, 0, 0.0, noise(), size=(64, 64)),  # size disagrees
                input_frame(session, 0, 0.0, noise(3, 900)),  # 300:1, not understandable
            ):
                await ws.send(bad)
                error = await recv(ws, "error")
                assert error["code"] in ("bad_frame", "frame_too_large"), error
                assert error["session"] == session
            await feed_seconds(ws, session, 3)  # the session is fine: captions come
            captions = [await recv(ws, "caption") for _ in range(2)]
            assert [c["start"] for c in captions] == [0.0, 1.0]

    run(main())


# -- a recording target that fails --------------------------------------------------------------


def test_an_unwritable_recording_folder_refuses_only_the_recording(pipelines, tmp_path):
    folder = tmp_path / "recordings"

    async def main():
        async with (
            served(pipelines, record_dir=folder) as server,
            connect(server.url) as ws,
        ):
            await hello(ws)
            folder.rmdir()
            folder.write_text("the folder is gone, a file sits in its place")
            message = {"type": "session.start", "pipeline": "longlive", "request_id": "r"}
            params = {"prompt": "x", "record": True, **SIZE}
            await ws.send(json.dumps({**message, "params": params}))
            error = await expect_error(ws, "recording_failed")
            assert error["request_id"] == "r" and str(tmp_path) not in error["message"]
            await until(lambda: held_blocks(server) == 0)  # the admitted session was closed
            session = await start(ws)  # the connection and the server go on
            await frames(ws, session, 3)

    with ServerLog() as log:
        run(main())
    assert all("recording" in m for m in log.take())


def test_a_full_disk_stops_the_recording_not_the_session(pipelines, tmp_path, monkeypatch):
    """/dev/full answers every write with ENOSPC: a real full disk, for one file."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    monkeypatch.setattr("framestream.stream.recordings.secrets.token_hex", lambda n: "0" * 2 * n)
    (tmp_path / f"1-{'0' * 32}.mp4").symlink_to("/dev/full")  # the first session's recording

    def full_disk_files() -> int:
        fds = os.listdir("/proc/self/fd")
        return sum(1 for fd in fds if _readlink(f"/proc/self/fd/{fd}") == "/dev/full")

    async def main():
        async with served(pipelines, record_dir=tmp_path) as server, connect(server.url) as ws:
            await hello(ws)
            session = await start(ws, record=True)
            assert session == 1
            await frames(ws, session, 24)
            await ws.send(json.dumps({"type": "stop", "session": session}))
            error = await expect_error(ws, "recording_failed")  # before session.ended
            assert error["session"] == session and "No space left" in error["message"]
            ended = await recv(ws, "session.ended")
            assert ended["reason"] == "stopped" and "recording" not in ended
            second = await start(ws)  # the server goes on
            await frames(ws, second, 3)
            await ws.close()
            await idle(server)

    with ServerLog() as log:
        run(main())
    assert full_disk_files() == 0  # the file was closed although FFmpeg could not finish it
    assert all("recording" in m for m in log.take())


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


# -- the server stopped mid-stream --------------------------------------------------------------


def test_stopping_mid_stream_ends_sessions_and_leaves_playable_recordings(pipelines, tmp_path):
    async def main():
        engine = Engine(pipelines, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
        server = build_server(ServerConfig(port=0, record_dir=tmp_path), engine)
        await server.start()
        clients = [await connect(server.url) for _ in range(3)]
        try:
            for ws in clients:
                await hello(ws)
            sessions = [
                await start(clients[0], record=True),
                await start(clients[1], "rolling_forcing", record=True),
                await start(clients[2], "streaming_vlm"),
            ]
            received = [
                len(await frames(ws, s, 6)) for ws, s in zip(clients[:2], sessions[:2], strict=True)
            ]
            await feed_seconds(clients[2], sessions[2], 1)
            closing = asyncio.create_task(server.close())
            for ws, session in zip(clients, sessions, strict=True):
                ended = await recv(ws, "session.ended")
                assert (ended["session"], ended["reason"]) == (session, "server_shutdown")
                with pytest.raises(ConnectionClosed) as closed:
                    while True:  # feed frames still in flight are refused as for an ended session
                        late = await recv(ws)
                        assert (late["type"], late["code"]) == ("error", "unknown_session"), late
                assert closed.value.rcvd.code == 1001
            await closing
            return received
        finally:
            for ws in clients:
                await ws.close()
            await server.close()

    received = run(main())
    recordings = sorted(tmp_path.glob("*.mp4"))
    assert len(recordings) == 2
    for path, count in zip(recordings, received, strict=True):
        with av.open(io.BytesIO(path.read_bytes())) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) >= count and decoded[0].shape == (32, 32, 3)
    names = {t.name for t in threading.enumerate()}
    assert "stream-engine" not in names and not any(n.startswith("record") for n in names)


# -- the cache exhausted ------------------------------------------------------------------------


def test_a_full_cache_refuses_new_sessions_and_spares_running_ones(pipelines):
    model = pipelines["streaming_vlm"].model
    probe = StreamingVLMPipeline(model, KVCacheManager(), 64 << 20)
    one = probe.open(UnderstandingRequest())
    stats = probe.pool.stats()
    probe.close(one)
    need = stats.used_blocks + stats.reserved_blocks
    small = StreamingVLMPipeline(
        model, KVCacheManager(), (need + need // 2) * stats.bytes_per_block
    )

    async def main():
        async with served({"streaming_vlm": small}) as server, connect(server.url) as ws:
            await hello(ws)
            running = await start(ws, "streaming_vlm")
            await ws.send(json.dumps({"type": "session.start", "pipeline": "streaming_vlm"}))
            assert "cache" in (await expect_error(ws, "cache_full"))["message"]
            await feed_seconds(ws, running, 2)
            assert (await recv(ws, "caption"))["session"] == running  # unaffected
            await ws.send(json.dumps({"type": "stop", "session": running}))
            await recv(ws, "session.ended")
            await start(ws, "streaming_vlm")  # its blocks came back: admitted again

    run(main())
