"""clients/timeline.py: schedule parsing and validation (ours and LongLive's), then
``run_timeline`` end to end against the real server in process, with the tiny Wan models behind
``longlive`` and ``rolling_forcing``. Every wait has a timeout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest

from framestream.clients.client import StreamClient
from framestream.clients.timeline import (
    LONGLIVE_FPS,
    PromptEntry,
    ScheduleError,
    Timeline,
    _plan,
    add_timeline_arguments,
    latent_to_video_frame,
    parse_frame_indices,
    parse_size,
    parse_timeline,
    run_timeline,
    sidecar_path,
)
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.server import Server, build_server
from framestream.stream.service import ServiceModels, build_pipelines
from tests.admission import ANY_COMPUTE

TIMEOUT = 60.0


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_timeline_arguments(parser)
    return parser.parse_args(list(argv))


# -- our format ------------------------------------------------------------------------------


def test_our_json() -> None:
    text = json.dumps(
        {
            "prompts": [
                {"t": 0, "prompt": " a red fox in snow "},
                {"t": 4.0, "prompt": "the fox jumps", "transition_chunks": 2},
                {"t": 8.5, "prompt": "the fox sleeps"},
            ],
            "seconds": 12,
            "pipeline": "rolling_forcing",
            "seed": 7,
        },
        indent=2,  # a pretty-printed file spans lines: still one JSON value
    )
    timeline = parse_timeline(text)
    assert timeline == Timeline(
        (
            PromptEntry("a red fox in snow", 0.0),
            PromptEntry("the fox jumps", 4.0, 2),
            PromptEntry("the fox sleeps", 8.5),
        ),
        seconds=12.0,
        pipeline="rolling_forcing",
        seed=7,
    )
    assert [p.start_frame(16) for p in timeline.prompts] == [0, 64, 136]
    assert PromptEntry("x", 1 / 3).start_frame(16) == 6  # the first frame at or after t


def test_our_jsonl_and_json_array() -> None:
    lines = [
        {"t": 0, "prompt": "a city at night"},
        {"t": 1.5, "prompt": "rain starts", "transition_chunks": 1},
    ]
    jsonl = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    expected = (PromptEntry("a city at night", 0.0), PromptEntry("rain starts", 1.5, 1))
    assert parse_timeline(jsonl) == Timeline(expected)  # no length: --seconds says
    assert parse_timeline(json.dumps(lines)) == Timeline(expected)
    assert parse_timeline(json.dumps(lines[0])).prompts == expected[:1]


# -- LongLive's format ------------------------------------------------------------------------


def test_latent_to_video_frame() -> None:
    # latent 0 decodes to 1 video frame, every later latent to 4
    assert [latent_to_video_frame(latent) for latent in (0, 1, 2, 3, 40, 80)] == [
        0,
        1,
        5,
        9,
        157,
        317,
    ]
    with pytest.raises(ValueError, match="latent"):
        latent_to_video_frame(-1)


def test_longlive_default_indices() -> None:
    line = json.dumps({"prompts": ["a fox", "the fox runs", "the fox sleeps"]})
    timeline = parse_timeline(line + "\n")
    assert timeline.kind == "longlive" and timeline.line is None
    assert [p.latent_frame for p in timeline.prompts] == [0, 40, 80]
    assert [p.frame for p in timeline.prompts] == [0, 157, 317]
    assert [p.t for p in timeline.prompts] == [0.0, 157 / 16, 317 / 16]
    assert [p.start_frame(30.0) for p in timeline.prompts] == [0, 157, 317]  # fixed frames
    assert timeline.frames == 4 * 120 - 3  # 80 + 40 latents
    assert timeline.seconds == timeline.frames / LONGLIVE_FPS
    # LongLive's own example: six prompts, indices 40..200, 240 latents -> 957 frames (60 s)
    six = parse_timeline(json.dumps({"prompts": [f"p{i}" for i in range(6)]}))
    assert six.frames == 957 and six.prompts[-1].frame == latent_to_video_frame(200) == 797


def test_longlive_indices_and_line() -> None:
    text = "\n".join(
        json.dumps({"prompts": [f"line {n} prompt {i}" for i in range(3)]}) for n in (1, 2, 3)
    )
    timeline = parse_timeline(text, line=2, switch_frame_indices=[5, 9], num_output_frames=12)
    assert timeline.line == 2
    assert [p.prompt for p in timeline.prompts] == [f"line 2 prompt {i}" for i in range(3)]
    assert [p.frame for p in timeline.prompts] == [0, 17, 33]
    assert timeline.frames == 45
    assert parse_timeline(text).prompts[0].prompt == "line 1 prompt 0"  # default: the first


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, "empty"),
        ('{"t": 0, "prompt": "a"}\nnot json\n', {}, "line 2: not JSON"),
        ("[1, 2]", {}, "expected a JSON object"),
        ('{"t": 0, "prompt": "a"}\n{"t": 2, "prompt": "b"}\n{"t": 2, "prompt": "c"}', {},
         "increase"),
        ('{"t": 1, "prompt": "a"}', {}, "start at t=0"),
        ('{"t": 0, "prompt": "a"}\n{"t": 1, "prompt": "  "}', {}, "non-empty"),
        ('{"t": 0, "prompt": "a"}\n{"t": 1}', {}, "missing 'prompt'"),
        ('{"prompt": "a"}', {}, "missing 't'"),
        ('{"t": true, "prompt": "a"}', {}, "'t' must be a number"),
        ('{"t": 0, "prompt": "a", "when": 3}', {}, "unknown key(s) 'when'"),
        ('{"t": 0, "prompt": "a"}\n{"t": 1, "prompt": "b", "transition_chunks": 65}', {}, "0..64"),
        ('{"t": 0, "prompt": "a", "transition_chunks": 1}', {}, "first prompt cannot"),
        ('{"t": 0, "prompt": "a"}', {"line": 1}, "--line applies"),
        ('{"prompts": [{"t": 0, "prompt": "a"}], "fps": 8}', {}, "unknown key(s) 'fps'"),
        ('{"prompts": [{"t": 0, "prompt": "a"}, {"t": 5, "prompt": "b"}], "seconds": 5}', {},
         "at or after the end"),
        ('{"prompts": [{"t": 0, "prompt": "a"}], "seconds": 0}', {}, "positive number"),
        ('{"prompts": [{"t": 0, "prompt": "a"}], "seed": -1}', {}, "'seed'"),
        ('{"prompts": []}', {}, "non-empty list"),
        ('{"prompts": ["a", {"t": 1, "prompt": "b"}]}', {}, "all strings"),
        ('{"prompts": [{"t": 0, "prompt": "a"}]}', {"switch_frame_indices": [40]},
         "LongLive's format"),
        ('{"prompts": ["a"]}\n{"t": 0, "prompt": "b"}', {}, "one format per file"),
        ('{"prompts": ["a", "b", "c"]}', {"switch_frame_indices": [40]}, "need 2 switch frame"),
        ('{"prompts": ["a", "b", "c"]}', {"switch_frame_indices": [80, 40]}, "increasing"),
        ('{"prompts": ["a", ""]}', {}, "prompts[1]: the prompt must be a non-empty"),
        ('{"prompts": ["a", "b"], "seed": 1}', {}, "unknown key(s) 'seed'"),
        ('{"prompts": ["a", "b"]}', {"num_output_frames": 40}, "must exceed"),
        ('{"prompts": ["a"]}\n{"prompts": ["b"]}', {"line": 3}, "--line 3 is out of range"),
    ],
)  # fmt: skip
def test_invalid_schedules_are_rejected(text: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_timeline(text, name="s.jsonl", **kwargs)
    assert message in str(info.value) and str(info.value).startswith("s.jsonl")


def test_plan_checks_frames_at_the_session_fps() -> None:
    close = parse_timeline('{"t": 0, "prompt": "a"}\n{"t": 1.0, "prompt": "b"}')
    assert _plan(close, 16.0, 3.0) == ([0, 16], 48)
    with pytest.raises(ScheduleError, match="at or after the end"):
        _plan(close, 16.0, 1.0)
    same = parse_timeline(
        '{"t": 0, "prompt": "a"}\n{"t": 0.95, "prompt": "b"}\n{"t": 1, "prompt": "c"}'
    )
    with pytest.raises(ScheduleError, match="prompts 1 and 2 both start at frame 16"):
        _plan(same, 16.0, 2.0)


# -- arguments -------------------------------------------------------------------------------


def test_arguments_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TOKEN", "s3cret")
    args = parse_args("story.jsonl")
    assert args.token == "s3cret" and args.realtime is False and args.no_progress is False
    assert args.pipeline is None and args.seed is None and args.size is None
    args = parse_args(
        "story.jsonl", "--size", "480x832", "--switch-frame-indices", "40, 80,120",
        "--realtime", "--line", "2", "--no-progress", "--seed", "3",
    )  # fmt: skip
    assert args.size == (480, 832) and args.switch_frame_indices == [40, 80, 120]
    assert args.realtime and args.line == 2 and args.no_progress and args.seed == 3
    assert parse_size("32X48") == (32, 48)
    assert parse_frame_indices("[40 80]") == [40, 80]
    for bad in ("480", "30x32", "0x32"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    for bad in ("", "a,b", "0,40"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_frame_indices(bad)
    assert sidecar_path(Path("out/video.mp4")) == Path("out/video.timeline.json")


def test_run_rejects_a_schedule_before_connecting(tmp_path: Path, capsys) -> None:
    schedule = tmp_path / "s.jsonl"
    schedule.write_text('{"t": 0, "prompt": "a"}\n{"t": 2, "prompt": "b"}\n')
    args = parse_args(str(schedule), "--url", "ws://127.0.0.1:9/ws")  # nothing listens there
    assert asyncio.run(asyncio.wait_for(run_timeline(args), TIMEOUT)) == 2
    assert "pass --seconds" in capsys.readouterr().err
    args = parse_args(str(schedule), "--url", "ws://127.0.0.1:9/ws", "--seconds", "2")
    assert asyncio.run(asyncio.wait_for(run_timeline(args), TIMEOUT)) == 2
    assert "at or after the end" in capsys.readouterr().err


# -- end to end ------------------------------------------------------------------------------


# Admission by compute is left out: it reads step times measured at warm-up, which a busy
# shared machine inflates, and a refused start says nothing about timelines; so the pipelines
# skip the warm-up's timed steps (seconds on a CPU), which nothing else here reads
ADMIT_ALL = EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE)


@pytest.fixture(scope="module")
def pipelines():
    spec = ServiceModels(
        cache_bytes=64 << 20, pipelines=("longlive", "rolling_forcing"), calibrate=False
    )
    return build_pipelines(spec)


@contextlib.asynccontextmanager
async def running(pipelines) -> AsyncIterator[Server]:
    engine = Engine(pipelines, ADMIT_ALL)
    async with build_server(ServerConfig(port=0), engine) as srv:
        yield srv


def run_against(pipelines, *argv: str) -> int:
    async def main() -> int:
        async with running(pipelines) as srv:
            return await run_timeline(parse_args(*argv, "--url", srv.url, "--timeout", "30"))

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def decode(path: Path) -> tuple[int, float, tuple[int, ...]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return len(frames), float(stream.average_rate), frames[0].shape


def check_sidecar(path: Path, requested: list[int], frames: int) -> dict:
    sidecar = json.loads(path.read_text())
    assert sidecar["frames"] == frames and sidecar["complete"] and sidecar["fps"] == 16.0
    assert sidecar["video"] == path.name.replace(".timeline.json", ".mp4")
    assert [p["requested_frame"] for p in sidecar["prompts"]] == requested
    applied = [p["applied_frame"] for p in sidecar["prompts"]]
    assert applied[0] == 0 and all(isinstance(a, int) for a in applied), applied
    assert all(a >= r for a, r in zip(applied, requested, strict=True)), applied
    assert applied == sorted(set(applied)), applied  # in order
    return sidecar


def test_run_timeline_longlive(pipelines, tmp_path: Path) -> None:
    schedule = tmp_path / "fox.json"
    schedule.write_text(
        json.dumps(
            {
                "prompts": [
                    {"t": 0, "prompt": "a red fox in snow"},
                    {"t": 1, "prompt": "the fox jumps", "transition_chunks": 1},
                    {"t": 2, "prompt": "the fox sleeps"},
                ],
                "seconds": 3,
                "seed": 5,
            }
        )
    )
    out = tmp_path / "fox.mp4"
    code = run_against(pipelines, str(schedule), "-o", str(out), "--size", "32x32", "--no-progress")
    assert code == 0
    assert decode(out) == (48, 16.0, (32, 32, 3))
    sidecar = check_sidecar(sidecar_path(out), [0, 16, 32], 48)
    assert sidecar["pipeline"] == "longlive" and sidecar["seed"] == 5
    assert sidecar["format"] == "timeline" and sidecar["frames_missing"] == 0
    assert [p["transition_chunks"] for p in sidecar["prompts"]] == [0, 1, 0]
    assert [p["t"] for p in sidecar["prompts"]] == [0, 1, 2]


def test_run_timeline_rolling_forcing_from_longlive_format(pipelines, tmp_path: Path) -> None:
    schedule = tmp_path / "story.jsonl"
    schedule.write_text(
        json.dumps({"prompts": ["a", "b", "c"]})
        + "\n"
        + json.dumps({"prompts": ["a blue cube", "the cube spins", "the cube melts"]})
        + "\n"
    )
    out = tmp_path / "cube.mp4"
    code = run_against(
        pipelines, str(schedule), "-o", str(out), "--pipeline", "rolling_forcing",
        "--size", "32x32", "--line", "2", "--switch-frame-indices", "5,9",
        "--seconds", "3", "--no-progress",
    )  # fmt: skip
    assert code == 0
    assert decode(out) == (48, 16.0, (32, 32, 3))
    sidecar = check_sidecar(sidecar_path(out), [0, 17, 33], 48)
    assert sidecar["pipeline"] == "rolling_forcing" and sidecar["format"] == "longlive"
    assert sidecar["line"] == 2
    assert [p["latent_frame"] for p in sidecar["prompts"]] == [0, 5, 9]
    assert [p["prompt"] for p in sidecar["prompts"]][1] == "the cube spins"


def test_run_timeline_reports_a_server_error(pipelines, tmp_path: Path, capsys) -> None:
    schedule = tmp_path / "s.jsonl"
    schedule.write_text('{"t": 0, "prompt": "a"}\n')
    code = run_against(
        pipelines, str(schedule), "-o", str(tmp_path / "s.mp4"), "--seconds", "1",
        "--pipeline", "nope", "--no-progress",
    )  # fmt: skip
    assert code == 1
    assert "server error unknown_pipeline:" in capsys.readouterr().err
    assert not (tmp_path / "s.mp4").exists()


# -- switches at a frame ---------------------------------------------------------------------

# the tiny Wan pipelines' chunks start at frames 0, 9, 21, 33, 45: a first chunk of 9 frames
# (the streamed VAE's first latent makes one), then 12
BOUNDARIES = (21, 45)


@pytest.mark.parametrize("realtime", [False, True])
def test_timeline_switches_land_on_the_asked_chunk_boundary(
    pipelines, tmp_path: Path, realtime: bool
) -> None:
    schedule = tmp_path / "edges.jsonl"
    lines = [{"t": 0, "prompt": "a red ball"}] + [
        {"t": frame / 16, "prompt": f"a blue cube {frame}"} for frame in BOUNDARIES
    ]
    schedule.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "edges.mp4"
    pacing = ["--realtime"] if realtime else []
    code = run_against(
        pipelines, str(schedule), "-o", str(out), "--size", "32x32", "--seconds", "3.5",
        "--no-progress", *pacing,
    )  # fmt: skip
    assert code == 0
    sidecar = check_sidecar(sidecar_path(out), [0, *BOUNDARIES], 56)
    assert [p["applied_frame"] for p in sidecar["prompts"]] == [0, *BOUNDARIES]


def test_a_switch_at_a_frame_lands_there_for_a_slow_realtime_reader(pipelines) -> None:
    """The client reads one frame every frame period and a half while the server paces
    playback and runs its lookahead ahead: switches sent at the start, asked for a chunk
    boundary, land exactly there (and one inside a chunk at the next boundary)."""

    async def main() -> list[int]:
        async with running(pipelines) as srv, StreamClient.connect(srv.url) as client:
            session = await client.generate("a red ball", height=32, width=32, realtime=True)
            asks = [(21, "a blue cube"), (30, "a green star"), (45, "a red ball")]
            switches = [
                asyncio.create_task(session.switch_prompt(prompt, at_frame=frame))
                for frame, prompt in asks
            ]
            frames = session.frames()
            async for frame in frames:
                await asyncio.sleep(1.5 / session.fps)  # slower than playback
                if frame.index >= 48:
                    break
            await frames.aclose()
            applied = await asyncio.wait_for(asyncio.gather(*switches), TIMEOUT)
            await session.stop()
            return [message["frame"] for message in applied]

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == [21, 33, 45]
