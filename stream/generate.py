"""Offline generation: run a generation pipeline in process with a prompt-switch schedule and
write the frames to an MP4 (``stream generate``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from framestream.stream.media import Mp4Writer
from framestream.stream.requests import GenerationRequest

__all__ = ["PromptSwitch", "generate_video", "parse_switch"]

logger = logging.getLogger(__name__)

_SWITCH = re.compile(r"^t=(?P<t>\d+(?:\.\d+)?)s?:(?P<prompt>.+)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PromptSwitch:
    at_seconds: float
    prompt: str
    transition_chunks: int = 0


def parse_switch(text: str) -> PromptSwitch:
    """Parse ``"t=4s:ANOTHER PROMPT"`` (the ``s`` is optional)."""
    match = _SWITCH.match(text.strip())
    if match is None or not match["prompt"].strip():
        raise ValueError(f"--switch must look like 't=4s:a new prompt', got {text!r}")
    return PromptSwitch(float(match["t"]), match["prompt"].strip())


def generate_video(
    pipeline,
    request: GenerationRequest,
    switches: list[PromptSwitch],
    seconds: float,
    out: str | Path,
    progress: bool = True,
    on_frames: Callable[[np.ndarray, int], None] | None = None,
) -> int:
    """Generate ``seconds`` of video, switching prompts on schedule; returns frames written.
    ``on_frames(frames, first_index)`` also sees each chunk's written frames (a commentary).

    A switch takes effect at the first chunk that starts at or after its time; one whose chunk
    would start after the last frame is logged as not applied. Exactly ``round(seconds * fps)``
    frames are written.

    Raises:
        ValueError: ``seconds`` is not positive, or a switch is at or after the end.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    late = [s for s in switches if s.at_seconds >= seconds]
    if late:
        raise ValueError(
            f"a switch at {late[0].at_seconds:g} s is at or after the end ({seconds:g} s)"
        )
    pending = sorted(switches, key=lambda s: s.at_seconds)
    state = pipeline.open(request)
    fps = pipeline.config.fps
    total = round(seconds * fps)
    try:
        with (
            Mp4Writer(out, fps) as writer,
            tqdm(total=total, unit="frame", disable=not progress, desc="generating") as bar,
        ):
            while writer.frames_written < total:
                while pending and pending[0].at_seconds * fps <= state.frames_emitted:
                    switch = pending.pop(0)
                    logger.info(
                        "switching prompt at frame %d: %s", state.frames_emitted, switch.prompt
                    )
                    pipeline.switch_prompt(state, switch.prompt, switch.transition_chunks)
                chunk = pipeline.step(state)
                frames = chunk.frames[: total - writer.frames_written]
                if on_frames is not None:
                    on_frames(frames, writer.frames_written)
                writer.write(frames)
                bar.update(len(frames))
            for switch in pending:
                logger.warning(
                    "not applied: the chunk after %g s starts past the last frame: %s",
                    switch.at_seconds,
                    switch.prompt,
                )
            return writer.frames_written
    finally:
        pipeline.close(state)
