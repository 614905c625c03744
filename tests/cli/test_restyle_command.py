"""``stream restyle`` as a user runs it, in process: a short MP4 written with PyAV, restyled
through a server the command starts for itself (the tiny preset on the CPU), to an MP4 of the
session's frame rate; bad arguments stop it with 2 before anything loads."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from framestream.cli.main import main


def write_video(path: Path, frames: int = 12, fps: int = 8) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
        y, x = np.mgrid[0:48, 0:80]
        for i in range(frames):
            image = (np.stack([x * 3 + i * 10, y * 5, x + y], axis=-1) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_restyle_a_file_through_a_server_of_its_own(tmp_path: Path, capsys) -> None:
    video, out = tmp_path / "in.mp4", tmp_path / "out.mp4"
    write_video(video)  # 1.5 s at 8 fps: 24 frames at 16 fps
    argv = ["restyle", "--video", str(video), "--prompt", "a red ball", "--out", str(out)]
    argv += ["--preset", "tiny", "--device", "cpu", "--height", "32", "--width", "32"]
    assert main(argv) == 0
    assert "wrote 24 frames (1.50 s at 16 fps)" in capsys.readouterr().out
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == 16
    assert len(frames) == 24 and frames[0].shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--video", "missing.mp4"], "missing.mp4: no such file"),
        (["--camera", "0", "--url", "http://127.0.0.1:1/ws"], "--url must be a ws://"),
        (["--camera", "0", "--height", "40"], "--height must be a positive multiple of 16"),
        (["--camera", "-1"], "--camera"),
        (["--camera", "0", "--cache-gb", "0"], "--cache-gb"),
    ],
)
def test_bad_arguments_stop_before_anything_loads(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str
) -> None:
    def no_loading(*args, **kwargs):
        raise AssertionError("nothing may load for a bad argument")

    monkeypatch.setattr("framestream.stream.service.build_pipelines", no_loading)
    monkeypatch.chdir(tmp_path)
    argv = ["restyle", "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream restyle: ") and message in err


def test_a_strength_out_of_range_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["restyle", "--camera", "0", "--prompt", "x", "--out", "o.mp4", "--strength", "0"])
    assert exited.value.code == 2 and "--strength" in capsys.readouterr().err
