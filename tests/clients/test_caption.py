"""clients/caption.py: the pure helpers, then ``run_caption`` end to end against the real server
in process, with the tiny (random-weight) Qwen2.5-VL behind ``streaming_vlm``. The captions'
words are arbitrary, so only their count, times and files are checked. Every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from framestream.clients.caption import (
    CaptionLayout,
    Question,
    _Sampler,
    _wrap,
    add_caption_arguments,
    caption_frame,
    fit_size,
    format_timestamp,
    parse_question,
    run_caption,
    subtitle_cues,
    write_srt,
    write_vtt,
)
from framestream.clients.client import Caption
from framestream.clients.video import Mp4Writer
from framestream.models.qwen_vl_tiny import tiny_qwen_vl
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline
from framestream.stream.server import Server, build_server

TIMEOUT = 60.0
LINE = re.compile(r"^\[\s*(\d+\.\d) -\s*(\d+\.\d)\]( .*)?$")
VTT_SPAN = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")
SRT_SPAN = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_caption_arguments(parser)
    return parser.parse_args(list(argv))


# -- helpers ---------------------------------------------------------------------------------


def test_parse_question() -> None:
    assert parse_question("t=5:what colour is the ball?") == Question(
        5.0, "what colour is the ball?"
    )
    assert parse_question("t=2.5s: where: here ") == Question(2.5, "where: here")
    for bad in ("5:what", "t=x:what", "t=-1:what", "t=3:", "t=3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_question(bad)


def test_arguments_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TOKEN", "s3cret")
    args = parse_args("--video", "a.mp4", "--question", "t=1:why?", "--question", "t=0:who?")
    assert args.url == "ws://127.0.0.1:8000/ws" and args.token == "s3cret"
    assert args.fps is None and args.max_pixels == 768 * 28 * 28 and args.max_lead == 2.0
    assert args.realtime is None and args.format == "jpeg" and args.quality == 90
    assert [q.at for q in args.question] == [1.0, 0.0]
    assert parse_args("--camera", "0", "--no-realtime").realtime is False
    with pytest.raises(SystemExit):
        parse_args()  # a source is required
    with pytest.raises(SystemExit):
        parse_args("--video", "a.mp4", "--camera", "0")
    with pytest.raises(SystemExit):
        parse_args("--video", "a.mp4", "--fps", "0")


def test_fit_size_keeps_aspect_under_the_budget() -> None:
    assert fit_size(96, 64, 768 * 28 * 28) == (96, 64)
    width, height = fit_size(1920, 1080, 768 * 28 * 28)
    assert width * height <= 768 * 28 * 28 and abs(width / height - 16 / 9) < 0.01
    assert fit_size(10, 10000, 50) == (1, 50)  # an extreme aspect still fits


def test_sampler_sends_the_newest_frame_of_each_slot() -> None:
    sampler = _Sampler(2.0)
    sent = []
    for i in range(16):  # 8 fps for 2 s: slots (0], (0, .5], (.5, 1], ...
        sent += [t for t, _ in sampler.offer(i / 8, np.zeros((1, 1, 3), np.uint8))]
    sent += [t for t, _ in sampler.finish(2.0)]
    assert sent == [0.0, 0.5, 1.0, 1.5, 1.875, 2.0]
    assert _Sampler(2.0).finish(1.0) == []


def test_timestamps_and_subtitle_files(tmp_path: Path) -> None:
    assert format_timestamp(3725.5) == "01:02:05.500"
    assert format_timestamp(0.0004, ",") == "00:00:00,000"
    captions = [
        Caption(0.0, 1.0, "a red", 0.0),
        Caption(1.0, 2.0, "", 0.0),
        Caption(2.0, 3.0, "ball", 0.0),
        Caption(3.0, 4.0, " ball\n", 0.0),
        Caption(4.0, 5.0, "x --> y", 0.0),
    ]
    assert subtitle_cues(captions) == [
        (0.0, 1.0, "a red"),
        (2.0, 4.0, "ball"),
        (4.0, 5.0, "x -> y"),
    ]
    write_vtt(tmp_path / "a.vtt", captions)
    write_srt(tmp_path / "a.srt", captions)
    vtt = (tmp_path / "a.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na red\n\n")
    assert "00:00:02.000 --> 00:00:04.000\nball\n" in vtt
    srt = (tmp_path / "a.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,000\na red\n\n2\n00:00:02,000")
    assert srt.count("-->") == 3


def band_text_pixels(image: np.ndarray, layout: CaptionLayout) -> int:
    """Bright pixels in the caption band (text is white on black)."""
    return int((image[layout.picture_height :].max(axis=-1) > 128).sum())


def test_caption_frame_scales_up_and_writes_below() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    text = "a long commentary about the red circle that has to wrap over several lines " * 3
    out = caption_frame(frame, text)
    layout = CaptionLayout.of(64, 64)
    assert layout.factor == 8 and out.shape == (layout.height, 512, 3)
    assert layout.band_height > 0 and layout.picture_height == 512
    # the picture is the frame, each pixel an 8x8 block; nothing is drawn over it
    assert np.array_equal(out[: layout.picture_height : 8, ::8], frame)
    assert band_text_pixels(out, layout) > 500
    assert band_text_pixels(caption_frame(frame, "  "), layout) == 0  # a silent second
    assert caption_frame(frame, "x").shape == out.shape  # one size for every frame
    wide = caption_frame(np.zeros((64, 1024, 3), np.uint8), "a")
    assert wide.shape[1] == 1024  # wide enough already: not scaled


def test_caption_text_wraps_inside_the_band() -> None:
    layout = CaptionLayout.of(64, 64)
    lines = _wrap("word " * 200 + "x" * 300, layout)
    assert len(lines) == 3 and lines[-1].endswith("...")
    room = layout.width - 2 * layout.margin
    for line in lines + _wrap("y" * 300, layout):
        width = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, layout.font_scale, layout.thickness)
        assert width[0][0] <= room, line


def test_out_mp4_decodes_at_the_scaled_size_with_text_in_the_band(tmp_path: Path) -> None:
    path = tmp_path / "captioned.mp4"
    writer = Mp4Writer(path, 8)
    frame = np.full((64, 64, 3), 60, np.uint8)
    for i in range(8):
        writer.write(caption_frame(frame, "a red circle moves right" if i >= 4 else ""))
    writer.close()
    layout = CaptionLayout.of(64, 64)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 8
    assert decoded[0].shape == (layout.height + layout.height % 2, 512, 3)
    assert band_text_pixels(decoded[0], layout) < 50  # silent: an empty band (codec noise)
    assert band_text_pixels(decoded[-1], layout) > 300


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm():
    return tiny_qwen_vl()


@contextlib.asynccontextmanager
async def running(model) -> AsyncIterator[Server]:
    pipeline = StreamingVLMPipeline(model, KVCacheManager(), 64 << 20)
    engine = Engine({"streaming_vlm": pipeline}, EngineConfig())
    async with build_server(ServerConfig(port=0), engine) as srv:
        yield srv


def write_video(path: Path, seconds: int = 4, fps: int = 8, width: int = 96, height: int = 64):
    """A moving-gradient H.264 file; returns its frame count."""
    count = seconds * fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        y, x = np.mgrid[0:height, 0:width]
        for i in range(count):
            image = np.stack([x * 2 + i * 8, y * 3, (x + y + i * 16)], axis=-1) % 256
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return count


def spans(text: str, pattern: re.Pattern[str]) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
            out.append(
                (h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000)
            )
    return out


def test_run_caption_on_a_file(vlm, tmp_path: Path) -> None:
    video = tmp_path / "in.mp4"
    frames = write_video(video)
    out = io.StringIO()

    async def main() -> int:
        async with running(vlm) as srv:
            args = parse_args(
                "--video", str(video),
                "--url", f"ws://127.0.0.1:{srv.port}/ws",
                "--question", "t=2:what colour is it?",
                "--vtt", str(tmp_path / "out.vtt"),
                "--srt", str(tmp_path / "out.srt"),
                "--out-mp4", str(tmp_path / "out.mp4"),
                "--timeout", "30",
            )  # fmt: skip
            return await run_caption(args, out=out)

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 0
    lines = out.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(float(m[1]), float(m[2])) for m in matches] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    texts = [(m[3] or "").strip() for m in matches]

    vtt = (tmp_path / "out.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    srt = (tmp_path / "out.srt").read_text()
    for cues in (spans(vtt, VTT_SPAN), spans(srt, SRT_SPAN)):
        assert len(cues) == vtt.count("-->") and len(cues) <= sum(1 for t in texts if t)
        assert (len(cues) > 0) == any(texts)
        assert all(0 <= start < end <= 4 for start, end in cues)
        assert all(
            a[1] <= b[0] for a, b in zip(cues, cues[1:], strict=False)
        )  # in order, no overlap
    assert spans(vtt, VTT_SPAN) == spans(srt, SRT_SPAN)

    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 8
    layout = CaptionLayout.of(96, 64)
    height = layout.height + layout.height % 2  # H.264 pads to even
    assert len(decoded) == frames and decoded[0].shape == (height, 576, 3)


def test_run_caption_reports_a_refused_session(vlm, tmp_path: Path, capsys) -> None:
    video = tmp_path / "in.mp4"
    write_video(video, seconds=1)

    async def main() -> int:
        async with running(vlm) as srv:
            args = parse_args(
                "--video", str(video), "--url", f"ws://127.0.0.1:{srv.port}/ws",
                "--pipeline", "nope", "--timeout", "10",
            )  # fmt: skip
            return await run_caption(args, out=io.StringIO())

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 1
    assert "unknown_pipeline" in capsys.readouterr().err


def test_run_caption_refuses_a_missing_or_unreadable_file_before_connecting(
    tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "missing.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video " * 64)
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as container:  # a media file without a video stream
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), layout="mono")
        frame.rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    expected = {
        missing: f"stream caption: {missing}: no such file",
        corrupt: f"stream caption: {corrupt} is not a readable video (",
        audio: f"stream caption: {audio} has no video stream",
        tmp_path: f"stream caption: {tmp_path}: not a file",
    }
    for path, message in expected.items():
        # nothing listens on the URL: the file is refused before connecting
        args = parse_args("--video", str(path), "--url", "ws://127.0.0.1:9/ws")
        assert asyncio.run(asyncio.wait_for(run_caption(args), TIMEOUT)) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
        assert "Errno" not in err


# -- the sampler ------------------------------------------------------------------------------


def test_sampler_arguments_and_their_bounds() -> None:
    args = parse_args("--video", "a.mp4")
    assert (args.temperature, args.repetition_penalty, args.top_k, args.seed) == (None,) * 4
    args = parse_args(
        "--video", "a.mp4", "--temperature", "0.9", "--repetition-penalty", "1.05",
        "--top-k", "50", "--seed", "7",
    )  # fmt: skip
    assert (args.temperature, args.repetition_penalty, args.top_k, args.seed) == (0.9, 1.05, 50, 7)
    for flag, value in [
        ("--temperature", "-0.1"),
        ("--temperature", "nan"),
        ("--repetition-penalty", "0"),
        ("--top-k", "0"),
        ("--top-k", "1001"),
        ("--seed", "-1"),
    ]:
        with pytest.raises(SystemExit):
            parse_args("--video", "a.mp4", flag, value)


def test_the_same_seed_gives_the_same_captions(vlm, tmp_path: Path) -> None:
    """The CLI's sampler through the server: a session's captions replay from its seed."""
    video = tmp_path / "in.mp4"
    write_video(video, seconds=3)

    async def captions(*sampler: str) -> list[str]:
        out = io.StringIO()
        async with running(vlm) as srv:
            args = parse_args(
                "--video", str(video), "--url", f"ws://127.0.0.1:{srv.port}/ws",
                "--timeout", "30", "--temperature", "1.0", "--top-k", "100", *sampler,
            )  # fmt: skip
            assert await run_caption(args, out=out) == 0
        return out.getvalue().splitlines()

    async def main() -> tuple[list[str], ...]:
        return (
            await captions("--seed", "11"),
            await captions("--seed", "11"),
            await captions("--seed", "12", "--repetition-penalty", "1.05"),
        )

    first, again, other = asyncio.run(asyncio.wait_for(main(), 3 * TIMEOUT))
    assert len(first) == 3 and first == again
    assert other != first


def test_bad_sampler_values_are_refused_naming_the_field(vlm) -> None:
    from framestream.clients.client import ServerError, StreamClient

    async def main() -> None:
        async with running(vlm) as srv, StreamClient.connect(srv.url) as client:
            with pytest.raises(ValueError, match="top_k"):
                await client.understand(top_k=0)  # checked before sending
            for params, field in [
                ({"temperature": -1}, "params.temperature"),
                ({"repetition_penalty": "1.05"}, "params.repetition_penalty"),
                ({"seed": 1.5}, "params.seed"),
            ]:
                with pytest.raises(ServerError) as refused:
                    await client.start("streaming_vlm", params, timeout=10)
                assert refused.value.code == "invalid_message"
                assert field in refused.value.message
            session = await client.understand(temperature=0.5, seed=3)
            await session.stop()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
