"""A small client for any OpenAI-compatible chat endpoint (``POST {base}/chat/completions``),
with retries and an on-disk cache, over the standard library's urllib.

- Retries: connection errors, timeouts and HTTP 408/409/425/429/5xx are retried with
  exponential backoff (``base_delay * 2**n``, capped; a ``Retry-After`` header may lengthen it).
  Other HTTP errors fail at once with the endpoint's message.
- ``temperature``: sent as 0, as the published judge does; an endpoint that rejects it (GPT-5
  does) is asked again without, and is not sent it any more.
- Cache: each reply is stored under the SHA-256 of the request (model and messages), written
  atomically, so an interrupted run asks nothing twice. The endpoint's URL is not part of the
  key: the same model behind another address answers from the same cache.
- The API key goes into the ``Authorization`` header only: never logged, never in a message,
  not in the endpoint's ``repr``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framestream.evals.inf_streams.store import atomic_write_json

__all__ = ["ChatClient", "JudgeEndpoint", "JudgeError", "RetryPolicy", "request_key"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class JudgeError(Exception):
    """The endpoint refused or never answered; the message says how (never the key)."""


@dataclass(frozen=True)
class JudgeEndpoint:
    base_url: str  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 300.0  # seconds per request

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ValueError("model must not be empty")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # requests per call, the first included
    base_delay: float = 1.0  # seconds before the first retry; doubles each time
    max_delay: float = 60.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        wait = self.base_delay * 2 ** (retry - 1)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return min(wait, self.max_delay)


def request_key(model: str, messages: list[dict[str, str]]) -> str:
    canonical = json.dumps({"model": model, "messages": messages}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: the backoff alone decides
        return None


def _reply_text(body: bytes) -> str:
    try:
        content = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError(f"unexpected reply from the endpoint: {body[:200]!r}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise JudgeError(f"unexpected reply content: {content!r:.200}")
    return content


class ChatClient:
    """Asks one model through one endpoint; safe to share between threads.

    Attributes:
        requests_sent: HTTP requests made, retries included.
        cache_hits: calls answered from the cache.
    """

    def __init__(
        self,
        endpoint: JudgeEndpoint,
        cache_dir: Path | None,
        retry: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.cache_dir = cache_dir
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.requests_sent = 0
        self.cache_hits = 0
        self._send_temperature = True
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's reply to ``messages``, from the cache when it was asked before."""
        key = request_key(self.endpoint.model, messages)
        path = None if self.cache_dir is None else self.cache_dir / f"{key}.json"
        if path is not None and path.is_file():
            try:
                reply = json.loads(path.read_text(encoding="utf-8"))["reply"]
            except (ValueError, KeyError):
                logger.warning("ignoring an unreadable cache entry %s", path.name)
            else:
                with self._lock:
                    self.cache_hits += 1
                return reply
        reply = self._ask(messages)
        if path is not None:
            atomic_write_json(path, {"model": self.endpoint.model, "reply": reply})
        return reply

    def _ask(self, messages: list[dict[str, str]]) -> str:
        last_error = ""
        retry = 0
        while retry < self.retry.attempts:
            body: dict[str, Any] = {"model": self.endpoint.model, "messages": messages}
            with_temperature = self._send_temperature
            if with_temperature:
                body["temperature"] = 0
            with self._lock:
                self.requests_sent += 1
            try:
                return _reply_text(self._post(body))
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500].decode("utf-8", "replace")
                if exc.code == 400 and with_temperature and "temperature" in detail.lower():
                    logger.info("the judge model rejects temperature; asking without it")
                    self._send_temperature = False
                    continue  # not a failure: the same attempt again
                if exc.code not in _RETRY_STATUSES:
                    raise JudgeError(
                        f"the judge endpoint answered HTTP {exc.code}: {detail}"
                    ) from None
                last_error = f"HTTP {exc.code}"
                wait = self.retry.delay(retry + 1, _retry_after(exc.headers))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last_error = str(getattr(exc, "reason", exc))
                wait = self.retry.delay(retry + 1)
            retry += 1
            if retry < self.retry.attempts:
                logger.warning(
                    "judge request failed (%s); retry %d of %d in %.1f s",
                    last_error,
                    retry,
                    self.retry.attempts - 1,
                    wait,
                )
                self.sleep(wait)
        raise JudgeError(
            f"the judge endpoint failed {self.retry.attempts} times; last: {last_error}"
        )

    def _post(self, body: dict[str, Any]) -> bytes:
        url = self.endpoint.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        request = urllib.request.Request(
            url, json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.endpoint.timeout) as response:
            return response.read()
