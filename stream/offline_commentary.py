"""Commentary of a video generated in process (``stream generate --commentary``): the frames of
each chunk go to a StreamingVLM stream as they are made, at its sampling rate, and every second
it can understand is understood at once (no engine, no server: one stream, one thread)."""

from __future__ import annotations

from typing import Any

import numpy as np

from framestream.stream.commentary import SampleClock
from framestream.stream.pipelines.streaming_vlm import Caption, StreamingVLMPipeline
from framestream.stream.requests import UnderstandingRequest

__all__ = ["OfflineCommentary"]


class OfflineCommentary:
    """One StreamingVLM stream watching a generated video; use as a context manager (its cache
    is returned on exit).

    Args:
        pipeline: the understanding pipeline.
        fps: frames per second of the video watched.
        request: the stream's instruction and sampler.
    """

    def __init__(
        self,
        pipeline: StreamingVLMPipeline,
        fps: float,
        request: UnderstandingRequest | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.fps = fps
        self.captions: list[Caption] = []
        self._clock = SampleClock(pipeline.config.fps)
        self._last: np.ndarray | None = None  # the newest frame, to close the last second
        self._state: Any = pipeline.open(request or UnderstandingRequest())

    def __enter__(self) -> OfflineCommentary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._state is not None:
            self.pipeline.close(self._state)
            self._state = None

    def watch(self, frames: np.ndarray, first_index: int) -> None:
        """Take a chunk of uint8 ``[T, H, W, 3]`` frames starting at ``first_index`` and
        understand the seconds it completes."""
        if self._state is None:
            raise RuntimeError("the commentary is closed")
        for offset, pixels in enumerate(frames):
            timestamp = (first_index + offset) / self.fps
            if self._clock.due(timestamp):
                self.pipeline.push_frame(self._state, timestamp, pixels)
        if len(frames):
            self._last = frames[-1]
        self._understand()

    def finish(self, frames: int) -> None:
        """The video ended after ``frames`` frames: its last whole second is understood too (a
        second is complete once a frame at its end has come; the last frame, held to the
        video's end time, stands for it)."""
        if self._state is None or self._last is None:
            return
        self.pipeline.push_frame(self._state, frames / self.fps, self._last)
        self._understand()

    def _understand(self) -> None:
        pipeline, state = self.pipeline, self._state
        while True:
            if pipeline.is_decoding(state):
                caption = pipeline.decode([state])[0]
                if caption is not None:
                    self.captions.append(caption)
            elif pipeline.ready(state):
                error = pipeline.prefill([state])[0]
                if error is not None:
                    raise error
            else:
                return
