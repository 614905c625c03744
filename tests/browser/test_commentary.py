"""The Generate tab's commentary: with the checkbox on, the server's understanding model watches
the generated frames and the page shows each caption over the video while the frames it
describes are on screen."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms, for anything that depends on the models


def test_commentary_captions_show_over_the_generated_video(page) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("gen-pipeline").select_option("longlive")
    page.get_by_test_id("gen-size").select_option("64x64")
    expect(page.get_by_test_id("gen-commentary")).to_be_enabled()
    page.get_by_test_id("gen-commentary").check()
    page.get_by_test_id("gen-start").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("running", timeout=WAIT)
    overlay = page.get_by_test_id("gen-overlay")
    expect(overlay).not_to_be_empty(timeout=WAIT)  # the toy model names the shapes it sees
    expect(overlay).to_be_visible()
    # the caption on screen describes the second the canvas shows
    shown = page.evaluate(
        """() => ({
          frame: Number(document.querySelector('[data-testid=gen-overlay]').dataset.frame),
          index: Number(document.querySelector('[data-testid=gen-canvas]').dataset.index),
          fps: window.streamApp.gen.fps,
        })"""
    )
    assert shown["frame"] <= shown["index"] < shown["frame"] + 4 * shown["fps"]
    assert shown["frame"] % shown["fps"] == 0  # captions cover whole seconds of the video
    page.get_by_test_id("gen-stop").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("ended (stopped)", timeout=WAIT)
    page.get_by_test_id("gen-commentary").uncheck()
    page.get_by_test_id("gen-start").click()
    expect(page.get_by_test_id("gen-state")).to_contain_text("running", timeout=WAIT)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=gen-frames]').textContent) >= 48",
        timeout=WAIT,
    )
    expect(overlay).to_be_empty()  # no commentary asked for, none shown
    page.get_by_test_id("gen-stop").click()
