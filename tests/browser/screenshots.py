"""Screenshots of the page for docs/: both tabs with real content from the tiny models.

    python -m tests.browser.screenshots [--out docs]

Starts the real server in process (every pipeline, tiny CPU models, the page from
stream/static) and Debian's chromium with a fake camera, runs a generation session with a prompt
switch, an understanding session of the toy-world feed and a restyle session of it with a
strength change, and saves docs/screenshot-generate.png, docs/screenshot-watch.png,
docs/screenshot-restyle.png and docs/screenshot-error.png.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.service import ServiceModels, build_pipelines
from tests.browser.conftest import (
    ADMIT_ALL,
    CHROMIUM,
    CHROMIUM_ARGS,
    MAX_FRAME_PIXELS,
    STATIC_DIR,
    ServerThread,
    write_y4m,
)

WAIT = 60_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipelines = build_pipelines(ServiceModels(cache_bytes=64 << 20), KVCacheManager())
    config = ServerConfig(port=0, static_dir=STATIC_DIR, max_frame_pixels=MAX_FRAME_PIXELS)
    engine = Engine(pipelines, ADMIT_ALL)
    with tempfile.TemporaryDirectory() as tmp, ServerThread(config, engine) as server:
        camera = write_y4m(Path(tmp) / "camera.y4m", width=320, height=240, frames=64)
        browser_args = CHROMIUM_ARGS + [
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
        ]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=browser_args, headless=True
            )
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(WAIT)
            expect.set_options(timeout=WAIT)  # the models' output, on a busy CPU, takes its time
            page.goto(server.http_url)
            expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")

            # Generate: a session, one prompt switch with a transition, frames on the canvas
            page.get_by_test_id("gen-pipeline").select_option("longlive")
            page.get_by_test_id("gen-size").select_option("")  # the model's own: 64x64
            page.get_by_test_id("gen-seed").fill("7")
            page.get_by_test_id("gen-start").click()
            page.wait_for_function(
                "() => Number(document.querySelector('[data-testid=gen-frames]').textContent) > 24"
            )
            page.get_by_test_id("gen-transition").fill("2")
            page.get_by_test_id("gen-switch").click()
            expect(page.get_by_test_id("timeline-at").nth(1)).to_contain_text("on screen")
            expect(page.get_by_test_id("gen-step")).to_contain_text("ms")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out / "screenshot-generate.png", full_page=True)
            page.get_by_test_id("gen-stop").click()
            expect(page.get_by_test_id("gen-state")).to_contain_text("ended")

            # Watch: the fake camera, captions over the video and in the history, a question
            page.get_by_test_id("tab-watch").click()
            page.get_by_test_id("watch-source").select_option("toyworld")
            page.get_by_test_id("watch-start").click()
            captions = page.get_by_test_id("caption-entry")
            expect(captions.nth(1)).to_be_visible()
            page.get_by_test_id("watch-question").fill("what colour is the circle?")
            page.get_by_test_id("watch-ask").click()
            expect(captions.nth(4)).to_be_visible()
            page.screenshot(path=args.out / "screenshot-watch.png", full_page=True)
            page.get_by_test_id("watch-stop").click()
            expect(page.get_by_test_id("watch-state")).to_contain_text("ended")

            # Restyle: the toy world in, restyled beside it, the strength lowered mid-stream
            page.get_by_test_id("tab-restyle").click()
            page.get_by_test_id("restyle-source").select_option("toyworld")
            page.get_by_test_id("restyle-pipeline").select_option("longlive")
            page.get_by_test_id("restyle-start").click()
            page.wait_for_function(
                "() => Number(document.querySelector('[data-testid=restyle-frames]')"
                ".textContent) > 24"
            )
            slider = page.get_by_test_id("restyle-strength")
            slider.focus()
            for _ in range(4):
                slider.press("ArrowLeft")
            expect(page.get_by_test_id("restyle-applied")).to_have_attribute("data-strength", "0.4")
            expect(page.get_by_test_id("restyle-step")).to_contain_text("ms")
            page.wait_for_timeout(1500)
            page.screenshot(path=args.out / "screenshot-restyle.png", full_page=True)
            page.get_by_test_id("restyle-stop").click()
            expect(page.get_by_test_id("restyle-state")).to_contain_text("ended")

            # An error as the user sees it
            page.get_by_test_id("tab-generate").click()
            page.get_by_test_id("gen-size").select_option("480x832")
            page.get_by_test_id("gen-start").click()
            expect(page.get_by_test_id("error-code")).to_have_text("frame_too_large")
            expect(page.get_by_test_id("gen-state")).to_contain_text(re.compile("refused"))
            page.screenshot(path=args.out / "screenshot-error.png", full_page=False)
            browser.close()
    for name in ("generate", "watch", "restyle", "error"):
        print(args.out / f"screenshot-{name}.png")


if __name__ == "__main__":
    main()
