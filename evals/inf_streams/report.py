"""The judge-free metrics of a system's answers, per video and over the whole run.

- Text overlap is scored per score window, on exactly the texts the judge would see (the
  window's reference lines against the responses the published scorer picks); a dataset
  without a score-window file is scored per video, over the seconds run.
- Timing and silence need one item per second (our runs; not the published GPT baseline, whose
  items span whole windows): they are left out (``None``) for answers without.
- Overall figures pool the seconds of every video (timing, silence, lag), and average the
  windows (overlap), as the judge's win rate also counts windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from framestream.evals.inf_streams.answers import VideoAnswers
from framestream.evals.inf_streams.dataset import ScoreWindow, VideoRecord, reference_seconds
from framestream.evals.inf_streams.metrics import (
    Distribution,
    Offset,
    Overlap,
    best_offset,
    distribution,
    rouge_l,
    silence_rate,
    speech_timing,
    word_f1,
)
from framestream.evals.inf_streams.store import ChunkStats

__all__ = ["MetricsReport", "SecondsMetrics", "TextMetrics", "compute_metrics"]

MAX_SHIFT = 5  # seconds searched either way for the best alignment


@dataclass(frozen=True)
class TextMetrics:
    windows: int  # compared spans
    word_f1: Overlap  # mean over the spans
    rouge_l: Overlap


@dataclass(frozen=True)
class SecondsMetrics:
    seconds: int
    silence_rate: float  # of the system
    reference_silence_rate: float
    speech_timing: Overlap  # within ``tolerance`` seconds
    offset: Offset


@dataclass(frozen=True)
class StreamMetrics:
    """How the streams ran (our runs only)."""

    lag: Distribution | None  # seconds understanding trailed the feed, per caption
    latency: Distribution | None  # wall seconds from a second's last frame to its caption
    skipped_seconds: int  # dropped by the service (realtime pace), counted silent
    wall_seconds: float


@dataclass(frozen=True)
class VideoMetrics:
    text: TextMetrics | None  # None: no window of this video
    seconds: SecondsMetrics | None  # None: answers not per second
    stream: StreamMetrics | None  # None: answers not made by this run


@dataclass(frozen=True)
class MetricsReport:
    tolerance: int
    overall: VideoMetrics
    per_video: dict[str, VideoMetrics]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean_overlap(overlaps: list[Overlap]) -> Overlap:
    n = len(overlaps)
    return Overlap(
        sum(o.precision for o in overlaps) / n,
        sum(o.recall for o in overlaps) / n,
        sum(o.f1 for o in overlaps) / n,
    )


def _text_pairs(
    record: VideoRecord, answers: VideoAnswers, windows: list[ScoreWindow] | None
) -> list[tuple[str, str]]:
    """(candidate, reference) per span of this video."""
    if windows is not None:
        return [(answers.text_between(w.start, w.end), w.reference) for w in windows]
    start, end = int(answers.chunk_start), int(answers.chunk_end)
    reference = " ".join(t for t in reference_seconds(record.words, start, end) if t)
    return [(answers.text_between(start, end), reference)]


def _text_metrics(pairs: list[tuple[str, str]]) -> TextMetrics | None:
    if not pairs:
        return None
    return TextMetrics(
        len(pairs),
        _mean_overlap([word_f1(c, r) for c, r in pairs]),
        _mean_overlap([rouge_l(c, r) for c, r in pairs]),
    )


def _seconds_metrics(system: list[str], reference: list[str], tolerance: int) -> SecondsMetrics:
    return SecondsMetrics(
        len(system),
        silence_rate(system),
        silence_rate(reference),
        speech_timing(system, reference, tolerance),
        best_offset(system, reference, MAX_SHIFT),
    )


def _per_second(record: VideoRecord, answers: VideoAnswers) -> tuple[list[str], list[str]] | None:
    seconds = answers.per_second()
    if not seconds:
        return None
    first, last = min(seconds), max(seconds)
    system = [seconds.get(k, "") for k in range(first, last + 1)]
    return system, reference_seconds(record.words, first, last + 1)


def _stream_metrics(stats: list[ChunkStats]) -> StreamMetrics | None:
    if not stats:
        return None
    return StreamMetrics(
        distribution([x for s in stats for x in s.lags]),
        distribution([x for s in stats for x in s.latencies]),
        sum(s.skipped_seconds for s in stats),
        sum(s.wall_seconds for s in stats),
    )


def compute_metrics(
    records: list[VideoRecord],
    answers: dict[str, VideoAnswers],
    windows: list[ScoreWindow] | None,
    stats: dict[str, list[ChunkStats]] | None = None,
    tolerance: int = 1,
) -> MetricsReport:
    """Metrics of ``answers`` (by video base name) for the videos of ``records`` they cover.

    Args:
        windows: the score windows, or None to compare each video's whole answered span.
        stats: the run's chunk stats by video, when the answers come from this run.
        tolerance: seconds of slack in :func:`~evals.inf_streams.metrics.speech_timing`.
    """
    stats = stats or {}
    per_video: dict[str, VideoMetrics] = {}
    all_pairs: list[tuple[str, str]] = []
    # videos pooled into one timeline, kept apart by silence wider than any shift or slack
    gap = [""] * (MAX_SHIFT + tolerance + 1)
    pooled_system: list[str] = []
    pooled_reference: list[str] = []
    for record in records:
        if record.name not in answers:
            continue
        video_answers = answers[record.name]
        video_windows = None if windows is None else [w for w in windows if w.video == record.name]
        pairs = _text_pairs(record, video_answers, video_windows)
        all_pairs += pairs
        seconds = _per_second(record, video_answers)
        if seconds is not None:
            pooled_system += seconds[0] + gap
            pooled_reference += seconds[1] + gap
        per_video[record.name] = VideoMetrics(
            _text_metrics(pairs),
            None if seconds is None else _seconds_metrics(*seconds, tolerance),
            _stream_metrics(stats.get(record.name, [])),
        )
    overall_seconds = None
    if pooled_system:
        overall = _seconds_metrics(pooled_system, pooled_reference, tolerance)
        # the silence rates leave the gaps out: weighted by each video's own seconds
        measured = [m.seconds for m in per_video.values() if m.seconds]
        total = sum(m.seconds for m in measured)
        overall_seconds = SecondsMetrics(
            total,
            sum(m.silence_rate * m.seconds for m in measured) / total,
            sum(m.reference_silence_rate * m.seconds for m in measured) / total,
            overall.speech_timing,
            overall.offset,
        )
    all_stats = [s for video in per_video for s in stats.get(video, [])]
    return MetricsReport(
        tolerance,
        VideoMetrics(_text_metrics(all_pairs), overall_seconds, _stream_metrics(all_stats)),
        per_video,
    )
