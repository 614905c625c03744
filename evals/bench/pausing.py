"""A function run in a worker thread that stops where it asks to, until resumed: how the bench
times a published loop (one call that makes a whole video) a step at a time, interleaved with
other variants. Only one of the two threads runs at any time."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

__all__ = ["PausingRun"]


class Aborted(Exception):
    """Raised inside a paused loop to end it early."""


class PausingRun:
    """``fn()`` in a worker thread (without autograd), which stops at every :meth:`pause` it
    reaches until the caller resumes or aborts it; its errors are raised in the caller."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._go: queue.Queue[bool] = queue.Queue()  # True: go on; False: abort
        self._news: queue.Queue[tuple[str, object]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, daemon=True)
        self.done = False
        self.result: object = None

    def start(self) -> str | None:
        """Run to the first pause; its label (None: it finished)."""
        self._thread.start()
        return self._wait()

    def resume(self) -> str | None:
        """Run to the next pause; its label (None: it finished)."""
        if self.done:
            raise RuntimeError("the published loop has already finished")
        self._go.put(True)
        return self._wait()

    def abort(self) -> None:
        if not self.done:
            self._go.put(False)
            self._wait()

    def pause(self, label: str) -> None:
        """Called by the loop, in the worker."""
        self._news.put(("pause", label))
        if not self._go.get():
            raise Aborted

    def _work(self) -> None:
        try:
            with torch.no_grad():
                self._news.put(("done", self._fn()))
        except Aborted:
            self._news.put(("done", None))
        except BaseException as error:  # handed to the caller's thread
            self._news.put(("error", error))

    def _wait(self) -> str | None:
        kind, value = self._news.get()
        if kind == "pause":
            return value
        self.done = True
        self._thread.join()
        if kind == "error":
            raise value
        self.result = value
        return None
