"""Per-session state of a :class:`~clients.client.StreamClient`: what each session receives,
queues and sends.

Every per-session queue is bounded and drops its *oldest* entry when full, so a consumer that
falls behind never blocks the connection's reader task (nor the other sessions of the
connection); dropped frames are counted in :attr:`GenerationSession.frames_dropped` (the server
counts its own drops in ``metrics.frames_dropped``), dropped captions in
:attr:`UnderstandingSession.captions_dropped`. H.264 access units are decoded as they arrive,
before the queue, so that a dropped frame never breaks the decoder's reference chain; JPEG, PNG
and raw frames are decoded by the consumer, so that dropped ones cost nothing. ``events``
receives every JSON message of a session (captions included), also bounded with the oldest
dropped::

    reader task ─┬─ generation session N ─┬─ binary video frame ─> frame queue ─> frames()
                 │                        └─ JSON event ─────────> events queue
                 └─ understanding session M ─┬─ caption ─> caption queue ─> captions()
                                             └─ JSON event ─> events queue

    send_frame() ── encode (JPEG/PNG/raw) ── 32-byte INPUT header + payload ──> websocket
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import av
import numpy as np
from websockets.exceptions import ConnectionClosed

from framestream.clients.wire import (
    ClientError,
    FrameFormat,
    FrameHeader,
    FrameKind,
    ServerError,
    SessionEnded,
    decode_image,
    encode_image,
)


class ClientLink(Protocol):
    """What a session needs of the client that made it (:class:`~clients.client.StreamClient`):
    a way to send its messages on the connection."""

    async def _send(self, kind: str, **fields: Any) -> None: ...

    async def _send_binary(self, data: bytes) -> None: ...


__all__ = [
    "Caption",
    "ClientLink",
    "Frame",
    "GenerationSession",
    "Session",
    "UnderstandingSession",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame."""

    index: int  # frame index in the stream (gaps mean dropped frames)
    timestamp: float  # seconds since the stream's start
    pixels: np.ndarray  # uint8 [H, W, 3], RGB
    format: str  # how it travelled: "jpeg", "png", "raw" or "h264"
    session: int = 0


@dataclass(frozen=True, slots=True)
class Caption:
    """One ``caption`` of an understanding session: what the model said about a stretch of the
    feed (``text`` is empty for a silent second)."""

    start: float  # seconds of the feed's timestamps, inclusive
    end: float  # seconds, exclusive
    text: str
    lag: float  # seconds the understanding trailed the newest frame when it was made
    # a generation session's commentary: the first frame index of the stretch, and the first
    # after it; None for an understanding session's own feed
    frame: int | None = None
    end_frame: int | None = None


def _caption(message: dict[str, Any]) -> Caption:
    """A ``caption`` message as a :class:`Caption`; raises KeyError, TypeError or ValueError."""
    frame, end_frame = message.get("frame"), message.get("end_frame")
    return Caption(
        float(message["start"]),
        float(message["end"]),
        str(message.get("text", "")),
        float(message.get("lag", 0.0)),
        None if frame is None else int(frame),
        None if end_frame is None else int(end_frame),
    )


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

    def __init__(self, client: ClientLink, started: dict[str, Any], max_queued_events: int):
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
        events: ``prompt.applied``, ``metrics``, ``caption``, ``error`` and ``session.ended``
            messages.
        metrics: the latest ``metrics`` message, or ``None``.
        recording: from ``session.ended`` (a URL path), or ``None``.
        frames_dropped: frames this client dropped because :meth:`frames` fell behind.
        commentary: whether the server watches this session's frames (``session.started``'s
            ``commentary``); its captions come out of :meth:`captions`.
        commentary_ended: the ``commentary.ended`` message, when the commentary stopped before
            the session (a failed step), else ``None``.
        captions_dropped: captions this client dropped because :meth:`captions` fell behind.
    """

    kind = "generation"

    def __init__(
        self,
        client: ClientLink,
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
        self.commentary: bool = bool(started.get("commentary"))
        self.commentary_ended: dict[str, Any] | None = None
        self._frames = _DropOldest(max_queued_frames)
        self._captions = _DropOldest(max_queued_events)
        self._switches: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._h264: Any = None  # av.CodecContext, created at the first H.264 access unit
        self._h264_headers: collections.deque[FrameHeader] = collections.deque()

    def __repr__(self) -> str:
        state = self.ended_reason or "running"
        return f"<GenerationSession {self.id} {self.pipeline} {self.width}x{self.height} {state}>"

    @property
    def frames_dropped(self) -> int:
        return self._frames.dropped

    @property
    def captions_dropped(self) -> int:
        return self._captions.dropped

    # -- control -----------------------------------------------------------------------------

    async def switch_prompt(
        self,
        prompt: str,
        transition_chunks: int = 0,
        *,
        at_frame: int | None = None,
        wait: bool = True,
    ) -> dict[str, Any] | None:
        """Send ``prompt.update``; with ``wait``, return its ``prompt.applied`` message (whose
        ``frame`` is the first frame made under the new prompt).

        Without ``at_frame`` the prompt switches at the next chunk the server starts, which is
        later than the frames received by however far generation runs ahead. With it, the
        server holds the switch until the first chunk that starts at or after that frame
        index (chunks start at fixed frames: ``prompt.applied.frame`` says which), and makes no
        chunk from there on under the old prompt; sent after that frame was made, the switch
        lands at the next chunk. Switches apply in the order they are sent, so several can be
        sent ahead: start their calls as tasks in that order (each returns when its switch is
        applied).

        Raises:
            ValueError: an empty prompt, ``transition_chunks`` outside 0..64 or a negative
                ``at_frame``.
            ServerError: the server refused the update.
            SessionEnded: the session ended first.
        """
        if not prompt.strip():
            raise ValueError(f"prompt must not be empty, got {prompt!r}")
        if not 0 <= transition_chunks <= 64:
            raise ValueError(f"transition_chunks must be 0..64, got {transition_chunks}")
        if at_frame is not None:
            at_frame = _frame_index(at_frame)
        self._check_running()
        applied: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            applied = asyncio.get_running_loop().create_future()
            self._switches.append(applied)
        fields: dict[str, Any] = {"transition_chunks": transition_chunks}
        if at_frame is not None:
            fields["at_frame"] = at_frame
        await self._client._send("prompt.update", session=self.id, prompt=prompt, **fields)
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

    async def captions(self) -> AsyncIterator[Caption]:
        """The commentary's captions in video order (each with its ``frame`` and ``end_frame``),
        until the session ends and the queue is drained; nothing without ``commentary``.
        Generation runs ahead of playback, so a caption usually comes before its frames."""
        while True:
            caption = await self._captions.get()
            if caption is None:
                return
            yield caption

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
        elif kind == "commentary.ended":
            self.commentary_ended = message
        elif kind == "caption":
            try:
                self._captions.put(_caption(message))
            except (KeyError, TypeError, ValueError):
                logger.warning("session %d: malformed caption %.200s", self.id, message)
        super()._on_event(message)

    def _end(self, reason: str, message: str | None) -> None:
        if self.ended:
            return
        super()._end(reason, message)
        self._frames.close()
        self._captions.close()
        while self._switches:
            _resolve_oldest(self._switches, SessionEnded(f"session {self.id} ended: {reason}"))


class _InputFeed:
    """Input frames of one session (understanding or restyle) onto the wire: checked, encoded
    (JPEG/PNG in a worker thread) and sent in index and timestamp order."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.frames_sent = 0  # the next frame's index
        self.last_timestamp = 0.0
        self._sending = asyncio.Lock()  # frames leave in index (and timestamp) order

    async def send(self, pixels: np.ndarray, timestamp: float, format: str, quality: int) -> None:
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
        session = self._session
        session._check_running()
        async with self._sending:
            if timestamp < self.last_timestamp:
                raise ValueError(
                    f"timestamp {timestamp} is before the previous frame's {self.last_timestamp}"
                )
            if fmt is FrameFormat.RAW:
                payload = np.ascontiguousarray(pixels).tobytes()
            else:
                payload = await asyncio.to_thread(encode_image, fmt, pixels, quality)
            header = FrameHeader(
                FrameKind.INPUT, session.id, self.frames_sent, timestamp, fmt, width, height
            )
            session._check_running()
            await session._client._send_binary(header.pack() + payload)
            self.frames_sent += 1
            self.last_timestamp = timestamp


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
        client: ClientLink,
        started: dict[str, Any],
        max_queued_captions: int,
        max_queued_events: int,
    ) -> None:
        super().__init__(client, started, max_queued_events)
        self._captions = _DropOldest(max_queued_captions)
        self._input = _InputFeed(self)

    def __repr__(self) -> str:
        state = self.ended_reason or "running"
        return f"<UnderstandingSession {self.id} {self.pipeline} {state}>"

    @property
    def captions_dropped(self) -> int:
        return self._captions.dropped

    @property
    def frames_sent(self) -> int:
        return self._input.frames_sent

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
        await self._input.send(pixels, timestamp, format, quality)

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
                caption = _caption(message)
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


def _frame_index(value: Any) -> int:
    """``value`` as a frame index of the wire (an integer in 0..2**64-1; no bool, no float)."""
    try:
        index = operator.index(value) if not isinstance(value, bool) else -1
    except TypeError:
        index = -1
    if not 0 <= index < 2**64:
        raise ValueError(f"at_frame must be a frame index >= 0, got {value!r}")
    return index


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
