"""Sizing the ``growing`` baseline to its device (evals/bench/memory.py), on the CPU with fake
memory budgets: it fits, is capped at a multiple of a chunk, or is skipped, and a generation
run records which, instead of running out of memory."""

from __future__ import annotations

import pytest
import torch

from framestream.evals.bench.generation import _FRAMES_HELD, GenerationSettings, run_generation
from framestream.evals.bench.loaders import ModelShelf, Target
from framestream.evals.bench.memory import (
    MemoryBudget,
    device_budget,
    fit_growing,
    frame_bytes,
    process_memory,
)
from framestream.evals.bench.variants import GROWING, OURS, variant_specs
from framestream.stream.kvcache import CacheGeometry

GIB = 2**30


def test_frame_bytes_counts_every_layer_k_and_v_and_a_forward() -> None:
    """At the 1.3B's geometry in bf16, 1560 tokens a frame: K and V of 30 layers of 12 heads
    of 128, and one layer's hidden states, q/k/v/out and feed-forward width."""
    geometry = CacheGeometry(30, 12, 128, torch.bfloat16)
    kv = 1560 * 30 * 2 * 12 * 128 * 2
    working = 1560 * (4 * 1536 + 8960) * 2
    assert frame_bytes(geometry, 1560, 1536, 8960) == kv + working


def test_a_stream_that_fits_is_left_as_asked() -> None:
    fit = fit_growing(57, 100, 1000, 500, MemoryBudget(100_000, "fake"), step=3)
    assert (fit.frames, fit.capped, fit.skipped, fit.reason) == (57, False, False, None)


def test_a_stream_too_long_is_capped_at_whole_chunks() -> None:
    # 90% of 10_000 less 1000 held and 500 reserved leaves 7500: 75 frames of 100, 75 -> 75
    fit = fit_growing(120, 100, 1000, 500, MemoryBudget(10_000, "fake"), step=3)
    assert fit.frames == 75 and fit.capped and not fit.skipped
    fit = fit_growing(120, 100, 1000, 600, MemoryBudget(10_000, "fake"), step=3)
    assert fit.frames == 72  # 74 frames fit: whole chunks of 3
    assert fit.reason.startswith("capped at 72 frames") and "fake" in fit.reason
    assert fit.to_json()["capped"] is True


def test_a_stream_that_would_hold_no_more_than_ours_is_skipped() -> None:
    fit = fit_growing(120, 100, 1000, 500, MemoryBudget(2000, "fake"), step=3, least=12)
    assert fit.frames == 0 and fit.skipped and fit.reason.startswith("skipped")
    fit = fit_growing(120, 100, 8000, 0, MemoryBudget(10_000, "fake"), step=3, least=12)
    assert fit.skipped  # 10 frames fit, under the 12 it needs to grow at all
    with pytest.raises(ValueError, match="cannot be negative"):
        MemoryBudget(-1, "fake")
    with pytest.raises(ValueError, match="need requested"):
        fit_growing(0, 100, 0, 0, MemoryBudget(1, "fake"))


def test_the_cpu_budget_and_footprint_are_the_host_s() -> None:
    cpu = torch.device("cpu")
    assert device_budget(cpu, 5 * GIB) == MemoryBudget(5 * GIB, "--memory-budget")
    budget = device_budget(cpu)
    assert budget is None or budget.free_bytes > 0
    held, peak = process_memory(cpu)
    assert held == peak > 0


@pytest.fixture(scope="module")
def shelf():
    return ModelShelf(Target("tiny", torch.device("cpu"), torch.float32))


def _run(shelf, budget: int) -> dict:
    settings = GenerationSettings(("longlive",), (16, 16), 5, 2, 1, 1, memory_budget=budget)
    specs = variant_specs([GROWING], torch.device("cpu"))
    ((_, workload),) = run_generation(shelf, settings, specs)
    return workload


def _frame(shelf) -> tuple[int, int]:
    """(bytes a growing frame is sized at, bytes of its pool's fixed part) at 16x16."""
    models = shelf.wan
    rows, cols = models.token_grid(16, 16)
    cfg = models.dit.config
    geometry = CacheGeometry(cfg.num_layers, cfg.num_heads, cfg.head_dim, models.dtype)
    per_frame = frame_bytes(geometry, rows * cols, cfg.dim, cfg.ffn_dim)
    return per_frame, (_FRAMES_HELD + 1) * rows * cols * geometry.bytes_per_token


def test_generation_caps_the_growing_stream_to_the_budget(shelf) -> None:
    per_frame, held = _frame(shelf)
    budget = int((held + 19 * per_frame) / 0.9) + 1  # 19 frames fit: capped at 18
    workload = _run(shelf, budget)
    growing = workload.config["growing"]
    assert growing["requested_frames"] == 3 * (5 + 1 + 5)
    assert growing["frames"] == 18 and growing["capped"] and "--memory-budget" in growing["reason"]
    ours, theirs = (workload.variants[name].series["cache_bytes"].y for name in (OURS, GROWING))
    frame = max(ours) // (3 + 9)  # ours holds the sink and the 9-frame window
    assert max(ours) < max(theirs) <= (3 + 18) * frame  # it grew, up to the cap


def test_generation_skips_a_growing_stream_that_cannot_grow(shelf) -> None:
    per_frame, held = _frame(shelf)
    workload = _run(shelf, held)  # not a frame beyond the fixed part
    assert set(workload.variants) == {OURS}
    assert workload.config["growing"]["skipped"]
    assert workload.config["growing"]["reason"].startswith("skipped")
