"""What a fuzzer checks: that every server message is one docs/protocol.md describes, in an
order it allows, and that the server logged no error of its own.

:class:`Transcript` follows one connection as a third party would (it reads the wire with
:mod:`clients.wire`, not ``stream/``) and raises :class:`Violation` on the first message that
breaks the protocol: an unknown type or field, a wrong type, an error code not in the table, a
frame of a session that is not this connection's, a message after a session's ``session.ended``.
:class:`ServerLog` collects the server's ERROR records: an exception that escaped a handler, a
step that failed on bad input.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterable
from typing import Any

from framestream.clients.wire import ClientError, FrameFormat, FrameHeader, FrameKind, decode_image

__all__ = ["ServerLog", "Transcript", "Violation"]

ENDED_REASONS = {"stopped", "error", "server_shutdown"}  # "disconnected" is never sent
FORMATS = {"jpeg", "png", "raw", "h264"}


class Violation(AssertionError):
    """A server message the protocol does not allow."""


def _require(condition: bool, message: str, obj: object) -> None:
    if not condition:
        raise Violation(f"{message}: {obj!r}"[:2000])


def _is_int(value: Any, low: int = 0, high: float = math.inf) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: Any, low: float = 0.0) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= low


def _strength(value: Any) -> bool:
    return _is_number(value) and 0 < value <= 1


def _session_id(value: Any) -> bool:
    return _is_int(value, 1, 2**32 - 1)


class Transcript:
    """The server side of one connection, as seen by its client.

    Args:
        error_codes: the codes of the protocol's error table.
    """

    def __init__(self, error_codes: Iterable[str]) -> None:
        self.error_codes = frozenset(error_codes)
        self.live: set[int] = set()  # sessions started and not yet ended
        self.ended: set[int] = set()
        self.welcomed = False
        self.messages = 0
        self.frames = 0
        self._last_index: dict[int, int] = {}
        self._last_caption: dict[int, float] = {}

    def accept(self, data: str | bytes) -> dict[str, Any] | None:
        """Check one server message; returns it parsed (``None`` for a frame)."""
        self.messages += 1
        if isinstance(data, bytes):
            self._frame(data)
            return None
        try:
            message = json.loads(data)
        except ValueError as exc:
            raise Violation(f"not JSON: {data[:200]!r}") from exc
        _require(isinstance(message, dict) and "type" in message, "not a typed object", message)
        check = _CHECKS.get(message["type"])
        _require(check is not None, "unknown message type", message)
        check(self, message)
        return message

    # -- per type ----------------------------------------------------------------------------

    def _fields(self, message: dict, required: set[str], optional: set[str] = frozenset()) -> None:
        keys = set(message) - {"type"}
        _require(required <= keys, f"missing {sorted(required - keys)}", message)
        _require(keys <= required | optional, f"unknown fields {sorted(keys - required)}", message)

    def _welcome(self, message: dict) -> None:
        self._fields(message, {"version", "server", "pipelines", "limits"}, {"sizes", "models"})
        _require(not self.welcomed, "a second welcome", message)
        _require(message["version"] == 1, "bad version", message)
        _require(isinstance(message["server"], str), "bad server name", message)
        _require(
            isinstance(message["pipelines"], list)
            and all(isinstance(p, str) for p in message["pipelines"]),
            "bad pipelines",
            message,
        )
        limits = message["limits"]
        names = {"max_message_bytes", "max_sessions_per_connection", "max_frame_pixels"}
        _require(isinstance(limits, dict) and names <= set(limits), "bad limits", message)
        _require(all(_is_int(v, 1) for v in limits.values()), "bad limits", message)
        for name, sizes in message.get("sizes", {}).items():
            _require(name in message["pipelines"] and isinstance(sizes, list), "bad sizes", message)
            for size in sizes:
                _require(
                    set(size) == {"height", "width", "fps", "realtime"}
                    and _is_int(size["height"], 1)
                    and _is_int(size["width"], 1)
                    and _is_number(size["fps"])
                    and isinstance(size["realtime"], bool),
                    "bad size",
                    message,
                )
        for name, source in message.get("models", {}).items():
            _require(
                name in message["pipelines"] and source in {"embedded", "checkpoint"},
                "bad models",
                message,
            )
        self.welcomed = True

    def _started(self, message: dict) -> None:
        understanding = message.get("kind") == "understanding"
        if understanding:
            self._fields(message, {"session", "pipeline", "kind", "fps", "request_id"})
        else:
            required = {"session", "pipeline", "fps", "width", "height", "format", "request_id"}
            self._fields(message, required, {"restyle"})
            size = _is_int(message["width"], 1) and _is_int(message["height"], 1)
            _require(size, "bad size", message)
            _require(message["format"] in FORMATS, "bad format", message)
            if "restyle" in message:
                restyle = message["restyle"]
                ok = isinstance(restyle, dict) and set(restyle) == {"strength", "input_lead_frames"}
                ok = (
                    ok
                    and _strength(restyle["strength"])
                    and _is_int(restyle["input_lead_frames"], 1)
                )
                _require(ok, "bad restyle", message)
        session = message["session"]
        _require(self.welcomed, "session.started before welcome", message)
        _require(_session_id(session), "bad session id", message)
        _require(session not in self.live | self.ended, "a session id used twice", message)
        _require(isinstance(message["pipeline"], str), "bad pipeline", message)
        _require(_is_number(message["fps"]) and message["fps"] > 0, "bad fps", message)
        request_id = message["request_id"]
        _require(request_id is None or isinstance(request_id, str), "bad request_id", message)
        self.live.add(session)

    def _event_of_live_session(self, message: dict) -> int:
        session = message.get("session")
        _require(session in self.live, "an event of a session not live here", message)
        return session

    def _applied(self, message: dict) -> None:
        self._fields(message, {"session", "prompt", "frame", "transition_chunks"})
        self._event_of_live_session(message)
        _require(isinstance(message["prompt"], str), "bad prompt", message)
        _require(_is_int(message["frame"]), "bad frame index", message)
        _require(_is_int(message["transition_chunks"], 0, 64), "bad transition", message)

    def _restyle_applied(self, message: dict) -> None:
        self._fields(message, {"session", "strength", "frame", "input_lead_frames"})
        self._event_of_live_session(message)
        _require(_strength(message["strength"]), "bad strength", message)
        _require(_is_int(message["frame"]), "bad frame index", message)
        _require(_is_int(message["input_lead_frames"], 1), "bad input lead", message)

    def _metrics(self, message: dict) -> None:
        if "frames_skipped" in message:  # a restyle session's
            names = {"session", "frames_sent", "frames_dropped", "fps", "step_ms", "queue"}
            names |= {"frames_received", "frames_skipped", "latency_ms"}
            self._fields(message, names)
            counts = ("frames_sent", "frames_dropped", "queue", "frames_received", "frames_skipped")
            latency = message["latency_ms"]
            good = latency is None or (
                isinstance(latency, dict)
                and set(latency) == {"p50", "p95"}
                and all(_is_number(v) for v in latency.values())
            )
            _require(good, "bad latency_ms", message)
        elif "frames_received" in message:  # an understanding session's
            self._fields(message, {"session", "frames_received", "captions", "step_ms"})
            counts = ("frames_received", "captions")
        else:
            names = {"session", "frames_sent", "frames_dropped", "fps", "step_ms", "queue"}
            self._fields(message, names)
            counts = ("frames_sent", "frames_dropped", "queue")
            _require(_is_number(message["fps"]), "bad fps", message)
        self._event_of_live_session(message)
        _require(all(_is_int(message[k]) for k in counts), "bad counts", message)
        _require(message["step_ms"] is None or _is_number(message["step_ms"]), "step_ms", message)

    def _paused(self, message: dict) -> None:
        self._fields(message, {"session", "frame"})
        self._event_of_live_session(message)
        _require(_is_int(message["frame"]), "bad frame index", message)

    def _resumed(self, message: dict) -> None:
        self._fields(message, {"session"})
        self._event_of_live_session(message)

    def _caption(self, message: dict) -> None:
        self._fields(message, {"session", "start", "end", "text", "lag"})
        session = self._event_of_live_session(message)
        start, end = message["start"], message["end"]
        _require(_is_number(start) and _is_number(end) and end == start + 1, "bad span", message)
        _require(isinstance(message["text"], str), "bad text", message)
        _require(_is_number(message["lag"]), "bad lag", message)
        _require(start > self._last_caption.get(session, -1), "captions out of order", message)
        self._last_caption[session] = start

    def _ended(self, message: dict) -> None:
        self._fields(message, {"session", "reason"}, {"message", "recording"})
        session = self._event_of_live_session(message)
        _require(message["reason"] in ENDED_REASONS, "bad reason", message)
        _require(isinstance(message.get("message", ""), str), "bad message", message)
        recording = message.get("recording", "/recordings/")
        path = isinstance(recording, str) and recording.startswith("/recordings/")
        _require(path, "bad recording path", message)
        self.live.discard(session)
        self.ended.add(session)

    def _error(self, message: dict) -> None:
        self._fields(message, {"code", "message"}, {"session", "request_id"})
        _require(message["code"] in self.error_codes, "an undocumented error code", message)
        _require(isinstance(message["message"], str) and message["message"], "no text", message)
        session = "session" not in message or _session_id(message["session"])
        _require(session, "bad session id", message)
        _require(isinstance(message.get("request_id", ""), str), "bad request_id", message)

    def _frame(self, data: bytes) -> None:
        try:
            header = FrameHeader.unpack(data)
        except ClientError as exc:
            raise Violation(f"bad frame header: {exc}") from None
        _require(header.kind is FrameKind.VIDEO, "a frame of kind other than video", header)
        _require(header.session in self.live, "a frame of a session not live here", header)
        last = self._last_index.get(header.session, -1)
        _require(header.index > last, "frame indices not increasing", (last, header))
        self._last_index[header.session] = header.index
        payload = data[32:]
        if header.format is FrameFormat.H264:
            _require(payload[:3] == b"\0\0\1" or payload[:4] == b"\0\0\0\1", "not Annex B", header)
        else:
            try:
                decode_image(header.format, payload, header.width, header.height)
            except ClientError as exc:
                raise Violation(f"frame does not decode: {exc}") from None
        self.frames += 1


_CHECKS = {
    "welcome": Transcript._welcome,
    "session.started": Transcript._started,
    "prompt.applied": Transcript._applied,
    "restyle.applied": Transcript._restyle_applied,
    "metrics": Transcript._metrics,
    "session.paused": Transcript._paused,
    "session.resumed": Transcript._resumed,
    "caption": Transcript._caption,
    "session.ended": Transcript._ended,
    "error": Transcript._error,
}


class ServerLog(logging.Handler):
    """Collects ERROR records of every logger while installed (``with ServerLog() as log``)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self._records.append(record)

    def take(self) -> list[str]:
        """The records since the last call, formatted with their tracebacks."""
        with self._lock_records:
            records, self._records = self._records, []
        formatter = logging.Formatter("%(name)s: %(message)s")
        return [formatter.format(record) for record in records]

    def __enter__(self) -> ServerLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
