"""WebVTT subtitles of captions (``stream generate --commentary`` writes one beside its MP4):
a cue per non-empty caption, at the caption's video seconds. Nothing from ``stream/``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

__all__ = ["format_vtt", "vtt_time", "write_vtt"]


class _Timed(Protocol):
    start: float
    end: float
    text: str


def vtt_time(seconds: float) -> str:
    """``HH:MM:SS.mmm`` of ``seconds`` >= 0."""
    if not seconds >= 0:
        raise ValueError(f"a cue time must be >= 0, got {seconds}")
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def format_vtt(captions: Iterable[_Timed]) -> str:
    """The WebVTT text: silent seconds make no cue; a caption's text is kept on one line per
    line it has, with blank lines (which would end the cue) and ``-->`` taken out."""
    cues = ["WEBVTT", ""]
    for caption in captions:
        lines = [line.strip().replace("-->", "->") for line in caption.text.splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            continue
        if caption.end <= caption.start:
            raise ValueError(f"a cue must end after it starts: {caption.start}..{caption.end}")
        cues += [f"{vtt_time(caption.start)} --> {vtt_time(caption.end)}", *lines, ""]
    return "\n".join(cues)


def write_vtt(path: str | Path, captions: Iterable[_Timed]) -> int:
    """Write the WebVTT file; returns the number of cues."""
    text = format_vtt(captions)
    Path(path).write_text(text, encoding="utf-8")
    return text.count(" --> ")
