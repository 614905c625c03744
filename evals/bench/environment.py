"""Describe the machine, the software and the checkout a run measured."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from framestream.evals.bench.record import RunInfo

__all__ = ["describe_run"]

REPO = Path(__file__).resolve().parents[2]
_PACKAGES = ("triton", "transformers", "diffusers", "websockets")


def describe_run(device: torch.device, revision: str | None = None) -> RunInfo:
    """The :class:`RunInfo` of a run on ``device``; ``revision`` names the commit where the
    checkout has no git metadata (a copied working tree)."""
    git_revision, dirty = _git_state()
    return RunInfo(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_revision=revision or git_revision,
        git_dirty=None if revision else dirty,
        machine=_machine(device),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        platform=platform.platform(),
        python=platform.python_version(),
        versions=_versions(),
    )


def _machine(device: torch.device) -> str:
    host = f"{_cpu_count()}-core {_cpu_model()}, {_memory_gib():.0f} GiB"
    if device.type != "cuda":
        return host
    props = torch.cuda.get_device_properties(device)
    return f"{props.name} ({props.total_memory / 2**30:.1f} GiB); host {host}"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        versions["cudnn"] = str(torch.backends.cudnn.version())
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git_state() -> tuple[str | None, bool | None]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
