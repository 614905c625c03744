"""The browser page (stream/static) in Debian's chromium against the real in-process server: a
generation session with a prompt switch, a fake camera feeding the understanding pipeline,
errors shown to the user, a recording, and a reconnect. The tiny models' output is arbitrary,
so captions are checked by count and times, never by words. Every wait has a timeout."""

from __future__ import annotations

import re
import urllib.request

import pytest

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.service import ServiceModels, build_pipelines

from .conftest import ADMIT_ALL, STATIC_DIR, ServerThread, fetch_recording

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms, for anything that depends on the models


def frames(page) -> int:
    return int(page.get_by_test_id("gen-frames").inner_text())


def start_generation(page, *, size: str = "", record: bool = False) -> None:
    """Start LongLive; ``size`` "" is the model's own (64x64 for the toy-world default)."""
    from playwright.sync_api import expect

    page.get_by_test_id("gen-pipeline").select_option("longlive")
    page.get_by_test_id("gen-size").select_option(size)
    page.get_by_test_id("gen-seed").fill("3")
    page.get_by_test_id("gen-prompt").fill("a red circle moves right on a black background")
    if record:
        page.get_by_test_id("gen-record").check()
    expect(page.get_by_test_id("gen-start")).to_be_enabled()
    page.get_by_test_id("gen-start").click()


def test_generate_switch_prompt_and_stop(page) -> None:
    from playwright.sync_api import expect

    pipelines = page.get_by_test_id("gen-pipeline").locator("option").all_inner_texts()
    assert "longlive" in pipelines and "rolling_forcing" in pipelines
    assert "streaming_vlm" not in pipelines  # understanding lives on the Watch tab
    start_generation(page)
    expect(page.get_by_test_id("gen-state")).to_contain_text("running", timeout=WAIT)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=gen-frames]').textContent) >= 8",
        timeout=WAIT,
    )
    canvas = page.get_by_test_id("gen-canvas")
    expect(canvas).to_have_attribute("data-index", re.compile(r"^\d+$"))
    assert canvas.evaluate("c => [c.width, c.height]") == [64, 64]
    # the canvas holds a decoded picture, not the blank start
    drawn = canvas.evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0)"
    )
    assert drawn

    timeline = page.get_by_test_id("timeline-entry")
    expect(timeline).to_have_count(1)
    expect(timeline.first).to_contain_text("frame 0")
    before = frames(page)
    page.get_by_test_id("gen-new-prompt").fill("a blue cube spinning slowly")
    page.get_by_test_id("gen-transition").fill("1")
    page.get_by_test_id("gen-switch").click()
    expect(timeline).to_have_count(2)
    second = timeline.nth(1)
    expect(second).to_contain_text("a blue cube spinning slowly")
    expect(second.get_by_test_id("timeline-at")).to_contain_text(
        re.compile(r"frame \d+ · \d+\.\d\d s"), timeout=WAIT
    )
    applied = int(re.search(r"frame (\d+)", second.inner_text()).group(1))
    assert applied >= before - 16  # after what was on screen, give or take the lookahead
    # the new prompt reaches the screen, and the timeline says how long it took
    expect(second.get_by_test_id("timeline-at")).to_contain_text("on screen", timeout=WAIT)
    expect(page.get_by_test_id("gen-step")).to_contain_text("ms", timeout=WAIT)

    page.get_by_test_id("gen-pause").click()  # the state shown is the server's acknowledgement
    expect(page.get_by_test_id("gen-state")).to_have_text(re.compile(r"paused at frame \d+"))
    page.get_by_test_id("gen-resume").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("running · session", timeout=WAIT)
    page.get_by_test_id("gen-stop").click()
    expect(page.get_by_test_id("gen-state")).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("gen-start")).to_be_enabled()
    expect(page.get_by_test_id("gen-download")).to_be_hidden()
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_watch_fake_camera_gets_captions(page) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("tab-watch").click()
    expect(page.get_by_test_id("watch-video")).to_be_visible()
    page.get_by_test_id("watch-source").select_option("camera")
    page.get_by_test_id("watch-instruction").fill("Describe what moves.")
    page.get_by_test_id("watch-start").click()
    expect(page.get_by_test_id("watch-state")).to_contain_text("running", timeout=WAIT)
    captions = page.get_by_test_id("caption-entry")
    expect(captions.nth(1)).to_be_visible(timeout=WAIT)  # two seconds of feed understood
    page.get_by_test_id("watch-question").fill("what colour is the square?")
    page.get_by_test_id("watch-ask").click()
    expect(page.get_by_test_id("question-entry")).to_have_count(1)
    expect(captions.nth(2)).to_be_visible(timeout=WAIT)

    spans = captions.evaluate_all(
        "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])"
    )
    assert len(spans) >= 3
    for i, (start, end) in enumerate(spans):
        assert end > start >= 0
        if i:
            assert start >= spans[i - 1][1] - 1e-6  # in order, one second after another
    times = captions.get_by_test_id("caption-time").all_inner_texts()
    assert all(re.fullmatch(r"\d+\.\d–\d+\.\d s", t) for t in times), times
    assert int(page.get_by_test_id("watch-sent").inner_text()) >= 4

    page.get_by_test_id("watch-stop").click()
    expect(page.get_by_test_id("watch-state")).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_too_large_size_shows_a_clear_error(page) -> None:
    from playwright.sync_api import expect

    start_generation(page, size="480x832")  # over this server's max_frame_pixels
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_have_count(1, timeout=WAIT)
    expect(banner.get_by_test_id("error-code")).to_have_text("frame_too_large")
    expect(banner.get_by_test_id("error-message")).to_contain_text("choose a smaller size")
    expect(banner.get_by_test_id("error-detail")).to_contain_text("max_frame_pixels")
    expect(page.get_by_test_id("gen-state")).to_contain_text("frame_too_large")
    expect(page.get_by_test_id("gen-start")).to_be_enabled()  # the user can try again
    banner.get_by_test_id("error-dismiss").click()
    expect(banner).to_have_count(0)


def test_wrong_token_is_explained_and_not_retried(browser, pipelines) -> None:
    from playwright.sync_api import expect

    config = ServerConfig(port=0, static_dir=STATIC_DIR, token="s3cret")
    with ServerThread(config, Engine(pipelines, ADMIT_ALL)) as server:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(server.http_url + "?token=wrong", timeout=WAIT)
            banner = page.get_by_test_id("error-banner")
            expect(banner.get_by_test_id("error-code")).to_have_text("unauthorized", timeout=WAIT)
            expect(banner.get_by_test_id("error-message")).to_contain_text("token")
            status = page.get_by_test_id("conn-status")
            expect(status).to_have_attribute("data-state", "disconnected")
            page.wait_for_timeout(1500)  # no reconnect loop with a token known to be wrong
            expect(status).to_have_attribute("data-state", "disconnected")
            expect(banner).to_have_count(1)

            page.get_by_test_id("token").fill("s3cret")
            page.get_by_test_id("connect").click()
            expect(status).to_have_attribute("data-state", "connected", timeout=WAIT)
            assert page.evaluate("localStorage.getItem('stream.token')") == "s3cret"
        finally:
            context.close()


def test_token_from_the_url_fragment_connects(browser, pipelines) -> None:
    """#token= fills the token in without the server (or a proxy) ever seeing it in a URL."""
    from playwright.sync_api import expect

    config = ServerConfig(port=0, static_dir=STATIC_DIR, token="s3cret")
    with ServerThread(config, Engine(pipelines, ADMIT_ALL)) as server:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(server.http_url + "#token=s3cret", timeout=WAIT)
            status = page.get_by_test_id("conn-status")
            expect(status).to_have_attribute("data-state", "connected", timeout=WAIT)
            expect(page.get_by_test_id("token")).to_have_value("s3cret")
        finally:
            context.close()


def test_the_toy_world_feed_plays_on_a_server_with_a_token(browser) -> None:
    """The feed is behind the token too: the page passes it, and commentary follows."""
    from playwright.sync_api import expect

    # pipelines of its own: an engine owns its pipelines, and the package's live server's
    # engine is still running on the shared ones
    watching = build_pipelines(
        ServiceModels(cache_bytes=64 << 20, pipelines=("streaming_vlm",)), KVCacheManager()
    )
    config = ServerConfig(port=0, static_dir=STATIC_DIR, token="s3cret")
    with ServerThread(config, Engine(watching, ADMIT_ALL)) as server:
        context = browser.new_context()
        context.add_init_script("navigator.mediaDevices.enumerateDevices = async () => [];")
        try:
            page = context.new_page()
            page.goto(server.http_url + "#token=s3cret", timeout=WAIT)
            page.get_by_test_id("tab-watch").click()
            expect(page.get_by_test_id("watch-source")).to_have_value("toyworld", timeout=WAIT)
            page.get_by_test_id("watch-start").click()
            expect(page.get_by_test_id("caption-entry").nth(1)).to_be_visible(timeout=WAIT)
            assert "&token=s3cret" in page.get_by_test_id("watch-video").get_attribute("src")
            expect(page.get_by_test_id("error-banner")).to_have_count(0)
        finally:
            context.close()


def test_record_then_download(page, live_server) -> None:
    start_generation(page, record=True)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=gen-frames]').textContent) >= 8",
        timeout=WAIT,
    )
    page.get_by_test_id("gen-stop").click()
    assert fetch_recording(page, live_server, "gen-download", WAIT)[4:8] == b"ftyp"  # an MP4


def test_reconnects_after_an_unexpected_close(page) -> None:
    from playwright.sync_api import expect

    start_generation(page)
    expect(page.get_by_test_id("gen-state")).to_contain_text("running", timeout=WAIT)
    page.evaluate("window.streamApp.conn.ws.close(4000)")  # as if the network dropped
    status = page.get_by_test_id("conn-status")
    expect(status).to_contain_text(re.compile(r"reconnecting in \d+s"))
    expect(page.get_by_test_id("notice")).to_contain_text("start the session again")
    expect(page.get_by_test_id("gen-state")).to_contain_text("disconnected")
    expect(status).to_have_attribute("data-state", "connected", timeout=WAIT)
    expect(page.get_by_test_id("gen-start")).to_be_enabled()


def test_watch_a_local_video_file(page, tmp_path) -> None:
    """A file's frames carry its currentTime: captions cover the clip's seconds, in order."""
    import av
    import numpy as np
    from playwright.sync_api import expect

    clip = tmp_path / "clip.webm"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(8 * 4):  # four seconds
            rgb = np.zeros((120, 160, 3), np.uint8)
            rgb[..., 2] = 60 + 5 * i
            rgb[40:80, (4 * i) % 120 : (4 * i) % 120 + 40] = 230
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))

    page.get_by_test_id("tab-watch").click()
    page.get_by_test_id("watch-source").select_option("file")
    page.get_by_test_id("watch-file").set_input_files(str(clip))
    page.get_by_test_id("watch-start").click()
    expect(page.get_by_test_id("watch-state")).to_contain_text("running", timeout=WAIT)
    captions = page.get_by_test_id("caption-entry")
    expect(captions.nth(1)).to_be_visible(timeout=WAIT)
    spans = captions.evaluate_all(
        "els => els.map(e => [Number(e.dataset.start), Number(e.dataset.end)])"
    )
    assert spans[0][0] >= 0 and all(end <= 4.0 + 1e-6 for _, end in spans), spans
    assert float(page.get_by_test_id("watch-time").inner_text().split()[0]) <= 4.0
    page.get_by_test_id("watch-stop").click()
    expect(page.get_by_test_id("watch-state")).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_watch_the_toy_world_when_there_is_no_camera(browser, live_server) -> None:
    """No camera: the Watch tab picks the server's toy-world feed and commentary follows it."""
    from playwright.sync_api import expect

    context = browser.new_context()
    context.add_init_script(
        "navigator.mediaDevices.enumerateDevices = async () => [];"  # a machine with no camera
    )
    try:
        page = context.new_page()
        page.goto(live_server.http_url, timeout=WAIT)
        page.get_by_test_id("tab-watch").click()
        expect(page.get_by_test_id("watch-source")).to_have_value("toyworld", timeout=WAIT)
        page.get_by_test_id("watch-start").click()
        expect(page.get_by_test_id("watch-state")).to_contain_text("running", timeout=WAIT)
        expect(page.get_by_test_id("caption-entry").nth(1)).to_be_visible(timeout=WAIT)
        src = page.get_by_test_id("watch-video").get_attribute("src")
        assert src.startswith("toyworld/feed.mp4?seed="), src
        page.get_by_test_id("watch-stop").click()
        expect(page.get_by_test_id("watch-state")).to_have_text("ended (stopped)", timeout=WAIT)
        expect(page.get_by_test_id("error-banner")).to_have_count(0)
    finally:
        context.close()


def test_a_page_load_has_no_missing_file(browser, live_server) -> None:
    """Every request of a page load answers, the favicon included (also at /favicon.ico, which
    browsers ask for by themselves)."""
    from playwright.sync_api import expect

    context = browser.new_context()
    try:
        page = context.new_page()
        answers: list[tuple[int, str]] = []
        page.on("response", lambda r: answers.append((r.status, r.url)))
        page.goto(live_server.http_url, timeout=WAIT)
        expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
        icon = page.locator("link[rel=icon]").get_attribute("href")
        assert icon == "favicon.svg"
        page.wait_for_load_state("networkidle")
        assert not [a for a in answers if a[0] >= 400], answers
        assert {url.rsplit("/", 1)[-1] for _, url in answers} >= {"", "app.js", "sizes.js"}
        for path in (icon, "favicon.ico"):
            with urllib.request.urlopen(live_server.http_url + path, timeout=10) as reply:
                assert reply.headers["Content-Type"] == "image/svg+xml", path
                assert b"<svg" in reply.read()
    finally:
        context.close()
