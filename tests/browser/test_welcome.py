"""What the page makes of the welcome's optional fields: the size picker marks the sizes this
server cannot run in real time (``welcome.sizes``), a ``compute_full`` refusal reads as a
banner, the Generate and Watch tabs say when they run the embedded toy-world models and what
those know (``welcome.models``), and a server that sends neither (a cluster) keeps every size
on offer."""

from __future__ import annotations

import pytest

from framestream.stream.config import ServerConfig
from framestream.stream.engine import Engine, EngineConfig
from framestream.stream.protocol import PipelineInfo

from .conftest import STATIC_DIR, ServerThread

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms


@pytest.fixture(scope="module")
def default_server(pipelines):
    """The embedded default with the server's own limits: 480x832 is not too large here, only
    too slow for this CPU."""
    config = ServerConfig(port=0, static_dir=STATIC_DIR)
    with ServerThread(config, Engine(pipelines, EngineConfig(lookahead_seconds=0.5))) as server:
        yield server


def open_page(browser, server):
    from playwright.sync_api import expect

    context = browser.new_context()
    context.set_default_timeout(WAIT)
    page = context.new_page()
    page.goto(server.http_url)
    expect(page.get_by_test_id("conn-status")).to_have_attribute("data-state", "connected")
    return context, page


def options(page) -> dict[str, dict]:
    """The size picker's options by value: label, disabled, what the server said."""
    found = (
        page.get_by_test_id("gen-size")
        .locator("option")
        .evaluate_all(
            "os => os.map(o => [o.value, {text: o.textContent, disabled: o.disabled, "
            "realtime: o.dataset.realtime}])"
        )
    )
    return dict(found)


def test_sizes_too_slow_here_are_disabled_and_labelled(browser, default_server) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, default_server)
    try:
        page.get_by_test_id("gen-pipeline").select_option("longlive")
        estimates = page.evaluate("window.streamApp.conn.welcome.sizes.longlive")
        assert estimates[0]["height"] == estimates[0]["width"] == 64  # the default comes first
        picker = options(page)
        assert picker["480x832"]["disabled"] and picker["480x832"]["realtime"] == "false"
        assert "fps here" in picker["480x832"]["text"], picker
        # whether 64x64 runs in real time depends on how busy this machine was at warm-up
        assert picker[""]["text"].startswith("the model's own (64×64)")
        assert picker[""]["disabled"] == (not estimates[0]["realtime"])
        for entry in estimates:  # every estimate shows, and only the slow ones are off
            option = picker[f"{entry['height']}x{entry['width']}"]
            assert option["disabled"] == (not entry["realtime"]), (entry, option)
            assert ("fps here" in option["text"]) == (not entry["realtime"])

        # a page whose marks are stale (the device got busier) hears compute_full as a banner
        page.evaluate(
            "() => { const o = document.querySelector('[data-testid=gen-size] "
            'option[value="480x832"]\'); o.disabled = false; o.selected = true; }'
        )
        page.get_by_test_id("gen-start").click()
        banner = page.get_by_test_id("error-banner")
        expect(banner.get_by_test_id("error-code")).to_have_text("compute_full")
        expect(banner.get_by_test_id("error-message")).to_have_text(
            "The server cannot make this session in real time now; choose a smaller size or "
            "try again later."
        )
        expect(page.get_by_test_id("gen-state")).to_have_text("idle (refused: compute_full)")
        expect(page.get_by_test_id("gen-start")).to_be_enabled()
    finally:
        context.close()


def test_the_watch_tab_says_what_the_embedded_model_answers(browser, default_server) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, default_server)
    try:
        page.get_by_test_id("tab-watch").click()
        note = page.get_by_test_id("watch-model-note")
        expect(note).to_be_visible()
        expect(note).to_have_attribute("data-model", "embedded")
        expect(note).to_contain_text("it knows coloured shapes, not the real world")
        expect(note).to_contain_text("does not answer free questions well")
        expect(note).to_contain_text("--vlm-dir")
    finally:
        context.close()


def test_the_generate_tab_says_the_embedded_generator_knows_the_toy_world(
    browser, default_server
) -> None:
    from playwright.sync_api import expect

    context, page = open_page(browser, default_server)
    try:
        assert page.evaluate("window.streamApp.conn.welcome.models.longlive") == "embedded"
        note = page.get_by_test_id("gen-model-note")
        for pipeline in ("longlive", "rolling_forcing"):
            page.get_by_test_id("gen-pipeline").select_option(pipeline)
            expect(note).to_be_visible()
            expect(note).to_have_attribute("data-model", "embedded")
            expect(note).to_contain_text("they know coloured shapes, not the real world")
            expect(note).to_contain_text("--model-dir")
    finally:
        context.close()


def test_a_server_without_estimates_offers_every_size(browser) -> None:
    """A cluster's front knows its pipelines by description only: no sizes, no models."""
    from playwright.sync_api import expect

    remote = {
        "longlive": PipelineInfo("generation", 16.0, (64, 64)),
        "streaming_vlm": PipelineInfo("understanding", 2.0),
    }
    with ServerThread(ServerConfig(port=0, static_dir=STATIC_DIR), Engine(remote)) as server:
        context, page = open_page(browser, server)
        try:
            assert page.evaluate("'sizes' in window.streamApp.conn.welcome") is False
            picker = options(page)
            assert len(picker) == 6, picker
            assert all(not o["disabled"] and o["realtime"] == "unknown" for o in picker.values())
            assert picker[""]["text"] == "the model's own"
            page.get_by_test_id("tab-watch").click()
            note = page.get_by_test_id("watch-model-note")
            expect(note).to_have_attribute("data-model", "unknown")
            expect(note).to_contain_text("as well as the server's model can")
            page.get_by_test_id("tab-generate").click()
            expect(page.get_by_test_id("gen-model-note")).to_be_hidden()
        finally:
            context.close()
