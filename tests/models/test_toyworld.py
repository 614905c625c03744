"""The toy world: determinism, motion, event captions, pixel measurements and the word list."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from framestream.models.toyworld import (
    BACKGROUNDS,
    COLORS,
    FIT_IOU,
    IRREGULAR,
    VOCABULARY,
    Clip,
    EventKind,
    Feed,
    Sprite,
    adherence,
    captions,
    feed,
    measure,
    parse_prompt,
    prompt,
    render,
    sample_clip,
    switch_clip,
)


def _box_centre(frame: np.ndarray, color: str) -> tuple[float, float]:
    """Centre ``(y, x)`` of the bounding box of the ``color`` blob (its shape's square)."""
    blob = measure(frame).find(color)
    assert blob is not None
    y0, x0, y1, x1 = blob.bbox
    return (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2


def _words(text: str) -> set[str]:
    return set(text.split())


def test_same_seed_same_clip_and_text_different_seeds_differ() -> None:
    def make(seed: int) -> tuple[np.ndarray, str, list]:
        clip = sample_clip(np.random.default_rng(seed), max_objects=3, transient=0.5)
        return render(clip), prompt(clip), captions(clip)

    frames, text, caps = make(7)
    again = make(7)
    np.testing.assert_array_equal(frames, again[0])
    assert (text, caps) == again[1:]
    other = make(8)
    assert not np.array_equal(frames, other[0]) or text != other[1]


def test_render_shape_dtype_and_background() -> None:
    rng = np.random.default_rng(0)
    clip = sample_clip(rng, seconds=2.0, fps=10.0, size=(48, 80))
    frames = render(clip)
    assert frames.shape == (20, 48, 80, 3) and frames.dtype == np.uint8
    assert clip.num_frames == 20 and len(captions(clip)) == 2
    np.testing.assert_array_equal(frames[0, 0, 0], BACKGROUNDS[clip.background])
    assert measure(frames[0]).background == clip.background


def test_centroid_follows_velocity() -> None:
    sprite = Sprite("circle", "red", 6.0, (30.0, 10.0), (0.0, 20.0))
    clip = Clip("black", (sprite,), (64, 64), 16.0, 32)
    frames = render(clip)
    centroids = np.array([measure(f).find("red").centroid for f in frames])  # [T, 2]
    np.testing.assert_allclose(centroids, sprite.positions(clip.size, clip.times), atol=0.15)
    np.testing.assert_allclose(np.diff(centroids[:, 1]), 20.0 / 16.0, atol=0.2)
    assert prompt(clip) == "a red circle moves right on a black background"


def test_every_shape_tracks_its_simulated_centre() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        clip = sample_clip(rng, seconds=2.0)
        sprite = clip.sprites[0]
        frames = render(clip)
        centres = np.array([_box_centre(f, sprite.color) for f in frames])
        np.testing.assert_allclose(centres, sprite.positions(clip.size, clip.times), atol=1.0)


def test_bounce_reverses_motion_and_is_captioned_in_its_second() -> None:
    sprite = Sprite("square", "green", 6.0, (20.0, 10.0), (0.0, 20.0))
    clip = Clip("gray", (sprite,), (64, 64), 16.0, 80)
    # hi = 64 - 0.5 - 6 = 57.5, reached after 47.5 / 20 = 2.375 s: first shown at frame 38
    assert [(e.frame, e.kind, e.edge) for e in clip.events()] == [(38, EventKind.BOUNCES, "right")]
    x = np.array([_box_centre(f, "green")[1] for f in render(clip)])
    assert x[36] < x[37] and x[39] < x[38]
    texts = [c.text for c in captions(clip)]
    assert texts[2] == "the green square bounces at the right edge"
    assert all("bounces" not in t for i, t in enumerate(texts) if i != 2)
    assert texts[1] == "the green square moves right" and texts[3] == "the green square moves left"
    assert prompt(clip) == "a green square bounces left and right on a gray background"


def test_bounces_turn_the_measured_motion_in_random_clips() -> None:
    rng = np.random.default_rng(2)
    seen = 0
    for _ in range(30):
        clip = sample_clip(rng, seconds=3.0)
        sprite = clip.sprites[0]
        frames = render(clip)
        for event in clip.events():
            n = event.frame
            if event.kind is not EventKind.BOUNCES or not 2 <= n < clip.num_frames - 1:
                continue
            axis = sprite.axis
            toward = 1 if event.edge in ("right", "bottom") else -1
            pos = [_box_centre(frames[i], sprite.color)[axis] for i in (n - 2, n - 1, n, n + 1)]
            assert toward * (pos[1] - pos[0]) > 0 and toward * (pos[3] - pos[2]) < 0
            seen += 1
    assert seen >= 5


def test_appear_and_disappear_are_captioned_in_their_seconds() -> None:
    sprite = Sprite("square", "green", 7.0, (32.0, 32.0), appear=1.3, disappear=3.6)
    clip = Clip("brown", (sprite,), (64, 64), 16.0, 80)
    # shown from frame ceil(1.3 * 16) = 21 to ceil(3.6 * 16) = 58, exclusive
    frames = render(clip)
    assert [measure(frames[i]).color for i in (20, 21, 57, 58)] == [None, "green", "green", None]
    assert [c.text for c in captions(clip)] == [
        "",
        "a green square appears",
        "the green square is still",
        "the green square disappears",
        "",
    ]
    assert [c.text for c in captions(clip, idle=False)][2] == ""
    assert (
        prompt(clip) == "a green square appears and is still and disappears on a brown background"
    )


def test_measure_recovers_color_and_shape_on_clean_renders() -> None:
    rng = np.random.default_rng(3)
    colors = shapes = total = 0
    for size in ((64, 64), (48, 96)):
        for _ in range(100):
            clip = sample_clip(rng, seconds=1.0, size=size)
            sprite = clip.sprites[0]
            for frame in render(clip)[::5]:
                m = measure(frame)
                colors += m.color == sprite.color
                shapes += m.shape == sprite.shape
                total += 1
    assert colors / total >= 0.95
    assert shapes / total >= 0.97


_GRAY = BACKGROUNDS["gray"]
_DIAMOND = np.array([(32, 20), (44, 32), (32, 44), (20, 32)], np.int32)  # (x, y) corners


def _lobes(frame: np.ndarray, rgb) -> None:
    """The kind of blob generators drew: round lobes, centroid near the box centre."""
    for xy in ((26, 28), (38, 26), (32, 38)):
        cv2.circle(frame, xy, 7, rgb, -1)


def _lump(draw) -> np.ndarray:
    """A 64x64 gray frame with one purple region drawn by ``draw(canvas, rgb)``."""
    frame = np.full((64, 64, 3), _GRAY, np.uint8)
    draw(frame, COLORS["purple"])
    return frame


@pytest.mark.parametrize(
    "draw",
    [
        _lobes,
        # a diamond with a limb
        lambda f, c: (cv2.fillConvexPoly(f, _DIAMOND, c), cv2.line(f, (38, 38), (50, 50), c, 4)),
        # a diamond with a quarter bitten out
        lambda f, c: (
            cv2.fillConvexPoly(f, _DIAMOND, c),
            cv2.circle(f, (36, 36), 8, _GRAY, -1),
        ),
        # a long ellipse: every shape fills a square box
        lambda f, c: cv2.ellipse(f, (32, 32), (14, 7), 0, 0, 360, c, -1),
    ],
    ids=["lobes", "limb", "bite", "ellipse"],
)
def test_blobs_that_fit_no_shape_are_irregular_and_fail_strict_adherence(draw) -> None:
    from framestream.models.toyworld import color_adherence

    frame = _lump(draw)
    blob = measure(frame).find("purple")
    assert blob is not None and blob.shape == IRREGULAR
    for shape in ("circle", "square", "triangle", "diamond"):
        text = f"a purple {shape} is still on a gray background"
        assert adherence(frame[None], text) == 0.0
        assert color_adherence(frame[None], text) == 1.0


def test_a_stray_blob_beside_a_lump_does_not_excuse_its_shape() -> None:
    # lobes with a small yellow blob against them: the yellow is no sprite the prompt names,
    # so it hides nothing the prompt asks for and the lump is judged (and fails)
    frame = _lump(_lobes)
    cv2.rectangle(frame, (44, 30), (49, 35), COLORS["yellow"], -1)
    blob = measure(frame).find("purple")
    assert blob is not None and blob.touching == ("yellow",) and blob.shape == IRREGULAR
    assert adherence(frame[None], "a purple diamond is still on a gray background") == 0.0


def test_two_crossing_sprites_of_the_prompt_leave_their_shapes_untold() -> None:
    # a square over part of a diamond: the diamond's visible region fits no template, but the
    # square the prompt names may hide the rest of it
    frame = _lump(lambda f, c: cv2.fillConvexPoly(f, _DIAMOND, c))
    cv2.rectangle(frame, (30, 30), (50, 50), COLORS["yellow"], -1)
    diamond = measure(frame).find("purple")
    assert diamond is not None and diamond.touching == ("yellow",)
    assert diamond.shape != "diamond"
    text = "a purple diamond is still and a yellow square is still on a gray background"
    assert adherence(frame[None], text) == 1.0


def test_clean_shapes_fit_their_templates() -> None:
    for shape, half in itertools.product(("circle", "square", "triangle", "diamond"), (6.4, 10.2)):
        clip = Clip("gray", (Sprite(shape, "purple", half, (30.3, 33.6)),), (64, 64), 16, 1)
        blob = measure(render(clip)[0]).find("purple")
        assert blob is not None and blob.shape == shape and blob.fit >= FIT_IOU


def test_shape_verdicts_say_what_each_named_sprite_was_drawn_as() -> None:
    from framestream.models.toyworld.measure import shape_verdicts, verdict_table

    square = Clip("gray", (Sprite("square", "purple", 8.0, (30.0, 30.0)),), (64, 64), 16, 4)
    frames = render(square)
    text = "a purple diamond is still and a red circle is still on a gray background"
    # the purple sprite is drawn as a square where a diamond was asked for; the red one is gone
    assert verdict_table(shape_verdicts(frames, text)) == {
        "circle": {"missing": len(frames)},
        "diamond": {"square": len(frames)},
    }
    measured = [measure(f) for f in frames]  # measurements count as the frames they read
    assert shape_verdicts(measured, text) == shape_verdicts(frames, text)
    untold = _lump(lambda f, c: cv2.fillConvexPoly(f, _DIAMOND, c))
    cv2.rectangle(untold, (30, 30), (50, 50), COLORS["yellow"], -1)
    text = "a purple diamond is still and a yellow square is still on a gray background"
    assert shape_verdicts(untold[None], text)["diamond", "untold"] == 1


def test_adherence_separates_matching_and_mismatching_prompts() -> None:
    rng = np.random.default_rng(4)
    for _ in range(10):
        clip = sample_clip(rng, seconds=1.0, max_objects=2)
        frames = render(clip)
        assert adherence(frames, prompt(clip)) >= 0.9
        other = sample_clip(rng, seconds=1.0)
        if other.sprites[0].color not in {s.color for s in clip.sprites}:
            assert adherence(frames, prompt(other)) <= 0.1
    empty = render(Clip("black", (), (32, 32), 8.0, 4))
    assert adherence(empty, "no shapes on a black background") == 1.0
    assert adherence(empty, "a red circle is still on a black background") == 0.0


def test_switch_changes_prompt_and_flips_adherence() -> None:
    for seed in range(8):
        switch = switch_clip(np.random.default_rng(seed), seconds=4.0, switch_at=2.0)
        assert switch.before != switch.after and switch.switch_frame == 32
        frames = render(switch.clip)
        head, tail = frames[: switch.switch_frame], frames[switch.switch_frame :]
        assert adherence(head, switch.before) >= 0.9 and adherence(head, switch.after) <= 0.1
        assert adherence(tail, switch.after) >= 0.9 and adherence(tail, switch.before) <= 0.1
        text = captions(switch.clip)[2].text
        assert "disappears" in text and "appears" in text
        assert "appears" not in switch.after and "disappears" not in switch.before


def test_feed_is_endless_deterministic_and_captioned() -> None:
    world = Feed(5, size=(32, 48), fps=8.0)
    stamps, frames = zip(*itertools.islice(world.frames(), 24), strict=True)
    np.testing.assert_allclose(np.diff(stamps), 1 / 8.0)
    assert frames[0].shape == (32, 48, 3)
    _, first = next(feed(5, size=(32, 48), fps=8.0))
    np.testing.assert_array_equal(first, frames[0])
    # any window is the same whatever was asked before
    assert Feed(5, (32, 48), 8.0).caption(40) == world.caption(40)
    kinds = {e.kind for e in world.window(0, 8 * 60).events()}
    assert {EventKind.APPEARS, EventKind.DISAPPEARS} <= kinds


def test_every_word_is_in_the_vocabulary() -> None:
    rng = np.random.default_rng(6)
    texts = []
    for _ in range(100):
        clip = sample_clip(rng, max_objects=3, transient=0.5)
        texts += [prompt(clip), *(c.text for c in captions(clip))]
        visible = [s for i, s in enumerate(clip.sprites) if clip.visible(i).any()]
        parsed = parse_prompt(prompt(clip))
        assert parsed.background == clip.background
        assert [(o.color, o.shape) for o in parsed.objects] == [(s.color, s.shape) for s in visible]
    switch = switch_clip(rng)
    texts += [switch.before, switch.after]
    world = Feed(0)
    texts += [world.caption(k).text for k in range(60)]
    texts.append(prompt(Clip("gray", (), (16, 16), 4.0, 4)))
    unknown = set().union(*map(_words, texts)) - set(VOCABULARY)
    assert not unknown
    assert "an orange" in " ".join(texts) or "orange" not in " ".join(texts)


def test_invalid_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="one axis"):
        Sprite("circle", "red", 5.0, (10.0, 10.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        Sprite("hexagon", "red", 5.0, (10.0, 10.0))
    with pytest.raises(ValueError, match="leaves"):
        Clip("black", (Sprite("circle", "red", 5.0, (2.0, 10.0)),), (32, 32))
    with pytest.raises(ValueError, match="switch_at"):
        switch_clip(np.random.default_rng(0), seconds=2.0, switch_at=3.0)


def test_background_adherence_reads_the_background_from_pixels():
    from framestream.models.toyworld import background_adherence

    rng = np.random.default_rng(4)
    clip = sample_clip(rng, seconds=0.5, fps=16, size=(64, 64), max_objects=2)
    frames, text = render(clip), prompt(clip)
    assert background_adherence(frames, text) == 1.0
    other = next(b for b in BACKGROUNDS if f" {b} background" not in text)
    assert (
        background_adherence(frames, text.rsplit(" on a ", 1)[0] + f" on a {other} background")
        == 0.0
    )
    with pytest.raises(ValueError, match="no frames|at least one"):
        background_adherence(frames[:0], text)


def test_color_adherence_ignores_shapes_but_not_colours():
    from framestream.models.toyworld import adherence, color_adherence

    frames = render(Clip("gray", (Sprite("square", "red", 8.0, (32.0, 32.0)),), (64, 64), 16, 4))
    assert adherence(frames, "a red square is still") == 1.0
    assert adherence(frames, "a red circle is still") == 0.0  # the shape is read and wrong
    assert color_adherence(frames, "a red circle is still") == 1.0  # the colour is right
    assert color_adherence(frames, "a blue square is still") == 0.0
    # every sprite the prompt names must be there
    assert color_adherence(frames, "a red square is still and a blue circle is still") == 0.0
