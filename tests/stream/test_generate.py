"""stream/generate.py (``stream generate``'s loop) with a stand-in pipeline: switches land at
the first chunk at or after their time; one at or after the end is refused, one whose chunk
would start past the last frame is logged as not applied."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from framestream.stream.generate import PromptSwitch, generate_video
from framestream.stream.pipelines.base import FrameChunk
from framestream.stream.requests import GenerationRequest


@dataclass
class _Config:
    fps: float = 16.0


class Chunks:
    """12-frame chunks of 16x16 pixels; notes the frame each switch came before."""

    def __init__(self) -> None:
        self.config = _Config()
        self.switched: list[tuple[str, int]] = []
        self.closed = False

    def open(self, request: GenerationRequest) -> SimpleNamespace:
        return SimpleNamespace(frames_emitted=0)

    def step(self, state: SimpleNamespace) -> FrameChunk:
        frames = np.zeros((12, 16, 16, 3), np.uint8)
        chunk = FrameChunk(frames, state.frames_emitted, self.config.fps)
        state.frames_emitted += 12
        return chunk

    def switch_prompt(self, state: SimpleNamespace, prompt: str, transition_chunks=0) -> None:
        self.switched.append((prompt, state.frames_emitted))

    def close(self, state: SimpleNamespace) -> None:
        self.closed = True


def test_switches_land_at_the_first_chunk_at_or_after_their_time(tmp_path: Path, caplog) -> None:
    pipeline = Chunks()
    switches = [PromptSwitch(1.0, "b"), PromptSwitch(2.9, "c")]  # frames 16, 46.4
    with caplog.at_level(logging.WARNING, logger="framestream.stream.generate"):
        written = generate_video(
            pipeline, GenerationRequest("a"), switches, 3.0, tmp_path / "v.mp4", progress=False
        )
    assert written == 48 and pipeline.closed
    assert pipeline.switched == [("b", 24)]
    assert "not applied" in caplog.text and "c" in caplog.text  # its chunk would start at 48


@pytest.mark.parametrize("at", [3.0, 20.0])
def test_a_switch_at_or_after_the_end_is_refused(tmp_path: Path, at: float) -> None:
    pipeline = Chunks()
    with pytest.raises(ValueError, match="at or after the end"):
        generate_video(
            pipeline, GenerationRequest("a"), [PromptSwitch(at, "b")], 3.0, tmp_path / "v.mp4"
        )
    assert not (tmp_path / "v.mp4").exists()
