"""Exceptions of the cache manager, all under :class:`CacheError` (a
:class:`~stream.errors.StreamError`).

* :class:`CacheFullError` -- a session's worst case does not fit; carries the numbers so the
  service can answer ``cache_full`` with them.
* :class:`CacheMisuseError` -- a caller broke the contract: use after close, double close,
  allocation past a reservation, freeing a block it does not hold.
"""

from __future__ import annotations

from framestream.stream.errors import StreamError

__all__ = ["CacheError", "CacheFullError", "CacheMisuseError"]


class CacheError(StreamError):
    """Base of every cache-manager error."""


class CacheFullError(CacheError):
    """The pool cannot reserve a new session's worst-case blocks."""

    def __init__(self, needed_bytes: int, available_bytes: int) -> None:
        super().__init__(
            f"cache full: the session needs {needed_bytes} bytes, {available_bytes} are available"
        )
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


class CacheMisuseError(CacheError):
    """The cache was used against its contract (a bug in the caller, not a capacity problem)."""
