"""The command-line tools' Ctrl-C: the first one calls back, then the default returns."""

from __future__ import annotations

import asyncio
import os
import signal

from framestream.clients.interrupt import first_interrupt


def test_first_ctrl_c_calls_back_once_then_steps_aside() -> None:
    calls: list[str] = []

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        with first_interrupt(lambda: calls.append("first")):
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.1)  # the loop runs the handler
            still_installed = loop.remove_signal_handler(signal.SIGINT)
        return still_installed

    assert asyncio.run(main()) is False
    assert calls == ["first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_leaving_the_block_removes_the_handler() -> None:
    async def main() -> tuple[object, bool]:
        with first_interrupt(lambda: None):
            inside = signal.getsignal(signal.SIGINT)
        return inside, asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    inside, still_installed = asyncio.run(main())
    assert inside is not signal.default_int_handler  # asyncio owned Ctrl-C in the block
    assert still_installed is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
