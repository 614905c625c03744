"""Questions about a toy-world second are asked only when the ground truth answers them over
the whole second, their answers say that truth, and replies are scored by content."""

from __future__ import annotations

import random

from framestream.models.toyworld import Clip, Feed, Sprite
from framestream.models.toyworld.questions import KINDS, Question, answer_is_right, ask, questions


def _clip(*sprites: Sprite, num_frames: int = 2) -> Clip:
    return Clip("black", sprites, (64, 64), 2.0, num_frames, 0)


def test_questions_about_two_steady_sprites() -> None:
    clip = _clip(
        Sprite("circle", "red", 6, (20.0, 20.0), (0.0, 4.0)),
        Sprite("square", "blue", 6, (40.0, 40.0)),
    )
    got = {(q.kind, q.text, q.answer, q.truth) for q in questions(clip)}
    assert got == {
        ("colour", "what colour is the circle?", "the circle is red", "red"),
        ("colour", "what colour is the square?", "the square is blue", "blue"),
        ("shape", "what shape is the red one?", "the red one is a circle", "circle"),
        ("shape", "what shape is the blue one?", "the blue one is a square", "square"),
        ("count", "how many shapes are there?", "there are two shapes", "two"),
        ("direction", "which way is the red circle moving?", "the red circle moves right", "right"),
        ("direction", "which way is the blue square moving?", "the blue square is still", "still"),
    }


def test_no_question_the_second_does_not_answer() -> None:
    """Two circles: no colour question about "the circle"; one comes mid-second: no count
    and nothing about it; a bounce mid-second: no direction for that sprite."""
    clip = _clip(
        Sprite("circle", "red", 6, (20.0, 57.0), (0.0, 8.0)),  # bounces at the right edge
        Sprite("circle", "green", 6, (40.0, 20.0), appear=0.5),
    )
    kinds = [(q.kind, q.truth) for q in questions(clip)]
    assert kinds == [("shape", "circle")]


def test_every_answer_is_right_about_its_own_truth() -> None:
    feed = Feed(3, (64, 64), 2.0)
    seen = set()
    for second in range(30):
        for phrasing in range(4):
            for q in questions(feed.second(second), phrasing):
                seen.add(q.kind)
                assert answer_is_right(q, q.answer)
    assert seen == set(KINDS)
    rng = random.Random(0)
    counts = [ask(feed.second(k), rng, "count") for k in range(30)]
    assert all(q is None or q.kind == "count" for q in counts) and any(counts)
    assert ask(feed.second(5), rng, "count") is None  # a sprite appears mid-second


def test_answers_are_scored_by_content() -> None:
    colour = Question("colour", "what colour is the circle?", "the circle is red", "red")
    assert answer_is_right(colour, "red")
    assert answer_is_right(colour, "the red circle moves left")
    assert not answer_is_right(colour, "the circle is red and the square is blue")
    assert not answer_is_right(colour, "a circle appears")
    count = Question("count", "how many shapes are there?", "there are no shapes", "no")
    assert answer_is_right(count, "zero") and not answer_is_right(count, "there is one shape")
    still = Question("direction", "which way is it moving?", "the red circle is still", "still")
    assert not answer_is_right(still, "the red circle moves left")
