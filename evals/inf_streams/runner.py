"""Planning the chunks of a run, running the ones not done yet, and merging the answers.

A video is run from ``start_time`` to where its commentary ends (``int(content[-1][1])``, the
published stopping point), capped by the file's length and ``max_seconds``. By default that is
one chunk, one unbroken stream (StreamingVLM's "infinite" mode); ``chunk_seconds`` cuts it into
fresh streams of that length (the published baselines' chunk mode, ``-d 100``). Each chunk is
primed with the ground-truth words said before it, when ``prime`` is on.

A chunk is the unit of resumption: it is saved whole when its stream ends, and a rerun into the
same folder skips every saved chunk (see :mod:`evals.inf_streams.store`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from framestream.evals.inf_streams.answers import AnswerItem, VideoAnswers, write_answers
from framestream.evals.inf_streams.captioners import ChunkCaptions, ChunkJob
from framestream.evals.inf_streams.dataset import VideoRecord, previous_text
from framestream.evals.inf_streams.store import ChunkKey, ChunkStats, ChunkStore
from framestream.evals.inf_streams.video import probe_duration

__all__ = [
    "Captioner",
    "PRIMING_KEEP_WORDS",
    "PlanOptions",
    "RunReport",
    "chunk_line",
    "merge_chunks",
    "plan_chunks",
    "priming_text",
    "run_chunks",
]

logger = logging.getLogger(__name__)

# StreamingVLM keeps the first 512 and the last 511 tokens of the previous text; a word is at
# least one token, so these many words at each end keep all it keeps, and a 2-hour game's
# commentary still fits the protocol's 20000-character previous_text
PRIMING_KEEP_WORDS = 512
_PRIMING_MAX_CHARS = 20000


class Captioner(Protocol):
    async def caption(self, job: ChunkJob, progress: Callable[[int], None]) -> ChunkCaptions: ...


@dataclass(frozen=True)
class PlanOptions:
    start_time: int = 1000  # seconds; the published START_TIME
    prime: bool = True  # previous text = ground truth before each chunk
    instruction: str | None = None  # None: the pipeline's default
    chunk_seconds: int | None = None  # None: one stream per video
    max_seconds: int | None = None  # cap on seconds run per video

    def __post_init__(self) -> None:
        if self.start_time < 0:
            raise ValueError(f"start_time must be >= 0, got {self.start_time}")
        for name in ("chunk_seconds", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")


@dataclass
class RunReport:
    chunks_run: int = 0
    chunks_resumed: int = 0
    seconds_run: int = 0
    skipped_videos: tuple[str, ...] = ()  # why each video was left out


def priming_text(record: VideoRecord, before: int) -> str:
    """The ground truth said before ``before`` seconds, cut to what the pipeline keeps."""
    words = previous_text(record.words, before).split()
    if len(words) > 2 * PRIMING_KEEP_WORDS:
        words = words[:PRIMING_KEEP_WORDS] + words[-PRIMING_KEEP_WORDS:]
    text = " ".join(words)
    if len(text) > _PRIMING_MAX_CHARS:  # only with absurdly long "words"
        half = _PRIMING_MAX_CHARS // 2
        text = text[:half] + text[-half:]
    return text


def plan_chunks(
    folder: Path, records: list[VideoRecord], options: PlanOptions
) -> tuple[list[ChunkJob], list[str]]:
    """The chunks of every video, and why any video has none."""
    jobs, skipped = [], []
    for record in records:
        path = folder / record.video
        end = record.end_time
        duration = probe_duration(path)
        if duration is not None:
            end = min(end, int(duration))
        if options.max_seconds is not None:
            end = min(end, options.start_time + options.max_seconds)
        if end <= options.start_time:
            skipped.append(
                f"{record.name}: nothing after the start time ({options.start_time} s; "
                f"commentary ends at {record.end_time} s"
                + (f", video at {duration:.1f} s)" if duration is not None else ")")
            )
            continue
        step = options.chunk_seconds or end - options.start_time
        for start in range(options.start_time, end, step):
            key = ChunkKey(record.name, start, min(start + step, end))
            prime = priming_text(record, start) if options.prime else ""
            jobs.append(ChunkJob(key, path, options.instruction, prime))
    return jobs, skipped


def chunk_line(key: ChunkKey, captions: ChunkCaptions) -> dict[str, Any]:
    """The published output line of a chunk: one item per second, silent ones included."""
    items = [
        AnswerItem(captions.texts.get(k, ""), key.start + k + 1, key.start + k)
        for k in range(key.seconds)
    ]
    return VideoAnswers(key.video, key.start, key.end, tuple(items)).to_json()


async def run_chunks(
    jobs: list[ChunkJob],
    store: ChunkStore,
    captioner: Captioner,
    *,
    concurrency: int = 1,
    show_progress: bool | None = None,
) -> RunReport:
    """Run every job not saved in ``store`` yet, ``concurrency`` streams at a time.

    The first failure stops the run (raised after the other streams end); chunks already
    saved stay saved.
    """
    if concurrency <= 0:
        raise ValueError(f"concurrency must be positive, got {concurrency}")
    pending = [job for job in jobs if not store.done(job.key)]
    report = RunReport(chunks_resumed=len(jobs) - len(pending))
    if report.chunks_resumed:
        logger.info("resuming: %d of %d chunks already done", report.chunks_resumed, len(jobs))
    queue: asyncio.Queue[ChunkJob] = asyncio.Queue()
    for job in pending:
        queue.put_nowait(job)
    bar = tqdm(
        total=sum(job.key.seconds for job in pending),
        unit="s",
        desc="streaming",
        disable=None if show_progress is None else not show_progress,
    )
    failed = asyncio.Event()

    async def worker() -> None:
        while not queue.empty() and not failed.is_set():
            job = queue.get_nowait()
            try:
                captions = await captioner.caption(job, bar.update)
            except BaseException:
                failed.set()
                raise
            stats = ChunkStats(
                tuple(captions.lags),
                tuple(captions.latencies),
                job.key.seconds - len(captions.texts),
                captions.wall_seconds,
            )
            store.save(job.key, chunk_line(job.key, captions), stats)
            report.chunks_run += 1
            report.seconds_run += job.key.seconds

    try:
        results = await asyncio.gather(
            *(worker() for _ in range(min(concurrency, len(pending)))), return_exceptions=True
        )
    finally:
        bar.close()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return report


def merge_chunks(
    store: ChunkStore, jobs: list[ChunkJob]
) -> tuple[list[VideoAnswers], dict[str, list[ChunkStats]]]:
    """Write ``merged_result.jsonl`` from the saved chunks of ``jobs`` (one line per video,
    in plan order); returns the answers and ``{video: [ChunkStats]}``."""
    lines: dict[str, list[dict[str, Any]]] = {}
    stats: dict[str, list[ChunkStats]] = {}
    for job in jobs:
        if not store.done(job.key):
            continue
        line, chunk_stats = store.load(job.key)
        lines.setdefault(job.key.video, []).append(line)
        stats.setdefault(job.key.video, []).append(chunk_stats)
    answers = []
    for video, parts in lines.items():
        items = tuple(
            AnswerItem(i["response"], i["end_time"], i["start_time"])
            for part in parts
            for i in part["items"]
        )
        answers.append(VideoAnswers(video, parts[0]["chunk_start"], parts[-1]["chunk_end"], items))
    write_answers(store.merged, answers)
    return answers, stats
