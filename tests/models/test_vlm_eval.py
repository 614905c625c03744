"""Scoring of toy-world commentary: the clause parser, per-attribute metrics and chance."""

from __future__ import annotations

import pytest

from framestream.models.toyworld.vlm_eval import blind_score, clauses, score, truth_captions


def test_clauses_cover_the_caption_grammar():
    text = (
        "an orange circle appears and the red square disappears and the blue diamond bounces "
        "at the left edge and the green triangle moves up and the white circle is still"
    )
    assert clauses(text) == [
        ("orange", "circle", "appears", None),
        ("red", "square", "disappears", None),
        ("blue", "diamond", "bounces", "left"),
        ("green", "triangle", "moves", "up"),
        ("white", "circle", "still", None),
    ]
    assert clauses("") == [] and clauses("the red blob moves") == []


def test_score_per_attribute():
    truth = [
        "the red circle moves right",
        "a blue square appears and the red circle bounces at the right edge",
        "",
    ]
    predicted = [
        "the red square moves right",  # colour right, shape wrong, kind and direction right
        "a blue square appears and the red circle moves left",  # one event missed
        "",
    ]
    s = score(predicted, truth)
    assert s["pair_precision"] == pytest.approx(2 / 3) and s["pair_recall"] == pytest.approx(2 / 3)
    assert s["color_f1"] == 1.0
    assert s["shape_acc"] == pytest.approx(2 / 3)  # red (1st s), blue, red (2nd s)
    assert s["kind_acc"] == pytest.approx(2 / 3)  # red bounces vs moves
    assert s["detail_acc"] == 1.0  # only "moves right" is matched on kind
    # events: truth {blue appears, red bounces}, said {blue appears}
    assert s["event_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert s["exact_match"] == pytest.approx(1 / 3) and s["silence_agreement"] == 1.0


def test_score_perfect_and_blind():
    truth = truth_captions(10_000, 24)
    perfect = score(truth, truth)
    for key in ("pair_f1", "color_f1", "kind_f1", "event_f1", "shape_acc", "kind_acc"):
        assert perfect[key] == 1.0
    chance = blind_score(24, 10_000)
    assert 0.0 <= chance["pair_f1"] < 0.5 and chance["exact_match"] < 0.2
