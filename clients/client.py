"""An asyncio client for the streaming video service, written from the wire protocol alone.

It imports nothing from ``stream/``: the header layout and constants below are copied from
docs/protocol.md, as any third-party client would do::

    async with StreamClient.connect("ws://127.0.0.1:8000/ws") as client:
        session = await client.generate("a red fox running through fresh snow")
        async for frame in session.frames():  # Frame(index, timestamp, pixels [H, W, 3], ...)
            if frame.index == 48:
                await session.switch_prompt("the fox jumps into a frozen lake")
            if frame.index >= 160:
                await session.stop()

Understanding pipelines run the other way: the client sends video, the server sends captions::

    async with StreamClient.connect("ws://127.0.0.1:8000/ws") as client:
        session = await client.understand(instruction="Commentate on this match.")
        await session.send_frame(pixels, timestamp=0.0)  # uint8 [H, W, 3] RGB; more follow
        await session.ask("what colour is the ball?")  # answered in the next second's caption
        async for caption in session.captions():  # Caption(start, end, text, lag), one a second
            print(caption.start, caption.text)

One reader task per connection receives every message and dispatches it by session id::

    websocket ── reader task ─┬─ welcome / unattributed error ──> StreamClient
                              ├─ session.started / error+request_id ──> start() futures
                              │      (kind "understanding" -> UnderstandingSession,
                              │       else GenerationSession)
                              ├─ generation session N ─┬─ binary video frame ─> frame queue
                              │                        └─ JSON event ─────────> events queue
                              └─ understanding session M ─┬─ caption ─> caption queue
                                                          └─ JSON event ─> events queue

    send_frame() ── encode (JPEG/PNG/raw) ── 32-byte INPUT header + payload ──> websocket

Every per-session queue is bounded and drops its *oldest* entry when full, so a consumer that
falls behind never blocks the reader (nor the other sessions of the connection); dropped frames
are counted in :attr:`GenerationSession.frames_dropped` (the server counts its own drops in
``metrics.frames_dropped``), dropped captions in :attr:`UnderstandingSession.captions_dropped`.
H.264 access units are decoded as they arrive, before the queue, so that a dropped frame never
breaks the decoder's reference chain; JPEG, PNG and raw frames are decoded by the consumer, so
that dropped ones cost nothing. ``events`` receives every JSON message of a session (captions
included), also bounded with the oldest dropped.

Exceptions: :class:`ClientError` is the base; :class:`ServerError` is an ``error`` reply of the
server (``code`` from the protocol's error table); :class:`SessionEnded` is raised by a call
that needs a session which has ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import json
import logging
import math
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import av
import cv2
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

__all__ = [
    "HEADER",
    "PROTOCOL_VERSION",
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
    "encode_image",
    "generate_frames",
]

logger = logging.getLogger(__name__)

_S = TypeVar("_S", bound="Session")

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
    """Base of every error this module raises."""


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


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame."""

    index: int  # frame index in the stream (gaps mean dropped frames)
    timestamp: float  # seconds since the stream's start
    pixels: np.ndarray  # uint8 [H, W, 3], RGB
    format: str  # how it travelled: "jpeg", "png", "raw" or "h264"
    session: int = 0


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


_INPUT_FORMATS = {"jpeg": FrameFormat.JPEG, "png": FrameFormat.PNG, "raw": FrameFormat.RAW}


# -- per-session state -------------------------------------------------------------------------


class _DropOldest:
    """A bounded FIFO for one consumer: ``put`` never blocks and evicts the oldest when full."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._items: collections.deque[Any] = collections.deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1  # the deque evicts the oldest itself
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def get(self) -> Any | None:
        """The oldest item, waiting for one; ``None`` once closed and drained."""
        while True:
            if self._items:
                return self._items.popleft()
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()


class Session:
    """What every session on a :class:`StreamClient` has, whichever way its video flows.

    Attributes:
        id: the server's session id.
        pipeline, fps: from ``session.started``.
        events: every JSON message of this session, as received (dicts); bounded, the oldest
            dropped.
        ended_reason: ``stopped``, ``error``, ``server_shutdown`` (or ``disconnected`` when the
            connection closed first); ``None`` while the session runs.
        ended_message: from ``session.ended``.
    """

    kind = ""  # the ``kind`` of ``session.started`` this class serves

    def __init__(self, client: StreamClient, started: dict[str, Any], max_queued_events: int):
        self._client = client
        self.id: int = started["session"]
        self.pipeline: str = started.get("pipeline", "")
        self.fps: float = float(started.get("fps", 0.0))
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queued_events)
        self.ended_reason: str | None = None
        self.ended_message: str | None = None
        self._ended = asyncio.Event()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def stop(self, *, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Send ``stop`` (if the session still runs) and, with ``wait``, await ``session.ended``.
        What is already queued can still be read afterwards."""
        if not self.ended:
            with contextlib.suppress(ConnectionClosed):
                await self._client._send("stop", session=self.id)
        if wait:
            await asyncio.wait_for(self._ended.wait(), timeout)

    async def wait_ended(self, timeout: float | None = None) -> str:
        """Wait for ``session.ended``; returns :attr:`ended_reason`."""
        await asyncio.wait_for(self._ended.wait(), timeout)
        assert self.ended_reason is not None
        return self.ended_reason

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.ended:
            with contextlib.suppress(ClientError, ConnectionClosed, asyncio.TimeoutError):
                await self.stop()

    def _check_running(self) -> None:
        if self.ended:
            raise SessionEnded(f"session {self.id} has ended ({self.ended_reason})")

    # -- called by the reader task -----------------------------------------------------------

    def _on_frame(self, header: FrameHeader, payload: bytes) -> None:
        logger.debug("session %d: ignoring video frame %d", self.id, header.index)

    def _on_event(self, message: dict[str, Any]) -> None:
        if message["type"] == "session.ended":
            self._end(message.get("reason", "stopped"), message.get("message"))
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(message)

    def _end(self, reason: str, message: str | None) -> None:
        """Mark the session ended (idempotent); subclasses close their queues too."""
        if self.ended:
            return
        self.ended_reason, self.ended_message = reason, message
        self._ended.set()


class GenerationSession(Session):
    """One generation stream on a :class:`StreamClient` (made by :meth:`StreamClient.generate`).

    Attributes (beyond :class:`Session`'s):
        width, height, format: from ``session.started``.
        events: ``prompt.applied``, ``metrics``, ``error`` and ``session.ended`` messages.
        metrics: the latest ``metrics`` message, or ``None``.
        recording: from ``session.ended`` (a URL path), or ``None``.
        frames_dropped: frames this client dropped because :meth:`frames` fell behind.
    """

    kind = "generation"

    def __init__(
        self,
        client: StreamClient,
        started: dict[str, Any],
        max_queued_frames: int,
        max_queued_events: int,
    ) -> None:
        super().__init__(client, started, max_queued_events)
        self.width: int = int(started.get("width", 0))
        self.height: int = int(started.get("height", 0))
        self.format: str = started.get("format", "jpeg")
        self.metrics: dict[str, Any] | None = None
        self.recording: str | None = None
        self._frames = _DropOldest(max_queued_frames)
        self._switches: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._h264: Any = None  # av.CodecContext, created at the first H.264 access unit
        self._h264_headers: collections.deque[FrameHeader] = collections.deque()

    def __repr__(self) -> str:
        state = self.ended_reason or "running"
        return f"<GenerationSession {self.id} {self.pipeline} {self.width}x{self.height} {state}>"

    @property
    def frames_dropped(self) -> int:
        return self._frames.dropped

    # -- control -----------------------------------------------------------------------------

    async def switch_prompt(
        self, prompt: str, transition_chunks: int = 0, *, wait: bool = True
    ) -> dict[str, Any] | None:
        """Send ``prompt.update``; with ``wait``, return its ``prompt.applied`` message (whose
        ``frame`` is the first frame made under the new prompt).

        Raises:
            ValueError: an empty prompt or ``transition_chunks`` outside 0..64.
            ServerError: the server refused the update.
            SessionEnded: the session ended first.
        """
        if not prompt.strip():
            raise ValueError(f"prompt must not be empty, got {prompt!r}")
        if not 0 <= transition_chunks <= 64:
            raise ValueError(f"transition_chunks must be 0..64, got {transition_chunks}")
        self._check_running()
        applied: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            applied = asyncio.get_running_loop().create_future()
            self._switches.append(applied)
        await self._client._send(
            "prompt.update", session=self.id, prompt=prompt, transition_chunks=transition_chunks
        )
        return await applied if applied is not None else None

    async def pause(self) -> None:
        """Stop generating; the stream's clock stands still until :meth:`resume`."""
        self._check_running()
        await self._client._send("pause", session=self.id)

    async def resume(self) -> None:
        self._check_running()
        await self._client._send("resume", session=self.id)

    async def frames(self) -> AsyncIterator[Frame]:
        """Decoded frames in order, until the session ends and the queue is drained."""
        while True:
            item = await self._frames.get()
            if item is None:
                return
            if isinstance(item, Frame):  # H.264, decoded on arrival
                yield item
                continue
            header, payload = item
            try:
                pixels = decode_image(header.format, payload, header.width, header.height)
            except ClientError as exc:
                logger.warning("session %d: frame %d: %s", self.id, header.index, exc)
                continue
            yield Frame(header.index, header.timestamp, pixels, header.format.name.lower(), self.id)

    # -- called by the reader task -----------------------------------------------------------

    def _on_frame(self, header: FrameHeader, payload: bytes) -> None:
        if header.format is not FrameFormat.H264:
            self._frames.put((header, payload))
            return
        if self._h264 is None:
            self._h264 = av.CodecContext.create("h264", "r")
        self._h264_headers.append(header)
        try:
            decoded = self._h264.decode(av.Packet(payload))
        except av.FFmpegError as exc:
            self._h264_headers.pop()
            logger.warning("session %d: H.264 frame %d: %s", self.id, header.index, exc)
            return
        for picture in decoded:  # the decoder may lag its input; headers pair up in order
            meta = self._h264_headers.popleft() if self._h264_headers else header
            pixels = picture.to_ndarray(format="rgb24")
            self._frames.put(Frame(meta.index, meta.timestamp, pixels, "h264", self.id))

    def _on_event(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "metrics":
            self.metrics = message
        elif kind == "prompt.applied":
            _resolve_oldest(self._switches, message)
        elif kind == "error":
            _resolve_oldest(self._switches, ServerError.from_message(message))
        elif kind == "session.ended":
            self.recording = message.get("recording")
        super()._on_event(message)

    def _end(self, reason: str, message: str | None) -> None:
        if self.ended:
            return
        super()._end(reason, message)
        self._frames.close()
        while self._switches:
            _resolve_oldest(self._switches, SessionEnded(f"session {self.id} ended: {reason}"))


@dataclass(frozen=True, slots=True)
class Caption:
    """One ``caption`` of an understanding session: what the model said about a stretch of the
    feed (``text`` is empty for a silent second)."""

    start: float  # seconds of the feed's timestamps, inclusive
    end: float  # seconds, exclusive
    text: str
    lag: float  # seconds the understanding trailed the newest frame when it was made


class UnderstandingSession(Session):
    """One understanding stream on a :class:`StreamClient` (made by
    :meth:`StreamClient.understand`): frames go in with :meth:`send_frame`, captions come out
    of :meth:`captions`.

    Attributes (beyond :class:`Session`'s):
        fps: frames per second of feed the server samples (send more and it keeps the newest
            of each slot).
        frames_sent: input frames sent so far (the next frame's index).
        captions_dropped: captions this client dropped because :meth:`captions` fell behind.
    """

    kind = "understanding"

    def __init__(
        self,
        client: StreamClient,
        started: dict[str, Any],
        max_queued_captions: int,
        max_queued_events: int,
    ) -> None:
        super().__init__(client, started, max_queued_events)
        self.frames_sent = 0
        self._captions = _DropOldest(max_queued_captions)
        self._last_timestamp = 0.0
        self._sending = asyncio.Lock()  # frames leave in index (and timestamp) order

    def __repr__(self) -> str:
        state = self.ended_reason or "running"
        return f"<UnderstandingSession {self.id} {self.pipeline} {state}>"

    @property
    def captions_dropped(self) -> int:
        return self._captions.dropped

    async def send_frame(
        self,
        pixels: np.ndarray,
        timestamp: float,
        *,
        format: str = "jpeg",
        quality: int = 90,
    ) -> None:
        """Send one input frame (JPEG/PNG encoding runs in a worker thread).

        Args:
            pixels: uint8 ``[H, W, 3]`` RGB; ``H * W`` at most the server's
                ``limits.max_frame_pixels`` (else the server answers ``frame_too_large``).
            timestamp: seconds since the feed's start, never below the previous frame's.
            format: ``jpeg``, ``png`` (lossless) or ``raw`` (RGB24, largest).
            quality: JPEG quality, 1..100.

        Raises:
            ValueError, TypeError: a bad argument (checked before sending).
            SessionEnded: the session has ended.
        """
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            raise TypeError(f"pixels must be a uint8 numpy array, got {type(pixels).__name__}")
        if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
            raise ValueError(f"pixels must be [H, W, 3], got shape {pixels.shape}")
        height, width = pixels.shape[:2]
        if height > 0xFFFF or width > 0xFFFF:
            raise ValueError(f"pixels of {width}x{height} do not fit the header's u16 sizes")
        if not math.isfinite(timestamp) or timestamp < 0:
            raise ValueError(f"timestamp must be a finite number >= 0, got {timestamp}")
        fmt = _INPUT_FORMATS.get(format)
        if fmt is None:
            raise ValueError(f"format must be jpeg, png or raw, got {format!r}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be 1..100, got {quality}")
        self._check_running()
        async with self._sending:
            if timestamp < self._last_timestamp:
                raise ValueError(
                    f"timestamp {timestamp} is before the previous frame's {self._last_timestamp}"
                )
            if fmt is FrameFormat.RAW:
                payload = np.ascontiguousarray(pixels).tobytes()
            else:
                payload = await asyncio.to_thread(encode_image, fmt, pixels, quality)
            header = FrameHeader(
                FrameKind.INPUT, self.id, self.frames_sent, timestamp, fmt, width, height
            )
            self._check_running()
            await self._client._send_binary(header.pack() + payload)
            self.frames_sent += 1
            self._last_timestamp = timestamp

    async def ask(self, question: str) -> None:
        """Send a ``question`` about the video; it is answered in the next second's caption.

        Raises:
            ValueError: a blank question or one over 2000 characters.
            SessionEnded: the session has ended.
        """
        if not question.strip() or len(question) > 2000:
            raise ValueError(f"question must be 1..2000 non-blank characters, got {question!r:.80}")
        self._check_running()
        await self._client._send("question", session=self.id, text=question)

    async def captions(self) -> AsyncIterator[Caption]:
        """Captions in order, until the session ends and the queue is drained.

        The queue holds ``max_queued_captions`` (see :meth:`StreamClient.open`); a consumer
        that falls further behind loses the oldest (counted in :attr:`captions_dropped`).
        """
        while True:
            caption = await self._captions.get()
            if caption is None:
                return
            yield caption

    # -- called by the reader task -----------------------------------------------------------

    def _on_event(self, message: dict[str, Any]) -> None:
        if message["type"] == "caption":
            try:
                caption = Caption(
                    float(message["start"]),
                    float(message["end"]),
                    str(message.get("text", "")),
                    float(message.get("lag", 0.0)),
                )
            except (KeyError, TypeError, ValueError):
                logger.warning("session %d: malformed caption %.200s", self.id, message)
            else:
                self._captions.put(caption)
        super()._on_event(message)

    def _end(self, reason: str, message: str | None) -> None:
        if self.ended:
            return
        super()._end(reason, message)
        self._captions.close()


def _resolve_oldest(
    waiters: collections.deque[asyncio.Future[dict[str, Any]]], result: dict | BaseException
) -> None:
    while waiters:
        waiter = waiters.popleft()
        if waiter.done():  # its caller was cancelled
            continue
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)
        return


# -- the connection ----------------------------------------------------------------------------


class StreamClient:
    """One WebSocket connection to the service; many sessions may share it.

    Make one with ``async with StreamClient.connect(url) as client`` (or ``await
    StreamClient.open(url)`` and ``await client.close()``).

    Attributes:
        welcome: the server's ``welcome`` message (``server``, ``pipelines``, ``limits``).
        sessions: live and ended sessions of this connection, by id.
        errors: ``error`` messages that concern no session and no request (bounded).
    """

    def __init__(
        self,
        websocket: ClientConnection,
        welcome: dict[str, Any],
        *,
        max_queued_frames: int = 64,
        max_queued_events: int = 256,
        max_queued_captions: int = 64,
    ) -> None:
        self.welcome = welcome
        self.sessions: dict[int, Session] = {}
        self.errors: asyncio.Queue[ServerError] = asyncio.Queue(maxsize=max_queued_events)
        self._ws = websocket
        self._max_queued_frames = max_queued_frames
        self._max_queued_events = max_queued_events
        self._max_queued_captions = max_queued_captions
        self._requests: dict[str, asyncio.Future[Session]] = {}
        self._request_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = asyncio.create_task(self._read(), name="stream-client-reader")

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        token: str | None = None,
        max_size: int | None = 2**26,
        open_timeout: float = 10.0,
        max_queued_frames: int = 64,
        max_queued_events: int = 256,
        max_queued_captions: int = 64,
    ) -> StreamClient:
        """Connect, send ``hello`` and wait for ``welcome``.

        Args:
            url: ``ws://host:port/ws``.
            token: the server's token, when it requires one.
            max_size: largest message accepted from the server, in bytes (a raw 1280x720 frame
                is 2.7 MB); ``None`` for no limit.
            open_timeout: seconds for the handshake and the ``welcome``.
            max_queued_frames: per session, frames kept for a slow :meth:`~GenerationSession.
                frames` consumer before the oldest is dropped.
            max_queued_events: per session, events kept before the oldest is dropped.
            max_queued_captions: per understanding session, captions kept for a slow
                :meth:`~UnderstandingSession.captions` consumer before the oldest is dropped.

        Raises:
            ServerError: the server refused the hello (``unauthorized``,
                ``unsupported_version``).
            ClientError: the server answered with something other than ``welcome``.
        """
        # video payloads do not compress: no permessage-deflate; connect directly, no proxy
        websocket = await ws_connect(
            url, max_size=max_size, open_timeout=open_timeout, compression=None, proxy=None
        )
        try:
            hello: dict[str, Any] = {"type": "hello", "version": PROTOCOL_VERSION}
            if token is not None:
                hello["token"] = token
            await websocket.send(json.dumps(hello))
            reply = await asyncio.wait_for(websocket.recv(), open_timeout)
            message = _parse_json(reply)
            if message.get("type") == "error":
                raise ServerError.from_message(message)
            if message.get("type") != "welcome":
                raise ClientError(f"expected welcome, got {str(reply)[:200]!r}")
            if message.get("version") != PROTOCOL_VERSION:
                raise ClientError(f"server speaks protocol version {message.get('version')}")
        except BaseException:
            await websocket.close()
            raise
        return cls(
            websocket,
            message,
            max_queued_frames=max_queued_frames,
            max_queued_events=max_queued_events,
            max_queued_captions=max_queued_captions,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[StreamClient]:
        """``async with StreamClient.connect(url, token=...) as client:``; arguments as
        :meth:`open`. Closing the connection ends its sessions on the server."""
        client = await cls.open(url, **kwargs)
        try:
            yield client
        finally:
            await client.close()

    @property
    def pipelines(self) -> list[Any]:
        return list(self.welcome.get("pipelines", []))

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self.welcome.get("limits", {}))

    async def generate(
        self,
        prompt: str,
        *,
        pipeline: str = "longlive",
        preset: str | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        format: str = "jpeg",
        quality: int = 85,
        realtime: bool = True,
        record: bool = False,
        timeout: float | None = 120.0,
    ) -> GenerationSession:
        """Start a generation session and wait for ``session.started``.

        Args:
            prompt: the text to generate from (non-empty, at most 2000 characters).
            pipeline, preset: one of ``client.pipelines``; the preset's defaults when ``None``.
            seed: noise seed.
            height, width: pixels, multiples of 16; the pipeline's default when ``None``.
            format: ``jpeg``, ``png``, ``raw`` or ``h264``.
            quality: JPEG / H.264 quality, 1..100.
            realtime: pace frames at the pipeline's fps (``False``: as fast as generated).
            record: keep an MP4, served afterwards at ``session.recording``.
            timeout: seconds to wait for ``session.started``.

        Raises:
            ValueError: an argument is out of range (checked before sending).
            ServerError: the server refused (``cache_full``, ``too_many_sessions``,
                ``unknown_pipeline``, ``invalid_message``, ...).
        """
        if not prompt.strip() or len(prompt) > 2000:
            raise ValueError(f"prompt must be 1..2000 non-blank characters, got {prompt!r:.80}")
        if format not in ("jpeg", "png", "raw", "h264"):
            raise ValueError(f"format must be jpeg, png, raw or h264, got {format!r}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be 1..100, got {quality}")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (value <= 0 or value % 16):
                raise ValueError(f"{name} must be a positive multiple of 16, got {value}")
        params: dict[str, Any] = {
            "prompt": prompt,
            "seed": seed,
            "format": format,
            "quality": quality,
            "realtime": realtime,
            "record": record,
        }
        if height is not None:
            params["height"] = height
        if width is not None:
            params["width"] = width
        session = await self.start(pipeline, params, preset=preset, timeout=timeout)
        return await self._expect(session, GenerationSession)

    async def understand(
        self,
        *,
        pipeline: str = "streaming_vlm",
        instruction: str | None = None,
        previous_text: str | None = None,
        preset: str | None = None,
        timeout: float | None = 120.0,
    ) -> UnderstandingSession:
        """Start an understanding session (video in, captions out) and wait for
        ``session.started``.

        Args:
            pipeline: an understanding pipeline of ``client.pipelines``.
            instruction: what to do with the video (at most 2000 characters); the server's
                default ("Commentate on this video.") when ``None``.
            previous_text: text said before this feed starts (at most 20000 characters),
                e.g. the commentary of a previous part of the same video.
            preset: as :meth:`generate`.
            timeout: seconds to wait for ``session.started``.

        Raises:
            ValueError: an argument is too long (checked before sending).
            ServerError: the server refused (``cache_full``, ``unknown_pipeline``, ...).
            ClientError: ``pipeline`` is not an understanding pipeline.
        """
        params: dict[str, Any] = {}
        for name, value, limit in (
            ("instruction", instruction, 2000),
            ("previous_text", previous_text, 20000),
        ):
            if value is not None:
                if len(value) > limit:
                    raise ValueError(f"{name} must be at most {limit} characters, got {len(value)}")
                params[name] = value
        session = await self.start(pipeline, params, preset=preset, timeout=timeout)
        return await self._expect(session, UnderstandingSession)

    async def start(
        self,
        pipeline: str,
        params: dict[str, Any],
        *,
        preset: str | None = None,
        timeout: float | None = 120.0,
    ) -> Session:
        """Send a raw ``session.start`` and wait for ``session.started`` (see :meth:`generate`
        and :meth:`understand`); the session's class follows the reply's ``kind``."""
        request_id = f"r{next(self._request_ids)}"
        started: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = started
        message: dict[str, Any] = {"pipeline": pipeline, "params": params}
        if preset is not None:
            message["preset"] = preset
        try:
            await self._send("session.start", request_id=request_id, **message)
            return await asyncio.wait_for(started, timeout)
        finally:
            self._requests.pop(request_id, None)

    async def close(self) -> None:
        """Close the connection (idempotent); running sessions end as ``disconnected``."""
        await self._ws.close()
        await asyncio.wait([self._reader])

    async def wait_closed(self) -> None:
        """Wait until the server closes the connection."""
        await asyncio.wait([self._reader])

    async def _send(self, kind: str, **fields: Any) -> None:
        await self._ws.send(json.dumps({"type": kind, **fields}, separators=(",", ":")))

    async def _send_binary(self, data: bytes) -> None:
        await self._ws.send(data)

    async def _expect(self, session: Session, cls: type[_S]) -> _S:
        """``session`` if it is a ``cls``; else stop it and raise :class:`ClientError`."""
        if isinstance(session, cls):
            return session
        with contextlib.suppress(ClientError, ConnectionClosed, asyncio.TimeoutError):
            await session.stop()
        raise ClientError(
            f"pipeline {session.pipeline!r} started a {type(session).__name__}, "
            f"not a {cls.__name__}"
        )

    # -- the reader task ---------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for data in self._ws:
                try:
                    if isinstance(data, bytes):
                        self._dispatch_frame(data)
                    else:
                        self._dispatch_json(_parse_json(data))
                except ClientError as exc:  # one bad message must not stop the others
                    logger.warning("ignoring a message from the server: %s", exc)
        except ConnectionClosed:
            pass
        finally:
            code = self._ws.close_code
            closed = SessionEnded(f"the connection closed (code {code})")
            for request in self._requests.values():
                if not request.done():
                    request.set_exception(closed)
            for session in self.sessions.values():
                session._end("disconnected", f"the connection closed (code {code})")

    def _dispatch_frame(self, data: bytes) -> None:
        header = FrameHeader.unpack(data)
        if header.kind is not FrameKind.VIDEO:
            raise ClientError(f"the server sent a frame of kind {header.kind.name}")
        session = self.sessions.get(header.session)
        if session is None:
            logger.debug("frame %d of unknown session %d", header.index, header.session)
            return
        session._on_frame(header, data[HEADER.size :])

    def _dispatch_json(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "session.started":
            self._on_started(message)
            return
        request_id = message.get("request_id")
        if kind == "error" and request_id in self._requests:
            _fail(self._requests.pop(request_id), ServerError.from_message(message))
            return
        session = self.sessions.get(message.get("session"))  # type: ignore[arg-type]
        if session is not None:
            session._on_event(message)
        elif kind == "error":
            self._on_unattributed_error(ServerError.from_message(message))
        else:
            logger.debug("ignoring %s message: %.200s", kind, message)

    def _on_started(self, message: dict[str, Any]) -> None:
        if not isinstance(message.get("session"), int):
            raise ClientError(f"session.started without a session id: {message}")
        session: Session
        if message.get("kind") == UnderstandingSession.kind:
            session = UnderstandingSession(
                self, message, self._max_queued_captions, self._max_queued_events
            )
        else:  # generation servers predate ``kind``
            session = GenerationSession(
                self, message, self._max_queued_frames, self._max_queued_events
            )
        self.sessions[session.id] = session  # before any of its frames is read
        request = self._requests.pop(message.get("request_id"), None)  # type: ignore[arg-type]
        if request is not None and not request.done():
            request.set_result(session)
            return
        # nobody waits for it any more (generate() timed out or was cancelled): free it
        logger.info("stopping session %d that nobody waits for", session.id)
        self._stop_soon(session.id)

    def _on_unattributed_error(self, error: ServerError) -> None:
        """An error with neither ``session`` nor ``request_id``: the server could not parse the
        message it answers. Replies come in order, so it fails the oldest waiting start."""
        logger.warning("server error: %s", error)
        if self._requests:
            _fail(self._requests.pop(next(iter(self._requests))), error)
        if self.errors.full():
            self.errors.get_nowait()
        self.errors.put_nowait(error)

    def _stop_soon(self, session: int) -> None:
        async def stop() -> None:
            with contextlib.suppress(ConnectionClosed):
                await self._send("stop", session=session)

        task = asyncio.get_running_loop().create_task(stop())
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _parse_json(text: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ClientError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ClientError(f"not a message object: {str(text)[:200]!r}")
    return message


# -- a synchronous convenience -----------------------------------------------------------------


def generate_frames(
    url: str,
    prompt: str,
    seconds: float,
    *,
    token: str | None = None,
    **generate_args: Any,
) -> list[Frame]:
    """Generate ``seconds`` of video and return its frames (blocking; runs its own event loop).

    ``generate_args`` go to :meth:`StreamClient.generate` (``pipeline``, ``seed``, ``format``,
    ``realtime``, ...). Frames dropped on the way are missing from the list (see the indices).
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")

    async def run() -> list[Frame]:
        async with StreamClient.connect(url, token=token) as client:
            session = await client.generate(prompt, **generate_args)
            last = max(1, round(seconds * session.fps)) - 1  # index of the last frame wanted
            frames: list[Frame] = []
            async for frame in session.frames():
                if frame.index <= last:
                    frames.append(frame)
                if frame.index >= last:
                    break
            await session.stop()
            return frames

    return asyncio.run(run())
