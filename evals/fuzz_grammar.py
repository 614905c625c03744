"""What a protocol fuzzer sends: client messages built from a stream of choices, mostly
well-formed with one field broken, sometimes garbage.

The same grammar serves hypothesis (choices drawn from strategies, shrinkable) and atheris
(choices read from the fuzzer's bytes, coverage-guided) through one small :class:`Chooser`
interface. Text messages are assembled from JSON *fragments*, so that inputs no encoder would
write (a 5000-digit integer, a lone surrogate escape, NaN, 1500 nested arrays) reach the server
as they would from a hostile client.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import cv2
import numpy as np
from hypothesis import strategies as st

from framestream.clients.wire import HEADER, MAGIC

__all__ = [
    "HOSTILE",
    "AtherisChooser",
    "Chooser",
    "HypothesisChooser",
    "Targets",
    "client_message",
    "opening",
]

T = TypeVar("T")

PIPELINES = ("longlive", "rolling_forcing", "streaming_vlm")
# JSON fragments that break a field's type or range, or the parser's assumptions
HOSTILE = (
    "null", "true", "false", "0", "-1", "1.0", "0.5", "1e400", "-1e400", "NaN", "Infinity",
    "-Infinity", "4294967295", "4294967296", "18446744073709551616", "1" * 5000, "[]", "{}",
    '""', '"   "', '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"' + "x" * 2500 + '"',
    "[" * 1500 + "]" * 1500, '{"a":' * 400 + "1" + "}" * 400, '["nested", {"x": [1, 2]}]',
)  # fmt: skip


class Chooser(Protocol):
    """Where a fuzzer's decisions come from."""

    def integer(self, low: int, high: int) -> int: ...
    def text(self, max_size: int) -> str: ...
    def blob(self, max_size: int) -> bytes: ...


@dataclass
class Targets:
    """Session ids worth aiming at: the fuzzing connection's own, and other connections'."""

    own: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)
    token: str | None = None  # the server's, for a valid hello
    preset: str = "toyworld"
    max_message_bytes: int = 16384
    clock: float = 0.0  # seconds of feed sent so far, for input frames' timestamps


class HypothesisChooser:
    """Choices drawn from hypothesis strategies (``st.data()``), so failures shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))

    def text(self, max_size: int) -> str:
        return self._data.draw(st.text(max_size=max_size))

    def blob(self, max_size: int) -> bytes:
        return self._data.draw(st.binary(max_size=max_size))


class AtherisChooser:
    """Choices read from a libFuzzer input (``atheris.FuzzedDataProvider``)."""

    def __init__(self, provider: object) -> None:
        self._provider = provider

    def integer(self, low: int, high: int) -> int:
        return self._provider.ConsumeIntInRange(low, high)

    def text(self, max_size: int) -> str:
        return self._provider.ConsumeUnicode(self.integer(0, max_size))

    def blob(self, max_size: int) -> bytes:
        return self._provider.ConsumeBytes(self.integer(0, max_size))


def _pick(choose: Chooser, options: Sequence[T]) -> T:
    return options[choose.integer(0, len(options) - 1)]


def _chance(choose: Chooser, one_in: int) -> bool:
    return choose.integer(0, one_in - 1) == 0


def _session_id(choose: Chooser, targets: Targets) -> int:
    pools = [targets.own, targets.own, targets.others, [0, 1, 2**32 - 1, 2**32, 7, 1000]]
    pool = _pick(choose, [p for p in pools if p])
    return _pick(choose, pool)


def _render(fields: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields) + "}"


def _mutated(
    choose: Chooser, fields: list[tuple[str, object]], raw: Sequence[tuple[str, str]] = ()
) -> str:
    """``fields`` as a JSON object, each value sometimes replaced or dropped, sometimes an
    unknown field added; ``raw`` (name, JSON fragment) pairs are appended as they are."""
    out: list[tuple[str, str]] = []
    for name, value in fields:
        if name != "type" and _chance(choose, 20):
            continue  # missing
        if _chance(choose, 10):
            fragment = _pick(choose, HOSTILE) if _chance(choose, 2) else json.dumps(choose.text(40))
        else:
            fragment = json.dumps(value)
        out.append((name, fragment))
    if _chance(choose, 8):
        out.append((choose.text(12), _pick(choose, HOSTILE)))  # an unknown field
    return _render([*out, *raw])


def _generation_params(choose: Chooser) -> dict[str, object]:
    params: dict[str, object] = {
        "prompt": _pick(choose, ["a red ball", "a blue cube bouncing", "x"]),
        "seed": choose.integer(0, 2**16),
        "height": 16 * choose.integer(1, 6),
        "width": 16 * choose.integer(1, 6),
        "format": _pick(choose, ["jpeg", "png", "raw", "h264"]),
        "quality": choose.integer(1, 100),
        "realtime": _chance(choose, 3) is False,
        "record": _chance(choose, 6),
        # a restyle session: the input frames sent to it are restyled
        "restyle": _pick(choose, [False, True, {"strength": choose.integer(1, 10) / 10}]),
    }
    return {k: v for k, v in params.items() if not _chance(choose, 4) or k == "prompt"}


def _start(choose: Chooser, targets: Targets) -> str:
    pipeline = _pick(choose, [*PIPELINES, "nope"])
    if pipeline == "streaming_vlm":
        params: object = {"instruction": "Say what moves.", "previous_text": choose.text(60)}
    else:
        params = _generation_params(choose)
    if _chance(choose, 4):  # one broken parameter, inside params
        key = _pick(choose, ["prompt", "seed", "height", "width", "format", "quality",
                             "realtime", "record", "restyle", "instruction",
                             "previous_text"])  # fmt: skip
        fragment = _pick(choose, HOSTILE)
        inner = {k: json.dumps(v) for k, v in params.items()} | {key: fragment}
        fields = [("type", "session.start"), ("pipeline", pipeline), ("request_id", "r")]
        return _mutated(choose, fields, [("params", _render(list(inner.items())))])
    fields = [("type", "session.start"), ("pipeline", pipeline)]
    if _chance(choose, 3):
        fields.append(("preset", _pick(choose, [targets.preset, "huge"])))
    fields += [("params", params), ("request_id", f"r{choose.integer(0, 99)}")]
    return _mutated(choose, fields)


def _control(choose: Chooser, targets: Targets) -> str:
    kind = _pick(choose, ["prompt.update", "restyle.update", "question", "pause", "resume", "stop"])
    fields: list[tuple[str, object]] = [("type", kind), ("session", _session_id(choose, targets))]
    if kind == "prompt.update":
        fields += [("prompt", "a green star"), ("transition_chunks", choose.integer(0, 70))]
    elif kind == "restyle.update":
        fields.append(("strength", _pick(choose, [0.5, 1, 0, 2, choose.integer(1, 9) / 10])))
    elif kind == "question":
        fields.append(("text", _pick(choose, ["what colour?", choose.text(30)])))
    return _mutated(choose, fields)


def _hello(choose: Chooser, targets: Targets) -> str:
    version = _pick(choose, [1, 1, 1, 2])
    return _mutated(choose, [("type", "hello"), ("version", version), ("token", targets.token)])


def _image(choose: Chooser, fmt: int) -> tuple[bytes, int, int]:
    """A payload of format ``fmt`` and the size it really has."""
    height, width = choose.integer(1, 40), choose.integer(1, 40)
    pixels = np.frombuffer(choose.blob(16), np.uint8)
    image = np.resize(pixels if pixels.size else np.zeros(1, np.uint8), (height, width, 3))
    if fmt == 3:
        return image.tobytes(), width, height
    ok, data = cv2.imencode(".png" if fmt == 2 else ".jpg", image)
    assert ok
    return data.tobytes(), width, height


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` over a few rows of zeros (a bomb's head)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(3 * width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)


def _input_frame(choose: Chooser, targets: Targets) -> bytes:
    fmt = _pick(choose, [1, 2, 3, 3, 4, 0, 9])
    payload, width, height = _image(choose, fmt if fmt in (1, 2, 3) else 1)
    variant = choose.integer(0, 7)
    if variant == 1:  # truncated
        payload = payload[: choose.integer(0, len(payload))]
    elif variant == 2:  # bytes flipped
        data = bytearray(payload)
        for _ in range(choose.integer(1, 8)):
            if data:
                data[choose.integer(0, len(data) - 1)] ^= 1 << choose.integer(0, 7)
        payload = bytes(data)
    elif variant == 3:  # the header's size disagrees
        width, height = choose.integer(0, 65535), choose.integer(0, 65535)
    elif variant == 4:  # a decompression bomb's head
        fmt, payload = 2, _png_declaring(choose.integer(1, 60000), choose.integer(1, 60000))
    elif variant == 5:
        payload = choose.blob(200)
    targets.clock += choose.integer(0, 6) / 4  # mostly forward, so that seconds complete
    timestamp = _pick(
        choose,
        [targets.clock] * 4 + [0.0, -1.0, float("nan"), float("inf"), 1e308, 5e-324, 4.3e9],
    )
    header = HEADER.pack(
        MAGIC,
        _pick(choose, [1, 1, 1, 1, 2]),
        _pick(choose, [2, 2, 2, 2, 1, 0, 255]),
        _session_id(choose, targets) % 2**32,
        choose.integer(0, 2**64 - 1),
        timestamp,
        fmt,
        width,
        height,
    )
    if _chance(choose, 10):
        header = header[: choose.integer(0, len(header))]
    return header + payload


def client_message(choose: Chooser, targets: Targets) -> str | bytes:
    """One message a client might send, valid or not."""
    kind = choose.integer(0, 15)
    if kind <= 2:
        return _start(choose, targets)
    if kind <= 6:
        return _control(choose, targets)
    if kind <= 9:
        return _input_frame(choose, targets)
    if kind == 10:
        return _hello(choose, targets)
    if kind == 11:
        return _pick(choose, HOSTILE) if _chance(choose, 2) else choose.text(200)
    if kind == 12:
        return choose.blob(100)
    if kind == 13:  # near and over the size limits (1x and 2x)
        size = targets.max_message_bytes * choose.integer(8, 30) // 10
        return json.dumps({"type": "pause", "session": 1, "pad": "p" * size})
    if kind == 14:
        return _render([("type", json.dumps(_pick(choose, ["", "HELLO", "welcome", "x"])))])
    return _render([("type", _pick(choose, HOSTILE))])


def opening(choose: Chooser, targets: Targets) -> str | None:
    """Usually a valid hello, so that the messages after it reach past the handshake."""
    if _chance(choose, 8):
        return None
    return json.dumps({"type": "hello", "version": 1, "token": targets.token})
