"""An asyncio client for the streaming video service, written from the wire protocol alone.

It imports nothing from ``stream/``: the wire format (header layout, constants, image codecs,
the exception tree) is copied from docs/protocol.md into :mod:`clients.wire`, as any
third-party client would do; per-session state and queues live in :mod:`clients.sessions`.
Every name of both stays importable from here::

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

Every per-session queue is bounded and drops its *oldest* entry when full, so a consumer that
falls behind never blocks the reader (see :mod:`clients.sessions`).

Exceptions (defined in :mod:`clients.wire`): :class:`ClientError` is the base;
:class:`ServerError` is an ``error`` reply of the server (``code`` from the protocol's error
table); :class:`SessionEnded` is raised by a call that needs a session which has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from framestream.clients.params import check_sampling, generation_params
from framestream.clients.restyle_session import (
    DEFAULT_STRENGTH,
    RestyleSession,
    Source,
    check_strength,
)
from framestream.clients.sessions import (
    Caption,
    Frame,
    GenerationSession,
    Session,
    UnderstandingSession,
)
from framestream.clients.wire import (
    HEADER,
    PROTOCOL_VERSION,
    ClientError,
    FrameFormat,
    FrameHeader,
    FrameKind,
    ServerError,
    SessionEnded,
    encode_image,
)
from framestream.clients.wire import MAGIC as MAGIC
from framestream.clients.wire import decode_image as decode_image

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
    "RestyleSession",
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
        commentary: bool | dict[str, Any] = False,
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
            commentary: have the server's understanding pipeline watch the generated frames
                and stream captions of them (:meth:`GenerationSession.captions`); ``True`` for
                its defaults, or a dict of understanding params (``instruction``, ...).
            timeout: seconds to wait for ``session.started``.

        Raises:
            ValueError: an argument is out of range (checked before sending).
            ServerError: the server refused (``cache_full``, ``too_many_sessions``,
                ``unknown_pipeline``, ``invalid_message``, ...).
        """
        params = generation_params(prompt, seed, height, width, format, quality, realtime, record)
        if not isinstance(commentary, bool | dict):
            raise ValueError(f"commentary must be a bool or a dict, got {commentary!r:.80}")
        if commentary:
            params["commentary"] = commentary
        session = await self.start(pipeline, params, preset=preset, timeout=timeout)
        return await self._expect(session, GenerationSession)

    async def restyle(
        self,
        source_frames: Source | None,
        prompt: str,
        *,
        strength: float = DEFAULT_STRENGTH,
        pipeline: str = "longlive",
        preset: str | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        format: str = "jpeg",
        quality: int = 85,
        realtime: bool = True,
        record: bool = False,
        max_lead: float | None = 1.0,
        timeout: float | None = 120.0,
    ) -> RestyleSession:
        """Start a restyle session (a generation session whose input is a video feed) and wait
        for ``session.started``.

        Args:
            source_frames: ``(timestamp, pixels)`` frames (an iterable or async iterable) that a
                task of the session sends (:meth:`RestyleSession.feed` with ``max_lead``; its
                task is ``session.feeding``, whose result is the number of output frames the
                source covers); ``None`` to send them yourself with
                :meth:`RestyleSession.send`.
            prompt: the style, as for :meth:`generate`.
            strength: how much of the input is redrawn, in (0, 1]; 1 ignores the input.
            max_lead: see :meth:`RestyleSession.feed` (``None`` for a live source).
            realtime: the session claims its share of the device's realtime budget
                (``compute_full`` when it does not fit) and a slow reader loses the oldest
                frames; ``False``: it runs in the time realtime sessions leave, waiting for its
                reader. Either way frames are sent as soon as they are made: the input paces
                them.
            pipeline, preset, seed, height, width, format, quality, record, timeout: as
                :meth:`generate`; ``height`` x ``width`` is the output's size, the input is
                cropped to its aspect and resized.

        Raises:
            ValueError: an argument is out of range (checked before sending).
            ServerError: the server refused (``cache_full``, ``compute_full``, ...).
            ClientError: ``pipeline`` does not restyle.
        """
        strength = check_strength(strength)
        params = generation_params(prompt, seed, height, width, format, quality, realtime, record)
        params["restyle"] = {"strength": strength}
        session = await self.start(pipeline, params, preset=preset, timeout=timeout)
        restyle = await self._expect(session, RestyleSession)
        if source_frames is not None:
            restyle.start_feeding(source_frames, max_lead=max_lead, timeout=timeout)
        return restyle

    async def understand(
        self,
        *,
        pipeline: str = "streaming_vlm",
        instruction: str | None = None,
        previous_text: str | None = None,
        temperature: float | None = None,
        repetition_penalty: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
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
            temperature: 0 for greedy replies, else the sampling temperature (at most 10).
            repetition_penalty: divides the scores of tokens the session's cache holds
                (> 0, at most 10; 1 is none).
            top_k: sample among the best ``top_k`` tokens (1..1000).
            seed: the session's sampling seed (0..2**63-1): the same seed and feed give the
                same captions.
                Left None, each takes the server's default for its model: the published
                StreamingVLM sampler (0.9, 1.05, 50, seed 0) for a checkpoint, greedy for the
                embedded toy model.
            preset: as :meth:`generate`.
            timeout: seconds to wait for ``session.started``.

        Raises:
            ValueError: an argument is too long or out of range (checked before sending).
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
        sampler = {
            "temperature": temperature,
            "repetition_penalty": repetition_penalty,
            "top_k": top_k,
            "seed": seed,
        }
        params.update(check_sampling({k: v for k, v in sampler.items() if v is not None}))
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
        elif message.get("restyle"):
            session = RestyleSession(
                self, message, self._max_queued_frames, self._max_queued_events
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
