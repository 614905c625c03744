"""``stream serve`` run as its own process, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import time

__all__ = ["health_url"]


def health_url(process: subprocess.Popen, timeout: float = 120) -> str:
    """The health URL ``stream serve`` prints once it listens (its stdout must be a text pipe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(r"health\s+(http://\S+/healthz)", line)
        if match:
            return match[1]
    raise AssertionError(f"stream serve printed no health URL (exit code {process.poll()})")
