"""Clients that speak the wire protocol only, as a third party would (docs/protocol.md)."""

from clients.client import (
    Caption,
    ClientError,
    Frame,
    FrameFormat,
    FrameHeader,
    FrameKind,
    GenerationSession,
    ServerError,
    Session,
    SessionEnded,
    StreamClient,
    UnderstandingSession,
    generate_frames,
)

__all__ = [
    "Caption",
    "ClientError",
    "Frame",
    "FrameFormat",
    "FrameHeader",
    "FrameKind",
    "GenerationSession",
    "ServerError",
    "Session",
    "SessionEnded",
    "StreamClient",
    "UnderstandingSession",
    "generate_frames",
]
