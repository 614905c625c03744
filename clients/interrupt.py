"""Ctrl-C for the command-line tools: the first one asks the tool to wrap up, a second quits;
and the ``main`` they share."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["first_interrupt", "tool_main"]

# where asyncio cannot own SIGINT (not the main thread, Windows), Ctrl-C just quits
_UNSUPPORTED = (NotImplementedError, RuntimeError, ValueError)


@contextlib.contextmanager
def first_interrupt(on_first: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first Ctrl-C calls ``on_first`` (say, end the feed but keep its
    results); the handler then steps aside, so a second one raises ``KeyboardInterrupt``."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        on_first()
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(*_UNSUPPORTED):
        loop.add_signal_handler(signal.SIGINT, handle)
    try:
        yield
    finally:
        with contextlib.suppress(*_UNSUPPORTED):
            loop.remove_signal_handler(signal.SIGINT)


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
