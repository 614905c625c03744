"""Security against a real loopback server: a token beyond loopback, compared in constant time
and never logged; browser origins; no way out of the static folder or into another session's
recording; rate limits over all connections; sizes checked before allocation; one connection
can neither read nor steer another's sessions.

Elsewhere already: the wrong-token close (1008), the default origin policy, ``..`` in static
paths and the per-connection rate (tests/stream/test_server.py)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from framestream.cli import main as cli
from framestream.stream.protocol import ERROR_CODES, FrameFormat, FrameHeader, FrameKind
from framestream.stream.server import Server

from .wire import (
    SIZE,
    connect,
    expect_error,
    feed_seconds,
    frames,
    hello,
    input_frame,
    noise,
    recv,
    run,
    served,
    start,
)

TOKEN = "s3cret-7f1c9a"


async def http_get(server: Server, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{host}:{server.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return await asyncio.to_thread(get)


async def raw_get(server: Server, path: bytes) -> bytes:
    """The status line of a GET sent byte for byte (no client normalises the path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    line = await reader.readline()
    writer.close()
    return line


# -- authentication -----------------------------------------------------------------------------


def test_beyond_loopback_a_token_is_required_and_checked(pipelines, capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "token" in capsys.readouterr().err

    async def main():
        async with served(pipelines, host="0.0.0.0", token=TOKEN) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "hello", "version": 1}))
                await expect_error(ws, "unauthorized")
                with pytest.raises(ConnectionClosed):
                    await recv(ws)
                assert ws.close_code == 1008
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "session.start", "pipeline": "longlive"}))
                await expect_error(ws, "not_ready")  # nothing before the token
                await hello(ws, TOKEN)
                await frames(ws, await start(ws), 2)

    run(main())


def test_tokens_are_compared_in_constant_time(pipelines, monkeypatch):
    compared, original = [], hmac.compare_digest

    def compare_digest(a, b):
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr("framestream.stream.protocol.hmac.compare_digest", compare_digest)

    async def main():
        async with served(pipelines, token=TOKEN) as server, connect(server.url) as ws:
            await hello(ws, TOKEN)

    run(main())
    assert compared == [(TOKEN.encode(), TOKEN.encode())]


def test_the_token_never_reaches_a_log_or_a_repr(pipelines, caplog, tmp_path):
    (tmp_path / "index.html").write_text("<h1>page</h1>")

    async def main():
        async with served(pipelines, token=TOKEN, static_dir=tmp_path) as server:
            async with connect(server.url) as ws:
                await hello(ws, TOKEN)
                await frames(ws, await start(ws), 2)
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"type": "hello", "version": 1, "token": TOKEN + "x"}))
                error = await expect_error(ws, "unauthorized")
                assert TOKEN not in json.dumps(error)
            assert (await http_get(server, f"/?token={TOKEN}"))[0] == 200  # the page's URL
            return repr(server.config)

    with caplog.at_level(logging.DEBUG):
        config = run(main())
    assert TOKEN not in config
    # the server's records (this test's own client logs what it sends)
    logged = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")]
    assert logged and not [m for m in logged if TOKEN in m]


# -- origins ------------------------------------------------------------------------------------


def test_configured_origins_replace_the_default(pipelines):
    async def main():
        allowed = ("https://app.example",)
        async with served(pipelines, allowed_origins=allowed) as server:
            async with connect(server.url, origin="https://app.example") as ws:
                await hello(ws)
            for origin in ("https://evil.example", f"http://localhost:{server.port}", None):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.url, origin=origin)
                assert refused.value.response.status_code == 403, origin
        async with served(pipelines, allowed_origins=(*allowed, None)) as server:
            async with connect(server.url) as ws:  # no Origin: not a browser
                await hello(ws)

    run(main())


# -- paths --------------------------------------------------------------------------------------


def test_no_path_leads_out_of_the_page_or_into_a_recording(pipelines, tmp_path: Path):
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<h1>page</h1>")
    (tmp_path / "secret.txt").write_text("no")
    (page / "link.txt").symlink_to(tmp_path / "secret.txt")

    async def main():
        config = {"static_dir": page, "record_dir": tmp_path / "recordings"}
        async with served(pipelines, **config) as server, connect(server.url) as ws:
            for path in (
                b"/../secret.txt",
                b"/%2e%2e/secret.txt",
                b"/..%2fsecret.txt",
                b"/%2e%2e%5csecret.txt",
                b"/..\\secret.txt",
                b"//etc/passwd",
                b"/link.txt",  # a link out of the folder
                b"/index.html%00.txt",
                b"/recordings/../secret.txt",
                b"/recordings/1.mp4",
            ):
                assert (await raw_get(server, path)).startswith(b"HTTP/1.1 404"), path
            assert (await http_get(server, "/"))[1] == b"<h1>page</h1>"

            await hello(ws)
            session = await start(ws, record=True)
            await frames(ws, session, 3)
            await ws.send(json.dumps({"type": "stop", "session": session}))
            recording = (await recv(ws, "session.ended"))["recording"]
            assert re.fullmatch(rf"/recordings/{session}-[0-9a-f]{{32}}\.mp4", recording)
            assert (await http_get(server, recording))[0] == 200
            for guess in (f"/recordings/{session}.mp4", f"/recordings/{session}-{'0' * 32}.mp4"):
                assert (await http_get(server, guess))[0] == 404, guess

    run(main())


# -- rate limits --------------------------------------------------------------------------------


def test_rate_limits_hold_over_all_connections(pipelines):
    async def main():
        limits = {"max_messages_per_second_total": 6, "max_session_starts_per_second": 1}
        async with (
            served(pipelines, **limits) as server,
            connect(server.url) as a,
            connect(server.url) as b,
        ):
            await hello(a)
            await hello(b)
            for ws in (a, b, a, b, a, b):
                await ws.send(json.dumps({"type": "pause", "session": 7}))
            codes = [(await recv(ws, "error"))["code"] for ws in (a, b, a, b, a, b)]
            assert "rate_limited" in codes  # 8 messages in all against 6 a second

        async with served(pipelines, max_session_starts_per_second=1) as server:
            async with connect(server.url) as a, connect(server.url) as b:
                await hello(a)
                await hello(b)
                await start(a)
                message = {"type": "session.start", "pipeline": "longlive", "request_id": "r2"}
                await b.send(json.dumps({**message, "params": {"prompt": "x", **SIZE}}))
                error = await expect_error(b, "rate_limited")
                assert error["request_id"] == "r2" and "sessions a second" in error["message"]

    run(main())


def test_connections_over_the_limit_are_refused_at_the_handshake(pipelines):
    async def main():
        async with served(pipelines, max_connections=2) as server:
            async with connect(server.url) as a, connect(server.url) as b:
                await hello(a)
                await hello(b)
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.url)
                assert refused.value.response.status_code == 503
            async with connect(server.url) as c:  # freed with the others
                await hello(c)

    run(main())


# -- sizes before allocation --------------------------------------------------------------------


def _png_bomb(side: int) -> bytes:
    """A PNG of ``side`` x ``side`` zeros: a few hundred KB that decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = zlib.compressobj(9)
    row = bytes(3 * side + 1)
    data = b"".join(rows.compress(row) for _ in range(side)) + rows.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header(pipelines):
    bomb = _png_bomb(12000)  # 1.3 GB of pixels in ~420 KB, under the 1 MiB message limit
    assert len(bomb) < 1 << 20

    async def main():
        async with served(pipelines) as server, connect(server.url) as ws:
            await hello(ws)
            session = await start(ws, "streaming_vlm")
            header = FrameHeader(FrameKind.INPUT, session, 0, 0.0, FrameFormat.PNG, 64, 64)
            await ws.send(header.pack() + bomb)  # the frame header lies about the size
            error = await expect_error(ws, "frame_too_large")
            assert "declares 12000x12000" in error["message"]
            await feed_seconds(ws, session, 2)
            assert (await recv(ws, "caption"))["session"] == session

    run(main())


# -- one session per owner ----------------------------------------------------------------------


def test_a_session_cannot_be_read_or_steered_from_another_connection(pipelines):
    async def main():
        async with (
            served(pipelines) as server,
            connect(server.url) as owner,
            connect(server.url) as other,
        ):
            await hello(owner)
            await hello(other)
            video = await start(owner)
            feed = await start(owner, "streaming_vlm")
            for message in (
                {"type": "pause", "session": video},
                {"type": "resume", "session": video},
                {"type": "prompt.update", "session": video, "prompt": "a blue cube"},
                {"type": "question", "session": feed, "text": "what is there?"},
                {"type": "stop", "session": video},
                {"type": "stop", "session": feed},
            ):
                await other.send(json.dumps(message))
                error = await expect_error(other, "unknown_session")
                assert error["session"] == message["session"]
            await other.send(input_frame(feed, 0, 0.0, noise()))
            assert (await expect_error(other, "unknown_session"))["session"] == feed

            # the owner's sessions were neither paused, stopped nor switched
            await frames(owner, video, 24)
            await feed_seconds(owner, feed, 2)
            seen = []
            async with asyncio.timeout(60):
                while not any(m["type"] == "caption" for m in seen):
                    data = await owner.recv()
                    if isinstance(data, str):
                        seen.append(json.loads(data))
            assert not [m for m in seen if m["type"] in ("prompt.applied", "session.ended")]
            # and nothing of theirs reached the other connection
            await other.send(json.dumps({"type": "probe"}))
            reply = await asyncio.wait_for(other.recv(), 60)
            assert json.loads(reply)["code"] == "unknown_type", reply

    run(main())


# -- the documented error table -----------------------------------------------------------------


def test_every_error_code_is_documented():
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    table = text[text.index("`error.code` is one of:") : text.index("## HTTP endpoints")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE))
    assert documented == set(ERROR_CODES)
