"""TEST DOUBLE: a stand-in for an OpenAI-compatible chat endpoint, on a loopback port, for the
Inf-Streams-Eval judge tests only. It is not a judge: it answers by a fixed rule, can be told to
fail first, and records what it was sent.

    with JudgeDouble(rule=prefer_longer) as double:
        ... JudgeEndpoint(double.base_url, "stand-in") ...
        double.requests  # [(headers, body), ...]
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Failure", "JudgeDouble", "always_a", "prefer_longer"]

_CANDIDATE = re.compile(r"Candidate A:\n(.*)\n\nCandidate B:\n(.*)\n\nWhich", re.S)


def _candidates(body: dict[str, Any]) -> tuple[str, str]:
    match = _CANDIDATE.search(body["messages"][-1]["content"])
    assert match is not None, "the user message lacks the two candidates"
    return match[1], match[2]


def prefer_longer(body: dict[str, Any]) -> str:
    """Votes for the candidate with more words ("A" on a tie): position-free."""
    a, b = _candidates(body)
    return "A" if len(a.split()) >= len(b.split()) else "B"


def always_a(body: dict[str, Any]) -> str:
    """Votes "A" whatever it is shown: pure position bias."""
    return "A"


@dataclass(frozen=True)
class Failure:
    status: int  # HTTP status answered instead of a reply
    body: str = "{}"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class JudgeDouble:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1; use as a context manager.

    Args:
        rule: the reply text for a request body.
        failures: answered, in order, before any reply (one per request).
    """

    rule: Callable[[dict[str, Any]], str] = prefer_longer
    failures: list[Failure] = field(default_factory=list)
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    def __enter__(self) -> JudgeDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                double.requests.append((dict(self.headers), body))
                if self.path != "/v1/chat/completions":
                    self._send(404, "{}")
                elif double.failures:
                    failure = double.failures.pop(0)
                    self._send(failure.status, failure.body, failure.headers)
                else:
                    reply = {"choices": [{"message": {"role": "assistant", "content": ""}}]}
                    reply["choices"][0]["message"]["content"] = double.rule(body)
                    self._send(200, json.dumps(reply))

            def _send(self, status: int, text: str, headers: tuple = ()) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            daemon=True,  # quick to shut down
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"
