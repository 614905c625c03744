"""Fixtures of the browser tests: Debian's chromium (installed with apt when missing and root),
driven through Playwright's sync API, against the real server (every pipeline, tiny models)
running in process on a background thread's event loop.

Nothing is downloaded by Playwright (``playwright install`` is never run): the browser is the
distribution's ``/usr/bin/chromium``. Without it the browser tests skip with the reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.server import Server, build_server
from framestream.stream.service import ServiceModels, build_pipelines
from tests.admission import ANY_COMPUTE

STATIC_DIR = Path(__file__).resolve().parents[2] / "stream" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The largest frame the test server admits: 480x832 on the page is then refused (frame_too_large)
MAX_FRAME_PIXELS = 256 * 256
APT_TIMEOUT = 600
# The page's tests must not hang on how busy the machine was when the pipelines were timed at
# warm-up: their server admits any session by compute (test_welcome.py keeps the defaults)
ADMIT_ALL = EngineConfig(lookahead_seconds=0.5, **ANY_COMPUTE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _find_chromium() -> str | None:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium; installed once with apt when missing and running as root."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    found = _find_chromium()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(
                "apt-get update && apt-get install -y chromium",
                shell=True,
                check=True,
                env=env,
                timeout=APT_TIMEOUT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"chromium is missing and apt-get could not install it: {exc}")
        found = _find_chromium()
    if found is None:
        pytest.skip(
            "chromium is missing (/usr/bin/chromium); install it with "
            "`apt-get install chromium` (as root) to run the browser tests"
        )
    return found


def write_y4m(path: Path, width: int = 64, height: int = 48, frames: int = 16) -> Path:
    """A small YUV4MPEG2 clip (4:2:0) for chromium's fake camera: a bright square moving over a
    gradient whose colour drifts (written by hand: a header, then FRAME + Y, U, V planes)."""
    header = f"YUV4MPEG2 W{width} H{height} F8:1 Ip A1:1 C420jpeg\n".encode()
    chunks = [header]
    side = max(8, height // 3)
    rows = np.linspace(30, 110, height, dtype=np.float32)[:, None]
    for i in range(frames):
        y = np.broadcast_to(rows, (height, width)).astype(np.uint8)
        x0 = (i * max(2, width // 16)) % (width - side)
        y0 = (height - side) // 2
        y[y0 : y0 + side, x0 : x0 + side] = 225
        u = np.full((height // 2, width // 2), 90 + (5 * i) % 80, np.uint8)
        v = np.full((height // 2, width // 2), 170 - (3 * i) % 60, np.uint8)
        chunks += [b"FRAME\n", y.tobytes(), u.tobytes(), v.tobytes()]
    path.write_bytes(b"".join(chunks))
    return path


class ServerThread:
    """The real server on its own event loop in a daemon thread."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Server = build_server(config, engine)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"


def fetch_recording(page, server: ServerThread, testid: str, timeout_ms: float) -> bytes:
    """What a tab's download link (``testid``) offers once it shows: a file under /recordings/
    that the server sends as video/mp4."""
    from playwright.sync_api import expect

    link = page.get_by_test_id(testid)
    expect(link).to_be_visible(timeout=timeout_ms)
    href = link.get_attribute("href")
    assert re.fullmatch(r"/recordings/\d+-[0-9a-f]{32}\.mp4", href), href
    with urllib.request.urlopen(server.http_url.rstrip("/") + href, timeout=30) as reply:
        assert reply.headers["Content-Type"] == "video/mp4"
        return reply.read()


@pytest.fixture(scope="package")
def pipelines():
    return build_pipelines(ServiceModels(cache_bytes=64 << 20), KVCacheManager())


@pytest.fixture(scope="package")
def live_server(pipelines, tmp_path_factory) -> Iterator[ServerThread]:
    config = ServerConfig(
        port=0,
        static_dir=STATIC_DIR,
        max_frame_pixels=MAX_FRAME_PIXELS,
        record_dir=tmp_path_factory.mktemp("recordings"),
    )
    with ServerThread(config, Engine(pipelines, ADMIT_ALL)) as server:
        yield server


@pytest.fixture(scope="package")
def browser(chromium_path, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    camera = write_y4m(tmp_path_factory.mktemp("camera") / "camera.y4m")
    args = CHROMIUM_ARGS + [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=args, headless=True, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh page (own storage) on the live server's page, connected."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(live_server.http_url)
    expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
    page.console_log = console  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
        assert not [m for m in console if m.startswith("pageerror")], console
