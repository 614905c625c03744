"""The ``stream`` command: help, version, and ``stream serve`` started as its own process on the
embedded default, as a user runs it, answering health checks, stopped with SIGINT. Help and
version are read from main() in this process: a second interpreter for each would only import
torch and the models' stack again (the serve test and tests/cli/test_checks.py run the command
as a process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

from framestream.cli.main import main
from framestream.stream.version import __version__
from tests.processes import health_url

COMMAND = [sys.executable, "-m", "framestream.cli"]


def exit_code(argv: list[str]) -> int:
    """``stream ARGV``'s exit code, argparse's own exits (--help, a refusal) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_help_and_version(capsys) -> None:
    assert exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    commands = ("serve", "generate", "caption", "restyle", "timeline", "eval", "bench", "version")
    for command in commands:
        assert command in out
    assert exit_code(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"stream {__version__}"


def test_caption_offers_no_window(capsys) -> None:
    """The OpenCV dependency is the headless build: no --show (the page's Watch tab shows the
    captions over the video)."""
    assert exit_code(["caption", "--help"]) == 0
    help_ = capsys.readouterr().out
    assert "--show" not in help_ and "Watch" in help_
    assert exit_code(["caption", "--video", "x.mp4", "--show"]) == 2
    assert "unrecognized arguments: --show" in capsys.readouterr().err


def test_serve_starts_on_the_default_and_stops_on_sigint() -> None:
    process = subprocess.Popen(
        [*COMMAND, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = health_url(process)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and response.read().strip() == b"ok"
        page = url.removesuffix("healthz")
        with urllib.request.urlopen(page, timeout=10) as response:
            assert b"<html" in response.read().lower()  # the browser page, served by default
        metrics = url.removesuffix("healthz") + "metrics"
        with urllib.request.urlopen(metrics, timeout=10) as response:
            text = response.read().decode()
        for pipeline in ("longlive", "rolling_forcing", "streaming_vlm"):
            assert f'stream_sessions{{pipeline="{pipeline}"}} 0' in text, json.dumps(text[:500])
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
