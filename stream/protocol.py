"""The wire protocol, sans I/O: parsing, validation and the connection state machine.

Messages are JSON text frames ``{"type": ..., ...}`` for control and binary frames for media;
a binary frame starts with a fixed 32-byte little-endian header::

    offset  size  field
    0       2     magic b"SV"
    2       1     protocol version (1)
    3       1     kind: 1 video frame (server -> client), 2 input frame (client -> server)
    4       4     session id (u32)
    8       8     frame index (u64)
    16      8     timestamp, seconds (f64)
    24      1     format: 1 JPEG, 2 PNG, 3 raw RGB24, 4 H.264 access unit
    25      3     reserved (zero)
    28      2     width (u16)
    30      2     height (u16)
    32      ...   payload

A connection must open with ``hello``; everything else is refused with ``not_ready`` until then.
Every client message is validated here; a bad one raises :class:`ProtocolError` carrying the
error code the server sends back, and the connection goes on. See docs/protocol.md.

Exceptions: :class:`ProtocolError` (one per refused message; ``code`` in :data:`ERROR_CODES`).
"""

from __future__ import annotations

import enum
import hmac
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from framestream.stream.errors import StreamError
from framestream.stream.requests import GenerationRequest, RestyleRequest, UnderstandingRequest

__all__ = [
    "ERROR_CODES",
    "HEADER",
    "PROTOCOL_VERSION",
    "SAMPLING_LIMITS",
    "ClientMessage",
    "CommentaryRequest",
    "Connection",
    "ConnectionState",
    "FrameFormat",
    "FrameHeader",
    "FrameKind",
    "Hello",
    "InputFrame",
    "OutputOptions",
    "Pause",
    "PipelineInfo",
    "PromptUpdate",
    "ProtocolError",
    "Question",
    "RestyleUpdate",
    "Resume",
    "SessionStart",
    "Stop",
    "encode",
    "valid_unicode",
]

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<2sBBIQdB3xHH")
MAGIC = b"SV"
_RESERVED = slice(25, 28)  # header bytes that must be zero
MAX_TIMESTAMP = float(2**32)  # seconds (136 years): input frame timestamps stay below
MAX_PROMPT = 2000  # characters of a prompt, an instruction or a question
MAX_PREVIOUS_TEXT = 20000  # characters of an understanding session's previous_text
MAX_REQUEST_ID = 128  # characters
MAX_GENERATION_SEED = 2**64 - 1
MAX_FRAME_INDEX = 2**64 - 1  # the binary header's u64 frame index

ERROR_CODES = {
    "bad_json": "a text message that is not a JSON object",
    "unknown_type": "a message type the server does not know",
    "invalid_message": "a field is missing, of the wrong type or out of range",
    "message_too_large": "a message over the server's max_message_bytes",
    "unsupported_version": "hello asked for a protocol version the server does not speak",
    "unauthorized": "the token is missing or wrong",
    "not_ready": "a message sent before hello, or hello sent twice",
    "unknown_session": "no session of this connection has that id",
    "unknown_pipeline": "session.start named a pipeline or preset the server does not run",
    "too_many_sessions": "the server or this connection is at its session limit",
    "cache_full": "the KV cache cannot admit the session's worst case now",
    "compute_full": "the device cannot run the session in real time beside the ones it runs",
    "rate_limited": "the connection sends messages faster than allowed",
    "bad_frame": "a media frame that cannot be decoded, or with a bad header",
    "frame_too_large": "a media frame over the server's max_frame_pixels",
    "wrong_direction": "a message the session does not take (e.g. a prompt to a VLM, an input "
    "frame to a session that is not a restyle one)",
    "timestamps_backwards": "an input frame older than the previous one",
    "recording_failed": "the session's recording cannot be written; the session goes on",
    "internal": "the session's step failed; the session has ended",
    "engine_lost": "the engine running the session stopped (the session has ended), or none is "
    "up to start one; start a new session",
    "server_shutdown": "the server is stopping",
}


class ProtocolError(StreamError):
    """A refused message; ``code`` is sent back to the client with ``message``."""

    def __init__(
        self, code: str, message: str, session: int | None = None, request_id: str | None = None
    ) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.session, self.request_id = code, message, session, request_id


class FrameKind(enum.IntEnum):
    VIDEO = 1  # server -> client
    INPUT = 2  # client -> server


class FrameFormat(enum.IntEnum):
    JPEG = 1
    PNG = 2
    RAW = 3  # RGB24, row-major, width * height * 3 bytes
    H264 = 4

    @classmethod
    def from_name(cls, name: str) -> FrameFormat:
        try:
            return {"jpeg": cls.JPEG, "png": cls.PNG, "raw": cls.RAW, "h264": cls.H264}[name]
        except KeyError:
            raise ProtocolError(
                "invalid_message", f"format must be jpeg, png, raw or h264, got {name!r}"
            ) from None


@dataclass(frozen=True, slots=True)
class FrameHeader:
    kind: FrameKind
    session: int
    index: int
    timestamp: float  # seconds
    format: FrameFormat
    width: int
    height: int

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
        if len(data) < HEADER.size:
            raise ProtocolError("bad_frame", f"binary message of {len(data)} bytes has no header")
        magic, version, kind, session, index, timestamp, fmt, width, height = HEADER.unpack_from(
            data
        )
        # a refusal names the session the header names, when it could be one
        about = session if 0 < session < 2**32 else None
        if magic != MAGIC or version != PROTOCOL_VERSION:
            raise ProtocolError(
                "bad_frame", f"bad header magic {magic!r} or version {version}", about
            )
        if any(data[_RESERVED]):
            raise ProtocolError("bad_frame", "the header's reserved bytes must be zero", about)
        try:
            return cls(FrameKind(kind), session, index, timestamp, FrameFormat(fmt), width, height)
        except ValueError as exc:
            raise ProtocolError("bad_frame", f"bad header field: {exc}", about) from None


# -- what the server runs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineInfo:
    """A pipeline as the wire sees it, wherever it runs."""

    kind: str  # "generation" or "understanding"
    fps: float  # frames per second out (generation) or sampled from the feed (understanding)
    default_size: tuple[int, int] = (0, 0)  # (height, width) of generation; (0, 0) otherwise
    restyles: bool = False  # generation: takes params.restyle (its VAE can encode input)


@dataclass(frozen=True, slots=True)
class Catalog:
    """What ``session.start`` is checked against: the server's pipelines, its model preset,
    and the largest frame it makes or takes."""

    pipelines: Mapping[str, PipelineInfo] = field(default_factory=dict)
    preset: str | None = None
    max_frame_pixels: int = 1920 * 1080


# -- client messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    token: str | None = None


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """How a generation session's frames travel: ``session.start`` params ``format``,
    ``quality`` (JPEG), ``realtime`` (paced at the stream's fps) and ``record`` (an MP4)."""

    format: FrameFormat = FrameFormat.JPEG
    quality: int = 85
    realtime: bool = True
    record: bool = False


@dataclass(frozen=True, slots=True)
class CommentaryRequest:
    """A generation session's ``params.commentary``: the understanding pipeline that watches
    its frames, and that session's request (``true`` takes the defaults)."""

    pipeline: str
    request: UnderstandingRequest = UnderstandingRequest()


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A validated ``session.start``: the pipeline, its typed request, the delivery options."""

    pipeline: str
    request: GenerationRequest | UnderstandingRequest
    output: OutputOptions = OutputOptions()
    request_id: str | None = None  # echoed in session.started / error so clients can match
    commentary: CommentaryRequest | None = None  # generation sessions only


@dataclass(frozen=True, slots=True)
class PromptUpdate:
    """A validated ``prompt.update``: switch at the next chunk, or with ``at_frame`` at the first
    chunk that starts at or after that frame index."""

    session: int
    prompt: str
    transition_chunks: int = 0
    at_frame: int | None = None  # video frame index; None: at the next chunk


@dataclass(frozen=True, slots=True)
class RestyleUpdate:
    """A validated ``restyle.update``: a restyle session's strength from its next chunk."""

    session: int
    strength: float  # 0 < strength <= 1


@dataclass(frozen=True, slots=True)
class Question:
    session: int
    text: str


@dataclass(frozen=True, slots=True)
class Pause:
    session: int


@dataclass(frozen=True, slots=True)
class Resume:
    session: int


@dataclass(frozen=True, slots=True)
class Stop:
    session: int


@dataclass(frozen=True, slots=True)
class InputFrame:
    header: FrameHeader
    payload: bytes


ClientMessage = (
    Hello
    | SessionStart
    | PromptUpdate
    | RestyleUpdate
    | Question
    | Pause
    | Resume
    | Stop
    | InputFrame
)


def _field(obj: dict, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise ProtocolError("invalid_message", f"{obj.get('type')}: missing field {name!r}")
        return default
    value = obj[name]
    # bool is an int in Python; a JSON true is never a valid number here
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(
            "invalid_message",
            f"{obj.get('type')}: field {name!r} must be {names}, got {value!r:.100}",
        )
    if isinstance(value, str) and not valid_unicode(value):
        raise ProtocolError(
            "invalid_message", f"{obj.get('type')}: field {name!r} is not valid Unicode"
        )
    return value


def valid_unicode(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8: JSON's ``"\\ud800"`` escapes decode to lone
    surrogates, which no tokenizer, file or later JSON encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _session(obj: dict) -> int:
    session = _field(obj, "session", int)
    if not 0 < session < 2**32:
        raise ProtocolError("invalid_message", f"session id {session} out of range")
    return session


def _text(obj: dict, name: str, limit: int) -> str:
    text = _field(obj, name, str)
    if not text.strip():
        raise ProtocolError("invalid_message", f"{obj['type']}: {name!r} must not be empty")
    if len(text) > limit:
        raise ProtocolError("invalid_message", f"{obj['type']}: {name!r} longer than {limit}")
    return text


def _parse_hello(obj: dict) -> Hello:
    token = _field(obj, "token", (str, type(None)), None)
    return Hello(_field(obj, "version", int), token)


def _parse_start(obj: dict, catalog: Catalog) -> SessionStart:
    request_id = _field(obj, "request_id", (str, type(None)), None)
    if request_id is not None and len(request_id) > MAX_REQUEST_ID:
        raise ProtocolError("invalid_message", f"request_id longer than {MAX_REQUEST_ID}")
    pipeline = _field(obj, "pipeline", str)
    info = catalog.pipelines.get(pipeline)
    if info is None:
        known = sorted(catalog.pipelines)
        raise ProtocolError(
            "unknown_pipeline", f"unknown pipeline {pipeline[:64]!r}; known: {known}"
        )
    preset = _field(obj, "preset", (str, type(None)), None)
    if preset is not None and preset != catalog.preset:
        raise ProtocolError(
            "unknown_pipeline", f"this server runs preset {catalog.preset!r}, not {preset[:64]!r}"
        )
    params = _field(obj, "params", dict, {})
    if info.kind == "understanding":
        return SessionStart(pipeline, _understanding_request(params), request_id=request_id)
    request = _generation_request(params, info, catalog.max_frame_pixels)
    if request.restyle is not None and not info.restyles:
        raise ProtocolError(
            "unknown_pipeline",
            f"{pipeline} on this server does not restyle (its VAE has no encoder, e.g. a tiny "
            "decoder)",
        )
    commentary = _commentary(params, catalog)
    return SessionStart(pipeline, request, _output_options(params), request_id, commentary)


def _commentary(params: dict, catalog: Catalog) -> CommentaryRequest | None:
    """``params.commentary`` of a generation session: absent, null or ``false`` for none,
    ``true`` for the defaults, or an object of understanding params (``instruction``,
    ``previous_text`` and the sampler's)."""
    value = params.get("commentary")
    if value is None or value is False:
        return None
    if value is not True and not isinstance(value, dict):
        raise ProtocolError(
            "invalid_message",
            f"params.commentary must be true, false or an object, got {value!r:.50}",
        )
    watchers = [name for name, info in catalog.pipelines.items() if info.kind == "understanding"]
    if not watchers:
        raise ProtocolError(
            "unknown_pipeline", "this server runs no understanding pipeline for commentary"
        )
    if isinstance(value, dict):
        request = _understanding_request(value, "params.commentary")
    else:
        request = UnderstandingRequest()
    return CommentaryRequest(watchers[0], request)


def _generation_request(
    params: dict, info: PipelineInfo, max_frame_pixels: int
) -> GenerationRequest:
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT:
        raise ProtocolError(
            "invalid_message", f"params.prompt must be a non-empty string of <= {MAX_PROMPT} chars"
        )
    _check_unicode(prompt, "params.prompt")
    seed = _param_int(params, "seed", 0, 0, MAX_GENERATION_SEED)
    size = []
    for name, fallback in zip(("height", "width"), info.default_size, strict=True):
        value = _param_int(params, name, fallback, 1, 2**16)
        if value % 16:
            raise ProtocolError("invalid_message", f"params.{name} must be a multiple of 16")
        size.append(value)
    height, width = size
    if height * width > max_frame_pixels:
        raise ProtocolError(
            "frame_too_large", f"{width}x{height} is over max_frame_pixels={max_frame_pixels}"
        )
    return GenerationRequest(prompt, seed, height, width, _restyle(params))


def _restyle(params: dict) -> RestyleRequest | None:
    """``params.restyle`` of a generation session: absent, null or ``false`` for none (plain
    generation), ``true`` for the defaults, or ``{"strength": s}``."""
    value = params.get("restyle")
    if value is None or value is False:
        return None
    if value is True:
        return RestyleRequest()
    if not isinstance(value, dict):
        raise ProtocolError(
            "invalid_message",
            f"params.restyle must be true, false or an object, got {value!r:.50}",
        )
    if value.get("strength") is None:
        return RestyleRequest()
    return RestyleRequest(_strength(value["strength"], "params.restyle.strength"))


def _strength(value: Any, where: str) -> float:
    """A restyle strength: a number with 0 < strength <= 1."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not 0 < value <= 1:  # NaN compares false; no float() of a huge int
        raise ProtocolError(
            "invalid_message", f"{where} must be a number > 0 and <= 1, got {value!r:.50}"
        )
    return float(value)


def _parse_restyle_update(obj: dict) -> RestyleUpdate:
    if "strength" not in obj:
        raise ProtocolError("invalid_message", "restyle.update: missing field 'strength'")
    return RestyleUpdate(_session(obj), _strength(obj["strength"], "restyle.update: strength"))


def _understanding_request(params: dict, where: str = "params") -> UnderstandingRequest:
    texts = {}
    for name, limit in (("instruction", MAX_PROMPT), ("previous_text", MAX_PREVIOUS_TEXT)):
        value = params.get(name)
        value = "" if value is None else value
        if not isinstance(value, str) or len(value) > limit:
            raise ProtocolError(
                "invalid_message", f"{where}.{name} must be a string of <= {limit} chars"
            )
        _check_unicode(value, f"{where}.{name}")
        texts[name] = value
    return UnderstandingRequest(
        texts["instruction"] or UnderstandingRequest().instruction,
        texts["previous_text"],
        **_sampling(params, where),
    )


def _output_options(params: dict) -> OutputOptions:
    name = params.get("format", "jpeg")
    if not isinstance(name, str):
        raise ProtocolError("invalid_message", f"params.format must be a string, got {name!r:.50}")
    quality = _param_int(params, "quality", 85, 1, 100)
    flags = []
    for flag, default in (("realtime", True), ("record", False)):
        value = params.get(flag, default)
        if not isinstance(value, bool):
            raise ProtocolError("invalid_message", f"params.{flag} must be true or false")
        flags.append(value)
    return OutputOptions(FrameFormat.from_name(name), quality, *flags)


def _param_int(params: dict, name: str, default: int, low: int, high: int) -> int:
    """An integer param in ``low..high``; absent or null: ``default``."""
    value = params.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(
            "invalid_message",
            f"params.{name} must be an integer in {low}..{high}, got {value!r:.50}",
        )
    return value


def _check_unicode(text: str, name: str) -> None:
    if not valid_unicode(text):
        raise ProtocolError("invalid_message", f"{name} is not valid Unicode")


def _parse_prompt(obj: dict) -> PromptUpdate:
    transition = _field(obj, "transition_chunks", int, 0)
    if not 0 <= transition <= 64:
        raise ProtocolError("invalid_message", f"transition_chunks must be 0..64, got {transition}")
    at_frame = _field(obj, "at_frame", (int, type(None)), None)
    if at_frame is not None and not 0 <= at_frame <= MAX_FRAME_INDEX:
        raise ProtocolError(
            "invalid_message", f"at_frame must be a frame index in 0..2**64-1, got {at_frame!r:.50}"
        )
    return PromptUpdate(_session(obj), _text(obj, "prompt", MAX_PROMPT), transition, at_frame)


# session.start params of an understanding session's sampler: name -> (low, high, type); the
# temperature's 0 (greedy) and the penalty's 0 (excluded) are the bounds' only special cases.
# stream.pipelines.sampling.SamplingParams holds the same limits (a test checks).
SAMPLING_LIMITS: dict[str, tuple[float, float, type]] = {
    "temperature": (0.0, 10.0, float),
    "repetition_penalty": (0.0, 10.0, float),
    "top_k": (1, 1000, int),
    "seed": (0, 2**63 - 1, int),
}


def _sampling(params: dict[str, Any], where: str = "params") -> dict[str, float | int]:
    """The sampler fields of an understanding ``session.start``'s params, validated; fields
    absent or null are left out (the server's default for the model). Raises
    :class:`ProtocolError` ``invalid_message`` naming the field."""
    out: dict[str, float | int] = {}
    for name, (low, high, kind) in SAMPLING_LIMITS.items():
        value = params.get(name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float:
            above = number and (value > low if name == "repetition_penalty" else value >= low)
            ok = above and value <= high  # NaN compares false; no float() of a huge int
            what = (
                f"a number {'>' if name == 'repetition_penalty' else '>='} {low:g} and <= {high:g}"
            )
        else:
            ok = number and isinstance(value, int) and low <= value <= high
            what = f"an integer in {low}..{high}"
        if not ok:
            raise ProtocolError(
                "invalid_message", f"{where}.{name} must be {what}, got {value!r:.50}"
            )
        out[name] = kind(value)
    return out


_PARSERS = {
    "hello": _parse_hello,
    "session.start": _parse_start,  # with the connection's catalog
    "prompt.update": _parse_prompt,
    "restyle.update": _parse_restyle_update,
    "question": lambda o: Question(_session(o), _text(o, "text", MAX_PROMPT)),
    "pause": lambda o: Pause(_session(o)),
    "resume": lambda o: Resume(_session(o)),
    "stop": lambda o: Stop(_session(o)),
}


class ConnectionState(enum.IntEnum):
    AWAITING_HELLO = 0
    READY = 1
    CLOSED = 2  # terminal


class Connection:
    """One connection's protocol state: turns raw messages into validated client messages.

    Args:
        max_message_bytes: larger messages are refused with ``message_too_large``.
        token: when set, ``hello`` must carry it.
        catalog: what ``session.start`` is checked against.
    """

    def __init__(
        self,
        max_message_bytes: int = 1 << 20,
        token: str | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.state = ConnectionState.AWAITING_HELLO
        self.max_message_bytes = max_message_bytes
        self._token = token
        self.catalog = catalog or Catalog()

    def receive(self, data: str | bytes) -> ClientMessage:
        """Parse one message; raises :class:`ProtocolError` (the connection stays usable)."""
        if self.state is ConnectionState.CLOSED:
            raise ProtocolError("not_ready", "the connection is closed")
        size = len(data.encode() if isinstance(data, str) else data)
        if size > self.max_message_bytes:
            raise ProtocolError(
                "message_too_large", f"{size} bytes exceeds the limit of {self.max_message_bytes}"
            )
        if isinstance(data, bytes):
            if self.state is ConnectionState.AWAITING_HELLO:
                raise ProtocolError("not_ready", "the first message must be hello")
            return self._parse_binary(data)
        message = self._parse_text(data)
        if isinstance(message, Hello):
            self._accept_hello(message)
        return message

    def close(self) -> None:
        self.state = ConnectionState.CLOSED

    def _accept_hello(self, hello: Hello) -> None:
        if self.state is not ConnectionState.AWAITING_HELLO:
            raise ProtocolError("not_ready", "hello was already received")
        if hello.version != PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported_version",
                f"server speaks version {PROTOCOL_VERSION}, got {hello.version}",
            )
        if self._token is not None and not hmac.compare_digest(
            (hello.token or "").encode(), self._token.encode()
        ):
            raise ProtocolError("unauthorized", "a valid token is required")
        self.state = ConnectionState.READY

    def _parse_text(self, text: str) -> ClientMessage:
        try:
            obj = json.loads(text)
        # ValueError, not only JSONDecodeError: an integer of over 4300 digits raises it too
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("bad_json", f"not JSON: {str(exc)[:200]}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("bad_json", "a message must be a JSON object")
        try:
            kind = obj.get("type")
            if not isinstance(kind, str):
                raise ProtocolError("invalid_message", "missing string field 'type'")
            if self.state is ConnectionState.AWAITING_HELLO and kind != "hello":
                # nothing is looked at before the token: not even whether the type exists
                raise ProtocolError(
                    "not_ready", f"the first message must be hello, got {kind[:64]!r}"
                )
            parser = _PARSERS.get(kind)
            if parser is None:
                raise ProtocolError("unknown_type", f"unknown message type {kind[:64]!r}")
            if kind == "session.start":
                return _parse_start(obj, self.catalog)
            return parser(obj)
        except ProtocolError as exc:  # let the client match the refusal to what it sent
            request_id, session = obj.get("request_id"), obj.get("session")
            if (
                exc.request_id is None
                and isinstance(request_id, str)
                and len(request_id) <= MAX_REQUEST_ID
                and valid_unicode(request_id)
            ):
                exc.request_id = request_id
            if exc.session is None and type(session) is int and 0 < session < 2**32:
                exc.session = session
            raise

    @staticmethod
    def _parse_binary(data: bytes) -> InputFrame:
        header = FrameHeader.unpack(data)
        if header.kind is not FrameKind.INPUT:
            raise ProtocolError(
                "bad_frame", f"clients send input frames, got kind {header.kind.name}"
            )
        if not 0 < header.session < 2**32:
            raise ProtocolError("bad_frame", f"session id {header.session} out of range")
        if not 0 <= header.timestamp < MAX_TIMESTAMP:  # NaN fails too
            raise ProtocolError(
                "bad_frame",
                f"timestamp {header.timestamp} is not in 0..2**32 seconds",
                header.session,
            )
        return InputFrame(header, data[HEADER.size :])


# -- server messages ----------------------------------------------------------------------------


def encode(message_type: str, /, **fields: Any) -> str:
    """A server control message as JSON text, e.g. ``encode("error", code=..., message=...)``.
    Non-finite numbers are refused: browsers cannot parse them."""
    return json.dumps({"type": message_type, **fields}, separators=(",", ":"), allow_nan=False)
