"""A system's answers in the published output format, and the judge's view of them.

One JSON line per video (``merged_result.jsonl``), or per chunk of a video before merging::

    {"video": "<base name>", "chunk_start": 1000, "chunk_end": 7200,
     "items": [{"response": "text", "start_time": 1000, "end_time": 1001}, ...]}

Our runs write one item per second, silent seconds included (``"response": ""``), because the
judge finds a window's text by each item's ``end_time``. The published GPT-4o-mini baseline
writes one item per score window with no ``start_time``; it reads here too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framestream.evals.inf_streams.dataset import DatasetError, read_jsonl
from framestream.evals.inf_streams.store import atomic_write_text

__all__ = ["AnswerItem", "VideoAnswers", "read_answers", "write_answers"]


@dataclass(frozen=True, slots=True)
class AnswerItem:
    response: str  # "" for a silent second
    end_time: float  # seconds of the video
    start_time: float | None = None  # absent in the published GPT baseline

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"response": self.response}
        if self.start_time is not None:
            out["start_time"] = _plain(self.start_time)
        out["end_time"] = _plain(self.end_time)
        return out


@dataclass(frozen=True)
class VideoAnswers:
    """What one system said about one video (all its chunks together)."""

    video: str  # base name
    chunk_start: float
    chunk_end: float
    items: tuple[AnswerItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "chunk_start": _plain(self.chunk_start),
            "chunk_end": _plain(self.chunk_end),
            "items": [item.to_json() for item in self.items],
        }

    def text_between(self, start: int, end: int) -> str:
        """The window's candidate text as the published scorer builds it: the responses of
        items with ``start < int(end_time) <= end``, joined by spaces (blank ones left out)."""
        parts = [
            item.response.strip()
            for item in self.items
            if start < int(item.end_time) <= end and item.response.strip()
        ]
        return " ".join(parts)

    def per_second(self) -> dict[int, str] | None:
        """``{second: response}`` when every item covers exactly one whole second (our runs);
        ``None`` otherwise (e.g. one item per window), where timing metrics mean nothing."""
        seconds = {}
        for item in self.items:
            if item.start_time is None or item.end_time - item.start_time != 1:
                return None
            if not float(item.start_time).is_integer():
                return None
            seconds[int(item.start_time)] = item.response
        return seconds


def _plain(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _item(path: Path, number: int, index: int, raw: Any) -> AnswerItem:
    def bad(why: str) -> DatasetError:
        return DatasetError(f"{path}:{number}: items[{index}] {why}")

    if not isinstance(raw, dict):
        raise bad("must be an object")
    response = raw.get("response")
    if response is None:
        response = ""
    if not isinstance(response, str):
        raise bad("'response' must be a string")
    times = []
    for name in ("start_time", "end_time"):
        value = raw.get(name)
        if value is None and name == "start_time":
            times.append(None)
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad(f"{name!r} must be a number, got {value!r}")
        times.append(float(value))
    return AnswerItem(response, times[1], times[0])


def read_answers(path: Path) -> dict[str, VideoAnswers]:
    """``{video base name: answers}`` from a JSONL of the published output format; several
    lines of one video (chunks, or unmerged shards) are merged in time order."""
    lines: dict[str, list[VideoAnswers]] = {}
    for number, obj in read_jsonl(path):
        video = obj.get("video")
        if not isinstance(video, str) or not video:
            raise DatasetError(f"{path}:{number}: 'video' must be a non-empty string")
        raw_items = obj.get("items")
        if not isinstance(raw_items, list):
            raise DatasetError(f"{path}:{number}: 'items' must be a list")
        items = tuple(_item(path, number, i, raw) for i, raw in enumerate(raw_items))
        first = items[0].start_time if items and items[0].start_time is not None else None
        start = obj.get("chunk_start", first if first is not None else 0)
        end = obj.get("chunk_end", items[-1].end_time if items else start)
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (start, end)):
            raise DatasetError(f"{path}:{number}: 'chunk_start' and 'chunk_end' must be numbers")
        name = os.path.basename(video)
        lines.setdefault(name, []).append(VideoAnswers(name, float(start), float(end), items))
    return {name: _merge(parts) for name, parts in lines.items()}


def _merge(parts: list[VideoAnswers]) -> VideoAnswers:
    parts = sorted(parts, key=lambda p: p.chunk_start)
    items = tuple(item for part in parts for item in part.items)
    return VideoAnswers(parts[0].video, parts[0].chunk_start, parts[-1].chunk_end, items)


def write_answers(path: Path, answers: list[VideoAnswers]) -> None:
    """Write ``answers`` as JSONL, atomically (a reader never sees half a file)."""
    text = "".join(json.dumps(a.to_json(), ensure_ascii=False) + "\n" for a in answers)
    atomic_write_text(path, text)
