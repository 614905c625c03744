"""The server's settings: every limit a named field with a safe default."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from framestream.models.toyworld.embedded import DEFAULT_PRESET

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """Every limit of the server, with safe defaults."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (see Server.port)
    # required in hello when set; mandatory off loopback; never in a repr (nor so in logs)
    token: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] | None = None  # None: same-origin, localhost, no Origin
    preset: str = DEFAULT_PRESET  # the model preset the server runs (session.start may name it)
    max_connections: int = 64
    # connections that have not said hello yet, at most: the rest is kept for those that have
    max_unauthenticated_connections: int = 32
    hello_timeout: float = 5.0  # seconds a connection has to say hello (1008 otherwise)
    max_sessions_per_connection: int = 4
    max_message_bytes: int = 1 << 20  # refused with message_too_large; websockets closes > 2x
    max_frame_pixels: int = 1920 * 1080
    max_messages_per_second: float = 200.0  # token bucket per connection, 1 s of burst
    max_messages_per_second_total: float = 2000.0  # the same, over all connections
    max_session_starts_per_second: float = 20.0  # session.start over all connections
    # session.start per connection, charged first: one connection cannot spend the server's
    max_session_starts_per_second_per_connection: float = 5.0
    open_timeout: float = 10.0  # WebSocket handshake
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0  # closing handshake, and draining sessions at shutdown
    write_limit: int = 1 << 15  # bytes buffered per connection before a send waits
    max_queue: int = 16  # received messages buffered per connection
    encode_workers: int = 2  # threads encoding frames, shared by all sessions
    max_pending_record_frames: int = 64  # per recording; more are dropped when the disk lags
    session_open_timeout: float = 60.0  # waiting for the engine to admit a session
    static_dir: Path | None = None  # the browser page, served at /
    record_dir: Path | None = None  # None: a temporary folder
    max_recordings: int = 256  # finished recordings kept (and served); the oldest are deleted
    toyworld_feed_max_seconds: int = 600  # longest /toyworld/feed.mp4
    toyworld_feed_max_waiting: int = 1  # feed renders waiting behind the running one (503)

    def __post_init__(self) -> None:
        if not _is_loopback(self.host) and not self.token:
            raise ValueError(
                f"host={self.host!r} is not a loopback address: configure a token "
                "(--token or STREAM_TOKEN) to serve beyond this machine"
            )
        for name in (
            "max_connections",
            "max_unauthenticated_connections",
            "hello_timeout",
            "max_session_starts_per_second_per_connection",
            "max_sessions_per_connection",
            "max_message_bytes",
            "max_frame_pixels",
            "max_messages_per_second",
            "max_messages_per_second_total",
            "max_session_starts_per_second",
            "open_timeout",
            "close_timeout",
            "write_limit",
            "max_queue",
            "encode_workers",
            "max_pending_record_frames",
            "max_recordings",
            "session_open_timeout",
            "toyworld_feed_max_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.toyworld_feed_max_waiting < 0:
            raise ValueError(
                f"toyworld_feed_max_waiting must be >= 0, got {self.toyworld_feed_max_waiting!r}"
            )
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.allowed_origins is not None:
            object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
