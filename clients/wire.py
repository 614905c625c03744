"""The wire format of the streaming video service, copied from docs/protocol.md.

It imports nothing from ``stream/``: the header layout and constants below are copied from
docs/protocol.md ("Binary frames"), as any third-party client would do. Every binary message
starts with a 32-byte little-endian header, then its payload::

    magic "SV" | version u8 | kind u8 | session u32 | index u64 | timestamp f64 |
    format u8 | 3 reserved | width u16 | height u16 | payload ...

Exceptions: :class:`ClientError` is the base of every error the client raises;
:class:`ServerError` is an ``error`` reply of the server (``code`` from the protocol's error
table); :class:`SessionEnded` is raised by a call that needs a session which has ended.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "HEADER",
    "MAGIC",
    "PROTOCOL_VERSION",
    "ClientError",
    "FrameFormat",
    "FrameHeader",
    "FrameKind",
    "ServerError",
    "SessionEnded",
    "decode_image",
    "encode_image",
    "input_frame_pixels",
]


# -- the wire format (docs/protocol.md, "Binary frames") ---------------------------------------

PROTOCOL_VERSION = 1
MAGIC = b"SV"
# magic, version, kind, session u32, index u64, timestamp f64, format u8, 3 reserved, width, height
HEADER = struct.Struct("<2sBBIQdB3xHH")
assert HEADER.size == 32


class FrameKind(enum.IntEnum):
    VIDEO = 1  # server -> client
    INPUT = 2  # client -> server (understanding pipelines)


class FrameFormat(enum.IntEnum):
    JPEG = 1
    PNG = 2
    RAW = 3  # RGB24, row-major, width * height * 3 bytes
    H264 = 4  # one H.264 Annex B access unit


class ClientError(Exception):
    """Base of every error the client (:mod:`clients`) raises."""


class ServerError(ClientError):
    """An ``error`` message from the server.

    Attributes:
        code: one of the protocol's error codes (``cache_full``, ``unknown_pipeline``, ...).
        message: the server's human-readable explanation.
        session: the session it concerns, if any.
        request_id: the ``request_id`` of the ``session.start`` it answers, if any.
    """

    def __init__(
        self,
        code: str,
        message: str,
        session: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.session, self.request_id = code, message, session, request_id

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ServerError:
        return cls(
            str(message.get("code", "internal")),
            str(message.get("message", "")),
            message.get("session"),
            message.get("request_id"),
        )


class SessionEnded(ClientError):
    """The session ended (or the connection closed) before the call could complete."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The 32-byte header in front of every binary message."""

    kind: FrameKind
    session: int  # u32, > 0
    index: int  # u64, frame index in the stream
    timestamp: float  # seconds since the stream's start
    format: FrameFormat
    width: int  # pixels
    height: int  # pixels

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            PROTOCOL_VERSION,
            self.kind,
            self.session,
            self.index,
            self.timestamp,
            self.format,
            self.width,
            self.height,
        )

    @classmethod
    def unpack(cls, data: bytes) -> FrameHeader:
        """Parse the header at the start of ``data``; raises :class:`ClientError` if bad."""
        if len(data) < HEADER.size:
            raise ClientError(f"binary message of {len(data)} bytes has no header")
        magic, version, kind, session, index, timestamp, fmt, width, height = HEADER.unpack_from(
            data
        )
        if magic != MAGIC or version != PROTOCOL_VERSION:
            raise ClientError(f"bad header magic {magic!r} or version {version}")
        try:
            return cls(FrameKind(kind), session, index, timestamp, FrameFormat(fmt), width, height)
        except ValueError as exc:
            raise ClientError(f"bad header field: {exc}") from None


def decode_image(fmt: FrameFormat, payload: bytes, width: int, height: int) -> np.ndarray:
    """Decode one JPEG, PNG or raw RGB24 payload to uint8 RGB ``[height, width, 3]``."""
    if fmt is FrameFormat.RAW:
        if len(payload) != width * height * 3:
            raise ClientError(f"raw frame of {len(payload)} bytes is not {width}x{height}x3")
        return np.frombuffer(payload, np.uint8).reshape(height, width, 3)
    if fmt not in (FrameFormat.JPEG, FrameFormat.PNG):
        raise ValueError(f"fmt must be JPEG, PNG or RAW, got {fmt!r}")
    bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ClientError(f"cannot decode a {fmt.name} frame of {len(payload)} bytes")
    if bgr.shape[:2] != (height, width):
        raise ClientError(
            f"{fmt.name} frame is {bgr.shape[1]}x{bgr.shape[0]}, header says {width}x{height}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_image(fmt: FrameFormat, pixels: np.ndarray, quality: int = 90) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as a JPEG (``quality`` 1..100), PNG or raw RGB24 payload."""
    if fmt is FrameFormat.RAW:
        return np.ascontiguousarray(pixels).tobytes()
    if fmt not in (FrameFormat.JPEG, FrameFormat.PNG):
        raise ValueError(f"fmt must be JPEG, PNG or RAW, got {fmt!r}")
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if fmt is FrameFormat.JPEG:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise ClientError(f"cannot encode a {pixels.shape} frame as {fmt.name}")
    return data.tobytes()


def input_frame_pixels(limits: dict[str, Any], fmt: str, cap: int | None = None) -> int:
    """The most pixels an input frame may have on a server with these ``welcome`` limits
    (``max_frame_pixels``; a raw frame must also fit one message), and ``cap`` if smaller."""
    pixels = int(limits.get("max_frame_pixels") or 1 << 62)
    if fmt == "raw":
        max_bytes = int(limits.get("max_message_bytes") or 1 << 62)
        pixels = min(pixels, (max_bytes - HEADER.size) // 3)
    return pixels if cap is None else min(cap, pixels)
