"""Pairwise judging of two systems' commentary, window by window, as the published scorer does.

For each score window the judge (a text-only chat model) sees the reference transcript (at most
8000 characters) and two candidate commentaries, and answers one letter. It is asked twice, in
both orders, to cancel position bias::

    ask(reference, A = system, B = opponent) -> "A" or "B"     vote_ab
    ask(reference, A = opponent, B = system) -> "A" or "B"     vote_ba (letters swapped back)

A reply that does not start with "A" counts as "B" (published rule). The system gets
``(vote_ab == "A") + (vote_ba == "B")`` of the window's two votes; 1-1 is a tie ("equal").
The win rate is the system's votes over all votes, ``sum(A) / (sum(A) + sum(B))`` over every
window (not a mean of per-video rates), with per-video rates beside it.

The opponent is another system's answers, or the reference itself (``REFERENCE``): then the
human commentary of the window is candidate B.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from tqdm import tqdm

from framestream.evals.inf_streams.answers import VideoAnswers
from framestream.evals.inf_streams.dataset import ScoreWindow
from framestream.evals.inf_streams.judge_client import ChatClient

__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "REFERENCE",
    "REFERENCE_LIMIT",
    "WinRate",
    "WindowVerdict",
    "judge_messages",
    "judge_windows",
    "score_segment",
    "vote_of",
    "win_rate",
    "win_rates_per_video",
]

REFERENCE = "reference"  # the opponent that is the ground-truth commentary itself
REFERENCE_LIMIT = 8000  # characters of reference transcript shown to the judge (published)

# The published structure: a strict A/B evaluator, a one-letter answer, and two criteria in
# order (broadcast tone and pacing, then consistency with the reference); our own wording.
JUDGE_SYSTEM_PROMPT = (
    "You are a strict A/B evaluator of live video commentary. You are given the reference "
    "transcript of a stretch of video (what a human commentator said) and two candidate "
    "commentaries of the same stretch, A and B. Decide which candidate is the better live "
    "commentary. Output exactly one uppercase letter, A or B, and nothing else.\n"
    "Judge by these criteria, in this order of importance:\n"
    "1) Broadcast tone and pacing: it reads like live play-by-play, in short present-tense "
    "lines that follow the action as it happens, without filler or repetition.\n"
    "2) Consistency and accuracy: it agrees with the reference transcript about what happens "
    "and when; it does not invent names, events or facts the reference does not support."
)

Vote = Literal["A", "B"]


def judge_messages(window: ScoreWindow, first: str, second: str) -> list[dict[str, str]]:
    """The chat messages asking which of ``first`` (A) and ``second`` (B) is better."""
    title = f" of {window.title!r}" if window.title else ""
    user = (
        f"Reference transcript{title}, {window.start}-{window.end} s:\n"
        f"{window.reference[:REFERENCE_LIMIT]}\n\n"
        f"Candidate A:\n{first or '(silent)'}\n\n"
        f"Candidate B:\n{second or '(silent)'}\n\n"
        "Which candidate is the better live commentary? Answer A or B."
    )
    return [
        {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]


def vote_of(reply: str) -> Vote:
    return "A" if reply.strip().startswith("A") else "B"


@dataclass(frozen=True)
class WindowVerdict:
    video: str
    title: str
    start: int
    end: int
    vote_ab: Vote  # the judge's letter with the system as A
    vote_ba: Vote  # the judge's letter with the system as B

    @property
    def votes_a(self) -> int:
        """The system's votes (0, 1 or 2)."""
        return (self.vote_ab == "A") + (self.vote_ba == "B")

    @property
    def votes_b(self) -> int:
        return 2 - self.votes_a

    @property
    def winner(self) -> Literal["A", "B", "equal"]:
        return "A" if self.votes_a == 2 else "B" if self.votes_a == 0 else "equal"


@dataclass(frozen=True)
class WinRate:
    votes_a: int
    votes_b: int
    rate: float | None  # votes_a / (votes_a + votes_b); None without windows
    windows: int
    wins: int  # windows won 2-0
    losses: int
    ties: int


def win_rate(verdicts: list[WindowVerdict]) -> WinRate:
    a = sum(v.votes_a for v in verdicts)
    b = sum(v.votes_b for v in verdicts)
    return WinRate(
        a,
        b,
        a / (a + b) if a + b else None,
        len(verdicts),
        sum(v.winner == "A" for v in verdicts),
        sum(v.winner == "B" for v in verdicts),
        sum(v.winner == "equal" for v in verdicts),
    )


def win_rates_per_video(verdicts: list[WindowVerdict]) -> dict[str, WinRate]:
    videos: dict[str, list[WindowVerdict]] = {}
    for verdict in verdicts:
        videos.setdefault(verdict.video, []).append(verdict)
    return {video: win_rate(vs) for video, vs in videos.items()}


def judge_windows(
    client: ChatClient,
    windows: list[ScoreWindow],
    system: dict[str, VideoAnswers],
    opponent: dict[str, VideoAnswers] | Literal["reference"],
    *,
    workers: int = 4,
    show_progress: bool | None = None,
) -> tuple[list[WindowVerdict], list[str]]:
    """Judge every window both ways; returns the verdicts (in window order) and, for each
    window left out, why (a side has no answers for its video)."""
    todo: list[tuple[ScoreWindow, str, str]] = []
    left_out = []
    for window in windows:
        if window.video not in system:
            left_out.append(f"{window.video} {window.start}-{window.end}: no system answers")
            continue
        if opponent == REFERENCE:
            other = window.reference
        elif window.video in opponent:
            other = opponent[window.video].text_between(window.start, window.end)
        else:
            left_out.append(f"{window.video} {window.start}-{window.end}: no opponent answers")
            continue
        todo.append((window, system[window.video].text_between(window.start, window.end), other))

    bar = tqdm(
        total=2 * len(todo),
        unit="call",
        desc="judging",
        disable=None if show_progress is None else not show_progress,
    )

    def ask(window: ScoreWindow, first: str, second: str) -> Vote:
        vote = vote_of(client.complete(judge_messages(window, first, second)))
        bar.update()
        return vote

    def verdict(job: tuple[ScoreWindow, str, str]) -> WindowVerdict:
        window, mine, theirs = job
        return WindowVerdict(
            window.video,
            window.title,
            window.start,
            window.end,
            ask(window, mine, theirs),
            ask(window, theirs, mine),
        )

    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="judge") as pool:
            verdicts = list(pool.map(verdict, todo))
    finally:
        bar.close()
    return verdicts, left_out


def score_segment(verdict: WindowVerdict, names: tuple[str, str], model: str) -> dict[str, Any]:
    """One line of the published ``score_segments.jsonl``; ``winner`` names the system."""
    winner = {"A": names[0], "B": names[1], "equal": "equal"}[verdict.winner]
    return {
        "video": verdict.video,
        "title": verdict.title,
        "start": verdict.start,
        "end": verdict.end,
        "winner": winner,
        "votes": {"A": verdict.votes_a, "B": verdict.votes_b},
        "judge": {"model": model, "vote_ab": verdict.vote_ab, "vote_ba": verdict.vote_ba},
    }
