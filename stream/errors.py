"""Every error the service raises on purpose, under one base::

    StreamError
    ├── ProtocolError            a refused client message, with its wire code (stream.protocol)
    ├── SessionRefused           the engine cannot start a session now: ``reason`` is the code
    │                            the client hears (too_many_sessions, cache_full, compute_full,
    │                            unknown_pipeline, server_shutdown, engine_lost, internal)
    ├── EngineBusy               the engine's command queue is full (the client hears
    │                            rate_limited)
    ├── CacheError               the KV-cache manager (stream.kvcache.errors)
    │   ├── CacheFullError       a session's worst case does not fit
    │   └── CacheMisuseError     a caller broke the cache's contract
    └── InputError               a media input the service cannot take (also a ValueError)
        ├── ImageHeaderError     an image whose header says it is over the limits
        └── TimestampsBackwardsError   an input frame older than the one before it

Below the protocol only domain errors are raised; the connection turns them into the wire's
``error`` replies (docs/protocol.md lists the codes).
"""

from __future__ import annotations

__all__ = ["EngineBusy", "InputError", "SessionRefused", "StreamError"]


class StreamError(Exception):
    """Base of every error the service raises on purpose."""


class SessionRefused(StreamError):
    """A session that cannot start; ``reason`` is the code its client hears."""

    REASONS = frozenset(
        {
            "too_many_sessions",
            "cache_full",
            "compute_full",
            "unknown_pipeline",
            "server_shutdown",
            "engine_lost",
            "internal",
        }
    )

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


class EngineBusy(StreamError):
    """The engine's command queue is full; the command was not taken."""


class InputError(StreamError, ValueError):
    """A media input (an image, an input frame) the service cannot take."""
