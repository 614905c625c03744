"""The Restyle tab in Debian's chromium against the real in-process server: the toy-world feed
goes in as input frames, restyled frames come back and are drawn beside it, the strength slider
and a prompt switch take effect mid-stream (the server's restyle.applied and prompt.applied are
shown), the recording downloads, and a refused start reads as one banner. The tiny models'
pictures are arbitrary, so frames are checked by count, index and change, never by content.
Every wait has a timeout."""

from __future__ import annotations

import re

import pytest

from .conftest import fetch_recording

pytestmark = pytest.mark.browser

WAIT = 30_000  # ms, for anything that depends on the models


def wait_count(page, testid: str, count: int) -> None:
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid={testid}]').textContent) >= {count}",
        timeout=WAIT,
    )


def canvas_pixels(page) -> tuple[int, list[int]]:
    """The index of the frame on the output canvas and its pixels (RGBA)."""
    index, data = page.get_by_test_id("restyle-canvas").evaluate(
        "c => [Number(c.dataset.index), "
        "Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]"
    )
    return index, data


def open_tab(page, source: str = "toyworld", size: str = "", pipeline: str = "longlive") -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("tab-restyle").click()
    expect(page.get_by_test_id("restyle-video")).to_be_visible()
    pipelines = page.get_by_test_id("restyle-pipeline").locator("option").all_inner_texts()
    assert "longlive" in pipelines and "rolling_forcing" in pipelines, pipelines
    assert "streaming_vlm" not in pipelines  # understanding restyles nothing
    page.get_by_test_id("restyle-source").select_option(source)
    page.get_by_test_id("restyle-pipeline").select_option(pipeline)
    page.get_by_test_id("restyle-size").select_option(size)
    page.get_by_test_id("restyle-seed").fill("5")
    page.get_by_test_id("restyle-prompt").fill("a red circle on a black background")


def test_restyle_the_toy_world_with_live_strength_and_prompt(page, live_server) -> None:
    from playwright.sync_api import expect

    open_tab(page)
    expect(page.get_by_test_id("restyle-strength-value")).to_have_text("0.60")
    page.get_by_test_id("restyle-record").check()
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running · session", timeout=WAIT)
    expect(state).to_contain_text("longlive 64×64")
    # the server echoes the strength it started with, from the first frame
    applied = page.get_by_test_id("restyle-applied")
    expect(applied).to_have_attribute("data-strength", "0.6")
    expect(applied).to_have_attribute("data-frame", "0")
    src = page.get_by_test_id("restyle-video").get_attribute("src")
    assert src.startswith("toyworld/feed.mp4?seed="), src

    wait_count(page, "restyle-frames", 12)  # restyled frames arrive and are counted
    assert int(page.get_by_test_id("restyle-sent").inner_text()) >= 9  # a first chunk's input
    assert page.get_by_test_id("restyle-canvas").evaluate("c => [c.width, c.height]") == [64, 64]
    first_index, first = canvas_pixels(page)
    assert any(first), "the canvas holds a decoded picture, not the blank start"
    page.wait_for_function(
        "i => Number(document.querySelector('[data-testid=restyle-canvas]').dataset.index) > i",
        arg=first_index,
        timeout=WAIT,
    )
    later_index, later = canvas_pixels(page)
    assert later_index > first_index and later != first  # the output moves on
    # the server's metrics: input frames taken, and its input-to-output latency p50 / p95
    expect(page.get_by_test_id("restyle-latency")).to_have_text(
        re.compile(r"^\d+ / \d+ ms$"), timeout=WAIT
    )
    assert int(page.get_by_test_id("restyle-taken").inner_text()) >= 9

    # the slider, moved as a person does (each arrow key one 0.05 step), sends restyle.update;
    # the page shows the strength once the server applies it, with the frame it starts at
    frames_before = int(page.get_by_test_id("restyle-frames").inner_text())
    slider = page.get_by_test_id("restyle-strength")
    slider.focus()
    for _ in range(6):
        slider.press("ArrowLeft")
    expect(page.get_by_test_id("restyle-strength-value")).to_have_text("0.30")
    expect(applied).to_have_attribute("data-strength", "0.3", timeout=WAIT)
    assert int(applied.get_attribute("data-frame")) >= frames_before - 16  # not in the past
    expect(applied).to_contain_text(re.compile(r"^0\.30 from frame \d+$"))
    timeline = page.get_by_test_id("restyle-timeline").get_by_test_id("timeline-entry")
    expect(timeline.filter(has_text="strength 0.30")).to_have_count(1)

    page.get_by_test_id("restyle-new-prompt").fill("a blue square on a gray background")
    page.get_by_test_id("restyle-switch").click()
    switched = timeline.filter(has_text="a blue square on a gray background")
    expect(switched.get_by_test_id("timeline-at")).to_contain_text(
        re.compile(r"frame \d+ · \d+\.\d\d s"), timeout=WAIT
    )
    count = int(page.get_by_test_id("restyle-frames").inner_text())
    wait_count(page, "restyle-frames", count + 12)  # restyling goes on under the new prompt
    expect(page.get_by_test_id("restyle-step")).to_contain_text("ms", timeout=WAIT)

    page.get_by_test_id("restyle-stop").click()
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("restyle-start")).to_be_enabled()
    assert page.get_by_test_id("restyle-video").get_attribute("src") is None  # the feed closed
    expect(page.get_by_test_id("error-banner")).to_have_count(0)

    assert fetch_recording(page, live_server, "restyle-download", WAIT)[4:8] == b"ftyp"  # an MP4


def test_pause_holds_the_feed_and_the_restyling_and_resume_goes_on(page) -> None:
    """Pause stops the input (the toy world's video stands still, nothing more is sent) and the
    restyling (the state says where, no restyled frame from there on comes); Resume plays the
    feed on from where it stood, its timestamps going on from there, and restyled frames come
    again with later indices. Stop while paused resets the buttons."""
    from playwright.sync_api import expect

    open_tab(page)
    pause, resume = page.get_by_test_id("restyle-pause"), page.get_by_test_id("restyle-resume")
    expect(pause).to_be_disabled()
    expect(resume).to_be_disabled()
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running · session", timeout=WAIT)
    expect(pause).to_be_enabled()
    expect(resume).to_be_disabled()
    wait_count(page, "restyle-frames", 12)

    pause.click()
    expect(pause).to_be_disabled()
    expect(resume).to_be_enabled()
    expect(state).to_have_text(re.compile(r"^paused at frame \d+$"), timeout=WAIT)
    held = int(state.inner_text().rsplit(" ", 1)[1])
    video = page.get_by_test_id("restyle-video")
    assert video.evaluate("v => v.paused")
    page.wait_for_timeout(3000)  # frames made before the pause took hold land meanwhile
    standing = page.evaluate(
        """() => ({time: document.querySelector('[data-testid=restyle-video]').currentTime,
                   sent: window.streamApp.restyle.index, last: window.streamApp.restyle.last,
                   frames: window.streamApp.restyle.frames})"""
    )
    page.wait_for_timeout(2000)
    assert video.evaluate("v => v.currentTime") == standing["time"]  # its timeline stood still
    assert int(page.get_by_test_id("restyle-sent").inner_text()) == standing["sent"]
    assert int(page.get_by_test_id("restyle-frames").inner_text()) == standing["frames"]
    index, _ = canvas_pixels(page)
    assert index < held, (index, held)
    expect(state).to_have_text(f"paused at frame {held}")

    resume.click()
    expect(pause).to_be_enabled()
    expect(resume).to_be_disabled()
    expect(state).to_contain_text("running · session", timeout=WAIT)
    assert not video.evaluate("v => v.paused")
    wait_count(page, "restyle-frames", standing["frames"] + 12)
    page.wait_for_function(
        "i => Number(document.querySelector('[data-testid=restyle-canvas]').dataset.index) >= i",
        arg=held,
        timeout=WAIT,
    )
    after, _ = canvas_pixels(page)
    page.wait_for_function(
        "i => Number(document.querySelector('[data-testid=restyle-canvas]').dataset.index) > i",
        arg=after,
        timeout=WAIT,
    )
    # its timestamps are the video's currentTime, which stood still while paused: they go on
    # from where it paused, never back
    resumed = page.evaluate("() => window.streamApp.restyle.last.timestamp")
    played = video.evaluate("v => v.currentTime")
    assert standing["last"]["timestamp"] <= resumed <= played, (standing, resumed, played)

    pause.click()
    expect(state).to_have_text(re.compile(r"^paused at frame \d+$"), timeout=WAIT)
    page.get_by_test_id("restyle-stop").click()
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)
    expect(pause).to_be_disabled()
    expect(resume).to_be_disabled()
    expect(page.get_by_test_id("restyle-start")).to_be_enabled()
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


@pytest.mark.parametrize("pipeline", ["longlive", "rolling_forcing"])
def test_the_webcam_is_restyled_on_the_wall_clock(page, pipeline: str) -> None:
    """Chromium's fake camera (the fixture's clip), by either pipeline: timestamps count seconds
    since the start."""
    from playwright.sync_api import expect

    open_tab(page, source="camera", pipeline=pipeline)
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running · session", timeout=WAIT)
    expect(state).to_contain_text(pipeline)
    wait_count(page, "restyle-frames", 12)
    first, last = page.evaluate(
        "() => [window.streamApp.restyle.first.timestamp, window.streamApp.restyle.last.timestamp]"
    )
    assert 0 <= first < last, (first, last)
    page.get_by_test_id("restyle-stop").click()
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_a_paused_webcam_s_clock_skips_the_pause(page) -> None:
    """A camera's timestamps count the wall clock since the start, less the time paused: the
    input sent after a pause of five seconds goes on from where it paused (checked with that
    much room)."""
    from playwright.sync_api import expect

    open_tab(page, source="camera")
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running · session", timeout=WAIT)
    wait_count(page, "restyle-sent", 9)
    page.get_by_test_id("restyle-pause").click()
    expect(state).to_have_text(re.compile(r"^paused at frame \d+$"), timeout=WAIT)
    sent, before = page.evaluate(
        "() => [window.streamApp.restyle.index, window.streamApp.restyle.last.timestamp]"
    )
    page.wait_for_timeout(5000)
    page.get_by_test_id("restyle-resume").click()
    wait_count(page, "restyle-sent", sent + 1)
    after = page.evaluate("() => window.streamApp.restyle.last.timestamp")
    assert before <= after < before + 5.0, (before, after)
    expect(state).to_contain_text("running · session", timeout=WAIT)
    page.get_by_test_id("restyle-stop").click()
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_a_local_file_is_restyled_to_its_end_and_the_session_stops(page, tmp_path) -> None:
    """A file's last chunk waits for a later frame: the page sends its last frame once more and
    stops the session once the frame of the file's last slot is back. Its frames go out as
    small as the 64x64 output needs (the server crops to the aspect, then resizes)."""
    import av
    import numpy as np
    from playwright.sync_api import expect

    clip = tmp_path / "clip.webm"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(8 * 2):  # two seconds
            rgb = np.full((120, 160, 3), 40, np.uint8)
            rgb[40:80, (8 * i) % 120 : (8 * i) % 120 + 40] = (230, 40, 40)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))

    open_tab(page, source="file")
    page.get_by_test_id("restyle-file").set_input_files(str(clip))
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running · session", timeout=WAIT)
    expect(state).to_have_text("ended (stopped)", timeout=WAIT)  # by itself, at the file's end
    shown = page.evaluate(
        """() => { const r = window.streamApp.restyle;
                   return {last: r.lastFrame, size: [r.last.width, r.last.height],
                           first: r.first.timestamp, end: r.last.timestamp,
                           index: Number(document.querySelector(
                             '[data-testid=restyle-canvas]').dataset.index)}; }"""
    )
    assert shown["size"] == [85, 64], shown  # 160x120 scaled to cover 64x64, no larger
    assert 1.0 <= shown["end"] - 1.0 - shown["first"] <= 2.0, shown  # the pad a second on
    assert shown["last"] >= 16 and shown["index"] >= shown["last"], shown
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_a_refused_restyle_reads_as_one_banner_and_closes_the_feed(page) -> None:
    from playwright.sync_api import expect

    open_tab(page, size="480x832")  # over this server's max_frame_pixels
    page.get_by_test_id("restyle-start").click()
    banner = page.get_by_test_id("error-banner")
    expect(banner).to_have_count(1, timeout=WAIT)
    expect(banner.get_by_test_id("error-code")).to_have_text("frame_too_large")
    expect(banner.get_by_test_id("error-message")).to_contain_text("choose a smaller size")
    state = page.get_by_test_id("restyle-state")
    expect(state).to_have_text("idle (refused: frame_too_large)")
    expect(page.get_by_test_id("restyle-start")).to_be_enabled()  # the user can try again
    assert page.get_by_test_id("restyle-video").get_attribute("src") is None

    # a source that cannot open says why, and the server is never asked
    page.get_by_test_id("restyle-source").select_option("file")
    expect(page.get_by_test_id("restyle-file")).to_be_visible()
    page.get_by_test_id("restyle-start").click()
    expect(page.get_by_test_id("notice")).to_have_text(
        "Could not open the video source: choose a video file first"
    )
    expect(state).to_have_text("idle (no source)")
    expect(banner).to_have_count(1)
    expect(page.get_by_test_id("restyle-start")).to_be_enabled()


def test_the_arrow_keys_reach_the_restyle_tab(page) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("tab-generate").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_test_id("tab-restyle")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_test_id("restyle-canvas")).to_be_visible()
    expect(page.get_by_test_id("gen-canvas")).to_be_hidden()
    page.keyboard.press("ArrowRight")  # round to the first
    expect(page.get_by_test_id("tab-generate")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_test_id("tab-restyle")).to_have_attribute("aria-selected", "true")


def test_a_lost_connection_ends_the_restyle_and_closes_its_feed(page) -> None:
    from playwright.sync_api import expect

    open_tab(page)
    page.get_by_test_id("restyle-start").click()
    state = page.get_by_test_id("restyle-state")
    expect(state).to_contain_text("running", timeout=WAIT)
    page.evaluate("window.streamApp.conn.ws.close(4000)")  # as if the network dropped
    expect(state).to_have_text("ended (disconnected)")
    expect(page.get_by_test_id("notice")).to_contain_text("start the session again")
    assert page.get_by_test_id("restyle-video").get_attribute("src") is None
    sent = page.get_by_test_id("restyle-sent").inner_text()
    status = page.get_by_test_id("conn-status")
    expect(status).to_have_attribute("data-state", "connected", timeout=WAIT)
    expect(page.get_by_test_id("restyle-start")).to_be_enabled()
    assert page.get_by_test_id("restyle-sent").inner_text() == sent  # nothing sent since
