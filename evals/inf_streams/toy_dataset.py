"""A tiny Inf-Streams-Eval in the published layout, made from the toy world: the embedded
models' own domain, so the whole evaluation runs on a CPU in seconds, ground truth included.

Each video is the endless toy-world feed of one seed (:class:`models.toyworld.Feed`, 64x64 at
16 fps, H.264), cut to ``seconds``; its commentary is the feed's per-second ground-truth
captions, each caption's words spread evenly over its second (word ``i`` of ``n`` in second
``k`` spans ``[k + i/n, k + (i+1)/n]``, so every word ends inside its own second). Score
windows of ``window_seconds`` cover the stream from ``start_time`` on::

    DIR/eval_all_metadata.jsonl     {"video": "videos/toyworld_000.mp4", "title", "content"}
    DIR/temp_score_clips.jsonl      {"video", "title", "content": [[k, k+1, caption]], "preasr"}
    DIR/videos/toyworld_000.mp4 ...
    DIR/dataset.json                {"name": "toyworld", "start_time": 10}

``dataset.json`` is ours, not published: it gives ``stream eval inf-streams`` its default start
time here (the published default, 1000 s, is past the end of these videos).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from framestream.models.toyworld import Feed, render
from framestream.stream.media import Mp4Writer

__all__ = ["ToyDatasetSpec", "write_toy_dataset"]


@dataclass(frozen=True)
class ToyDatasetSpec:
    videos: int = 2
    seconds: int = 30  # per video
    start_time: int = 10  # where the evaluation starts; the seconds before prime the stream
    window_seconds: int = 10  # per score window
    seed: int = 0  # video i is the feed of seed + i
    fps: float = 16.0
    size: tuple[int, int] = (64, 64)  # (H, W)

    def __post_init__(self) -> None:
        if self.videos <= 0 or self.seconds <= 0 or self.window_seconds <= 0:
            raise ValueError(f"videos, seconds and window_seconds must be positive: {self}")
        if not 0 <= self.start_time < self.seconds:
            raise ValueError(f"start_time must be in [0, {self.seconds}), got {self.start_time}")


def _timed_words(captions: list[str]) -> list[list[float | str]]:
    rows: list[list[float | str]] = []
    for second, text in enumerate(captions):
        words = text.split()
        for i, word in enumerate(words):
            start = round(second + i / len(words), 3)
            end = round(second + (i + 1) / len(words), 3)
            rows.append([start, end, word])
    return rows


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_toy_dataset(folder: Path, spec: ToyDatasetSpec | None = None) -> Path:
    """Write the dataset of ``spec`` into ``folder`` (created); returns ``folder``."""
    spec = spec or ToyDatasetSpec()
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    metadata, windows = [], []
    for i in range(spec.videos):
        seed = spec.seed + i
        feed = Feed(seed, spec.size, spec.fps)
        video = f"videos/toyworld_{seed:03d}.mp4"
        title = f"toy world feed {seed}"
        with Mp4Writer(folder / video, spec.fps) as writer:
            writer.write(render(feed.window(0, round(spec.seconds * spec.fps))))
        captions = [feed.caption(second).text for second in range(spec.seconds)]
        metadata.append({"video": video, "title": title, "content": _timed_words(captions)})
        for start in range(spec.start_time, spec.seconds, spec.window_seconds):
            end = min(start + spec.window_seconds, spec.seconds)
            lines = [[k, k + 1, captions[k]] for k in range(start, end) if captions[k]]
            if lines:
                preasr = " ".join(c for c in captions[:start] if c)
                windows.append({"video": video, "title": title, "content": lines, "preasr": preasr})
    (folder / "eval_all_metadata.jsonl").write_text(_lines(metadata), encoding="utf-8")
    (folder / "temp_score_clips.jsonl").write_text(_lines(windows), encoding="utf-8")
    card = {"name": "toyworld", "start_time": spec.start_time}
    (folder / "dataset.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    return folder
