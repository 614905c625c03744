"""A chunk's decode started with ``decode_async`` and awaited after the next chunk's DiT has
been launched (the engine's order) gives the frames of the decode in series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.models.registry import load_wan_models
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.requests import GenerationRequest

PIPELINES = {"longlive": LongLivePipeline, "rolling_forcing": RollingForcingPipeline}
REQUEST = GenerationRequest("a red ball", seed=3, height=32, width=32)
STEPS = 5


def _series(pipe) -> list[np.ndarray]:
    state = pipe.open(REQUEST)
    frames = [pipe.step(state).frames.copy() for _ in range(STEPS)]
    pipe.close(state)
    return frames


def _overlapped(pipe) -> list[tuple[int, np.ndarray]]:
    state = pipe.open(REQUEST)
    out, pending = [], pipe.decode_async(state, pipe.denoise(state))
    for _ in range(STEPS - 1):
        ahead = pipe.decode_async(state, pipe.denoise(state))  # queued before waiting
        chunk = pending.result()
        out.append((chunk.first_index, chunk.frames.copy()))
        pending = ahead
    chunk = pending.result()
    out.append((chunk.first_index, chunk.frames.copy()))
    pipe.close(state)
    return out


def _check(device: str, kind: str) -> None:
    models = load_wan_models("tiny", device=device)
    pipes = [PIPELINES[kind](models, KVCacheManager(), 16 << 20, block_size=4) for _ in range(2)]
    series, overlapped = _series(pipes[0]), _overlapped(pipes[1])
    index = 0
    for expected, (first, frames) in zip(series, overlapped, strict=True):
        assert first == index
        np.testing.assert_array_equal(frames, expected)
        index += len(frames)


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_decode_async_on_the_cpu_is_the_series_decode(kind: str) -> None:
    _check("cpu", kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_decode_beside_the_next_dit_on_cuda_matches_series(kind: str) -> None:
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # the same convolution algorithm on both runs
    try:
        _check("cuda", kind)
    finally:
        torch.backends.cudnn.deterministic = deterministic
