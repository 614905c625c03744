"""evals/inf_streams metrics and report: hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import pytest

from framestream.evals.inf_streams.answers import AnswerItem, VideoAnswers
from framestream.evals.inf_streams.dataset import ScoreWindow, VideoRecord, Word
from framestream.evals.inf_streams.metrics import (
    Overlap,
    best_offset,
    distribution,
    rouge_l,
    silence_rate,
    speech_timing,
    tokens,
    word_f1,
)
from framestream.evals.inf_streams.report import compute_metrics
from framestream.evals.inf_streams.store import ChunkStats


def close(overlap: Overlap, precision: float, recall: float, f1: float) -> bool:
    return overlap == pytest.approx(Overlap(precision, recall, f1))


def test_tokens_are_lower_case_words() -> None:
    assert tokens("The RED ball's in -- 3 goals!") == ["the", "red", "ball's", "in", "3", "goals"]


def test_word_f1_clips_repeated_words() -> None:
    # candidate: the x3, cat; reference: the x2, cat, sat -> matched the x2 + cat = 3
    assert close(word_f1("the the the cat", "the cat sat the"), 3 / 4, 3 / 4, 3 / 4)
    assert close(word_f1("a b", "c d"), 0, 0, 0)
    assert close(word_f1("", ""), 1, 1, 1)
    assert close(word_f1("", "a"), 0, 0, 0)


def test_rouge_l_uses_the_longest_common_subsequence() -> None:
    # LCS of "a b c d e" and "a x c y e z" is "a c e": P = 3/5, R = 3/6
    precision, recall = 3 / 5, 3 / 6
    f1 = 2 * precision * recall / (precision + recall)
    assert close(rouge_l("a b c d e", "a x c y e z"), precision, recall, f1)
    assert close(rouge_l("d c b a", "a b c d"), 1 / 4, 1 / 4, 1 / 4)  # order matters
    assert rouge_l("same words", "Same, words.").f1 == 1.0


def test_silence_rate() -> None:
    assert silence_rate(["a", "", " ", "...", "b"]) == 3 / 5  # "..." has no word
    assert silence_rate([]) == 0.0


def test_speech_timing_with_and_without_tolerance() -> None:
    reference = ["x", "", "", "x", "", ""]
    system = ["", "y", "", "y", "", "y"]  # one second late, on time, and an invention
    assert close(speech_timing(system, reference, tolerance=1), 2 / 3, 1, 0.8)
    assert close(speech_timing(system, reference, tolerance=0), 1 / 3, 1 / 2, 0.4)
    assert close(speech_timing(["", ""], ["", ""]), 1, 1, 1)
    with pytest.raises(ValueError, match="cover 1 and 2"):
        speech_timing(["a"], ["a", "b"])


def test_best_offset_finds_a_late_system() -> None:
    reference = ["red", "blue", "green", "", "white", ""]
    late = ["", "red", "blue", "green", "", "white"]
    offset = best_offset(late, reference, max_shift=3)
    assert offset.seconds == 1 and offset.f1_at_best == 1.0 and offset.f1_at_zero == 0.0
    early = best_offset(reference[1:] + [""], reference, max_shift=3)
    assert early.seconds == -1
    assert best_offset(reference, reference).seconds == 0


def test_distribution() -> None:
    stats = distribution([4.0, 1.0, 3.0, 2.0])
    assert (stats.count, stats.mean, stats.p50, stats.p95, stats.max) == (4, 2.5, 2.0, 4.0, 4.0)
    assert distribution([]) is None


def words(*timed: tuple[float, float, str]) -> tuple[Word, ...]:
    return tuple(Word(s, e, t) for s, e, t in timed)


def test_the_report_on_a_hand_made_video() -> None:
    record = VideoRecord(
        "games/a.mp4",
        words((10.1, 10.6, "red"), (10.6, 11.0, "ball"), (12.2, 12.9, "goal"), (13.5, 13.1, "yes")),
    )
    # reference per second 10..13: "red ball", "", "goal", "yes"
    items = (
        AnswerItem("red ball", 11, 10),
        AnswerItem("", 12, 11),
        AnswerItem("", 13, 12),
        AnswerItem("goal", 14, 13),  # a second late
    )
    answers = {"a.mp4": VideoAnswers("a.mp4", 10, 14, items)}
    windows = [
        ScoreWindow("a.mp4", "", 10, 12, "red ball", ""),
        ScoreWindow("a.mp4", "", 12, 14, "goal\nyes", ""),
    ]
    stats = {"a.mp4": [ChunkStats((0.0, 0.5), (0.1, 0.3), 1, 2.0)]}
    report = compute_metrics([record], answers, windows, stats, tolerance=0)
    video = report.per_video["a.mp4"]
    assert video.seconds.seconds == 4
    assert video.seconds.silence_rate == 0.5 and video.seconds.reference_silence_rate == 0.25
    # system speaks at 10 and 13, reference at 10, 12, 13: P = 2/2, R = 2/3
    assert close(video.seconds.speech_timing, 1, 2 / 3, 0.8)
    # window 10-12: "red ball" vs "red ball" = 1; window 12-14: "goal" vs "goal yes" = 2/3
    assert video.text.windows == 2
    assert video.text.word_f1.f1 == pytest.approx((1 + 2 / 3) / 2)
    assert video.stream.skipped_seconds == 1 and video.stream.lag.max == 0.5
    assert video.stream.latency.mean == pytest.approx(0.2)
    assert report.overall.seconds == video.seconds
    assert report.overall.text == video.text
    assert report.to_json()["per_video"]["a.mp4"]["seconds"]["seconds"] == 4


def test_answers_without_seconds_get_text_metrics_only() -> None:
    record = VideoRecord("a.mp4", words((10.5, 11.0, "red"), (11.5, 12.0, "ball")))
    baseline = VideoAnswers("a.mp4", 10, 12, (AnswerItem("red ball", 12),))  # one per window
    report = compute_metrics([record], {"a.mp4": baseline}, None)
    video = report.per_video["a.mp4"]
    assert video.seconds is None and video.stream is None
    assert video.text.windows == 1 and video.text.word_f1.f1 == 1.0  # the whole answered span
    assert report.overall.seconds is None


def test_pooled_videos_do_not_match_across_each_other() -> None:
    first = VideoRecord("a.mp4", words((0.5, 1.0, "x")))
    second = VideoRecord("b.mp4", words((1.5, 2.0, "y")))
    answers = {
        "a.mp4": VideoAnswers("a.mp4", 0, 2, (AnswerItem("", 1, 0), AnswerItem("", 2, 1))),
        "b.mp4": VideoAnswers("b.mp4", 0, 2, (AnswerItem("x", 1, 0), AnswerItem("", 2, 1))),
    }
    report = compute_metrics([first, second], answers, None)
    # b says "x" at 0 where only a's reference (in another video) has "x"
    assert report.overall.seconds.offset.f1_at_best == 0.0
    assert report.overall.seconds.silence_rate == 3 / 4
