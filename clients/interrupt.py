"""Ctrl-C for the command-line tools: the first one asks the tool to wrap up, a second quits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

__all__ = ["first_interrupt"]

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
