"""Clients that speak the wire protocol only, as a third party would (docs/protocol.md)."""

from clients.client import (
    ClientError,
    Frame,
    FrameFormat,
    FrameHeader,
    FrameKind,
    GenerationSession,
    ServerError,
    SessionEnded,
    StreamClient,
    generate_frames,
)

__all__ = [
    "ClientError",
    "Frame",
    "FrameFormat",
    "FrameHeader",
    "FrameKind",
    "GenerationSession",
    "ServerError",
    "SessionEnded",
    "StreamClient",
    "generate_frames",
]
