"""A real server to fuzz: every pipeline of the embedded default on loopback, two control
sessions that must keep streaming correctly throughout, and a connection per example that
sends the fuzzer's messages and checks every reply.

::

    FuzzTarget ── ServerThread (longlive, rolling_forcing, streaming_vlm; small limits)
       ├─ ControlStream longlive       own connection: frames in order, decodable, no error;
       │                               their lateness measured
       ├─ ControlStream streaming_vlm  own connection: frames out, captions in order
       ├─ (mixed) ControlStream longlive-large: a large background session beside them
       ├─ (mixed) FeedLoad: clients fetching /toyworld/feed.mp4 back to back
       └─ run_example(choose): a fresh connection
              for each message: send it, then a probe {"type": "probe-N"}, and read until the
              probe's unknown_type error: every message read on the way is checked against the
              protocol (evals.fuzz_checks.Transcript); nothing may stay unanswered

A message the server processes is answered before the probe (one connection's messages are
handled in order), so a missing reply shows up as a timeout, a broken one as a
:class:`~evals.fuzz_checks.Violation`, and an exception inside the server as an ERROR record.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from framestream.clients.wire import FrameFormat, FrameHeader, FrameKind
from framestream.evals.fuzz_checks import ServerLog, Transcript, Violation
from framestream.evals.fuzz_grammar import Chooser, Targets, client_message, opening
from framestream.evals.loopback import ServerThread
from framestream.evals.observed import FrameLateness, feed_url, fetch_status, percentiles_ms
from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.protocol import ERROR_CODES
from framestream.stream.service import ServiceModels, build_pipelines

__all__ = ["ControlStream", "FeedLoad", "FuzzReport", "FuzzTarget"]

TOKEN = "fuzz-token"
REPLY_TIMEOUT = 60.0  # seconds for the replies to one message (a session start waits for a step)
MESSAGES_PER_EXAMPLE = 6
LARGE = (80, 80)  # the mixed load's background session: the largest size of a step under 1 s


@dataclass
class FuzzReport:
    """What a fuzzing run tried and saw."""

    examples: int = 0  # connections opened, one per example
    inputs: int = 0  # fuzzer messages sent (probes and the opening hello not counted)
    replies: collections.Counter = field(default_factory=collections.Counter)  # type or code
    closes: collections.Counter = field(default_factory=collections.Counter)  # server close codes
    sessions_started: int = 0
    control: dict[str, dict[str, Any]] = field(default_factory=dict)
    feeds: dict[str, int] = field(default_factory=dict)  # feed requests by HTTP status (mixed)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["replies"] = dict(sorted(self.replies.items()))
        out["closes"] = {str(k): v for k, v in sorted(self.closes.items())}
        return out


class ControlStream(threading.Thread):
    """One session on its own connection, checked message by message while the fuzzer runs.

    Generation: frames must arrive in order and decode; a realtime session's frame lateness
    (how much later than its predecessor plus the nominal interval each arrives) is kept.
    Understanding: a frame a quarter second is sent and captions must come in order. Any error
    or early end is a problem.
    """

    def __init__(
        self,
        url: str,
        pipeline: str,
        name: str | None = None,
        size: tuple[int, int] = (32, 32),
        realtime: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.label = name or pipeline
        super().__init__(name=f"control-{self.label}", daemon=True)
        self.url = url
        self.size = size
        self.realtime = realtime
        self.understanding = pipeline == "streaming_vlm"
        self.lateness = FrameLateness(fps=0.0)  # its rate comes with session.started
        self.ready = threading.Event()
        self.problems: list[str] = []
        self.received = 0  # frames (generation) or captions (understanding)
        self.session = 0
        self._stop_event = threading.Event()
        self._transcript = Transcript(ERROR_CODES)

    def stop_and_check(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop the session (its end must be ``stopped``) and report."""
        self._stop_event.set()
        self.join(timeout)
        if self.is_alive():
            self.problems.append("the control stream did not end")
        report = {"session": self.session, "received": self.received, "problems": self.problems}
        if self.lateness.seconds:
            report["lateness_ms"] = percentiles_ms(self.lateness.seconds)
        return report

    def wait_for_more(self, than: int, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.received <= than and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)
        return self.received > than

    def run(self) -> None:
        try:
            with ws_connect(self.url, max_size=None, close_timeout=5) as ws:
                self._open(ws)
                self.ready.set()
                self._stream(ws)
                ws.send(json.dumps({"type": "stop", "session": self.session}))
                ended = self._until(ws, "session.ended")
                if ended["reason"] != "stopped":
                    self.problems.append(f"ended with {ended}")
        except Exception as exc:  # anything at all is a finding: report it, never hide it
            self.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.ready.set()

    def _open(self, ws: ClientConnection) -> None:
        ws.send(json.dumps({"type": "hello", "version": 1, "token": TOKEN}))
        self._until(ws, "welcome")
        params: dict[str, Any] = {"instruction": "Say what moves."}
        if not self.understanding:
            height, width = self.size
            params = {"prompt": "a red ball bouncing", "height": height, "width": width}
            params["realtime"] = self.realtime
        start = {"type": "session.start", "pipeline": self.pipeline, "params": params}
        ws.send(json.dumps(start))
        started = self._until(ws, "session.started")
        self.session, self.lateness.fps = started["session"], started["fps"]

    def _until(self, ws: ClientConnection, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            message = self._read(ws, max(0.01, deadline - time.monotonic()))
            if message is not None and message["type"] == kind:
                return message

    def _read(self, ws: ClientConnection, timeout: float) -> dict[str, Any] | None:
        raw = ws.recv(timeout)
        message = self._transcript.accept(raw)
        if message is None:
            self.received += not self.understanding
            if self.realtime and not self.understanding:
                self.lateness.note(FrameHeader.unpack(raw).index, time.monotonic())
        elif message["type"] == "caption":
            self.received += 1
        elif message["type"] == "error" or (
            message["type"] == "session.ended" and not self._stop_event.is_set()
        ):
            self.problems.append(f"unexpected {message}")
        return message

    def _stream(self, ws: ClientConnection) -> None:
        started, sent = time.monotonic(), 0
        rng = np.random.default_rng(0)
        while not self._stop_event.is_set():
            now = time.monotonic() - started
            if self.understanding and sent / 4 <= now:
                pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
                ws.send(_input_frame(self.session, sent, now, pixels))
                sent += 1
            with contextlib.suppress(TimeoutError):
                self._read(ws, 0.05)


class FeedLoad(threading.Thread):
    """Fetches ``/toyworld/feed.mp4`` back to back, a new seed each time (so each is rendered);
    any answer but 200 or 503 (busy), or no answer, is a problem."""

    def __init__(self, url: str, worker: int, seconds: int = 60) -> None:
        super().__init__(name=f"feed-{worker}", daemon=True)
        self.url = url
        self.worker, self.seconds = worker, seconds
        self.statuses: collections.Counter[int] = collections.Counter()
        self.problems: list[str] = []
        self._stop_event = threading.Event()

    def stop_and_check(self, timeout: float = 60.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        number = 0
        while not self._stop_event.is_set():
            number += 1
            url = feed_url(self.url, self.worker * 100_000 + number, self.seconds, TOKEN)
            try:
                status = fetch_status(url, REPLY_TIMEOUT)
            except OSError as exc:  # no answer at all: what the issue found
                self.problems.append(f"{type(exc).__name__}: {exc}")
                continue
            self.statuses[status] += 1
            if status not in (200, 503):
                self.problems.append(f"feed answered {status}")
            if status == 503:
                self._stop_event.wait(1.0)


def _input_frame(session: int, index: int, timestamp: float, pixels: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", pixels)
    assert ok
    height, width = pixels.shape[:2]
    kind, fmt = FrameKind.INPUT, FrameFormat.JPEG
    return FrameHeader(kind, session, index, timestamp, fmt, width, height).pack() + jpeg.tobytes()


class FuzzTarget:
    """The server under fuzzing (see the module docstring). Use as a context manager.

    Args:
        max_message_bytes: the server's limit, small so the fuzzer reaches past it.
        record_dir: where sessions started with ``record`` write (a temporary folder if None).
        pipelines: pipelines to serve (default: every one of the embedded default, loaded here).
        mixed: add the mixed load beside the controls: a large background LongLive session
            and two clients fetching toy-world feeds.
        engine_settings: override the engine's (:class:`EngineConfig` fields).
    """

    def __init__(
        self,
        max_message_bytes: int = 16384,
        record_dir: str | None = None,
        pipelines: dict[str, Any] | None = None,
        mixed: bool = False,
        engine_settings: dict[str, Any] | None = None,
    ) -> None:
        self.mixed = mixed
        self.engine_config = EngineConfig(
            **{"max_sessions": 8, "lookahead_seconds": 0.5, **(engine_settings or {})}
        )
        self.config = ServerConfig(
            port=0,
            token=TOKEN,
            max_message_bytes=max_message_bytes,
            max_frame_pixels=96 * 96,
            max_sessions_per_connection=3,
            max_messages_per_second=100_000,  # probes double the rate; rate limits have a test
            max_messages_per_second_total=100_000,
            max_session_starts_per_second=100_000,
            record_dir=record_dir,
        )
        self.pipelines = pipelines
        self.report = FuzzReport()
        self.findings: list[str] = []
        self._log = ServerLog()
        self._served: ServerThread | None = None
        self._controls: list[ControlStream] = []
        self._feeds: list[FeedLoad] = []
        self._started = 0.0

    def __enter__(self) -> FuzzTarget:
        if self.pipelines is None:
            models = ServiceModels(cache_bytes=64 << 20, vlm_cache_bytes=64 << 20)
            self.pipelines = build_pipelines(models, KVCacheManager())
        engine = Engine(self.pipelines, self.engine_config)
        self._log.__enter__()
        self._served = ServerThread(self.config, engine).start()
        controls = [ControlStream(self._served.url, p) for p in ("longlive", "streaming_vlm")]
        if self.mixed:
            large = ControlStream(self._served.url, "longlive", "longlive-large", LARGE, False)
            controls.append(large)
            self._feeds = [FeedLoad(self._served.url, worker) for worker in range(2)]
        for control in controls:
            control.start()
            control.ready.wait(REPLY_TIMEOUT)
            self._controls.append(control)
        for feed in self._feeds:
            feed.start()
        self._check_controls()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for control in self._controls:
                if control.is_alive():
                    control.stop_and_check()
            for feed in self._feeds:
                feed.stop_and_check()
            if self._served is not None:
                self._served.stop()
        finally:
            self._log.__exit__()

    @property
    def url(self) -> str:
        assert self._served is not None
        return self._served.url

    def run_example(self, choose: Chooser) -> None:
        """One connection: an opening, then up to six fuzzed messages, each checked."""
        control_ids = [c.session for c in self._controls]
        targets = Targets(
            others=control_ids,
            token=TOKEN,
            preset=self.config.preset,
            max_message_bytes=self.config.max_message_bytes,
        )
        self.report.examples += 1
        connection = _FuzzConnection(self, targets)
        try:
            first = opening(choose, targets)
            if first is not None:
                connection.send(first)
            for _ in range(choose.integer(1, MESSAGES_PER_EXAMPLE)):
                if not connection.send(client_message(choose, targets), counted=True):
                    break
        finally:
            connection.close()
        self._check_log()

    def finish(self) -> FuzzReport:
        """Check the controls kept streaming, stop them, check every block came back."""
        assert self._served is not None
        for control in self._controls:
            if not control.wait_for_more(control.received):
                self.findings.append(f"{control.label} control stopped streaming")
        self._check_controls()
        for control in self._controls:
            self.report.control[control.label] = control.stop_and_check()
            self.findings += [f"{control.label}: {p}" for p in control.problems]
        for feed in self._feeds:
            feed.stop_and_check()
            for status, count in feed.statuses.items():
                self.report.feeds[str(status)] = self.report.feeds.get(str(status), 0) + count
            self.findings += [f"{feed.name}: {p}" for p in feed.problems]
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline and self._served.call(_busy):
            time.sleep(0.1)
        if busy := self._served.call(_busy):
            self.findings.append(f"after the run the server still holds {busy}")
        self._check_log()
        self.report.seconds = round(time.monotonic() - self._started, 1)
        return self.report

    def _check_controls(self) -> None:
        for control in self._controls:
            if control.problems:
                raise Violation(f"control {control.label}: {control.problems}")

    def _check_log(self) -> None:
        if errors := self._log.take():
            self.findings += errors
            raise Violation("the server logged errors:\n" + "\n".join(errors))


def _busy(server: Any) -> dict[str, int]:
    """Sessions, connections and cache blocks beyond the idle server's."""
    held = {"sessions": len(server.sessions()), "connections": server.counters.connections}
    for pipeline in server.engine.pipelines.values():
        stats = pipeline.pool.stats() if hasattr(pipeline, "pool") else None
        if stats is not None:
            held["blocks"] = held.get("blocks", 0) + stats.used_blocks + stats.reserved_blocks
    return {k: v for k, v in held.items() if v}


class _FuzzConnection:
    """One example's connection: sends, probes, checks."""

    def __init__(self, target: FuzzTarget, targets: Targets) -> None:
        self.target = target
        self.targets = targets
        self.transcript = Transcript(ERROR_CODES)
        self._stack = contextlib.ExitStack()  # websockets wants its connect() as a context
        self.ws: ClientConnection | None = self._stack.enter_context(
            ws_connect(target.url, max_size=None, open_timeout=REPLY_TIMEOUT, close_timeout=5)
        )
        self._probes = 0
        self._unauthorized = False
        self._largest_sent = 0

    def send(self, data: str | bytes, counted: bool = False) -> bool:
        """Send ``data`` and check everything up to its probe's reply; False once closed."""
        if self.ws is None:
            return False
        if isinstance(data, str):  # a text frame must be UTF-8: lone surrogates cannot travel
            data = data.encode("utf-8", "replace").decode("utf-8")
        report = self.target.report
        report.inputs += counted
        self._largest_sent = max(
            self._largest_sent, len(data.encode() if isinstance(data, str) else data)
        )
        self._probes += 1
        tag = f"probe-{self._probes}"
        try:
            self.ws.send(data)
            self.ws.send(json.dumps({"type": tag}))
            deadline = time.monotonic() + REPLY_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Violation(f"no reply within {REPLY_TIMEOUT} s to {data[:300]!r}")
                message = self.transcript.accept(self.ws.recv(left))
                if message is None:
                    continue
                if message["type"] == "error" and tag in message["message"]:
                    return True
                self._note(message, report)
        except TimeoutError:
            raise Violation(f"no reply within {REPLY_TIMEOUT} s to {data[:300]!r}") from None
        except ConnectionClosed as exc:
            self._closed(exc, report)
            return False

    def _note(self, message: dict[str, Any], report: FuzzReport) -> None:
        kind = message["type"]
        report.replies[f"error:{message['code']}" if kind == "error" else kind] += 1
        if kind == "session.started":
            report.sessions_started += 1
            self.targets.own.append(message["session"])
        elif kind == "error" and message["code"] == "unauthorized":
            self._unauthorized = True

    def _closed(self, exc: ConnectionClosed, report: FuzzReport) -> None:
        """The server closed: what it sent before is checked too, and the close must be one the
        protocol announces (1008 after unauthorized, 1009 beyond twice the size limit)."""
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                if (message := self.transcript.accept(self.ws.recv(0))) is not None:
                    self._note(message, report)
        code = exc.rcvd.code if exc.rcvd is not None else None
        report.closes[code] += 1
        self.ws = None
        expected = (code == 1008 and self._unauthorized) or (
            code == 1009 and self._largest_sent > 2 * self.targets.max_message_bytes
        )
        if not expected:
            raise Violation(f"the server closed the connection with {code}: {exc}")

    def close(self) -> None:
        self.ws = None
        self._stack.close()
