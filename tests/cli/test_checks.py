"""Bad arguments of every ``stream`` subcommand end in one line on stderr, ``stream COMMAND:
reason``, and exit code 2, before any model loads: the loaders and runners are replaced by ones
that note a call, and no call may happen."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framestream.cli.checks import UsageError, check_bindable
from framestream.cli.main import main

COMMAND = [sys.executable, "-m", "framestream.cli"]
MISSING = "/nonexistent_framestream"

# what loads models or runs a tool, by module and name: none may be called
LOADERS = [
    ("framestream.models.registry", "load_wan_models"),
    ("framestream.stream.service", "build_pipelines"),
    ("framestream.clients.caption", "run_caption"),
    ("framestream.clients.timeline", "run_timeline"),
    ("framestream.evals.inf_streams.cli", "run_inf_streams"),
    ("framestream.evals.inf_streams.cli", "run_toy"),
    ("framestream.evals.fidelity.cli", "run"),
    ("framestream.evals.bench.cli", "run"),
]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The loaders and runners called (replaced by stand-ins that only note the call)."""
    import importlib

    called: list[str] = []
    # every module imported before any is patched: one that imports a loader by name (the
    # service imports load_wan_models) would otherwise keep the stand-in past this test
    modules = [importlib.import_module(module) for module, _ in LOADERS]
    for (module, name), loaded in zip(LOADERS, modules, strict=True):

        def stand_in(*args, _name=f"{module}.{name}", **kwargs):
            called.append(_name)
            raise SystemExit(99)

        monkeypatch.setattr(loaded, name, stand_in)
    return called


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all " * 64)
    schedule = tmp_path / "s.jsonl"
    schedule.write_text('{"t": 0, "prompt": "a"}\n{"t": 1, "prompt": "b"}\n')
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"corrupt": corrupt, "schedule": schedule, "file": a_file, "dir": tmp_path}


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``stream ARGV``; assert exit code 2 and one line on stderr, return it."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals exit from the parser
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.splitlines()
    assert len(lines) == 1, (argv, err)
    return lines[0]


CASES = [
    (["generate", "--prompt", "", "--out", "{dir}/x.mp4"], "--prompt must not be empty"),
    (["generate", "--prompt", " ", "--out", "{dir}/x.mp4"], "--prompt must not be empty"),
    (["generate", "--prompt", "a", "--seconds", "-1", "--out", "{dir}/x.mp4"], "--seconds must"),
    (["generate", "--prompt", "a", "--seconds", "nan", "--out", "{dir}/x.mp4"], "--seconds must"),
    (["generate", "--prompt", "a", "--seconds", "abc", "--out", "{dir}/x.mp4"], "invalid float"),
    (["generate", "--prompt", "a", "--switch", "4s yellow", "--out", "{dir}/x.mp4"],
     "--switch must look like 't=4s:a new prompt', got '4s yellow'"),
    (["generate", "--prompt", "a", "--switch", "t=20s:later", "--seconds", "8",
      "--out", "{dir}/x.mp4"], "at or after the end of the video (8 s)"),
    (["generate", "--prompt", "a", "--switch", "t=8:later", "--seconds", "8",
      "--out", "{dir}/x.mp4"], "at or after the end"),
    (["generate", "--prompt", "a", "--model-dir", MISSING, "--out", "{dir}/x.mp4"],
     f"--model-dir {MISSING}: no such file or folder"),
    (["generate", "--prompt", "a", "--model-dir", "{file}", "--out", "{dir}/x.mp4"],
     "not a folder"),
    (["generate", "--prompt", "a", "--lora", MISSING, "--out", "{dir}/x.mp4"], "--lora"),
    (["generate", "--prompt", "a", "--vae", MISSING, "--out", "{dir}/x.mp4"],
     f"--vae {MISSING}: no such file or folder"),
    (["generate", "--prompt", "a", "--out", f"{MISSING}/x.mp4"], f"no folder {MISSING}"),
    (["generate", "--prompt", "a", "--out", "{dir}"], "is a folder"),
    (["generate", "--prompt", "a", "--height", "100", "--out", "{dir}/x.mp4"], "multiple of 16"),
    (["generate", "--prompt", "a", "--cache-gb", "0", "--out", "{dir}/x.mp4"], "--cache-gb"),
    (["generate", "--prompt", "a", "--seed", "-3", "--out", "{dir}/x.mp4"], "--seed"),
    (["generate", "--prompt", "a", "--preset", "nope", "--out", "{dir}/x.mp4"], "--preset"),
    (["generate", "--prompt", "a", "--device", "tpu", "--out", "{dir}/x.mp4"], "--device"),
    (["generate", "--prompt", "a", "--kv-cache-dtype", "int3", "--out", "{dir}/x.mp4"],
     "kv_cache_dtype"),
    (["serve", "--vlm-dir", MISSING], "--vlm-dir"),
    (["serve", "--cache-gb", "-1"], "--cache-gb must be a positive number"),
    (["serve", "--max-sessions", "0"], "--max-sessions"),
    (["serve", "--static-dir", MISSING], "--static-dir"),
    (["serve", "--record-dir", "{file}/recordings"], "is a file, not a folder"),
    (["serve", "--port", "70000"], "port must be 0..65535"),
    (["serve", "--host", "0.0.0.0", "--port", "0"], "token"),
    (["serve", "--port", "0", "--pipelines", "longlive,nope"], "pipelines"),
    (["caption", "--video", f"{MISSING}.mp4"], f"{MISSING}.mp4: no such file"),
    (["caption", "--video", "{corrupt}"], "is not a readable video"),
    (["caption", "--video", "{corrupt}", "--url", "ws://127.0.0.1:9/ws"], "not a readable video"),
    (["caption", "--camera", "0", "--vtt", f"{MISSING}/c.vtt"], "--vtt"),
    (["caption", "--camera", "0", "--out-mp4", "{dir}"], "is a folder"),
    (["caption", "--camera", "0", "--vlm-dir", MISSING], "--vlm-dir"),
    (["caption", "--camera", "0", "--quality", "0"], "--quality"),
    (["caption", "--camera", "0", "--url", "http://127.0.0.1:9/ws"], "--url"),
    (["timeline", "{schedule}", "-o", f"{MISSING}/t.mp4"], "--out"),
    (["timeline", "{schedule}", "--url", "127.0.0.1:8000"], "--url"),
    (["timeline", "{schedule}", "--seconds", "-2"], "--seconds"),
    (["eval", "inf-streams", "--data", MISSING], "--data"),
    (["eval", "inf-streams", "--data", "{dir}", "--metadata", MISSING], "--metadata"),
    (["eval", "inf-streams", "--data", "{dir}", "--out", "{file}/out"], "is a file"),
    (["eval", "inf-streams", "--data", "{dir}", "--cache-gb", "-1"], "--cache-gb"),
    (["eval", "inf-streams", "--data", "{dir}", "--quality", "0"], "--quality"),
    (["eval", "toy-inf-streams", "--out", "{file}/toy"], "is a file"),
    (["eval", "toy-inf-streams", "--out", "{dir}", "--videos", "0"], "--videos"),
    (["eval", "fidelity", "--longlive", MISSING], "--longlive"),
    (["eval", "fidelity", "--longlive", "{dir}", "--out", f"{MISSING}/f.json"], "--out"),
    (["bench", "--chunks", "-1"], "--chunks must be a positive number"),
    (["bench", "--warmup", "-1"], "--warmup must be a number >= 0"),
    (["bench", "--clients", "1,x"], "--clients takes whole numbers"),
    (["bench", "--suite", "nope"], "--suite"),
    (["bench", "--size", "30x32"], "--size"),
    (["bench", "--model-dir", MISSING], "--model-dir"),
    (["bench", "--out", "{file}/b.json"], "is a file"),
    (["bench", "--preset", "nope"], "--preset"),
    (["bench", "plot", f"{MISSING}.json"], "no such file"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_a_bad_argument_is_one_line_and_exit_2_before_anything_loads(
    argv: list[str], expected: str, loads: list[str], files: dict[str, Path], capsys
) -> None:
    argv = [word.format(**files) for word in argv]
    line = one_line(capsys, argv)
    assert line.startswith(f"stream {argv[0]}"), line
    assert expected in line, line
    assert "Traceback" not in line and "Errno" not in line
    assert loads == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(loads: list[str], files, capsys) -> None:
    line = one_line(capsys, ["generate", "--prompt", "a", "--device", "cuda", "--out",
                             str(files["dir"] / "x.mp4")])  # fmt: skip
    assert "no CUDA device" in line and loads == []


def test_serve_refuses_a_port_in_use_before_loading(loads: list[str], capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(capsys, ["serve", "--port", str(port)])
    assert line == f"stream serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert loads == []


def test_check_bindable() -> None:
    check_bindable("127.0.0.1", 0)  # a free port: bound, then given back
    with pytest.raises(UsageError, match="cannot resolve"):
        check_bindable("no-such-host.invalid", 0)


def test_as_a_process_the_refusal_is_one_line_without_loading(tmp_path: Path) -> None:
    """The command as a user runs it: a bad switch, one line, exit 2, no weights loaded."""
    out = subprocess.run(
        [*COMMAND, "generate", "--prompt", "a fox", "--switch", "4s yellow",
         "--out", str(tmp_path / "x.mp4")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "stream generate: --switch must look like 't=4s:a new prompt', got '4s yellow'"
    ]
    assert not (tmp_path / "x.mp4").exists()
