"""The ``stream`` command as a user runs it: help, version, and ``stream serve`` started as its
own process on the embedded default, answering health checks, stopped with SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

from framestream.stream.version import __version__
from tests.processes import health_url

COMMAND = [sys.executable, "-m", "framestream.cli"]


def test_help_and_version() -> None:
    out = subprocess.run([*COMMAND, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    commands = ("serve", "generate", "caption", "restyle", "timeline", "eval", "bench", "version")
    for command in commands:
        assert command in out.stdout
    version = subprocess.run([*COMMAND, "version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"stream {__version__}"


def test_caption_offers_no_window() -> None:
    """The OpenCV dependency is the headless build: no --show (the page's Watch tab shows the
    captions over the video)."""
    help_ = subprocess.run([*COMMAND, "caption", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--show" not in help_.stdout and "Watch" in help_.stdout
    shown = subprocess.run(
        [*COMMAND, "caption", "--video", "x.mp4", "--show"], capture_output=True, text=True
    )
    assert shown.returncode == 2 and "unrecognized arguments: --show" in shown.stderr


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
