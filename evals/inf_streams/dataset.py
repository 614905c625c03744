"""Reading Inf-Streams-Eval as published (HF dataset ``mit-han-lab/Inf-Stream-Eval``).

A dataset folder holds::

    eval_all_metadata.jsonl   one line per video:
                              {"video": "<relative path>.mp4", "content": [[ws, we, "word"], ...]}
    temp_score_clips.jsonl    the judge's score windows (published name), one line per window:
    score_all_clips.jsonl     {"video", "title"?, "content": [[s, e, "text"], ...], "preasr"?}
    <videos>                  resolved as os.path.join(folder, video)

Quirks of the published files that are tolerated here, not "fixed":

- some word rows have ``ws > we`` (streaming-vlm issue #12): kept as published; every rule below
  uses the end time, as the published code does, and the count is reported;
- the judge reads ``temp_score_clips.jsonl`` while the GPT baseline reads
  ``score_all_clips.jsonl``: either name is accepted (the judge's first);
- ``title`` and ``preasr`` may be missing; extra fields are ignored;
- some published videos are 0-byte files (issue #25): reported as missing, by name.

Malformed input raises :class:`DatasetError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FILE",
    "METADATA_FILE",
    "SCORE_WINDOW_FILES",
    "DatasetCard",
    "DatasetError",
    "ScoreWindow",
    "VideoRecord",
    "Word",
    "find_score_windows",
    "missing_videos",
    "previous_text",
    "read_card",
    "read_jsonl",
    "read_metadata",
    "read_score_windows",
    "reference_seconds",
    "second_of_end",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "eval_all_metadata.jsonl"
CARD_FILE = "dataset.json"  # ours, optional: defaults of a dataset made here (the toy world)
# the judge's file first: score.sh reads temp_score_clips.jsonl, generate_gpt.sh the other
SCORE_WINDOW_FILES = ("temp_score_clips.jsonl", "score_all_clips.jsonl")


class DatasetError(Exception):
    """A dataset file is missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True, slots=True)
class Word:
    """One timed word (or, in score windows, one timed line) of ground-truth commentary."""

    start: float  # seconds of the video; may exceed ``end`` in the published files
    end: float  # seconds of the video
    text: str


@dataclass(frozen=True)
class VideoRecord:
    """One line of ``eval_all_metadata.jsonl``."""

    video: str  # as written: a path relative to the dataset folder
    words: tuple[Word, ...]
    title: str = ""
    reversed_words: int = 0  # rows with start > end, as published

    @property
    def name(self) -> str:
        """The key outputs use: the video's base name (published ``basename(video)``)."""
        return os.path.basename(self.video)

    @property
    def end_time(self) -> int:
        """Where the published run stops: ``int(content[-1][1])``."""
        return int(self.words[-1].end) if self.words else 0


@dataclass(frozen=True)
class ScoreWindow:
    """One line of the score-window file: the span the judge compares, and its reference."""

    video: str  # base name
    title: str
    start: int  # int(content[0][0])
    end: int  # int(content[-1][1])
    reference: str  # the lines' texts joined by newlines
    preasr: str  # commentary before the window ("" when absent)


@dataclass(frozen=True)
class DatasetCard:
    """``dataset.json``: what a dataset made here says about itself (published ones have
    none)."""

    name: str
    start_time: int | None  # the evaluation's default start, seconds


def read_card(folder: Path) -> DatasetCard | None:
    path = folder / CARD_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg})") from None
    start = obj.get("start_time") if isinstance(obj, dict) else None
    if not isinstance(obj, dict) or not (start is None or type(start) is int and start >= 0):
        raise DatasetError(f'{path}: expected {{"name": ..., "start_time": seconds}}')
    return DatasetCard(str(obj.get("name", "")), start)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of ``path``."""
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetError(
                    f"{path}:{number}: expected a JSON object, got {type(obj).__name__}"
                )
            yield number, obj


def _timed_rows(path: Path, number: int, rows: Any, what: str) -> list[Word]:
    if not isinstance(rows, list):
        raise DatasetError(f"{path}:{number}: 'content' must be a list of [start, end, {what}]")
    words = []
    for index, row in enumerate(rows):
        ok = isinstance(row, list | tuple) and len(row) >= 3
        times = row[:2] if ok else ()
        if not ok or not all(_is_number(t) for t in times) or not isinstance(row[2], str):
            raise DatasetError(
                f"{path}:{number}: content[{index}] must be [start, end, {what}], "
                f"got {json.dumps(row)[:80]}"
            )
        text = row[2].strip()
        if text:
            words.append(Word(float(row[0]), float(row[1]), text))
    return words


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _string(path: Path, number: int, obj: dict[str, Any], name: str, required: bool) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise DatasetError(f"{path}:{number}: {name!r} must be a non-empty string")
    return value


def read_metadata(path: Path) -> list[VideoRecord]:
    """The videos of ``eval_all_metadata.jsonl``, in file order."""
    records = []
    seen: dict[str, int] = {}
    for number, obj in read_jsonl(path):
        video = _string(path, number, obj, "video", required=True)
        words = _timed_rows(path, number, obj.get("content"), "word")
        record = VideoRecord(
            video,
            tuple(words),
            _string(path, number, obj, "title", required=False),
            sum(w.start > w.end for w in words),
        )
        if record.name in seen:
            raise DatasetError(
                f"{path}:{number}: video {record.name!r} already listed on line "
                f"{seen[record.name]} (outputs are keyed by base name)"
            )
        seen[record.name] = number
        if record.reversed_words:
            logger.info(
                "%s: %d words with start > end (as published); their end times are used",
                record.name,
                record.reversed_words,
            )
        records.append(record)
    if not records:
        raise DatasetError(f"{path}: no videos listed")
    return records


def find_score_windows(folder: Path) -> Path | None:
    """The score-window file of a dataset folder, under either published name, or None."""
    found = [folder / name for name in SCORE_WINDOW_FILES if (folder / name).is_file()]
    if len(found) > 1:
        logger.info("using %s; %s is ignored", found[0].name, found[1].name)
    return found[0] if found else None


def read_score_windows(path: Path) -> list[ScoreWindow]:
    """The windows of a score-window file; a window spans ``[int(first start), int(last end)]``
    of its lines, as the published scorer defines it."""
    windows = []
    for number, obj in read_jsonl(path):
        lines = _timed_rows(path, number, obj.get("content"), "text")
        if not lines:
            raise DatasetError(f"{path}:{number}: a score window needs at least one line")
        windows.append(
            ScoreWindow(
                os.path.basename(_string(path, number, obj, "video", required=True)),
                _string(path, number, obj, "title", required=False),
                int(lines[0].start),
                int(lines[-1].end),
                "\n".join(line.text for line in lines),
                _string(path, number, obj, "preasr", required=False),
            )
        )
    return windows


def missing_videos(folder: Path, records: list[VideoRecord]) -> list[str]:
    """Why each unusable video cannot be read (absent, not a file, or 0 bytes)."""
    problems = []
    for record in records:
        path = folder / record.video
        if not path.exists():
            problems.append(f"{path}: no such file")
        elif not path.is_file():
            problems.append(f"{path}: not a file")
        elif path.stat().st_size == 0:
            problems.append(f"{path}: empty (0 bytes)")
    return problems


def second_of_end(end: float) -> int:
    """The second ``k`` whose span ``(k, k + 1]`` holds a word ending at ``end``: a word belongs
    to the chunk it ends in, as the published training and priming code assign it."""
    return math.ceil(end) - 1


def previous_text(words: tuple[Word, ...], before: float) -> str:
    """The ground-truth words ending at or before ``before``, joined by spaces: the published
    priming (``get_phrase_before_timestamp(content, start)``)."""
    return " ".join(w.text for w in words if w.end <= before)


def reference_seconds(words: tuple[Word, ...], start: int, end: int) -> list[str]:
    """Per second ``k`` of ``[start, end)``, the words ending in ``(k, k + 1]``."""
    seconds: list[list[str]] = [[] for _ in range(max(0, end - start))]
    for word in words:
        k = second_of_end(word.end) - start
        if 0 <= k < len(seconds):
            seconds[k].append(word.text)
    return [" ".join(texts) for texts in seconds]
