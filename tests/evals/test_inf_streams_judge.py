"""evals/inf_streams judge: the chat client (retries, backoff, cache, temperature, the key)
against a local stand-in endpoint (tests/evals/judge_double.py, a test double), pairwise
votes in both orders, and the published win-rate arithmetic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from framestream.evals.inf_streams.answers import AnswerItem, VideoAnswers
from framestream.evals.inf_streams.dataset import ScoreWindow
from framestream.evals.inf_streams.judge import (
    JUDGE_SYSTEM_PROMPT,
    REFERENCE,
    REFERENCE_LIMIT,
    WindowVerdict,
    judge_messages,
    judge_windows,
    score_segment,
    vote_of,
    win_rate,
    win_rates_per_video,
)
from framestream.evals.inf_streams.judge_client import (
    ChatClient,
    JudgeEndpoint,
    JudgeError,
    RetryPolicy,
    request_key,
)
from tests.evals.judge_double import Failure, JudgeDouble, always_a, prefer_longer

KEY = "sk-test-not-a-real-key-1234"
MESSAGES = [{"role": "user", "content": "A or B?"}]


class Sleeps(list):
    """Records the delays asked for instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(double: JudgeDouble, cache: Path | None, **retry) -> tuple[ChatClient, Sleeps]:
    sleeps = Sleeps()
    policy = RetryPolicy(**({"attempts": 4, "base_delay": 0.5, "max_delay": 3.0} | retry))
    endpoint = JudgeEndpoint(double.base_url, "stand-in", KEY)
    return ChatClient(endpoint, cache, policy, sleep=sleeps), sleeps


def test_a_reply_sends_the_model_messages_temperature_and_key() -> None:
    with JudgeDouble(rule=lambda body: "A") as double:
        client, sleeps = client_for(double, None)
        assert client.complete(MESSAGES) == "A"
    ((headers, body),) = double.requests
    assert body == {"model": "stand-in", "messages": MESSAGES, "temperature": 0}
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert sleeps == [] and client.requests_sent == 1


def test_retries_500_and_429_with_exponential_backoff_and_retry_after() -> None:
    failures = [
        Failure(500),
        Failure(429),
        Failure(503, headers=(("Retry-After", "2.5"),)),
    ]
    with JudgeDouble(rule=lambda body: "B", failures=failures) as double:
        client, sleeps = client_for(double, None)
        assert client.complete(MESSAGES) == "B"
    assert sleeps == [0.5, 1.0, 2.5]  # doubling, then lengthened by Retry-After
    assert client.requests_sent == 4 == len(double.requests)


def test_backoff_is_capped_and_the_client_gives_up() -> None:
    with JudgeDouble(failures=[Failure(502)] * 10) as double:
        client, sleeps = client_for(double, None, attempts=5)
        with pytest.raises(JudgeError, match="failed 5 times; last: HTTP 502"):
            client.complete(MESSAGES)
    assert sleeps == [0.5, 1.0, 2.0, 3.0]
    assert len(double.requests) == 5


def test_a_refusal_is_not_retried() -> None:
    failures = [Failure(401, '{"error": {"message": "bad key"}}')]
    with JudgeDouble(failures=failures) as double:
        client, sleeps = client_for(double, None)
        with pytest.raises(JudgeError, match="HTTP 401") as caught:
            client.complete(MESSAGES)
    assert sleeps == [] and len(double.requests) == 1
    assert KEY not in str(caught.value)


def test_unreachable_endpoint_is_retried_then_reported() -> None:
    with JudgeDouble() as double:
        url = double.base_url  # the port is closed once the double stops
    sleeps = Sleeps()
    client = ChatClient(
        JudgeEndpoint(url, "stand-in", KEY), None, RetryPolicy(3, 0.1), sleep=sleeps
    )
    with pytest.raises(JudgeError, match="failed 3 times"):
        client.complete(MESSAGES)
    assert sleeps == [0.1, 0.2]


def test_temperature_is_dropped_once_the_model_rejects_it() -> None:
    rejection = Failure(400, '{"error": {"message": "Unsupported value: \'temperature\'"}}')
    with JudgeDouble(rule=lambda body: "A", failures=[rejection]) as double:
        client, sleeps = client_for(double, None)
        assert client.complete(MESSAGES) == "A"
        assert client.complete([{"role": "user", "content": "again?"}]) == "A"
    bodies = [body for _, body in double.requests]
    assert "temperature" in bodies[0]
    assert all("temperature" not in body for body in bodies[1:]) and len(bodies) == 3
    assert sleeps == []


def test_replies_are_cached_on_disk_and_reused(tmp_path: Path) -> None:
    with JudgeDouble(rule=lambda body: "B") as double:
        first, _ = client_for(double, tmp_path / "cache")
        assert first.complete(MESSAGES) == "B"
        again, _ = client_for(double, tmp_path / "cache")  # a new run, same cache
        assert again.complete(MESSAGES) == "B"
    assert len(double.requests) == 1
    assert (again.requests_sent, again.cache_hits) == (0, 1)
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name == f"{request_key('stand-in', MESSAGES)}.json"
    assert KEY not in entry.read_text()


def test_the_key_is_never_logged_nor_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with JudgeDouble(rule=lambda body: "A", failures=[Failure(500)]) as double:
        client, _ = client_for(double, None)
        client.complete(MESSAGES)
    assert "retry 1" in caplog.text
    assert KEY not in caplog.text and KEY not in repr(client.endpoint)


def test_bad_endpoint_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        JudgeEndpoint("api.openai.com/v1", "gpt-5")
    with pytest.raises(ValueError, match="model"):
        JudgeEndpoint("http://127.0.0.1:9/v1", "")


# -- votes and win rates -----------------------------------------------------------------------


def window(video: str = "a.mp4", start: int = 10, end: int = 20, **kw) -> ScoreWindow:
    return ScoreWindow(
        video, kw.get("title", ""), start, end, kw.get("reference", "ref"), kw.get("preasr", "")
    )


def answers(video: str, *texts: str, start: int = 10) -> VideoAnswers:
    items = tuple(AnswerItem(t, start + k + 1, start + k) for k, t in enumerate(texts))
    return VideoAnswers(video, start, start + len(texts), items)


def test_messages_follow_the_published_structure() -> None:
    long_reference = "x" * (REFERENCE_LIMIT + 50)
    system, user = judge_messages(window(reference=long_reference, title="Final"), "one", "")
    assert system == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert "exactly one uppercase letter" in JUDGE_SYSTEM_PROMPT
    assert "1) Broadcast tone and pacing" in JUDGE_SYSTEM_PROMPT
    assert "2) Consistency and accuracy" in JUDGE_SYSTEM_PROMPT
    text = user["content"]
    assert "x" * REFERENCE_LIMIT in text and "x" * (REFERENCE_LIMIT + 1) not in text
    assert "'Final', 10-20 s" in text
    assert "Candidate A:\none\n" in text and "Candidate B:\n(silent)\n" in text


def test_any_reply_not_starting_with_a_counts_as_b() -> None:
    assert [vote_of(r) for r in ("A", " A.", "A is better", "B", "a", "", "Both")] == [
        "A", "A", "A", "B", "B", "B", "B",
    ]  # fmt: skip


def test_win_rate_is_votes_over_all_votes() -> None:
    verdicts = [
        WindowVerdict("a.mp4", "", 0, 10, "A", "B"),  # 2-0 win
        WindowVerdict("a.mp4", "", 10, 20, "A", "A"),  # 1-1 tie (position bias)
        WindowVerdict("b.mp4", "", 0, 10, "B", "A"),  # 0-2 loss
        WindowVerdict("b.mp4", "", 10, 20, "B", "B"),  # 1-1 tie
        WindowVerdict("b.mp4", "", 20, 30, "A", "B"),  # 2-0 win
    ]
    assert [v.votes_a for v in verdicts] == [2, 1, 0, 1, 2]
    assert [v.winner for v in verdicts] == ["A", "equal", "B", "equal", "A"]
    overall = win_rate(verdicts)
    assert (overall.votes_a, overall.votes_b, overall.rate) == (6, 4, 0.6)
    assert (overall.windows, overall.wins, overall.losses, overall.ties) == (5, 2, 1, 2)
    per_video = win_rates_per_video(verdicts)
    assert per_video["a.mp4"].rate == 0.75 and per_video["b.mp4"].rate == 0.5
    # the global rate pools votes; it is not the mean of the per-video rates (0.625)
    assert overall.rate != (per_video["a.mp4"].rate + per_video["b.mp4"].rate) / 2
    assert win_rate([]).rate is None
    line = score_segment(verdicts[0], ("ours", "theirs"), "gpt-5")
    assert line == {
        "video": "a.mp4", "title": "", "start": 0, "end": 10, "winner": "ours",
        "votes": {"A": 2, "B": 0}, "judge": {"model": "gpt-5", "vote_ab": "A", "vote_ba": "B"},
    }  # fmt: skip
    assert score_segment(verdicts[1], ("ours", "theirs"), "gpt-5")["winner"] == "equal"


def test_both_orders_are_asked_and_mapped_back(tmp_path: Path) -> None:
    ours = {"a.mp4": answers("a.mp4", "a long and lively line", "", "more words here")}
    theirs = {"a.mp4": answers("a.mp4", "short", "", "")}
    windows = [window(start=10, end=12), window(start=12, end=13), window(video="missing.mp4")]
    with JudgeDouble(rule=prefer_longer) as double:
        client, _ = client_for(double, tmp_path / "cache")
        verdicts, left_out = judge_windows(client, windows, ours, theirs, workers=2)
    assert left_out == ["missing.mp4 10-20: no system answers"]
    assert [(v.vote_ab, v.vote_ba) for v in verdicts] == [("A", "B"), ("A", "B")]
    assert win_rate(verdicts).rate == 1.0
    shown = sorted(_candidates_of(body) for _, body in double.requests)
    assert shown == sorted(
        [
            ("a long and lively line", "short"),
            ("short", "a long and lively line"),
            ("more words here", "(silent)"),
            ("(silent)", "more words here"),
        ]
    )


def test_a_position_biased_judge_ties_every_window(tmp_path: Path) -> None:
    ours = {"a.mp4": answers("a.mp4", "x", "y")}
    with JudgeDouble(rule=always_a) as double:
        client, _ = client_for(double, None)
        verdicts, _ = judge_windows(client, [window(start=10, end=12)], ours, REFERENCE)
    assert [v.winner for v in verdicts] == ["equal"] and win_rate(verdicts).rate == 0.5
    first = double.requests[0][1]["messages"][-1]["content"]
    assert "Candidate B:\nref\n" in first  # the reference itself is the opponent


def _candidates_of(body: dict) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    a = text.split("Candidate A:\n", 1)[1].split("\n\nCandidate B:\n", 1)
    return a[0], a[1].split("\n\nWhich", 1)[0]


def test_cached_verdicts_need_no_endpoint(tmp_path: Path) -> None:
    ours = {"a.mp4": answers("a.mp4", "one two", "three")}
    with JudgeDouble(rule=prefer_longer) as double:
        client, _ = client_for(double, tmp_path)
        first, _ = judge_windows(client, [window(start=10, end=12)], ours, REFERENCE)
    # the endpoint is gone: a rerun is answered from the cache alone
    rerun, _ = client_for(double, tmp_path, attempts=1)
    second, _ = judge_windows(rerun, [window(start=10, end=12)], ours, REFERENCE)
    assert first == second and rerun.requests_sent == 0 and rerun.cache_hits == 2
    assert json.loads(next(tmp_path.iterdir()).read_text())["model"] == "stand-in"
