"""The HTTP side of the server's port: plain responses and the browser page's static files."""

from __future__ import annotations

import http
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["STATIC_DIR", "response", "static_file"]

# the browser page shipped with the package
STATIC_DIR = Path(__file__).resolve().parent / "static"


def response(
    status: http.HTTPStatus,
    body: bytes,
    kind: str = "text/plain; charset=utf-8",
    extra: tuple[tuple[str, str], ...] = (),
) -> Response:
    headers = Headers(
        [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def static_file(root: Path, path: str) -> Path | None:
    """The file under ``root`` that ``path`` names (``/`` is index.html); None if it escapes."""
    relative = path.lstrip("/") or "index.html"
    if "\\" in relative or "\0" in relative:
        return None
    root = root.resolve()
    file = (root / relative).resolve()
    if file.is_dir():
        file = file / "index.html"
    if not file.is_relative_to(root) or not file.is_file():
        return None
    return file
