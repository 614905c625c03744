"""Prompt schedules for ``stream timeline`` (:mod:`clients.timeline`): read, parse, validate.

Schedules (JSON, or JSONL: one JSON value per line):

* ours, one object: ``{"prompts": [{"t": 0, "prompt": "..."}, {"t": 4.0, "prompt": "...",
  "transition_chunks": 2}], "seconds": 12, "pipeline": "longlive", "seed": 0}`` (``t`` in
  seconds of video, the first at 0, increasing; ``seconds``, ``pipeline``, ``seed`` optional,
  the command line wins), or the same entries one per line in a JSONL file (or a JSON array);
* LongLive's interactive format (``utils/dataset.py: MultiTextDataset``): JSONL lines of
  ``{"prompts": [p0, p1, ..., pN-1]}``, one video per line (``--line N`` picks one), switched
  at ``--switch-frame-indices`` given in **latent** frames, as in LongLive's config
  (default: every 40 latent frames, 10 s per segment).

LongLive's latent frames map to video frames as its causal VAE decodes them: latent 0 makes
one video frame, every later latent four::

    latent   L:  0 | 1         | 2         | ...  | 40                | ...
    video    f:  0 | 1 2 3 4   | 5 6 7 8   | ...  | 157 158 159 160   | ...

so a switch at latent ``L >= 1`` starts at video frame ``1 + 4 * (L - 1)`` (40 -> 157, 80 ->
317), and ``--num-output-frames N`` latents (default: the last index plus 40, i.e. 240 for
LongLive's six prompts) make ``4 * N - 3`` video frames (240 -> 957, as LongLive writes).
Times are these frames over LongLive's 16 fps. Like LongLive, which switches at the first
3-latent chunk starting at or after the index, the server switches at a chunk boundary.

Everything here is pure parsing: no session, no socket. :func:`load_timeline` reads a file,
:func:`parse_timeline` validates its text into a :class:`Timeline`, and :class:`ScheduleError`
(a ``ValueError``) says where and why a schedule is invalid.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LONGLIVE_FPS",
    "LONGLIVE_SEGMENT_LATENTS",
    "MAX_PROMPT_CHARS",
    "MAX_TRANSITION_CHUNKS",
    "PromptEntry",
    "ScheduleError",
    "Timeline",
    "latent_to_video_frame",
    "load_timeline",
    "parse_frame_indices",
    "parse_timeline",
]

LONGLIVE_FPS = 16  # the frame rate of LongLive's (and Wan2.1's) videos
LONGLIVE_SEGMENT_LATENTS = 40  # LongLive's default switch spacing: 10 s of 16 fps video
MAX_PROMPT_CHARS = 2000  # the protocol's limit on a prompt
MAX_TRANSITION_CHUNKS = 64  # the protocol's limit on prompt.update's transition_chunks
_TIMELINE_KEYS = ("prompts", "seconds", "pipeline", "seed")
_ENTRY_KEYS = ("t", "prompt", "transition_chunks")
_LONGLIVE_KEYS = ("prompts",)


# -- schedules -------------------------------------------------------------------------------


class ScheduleError(ValueError):
    """A schedule file that cannot be read or is invalid; the message says where and why."""


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One prompt of a timeline and where it starts."""

    prompt: str
    t: float  # seconds of video at which it starts (0 for the first)
    transition_chunks: int = 0  # chunks over which the previous prompt blends into this one
    frame: int | None = None  # exact first video frame, when the schedule fixes it (LongLive)
    latent_frame: int | None = None  # LongLive's switch index, in latent frames

    def start_frame(self, fps: float) -> int:
        """The first video frame of this prompt at ``fps``: ``frame`` when fixed, else the
        first frame at or after ``t`` (``ceil(t * fps)``)."""
        if self.frame is not None:
            return self.frame
        return max(0, math.ceil(self.t * fps - 1e-9))


@dataclass(frozen=True, slots=True)
class Timeline:
    """A validated schedule: prompts in order (the first at 0), and the video's settings."""

    prompts: tuple[PromptEntry, ...]
    seconds: float | None = None  # length of the video; None: the command line must say
    frames: int | None = None  # exact length in video frames (LongLive's num_output_frames)
    pipeline: str | None = None  # None: the command line's, else longlive
    seed: int | None = None
    kind: str = "timeline"  # "timeline" (ours) or "longlive"
    line: int | None = None  # the schedule's line, in a file of several (1-based)


def latent_to_video_frame(latent: int) -> int:
    """The first video frame decoded from LongLive latent frame ``latent``: 0 for latent 0,
    else ``1 + 4 * (latent - 1)`` (the causal VAE makes 1 frame of the first latent, 4 of each
    later one)."""
    if latent < 0:
        raise ValueError(f"latent must be >= 0, got {latent}")
    return 0 if latent == 0 else 1 + 4 * (latent - 1)


def parse_timeline(
    text: str,
    *,
    name: str = "<schedule>",
    line: int | None = None,
    switch_frame_indices: list[int] | None = None,
    num_output_frames: int | None = None,
) -> Timeline:
    """Parse and validate a schedule (see the module docstring for the formats).

    Args:
        text: the file's contents, JSON or JSONL.
        name: the file's name, for error messages.
        line: which ``{"prompts": ...}`` line of a file of several (1-based, blank lines not
            counted); default the first.
        switch_frame_indices: LongLive's format only: latent frames where prompts 1..N-1
            start; default every 40.
        num_output_frames: LongLive's format only: the video's length in latent frames;
            default the last switch index plus 40.

    Raises:
        ScheduleError: the text is not a schedule, or an argument does not fit it.
    """
    records = _records(text, name)
    if not records:
        raise ScheduleError(f"{name}: no schedule (the file is empty)")
    schedules = [(where, obj) for where, obj in records if "prompts" in obj]
    entries = [(where, obj) for where, obj in records if "prompts" not in obj]
    if schedules and entries:
        raise ScheduleError(
            f'{entries[0][0]}: a prompt entry in a file of {{"prompts": [...]}} schedules; '
            "use one format per file"
        )
    if entries:
        for option, value in (
            ("--line", line),
            ("--switch-frame-indices", switch_frame_indices),
            ("--num-output-frames", num_output_frames),
        ):
            if value is not None:
                raise ScheduleError(f'{name}: {option} applies to {{"prompts": [...]}} files')
        prompts = tuple(_entry(obj, where) for where, obj in entries)
        _check_order(prompts, name)
        return Timeline(prompts)
    if line is not None and not 1 <= line <= len(schedules):
        raise ScheduleError(f"{name}: --line {line} is out of range: it has {len(schedules)}")
    where, obj = schedules[(line or 1) - 1]
    number = (line or 1) if len(schedules) > 1 else None
    raw = obj["prompts"]
    if not isinstance(raw, list) or not raw:
        raise ScheduleError(f"{where}: 'prompts' must be a non-empty list, got {raw!r:.80}")
    if all(isinstance(p, str) for p in raw):
        return _longlive(obj, where, number, switch_frame_indices, num_output_frames)
    if not all(isinstance(p, dict) for p in raw):
        raise ScheduleError(
            f"{where}: 'prompts' must hold all strings (LongLive's format) or all objects "
            '{"t": ..., "prompt": ...}'
        )
    for option, value in (
        ("--switch-frame-indices", switch_frame_indices),
        ("--num-output-frames", num_output_frames),
    ):
        if value is not None:
            raise ScheduleError(
                f"{where}: {option} applies to LongLive's format "
                '({"prompts": ["...", ...]}) only'
            )
    _check_keys(obj, _TIMELINE_KEYS, where)
    prompts = tuple(_entry(p, f"{where}: prompts[{i}]") for i, p in enumerate(raw))
    _check_order(prompts, where)
    seconds = obj.get("seconds")
    if seconds is not None:
        seconds = _positive_number(seconds, f"{where}: 'seconds'")
        _check_length(prompts, seconds, where)
    pipeline = obj.get("pipeline")
    if pipeline is not None and (not isinstance(pipeline, str) or not pipeline.strip()):
        raise ScheduleError(f"{where}: 'pipeline' must be a non-empty string, got {pipeline!r}")
    seed = obj.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise ScheduleError(f"{where}: 'seed' must be an integer >= 0, got {seed!r}")
    return Timeline(prompts, seconds, None, pipeline, seed, "timeline", number)


def load_timeline(path: str | Path, **kwargs: Any) -> Timeline:
    """Read and parse a schedule file (``-`` for stdin); ``kwargs`` as :func:`parse_timeline`.

    Raises:
        ScheduleError: the file cannot be read or is not a valid schedule.
    """
    try:
        if str(path) == "-":
            return parse_timeline(sys.stdin.read(), name="<stdin>", **kwargs)
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"cannot read {path}: {exc}") from None
    return parse_timeline(text, name=str(path), **kwargs)


def _records(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    """The JSON objects of ``text``: one (a JSON file), the items of a JSON array, or one per
    non-blank line (JSONL); each with where it was, for messages."""
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
        is_json = False
    else:
        is_json = True
    if is_json:
        items = whole if isinstance(whole, list) else [whole]
        where = [f"{name}[{i}]" for i in range(len(items))] if isinstance(whole, list) else [name]
        out = []
        for place, item in zip(where, items, strict=True):
            if not isinstance(item, dict):
                raise ScheduleError(f"{place}: expected a JSON object, got {item!r:.80}")
            out.append((place, item))
        return out
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        place = f"{name} line {number}"
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise ScheduleError(f"{place}: not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise ScheduleError(f"{place}: expected a JSON object, got {item!r:.80}")
        out.append((place, item))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any, what: str) -> float:
    if not _is_number(value) or value <= 0:
        raise ScheduleError(f"{what} must be a positive number, got {value!r}")
    return float(value)


def _check_keys(obj: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(map(repr, known))}"
        )


def _check_prompt(prompt: Any, where: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ScheduleError(f"{where}: the prompt must be a non-empty string, got {prompt!r:.80}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ScheduleError(
            f"{where}: the prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"
        )
    return prompt.strip()


def _entry(obj: Any, where: str) -> PromptEntry:
    if not isinstance(obj, dict):
        raise ScheduleError(f"{where}: expected an object, got {obj!r:.80}")
    _check_keys(obj, _ENTRY_KEYS, where)
    for key in ("t", "prompt"):
        if key not in obj:
            raise ScheduleError(f"{where}: missing {key!r}")
    prompt = _check_prompt(obj["prompt"], where)
    t = obj["t"]
    if not _is_number(t) or t < 0:
        raise ScheduleError(f"{where}: 't' must be a number of seconds >= 0, got {t!r}")
    chunks = obj.get("transition_chunks", 0)
    if not _is_int(chunks) or not 0 <= chunks <= MAX_TRANSITION_CHUNKS:
        raise ScheduleError(
            f"{where}: 'transition_chunks' must be an integer 0..{MAX_TRANSITION_CHUNKS}, "
            f"got {chunks!r}"
        )
    return PromptEntry(prompt, float(t), chunks)


def _check_order(prompts: tuple[PromptEntry, ...], where: str) -> None:
    if prompts[0].t != 0:
        raise ScheduleError(f"{where}: the first prompt must start at t=0, got t={prompts[0].t:g}")
    if prompts[0].transition_chunks:
        raise ScheduleError(
            f"{where}: the first prompt cannot have transition_chunks (nothing precedes it)"
        )
    for i in range(1, len(prompts)):
        if prompts[i].t <= prompts[i - 1].t:
            raise ScheduleError(
                f"{where}: times must increase: prompt {i} starts at t={prompts[i].t:g}, "
                f"not after prompt {i - 1} (t={prompts[i - 1].t:g})"
            )


def _check_length(prompts: tuple[PromptEntry, ...], seconds: float, where: str) -> None:
    if prompts[-1].t >= seconds:
        raise ScheduleError(
            f"{where}: prompt {len(prompts) - 1} starts at t={prompts[-1].t:g}, at or after "
            f"the end of the video ({seconds:g} s)"
        )


def _longlive(
    obj: dict[str, Any],
    where: str,
    line: int | None,
    indices: list[int] | None,
    num_output_frames: int | None,
) -> Timeline:
    """LongLive's ``{"prompts": [p0, ..., pN-1]}`` with its latent switch indices."""
    _check_keys(obj, _LONGLIVE_KEYS, where)
    texts = [_check_prompt(p, f"{where}: prompts[{i}]") for i, p in enumerate(obj["prompts"])]
    if indices is None:
        indices = [LONGLIVE_SEGMENT_LATENTS * k for k in range(1, len(texts))]
    if len(indices) != len(texts) - 1:
        raise ScheduleError(
            f"{where}: {len(texts)} prompts need {len(texts) - 1} switch frame indices "
            f"(one per prompt after the first), got {len(indices)}: {indices}"
        )
    for i, index in enumerate(indices):
        if index < 1 or (i and index <= indices[i - 1]):
            raise ScheduleError(
                f"{where}: switch frame indices must be increasing latent frames >= 1, "
                f"got {indices}"
            )
    last = indices[-1] if indices else 0
    if num_output_frames is None:
        num_output_frames = last + LONGLIVE_SEGMENT_LATENTS
    if num_output_frames <= last:
        raise ScheduleError(
            f"{where}: --num-output-frames {num_output_frames} must exceed the last switch "
            f"index ({last})"
        )
    prompts = [PromptEntry(texts[0], 0.0, frame=0, latent_frame=0)]
    for text, latent in zip(texts[1:], indices, strict=True):
        frame = latent_to_video_frame(latent)
        prompts.append(PromptEntry(text, frame / LONGLIVE_FPS, frame=frame, latent_frame=latent))
    frames = 4 * num_output_frames - 3  # latent_to_video_frame(N - 1) + 4
    return Timeline(tuple(prompts), frames / LONGLIVE_FPS, frames, None, None, "longlive", line)


# -- LongLive's switch indices on the command line -------------------------------------------


def parse_frame_indices(value: str) -> list[int]:
    """``"40,80,120"`` (also space-separated or in brackets) -> ``[40, 80, 120]``."""
    parts = [p for p in re.split(r"[\s,]+", value.strip().strip("[]")) if p]
    try:
        indices = [int(p) for p in parts]
    except ValueError:
        indices = []
    if not indices or any(i < 1 for i in indices):
        raise argparse.ArgumentTypeError(
            f"expected latent frame indices >= 1 such as 40,80,120, got {value!r}"
        )
    return indices
