"""The Generate tab's live controls against the real server: Stop answers at once, Resume
brings back the session's state line and restarts the jitter measurement, and sizes read
height x width everywhere, as the picker and session.start put them."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms, for anything that depends on the models


def start(page, size: str = "") -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("gen-pipeline").select_option("longlive")
    page.get_by_test_id("gen-size").select_option(size)
    page.get_by_test_id("gen-start").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("running", timeout=WAIT)


def frames(page) -> int:
    return int(page.get_by_test_id("gen-frames").inner_text())


def wait_frames(page, count: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid=gen-frames]').textContent) >= {count}",
        timeout=WAIT,
    )


def test_stop_says_stopping_at_once_and_ended_confirms(page) -> None:
    from playwright.sync_api import expect

    start(page)
    wait_frames(page, 4)
    # the session.ended of a slow engine is held back: the page must not wait for it
    page.evaluate(
        """() => {
          const ws = window.streamApp.conn.ws;
          ws.heldStop = null;
          ws.realSend = ws.send;
          ws.send = (data) => {
            if (typeof data === "string" && JSON.parse(data).type === "stop") ws.heldStop = data;
            else ws.realSend(data);
          };
        }"""
    )
    page.get_by_test_id("gen-stop").click()
    expect(page.get_by_test_id("gen-state")).to_have_text("stopping…")
    page.wait_for_timeout(1200)  # the buttons' refresh runs meanwhile and keeps them off
    for button in ("gen-stop", "gen-pause", "gen-resume", "gen-switch", "gen-start"):
        expect(page.get_by_test_id(button)).to_be_disabled()
    expect(page.get_by_test_id("gen-state")).to_have_text("stopping…")

    page.evaluate("() => { const ws = window.streamApp.conn.ws; ws.realSend(ws.heldStop); }")
    expect(page.get_by_test_id("gen-state")).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("gen-start")).to_be_enabled()
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_resume_shows_the_session_line_again(page) -> None:
    from playwright.sync_api import expect

    start(page)
    state = page.get_by_test_id("gen-state")
    started = state.inner_text()
    assert re.fullmatch(r"running · session \d+ · longlive 64×64", started), started
    wait_frames(page, 4)
    page.get_by_test_id("gen-pause").click()
    expect(state).to_have_text(re.compile(r"^paused at frame \d+$"))
    page.get_by_test_id("gen-resume").click()
    expect(state).to_have_text(started, timeout=WAIT)
    page.get_by_test_id("gen-stop").click()
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)


def test_jitter_is_measured_from_the_resume(page) -> None:
    """The arrivals the jitter is computed from all came after the resume: the pause is not
    one of its gaps (timings themselves depend on the machine, so none is asserted)."""
    from playwright.sync_api import expect

    start(page)
    wait_frames(page, 8)
    page.get_by_test_id("gen-pause").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("paused at frame")
    page.wait_for_timeout(1500)  # what was made before the pause drains meanwhile
    before = frames(page)
    resumed_at = page.evaluate("performance.now()")
    page.get_by_test_id("gen-resume").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("running ·", timeout=WAIT)
    wait_frames(page, before + 4)
    arrivals, received = page.evaluate(
        "() => [window.streamApp.gen.arrivals, "
        "Number(document.querySelector('[data-testid=gen-frames]').textContent)]"
    )
    assert arrivals and min(arrivals) > resumed_at, (arrivals, resumed_at)
    assert len(arrivals) <= received - before  # none from before the pause
    expect(page.get_by_test_id("gen-jitter")).to_have_text(re.compile(r"^±\d+ ms$"))
    page.get_by_test_id("gen-stop").click()
    expect(page.get_by_test_id("gen-state")).to_have_text("ended (stopped)", timeout=WAIT)


def test_sizes_read_height_by_width_everywhere(page) -> None:
    """A wide size: the picker, the state line and session.start all put the height first."""
    from playwright.sync_api import expect

    picker = page.get_by_test_id("gen-size")
    assert "h×w" in page.locator("label", has=picker).inner_text()
    picker.evaluate("s => s.add(new Option('64×128', '64x128'))")  # small enough for a CPU
    start(page, "64x128")
    expect(page.get_by_test_id("gen-state")).to_have_text(
        re.compile(r"^running · session \d+ · longlive 64×128$")
    )
    wait_frames(page, 2)
    canvas = page.get_by_test_id("gen-canvas")
    assert canvas.evaluate("c => [c.height, c.width]") == [64, 128]
    page.get_by_test_id("gen-stop").click()
    expect(page.get_by_test_id("gen-state")).to_have_text("ended (stopped)", timeout=WAIT)
