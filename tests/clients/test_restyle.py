"""clients/restyle.py (``stream restyle``): its helpers, then ``run_restyle`` end to end against
the real server in process (the tiny preset at 32x32) on a short MP4 written with PyAV and on the
server's toy-world feed. The restyled pixels are a random model's, so only counts, sizes and
the side-by-side input half are checked. Every wait has a timeout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from framestream.clients.restyle import (
    _Slots,
    add_restyle_arguments,
    argument_problem,
    centre_crop,
    run_restyle,
    toy_feed_url,
)
from framestream.models.registry import load_wan_models
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.server import Server, build_server
from tests.admission import ANY_COMPUTE

TIMEOUT = 120.0


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_restyle_arguments(parser)
    return parser.parse_args(list(argv))


def write_video(path: Path, frames: int = 16, fps: int = 8, width: int = 96, height: int = 64):
    """A moving-gradient H.264 file; returns its frames as RGB."""
    pictures = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            image = (np.stack([x * 2 + i * 8, y * 3, (x + y + i * 16)], axis=-1) % 256).astype(
                np.uint8
            )
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
            pictures.append(image)
        container.mux(stream.encode(None))
    return pictures


def read_video(path: Path) -> tuple[list[np.ndarray], fractions.Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


# -- helpers ---------------------------------------------------------------------------------


def test_centre_crop_cuts_to_the_aspect_then_resizes() -> None:
    wide = np.zeros((40, 100, 3), np.uint8)
    wide[:, 30:70] = 255  # the middle 40 columns: what a square crop keeps
    square = centre_crop(wide, 20, 20)
    assert square.shape == (20, 20, 3) and square.min() == 255
    tall = np.zeros((100, 40, 3), np.uint8)
    tall[30:70] = 255
    assert centre_crop(tall, 20, 20).min() == 255
    same = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    assert (centre_crop(same, 32, 32) == same).all()
    assert centre_crop(wide, 64, 32).shape == (32, 64, 3)


def test_slots_take_the_last_frame_at_or_before_each_slot() -> None:
    slots = _Slots(fps=4.0, max_frames=100)
    assert slots.take(0) is None
    frames = {t: np.full((2, 2, 3), k, np.uint8) for k, t in enumerate((1.0, 1.2, 1.5, 1.9))}
    for t, frame in frames.items():
        slots.add(t, frame)
    # slot i at 1 + i/4: 1.0 -> the first, 1.25 -> 1.2, 1.5 -> 1.5, 1.75 -> 1.5, 2.0 -> 1.9
    assert [int(slots.take(i)[0, 0, 0]) for i in range(5)] == [0, 1, 2, 2, 3]


def test_toy_feed_url_and_argument_problems(tmp_path: Path) -> None:
    assert toy_feed_url("ws://127.0.0.1:9/ws", 3, 5) == (
        "http://127.0.0.1:9/toyworld/feed.mp4?seed=3&seconds=5"
    )
    assert toy_feed_url("wss://h/ws", 0, 1, "t k") == (
        "https://h/toyworld/feed.mp4?seed=0&seconds=1&token=t+k"
    )
    out = str(tmp_path / "o.mp4")
    assert argument_problem(parse_args("--camera", "0", "--prompt", "x", "--out", out)) is None
    for argv, problem in (
        (("--height", "30"), "--height"),
        (("--quality", "0"), "--quality"),
        (("--out", str(tmp_path / "o.avi")), ".mp4"),
        (("--prompt", " "), "--prompt"),
        (("--video", str(tmp_path / "missing.mp4")), "no such file"),
    ):
        base = {"--camera": "0", "--prompt": "x", "--out": out}
        if argv[0] == "--video":
            base.pop("--camera")
        base[argv[0]] = argv[1]
        args = parse_args(*[item for pair in base.items() for item in pair])
        assert problem in (argument_problem(args) or ""), argv
    for bad in ("0", "1.5", "nan", "x"):
        with pytest.raises(SystemExit):
            parse_args("--camera", "0", "--prompt", "x", "--out", out, "--strength", bad)


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return load_wan_models("tiny")


@contextlib.asynccontextmanager
async def running(models, names=("longlive", "rolling_forcing")) -> AsyncIterator[Server]:
    manager = KVCacheManager()
    kinds = {"longlive": LongLivePipeline, "rolling_forcing": RollingForcingPipeline}
    pipelines = {name: kinds[name](models, manager, 64 << 20) for name in names}
    engine = Engine(pipelines, EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE))
    async with build_server(ServerConfig(port=0), engine) as srv:
        yield srv


@pytest.mark.parametrize(
    ("pipeline", "strength"),
    # Rolling Forcing at 1.0 holds a chunk of input a window level (five) before its frames
    # leave: a file sent a second ahead of what came back would wait for it forever
    [("longlive", "0.5"), ("rolling_forcing", "1.0")],
)
def test_run_restyle_on_a_file_side_by_side(
    models, tmp_path: Path, capsys, pipeline: str, strength: str
) -> None:
    video = tmp_path / "in.mp4"
    pictures = write_video(video)  # 16 frames at 8 fps: 2 s, 32 slots at 16 fps
    out = tmp_path / "out.mp4"

    async def main() -> int:
        async with running(models) as srv:
            args = parse_args(
                "--video", str(video), "--url", srv.url, "--prompt", "a red ball",
                "--pipeline", pipeline, "--strength", strength, "--height", "32", "--width",
                "32", "--side-by-side",
                "--out", str(out), "--timeout", "60",
            )  # fmt: skip
            return await run_restyle(args)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 0
    assert "wrote 32 frames (2.00 s at 16 fps)" in capsys.readouterr().out
    frames, rate = read_video(out)
    assert rate == 16 and len(frames) == 32
    assert frames[0].shape == (32, 64, 3)  # the input, cropped and resized, left of the output
    for index in (0, 5, 31):  # slot i takes source frame i // 2 (8 fps into 16)
        expected = centre_crop(pictures[index // 2], 32, 32).astype(int)
        assert np.abs(frames[index][:, :32].astype(int) - expected).mean() < 12  # H.264 twice


def test_run_restyle_on_the_toy_feed(models, tmp_path: Path, capsys) -> None:
    out = tmp_path / "toy.mp4"

    async def main() -> int:
        async with running(models) as srv:
            args = parse_args(
                "--toy-feed", "2", "--duration", "1", "--url", srv.url, "--prompt", "a ball",
                "--height", "32", "--width", "32", "--out", str(out), "--timeout", "60",
            )  # fmt: skip
            return await run_restyle(args)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 0
    frames, rate = read_video(out)
    assert rate == 16 and len(frames) == 16 and frames[0].shape == (32, 32, 3)


def test_run_restyle_reports_a_refused_session(models, tmp_path: Path, capsys) -> None:
    video = tmp_path / "in.mp4"
    write_video(video, frames=4)

    async def main() -> int:
        async with running(models, names=("longlive",)) as srv:
            args = parse_args(
                "--video", str(video), "--url", srv.url, "--prompt", "x",
                "--pipeline", "rolling_forcing", "--out", str(tmp_path / "o.mp4"),
            )  # fmt: skip
            return await run_restyle(args)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 1
    assert "server error unknown_pipeline" in capsys.readouterr().err


def test_run_restyle_of_a_file_sent_live(models, tmp_path: Path, capsys) -> None:
    """--realtime: the file is sent at its presentation times, as a live feed (no lead kept),
    and restyled in real time; every slot still comes back."""
    video = tmp_path / "in.mp4"
    write_video(video, frames=8)  # 1 s at 8 fps: 16 slots

    async def main() -> int:
        async with running(models) as srv:
            args = parse_args(
                "--video", str(video), "--url", srv.url, "--prompt", "a red ball",
                "--height", "32", "--width", "32", "--realtime", "--out", str(tmp_path / "o.mp4"),
            )  # fmt: skip
            return await run_restyle(args)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 0
    frames, rate = read_video(tmp_path / "o.mp4")
    assert rate == 16 and len(frames) == 16
