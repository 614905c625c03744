"""Checks of a command's arguments, run before anything loads: a bad path or number is then one
line on stderr and exit code 2 (``stream COMMAND: reason``), not a traceback after the models
have loaded for tens of seconds.

Each command names its arguments by role in an :class:`ArgumentChecks`; :func:`check` raises
:class:`UsageError` naming the first bad one. The checks that need torch (the device) or the
model registry (the preset) are separate functions, run after the cheap ones.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ArgumentChecks",
    "UsageError",
    "check",
    "check_bindable",
    "check_device",
    "check_preset",
    "flag",
]


class UsageError(ValueError):
    """A bad argument; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class ArgumentChecks:
    """A command's arguments (their ``dest`` names) by what they must be; unset ones (None)
    are skipped."""

    folders: tuple[str, ...] = ()  # existing folders
    files: tuple[str, ...] = ()  # existing files
    paths: tuple[str, ...] = ()  # existing files or folders
    outputs: tuple[str, ...] = ()  # files written into an existing folder
    made: tuple[str, ...] = ()  # files or folders written with their missing parent folders
    positive: tuple[str, ...] = ()  # finite numbers > 0
    non_negative: tuple[str, ...] = ()  # finite numbers >= 0
    texts: tuple[str, ...] = ()  # strings with more than whitespace
    counts: tuple[str, ...] = ()  # comma-separated whole numbers > 0, e.g. "1,2,4"


def flag(dest: str) -> str:
    """The command-line spelling of an argument: ``model_dir`` -> ``--model-dir``."""
    return "--" + dest.replace("_", "-")


def check(args: argparse.Namespace, checks: ArgumentChecks) -> None:
    """Raise :class:`UsageError` for the first argument of ``args`` that breaks ``checks``."""
    for name in checks.texts:
        value = getattr(args, name)
        if value is not None and not str(value).strip():
            raise UsageError(f"{flag(name)} must not be empty")
    for name in checks.positive + checks.non_negative:
        value = getattr(args, name)
        if value is None:
            continue
        low_ok = value > 0 if name in checks.positive else value >= 0
        if not (isinstance(value, int | float) and math.isfinite(value) and low_ok):
            what = "a positive number" if name in checks.positive else "a number >= 0"
            raise UsageError(f"{flag(name)} must be {what}, got {value!r}")
    for name in checks.counts:
        value = getattr(args, name)
        if value is not None:
            _counts(flag(name), value)
    for name in checks.folders + checks.files + checks.paths:
        _existing(args, name, checks)
    for name in checks.outputs:
        value = getattr(args, name)
        if value is not None:
            _output(flag(name), Path(value))
    for name in checks.made:
        value = getattr(args, name)
        if value is not None:
            _made(flag(name), Path(value))


def _existing(args: argparse.Namespace, name: str, checks: ArgumentChecks) -> None:
    values = getattr(args, name)
    for value in values if isinstance(values, list) else [values]:
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            raise UsageError(f"{flag(name)} {path}: no such file or folder")
        if name in checks.folders and not path.is_dir():
            raise UsageError(f"{flag(name)} {path}: not a folder")
        if name in checks.files and not path.is_file():
            raise UsageError(f"{flag(name)} {path}: not a file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"{flag(name)} {path}: not readable")


def _output(name: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{name} {path}: is a folder; name the file to write")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{name} {path}: no folder {folder} to write it in")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{name} {path}: the folder {folder} is not writable")


def _made(name: str, path: Path) -> None:
    """The nearest existing folder at or above ``path`` must be writable (the rest is made)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise UsageError(f"{name} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{name} {path}: the folder {folder} is not writable")


def _counts(name: str, text: str) -> None:
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise UsageError(f"{name} takes whole numbers > 0 such as 1,2,4, got {text!r}")


def check_bindable(host: str, port: int) -> None:
    """Bind a socket to every address of ``host``:``port`` (with ``SO_REUSEADDR``, as the
    server's listener) and close it: a port another process holds is found here, before the
    models load."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio's listener: each family on its own
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
        except OSError as exc:
            ip = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
            raise UsageError(f"cannot listen on {ip}:{port}: {exc.strerror or exc}") from None
        finally:
            listener.close()


def check_device(device: str | None) -> None:
    """``--device`` names a torch device this machine has (None: the default, always)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device must be cpu or cuda (cuda:N), got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this machine has no CUDA device")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif parsed.type != "cpu":
        raise UsageError(f"--device must be cpu or cuda (cuda:N), got {device!r}")


def check_preset(preset: Any) -> None:
    """``--preset`` names a generation preset of the model registry."""
    from framestream.models.registry import GENERATION_PRESETS

    if preset not in GENERATION_PRESETS:
        known = ", ".join(sorted(GENERATION_PRESETS))
        raise UsageError(f"--preset must be one of {known}, got {preset!r}")
