"""What the command-line tools (caption, restyle, timeline) share: the server they talk to and
their ``main``."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_URL", "add_server_arguments", "tool_main"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token`` of the server a tool talks to."""
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the server's WebSocket URL (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("STREAM_TOKEN"),
        help="the server's token (default: $STREAM_TOKEN)",
    )


def tool_main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], object],
    run: Callable[[argparse.Namespace], Awaitable[int]],
    argv: list[str] | None,
) -> int:
    """Parse ``argv`` and run the tool; a Ctrl-C that gets through (the second) exits 130."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
