"""What a bench run may still allocate on its device, what a process holds, and how long a
cache that never evicts (the ``growing`` baseline) may grow before it would not fit.

A growing cache is sized before it is allocated: its bytes per cached frame come from the DiT's
geometry (K and V of every layer, plus the activations of a forward over that frame, which a
LongLive recache of the whole grown window runs), the room from the device's free memory less
what the other variants' pools take and a reserve for a step's working memory. A stream that
would not fit is capped (its cache grows to the cap, then evicts as ours does) or, when not
even the cache ours holds fits, skipped; either way the reason is recorded, and the run goes
on instead of running out of memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from framestream.stream.kvcache import CacheGeometry

__all__ = [
    "GrowingFit",
    "MemoryBudget",
    "device_budget",
    "fit_growing",
    "frame_bytes",
    "process_memory",
]

# Of the free memory, the part a growing cache may take: the rest is left for what the
# estimate does not count (the allocator's fragmentation, the decode's own peak).
_USABLE = 0.9


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """Bytes a run may still allocate on its device, and where the number came from."""

    free_bytes: int
    source: str  # e.g. "cuda free memory", "host available memory", "--memory-budget"

    def __post_init__(self) -> None:
        if self.free_bytes < 0:
            raise ValueError(f"a memory budget cannot be negative, got {self.free_bytes}")


@dataclass(frozen=True, slots=True)
class GrowingFit:
    """How many latent frames a growing stream may keep beyond the cache ours holds."""

    requested: int  # every frame of the stream
    frames: int  # what fits: ``requested`` unless capped; 0 when skipped
    reason: str | None  # why capped or skipped; None when it fits

    @property
    def capped(self) -> bool:
        return 0 < self.frames < self.requested

    @property
    def skipped(self) -> bool:
        return self.frames == 0

    def to_json(self) -> dict[str, object]:
        return {
            "requested_frames": self.requested,
            "frames": self.frames,
            "capped": self.capped,
            "skipped": self.skipped,
            "reason": self.reason,
        }


def frame_bytes(geometry: CacheGeometry, tokens_per_frame: int, dim: int, ffn_dim: int) -> int:
    """Bytes one more cached latent frame costs a growing stream: its K/V in every layer, and
    the activations of one layer's forward over its tokens (hidden states, q/k/v, attention
    out, the feed-forward's inner width) at the cache's element size."""
    element = torch.empty((), dtype=geometry.dtype).element_size()
    working = (4 * dim + ffn_dim) * max(element, 2)
    return tokens_per_frame * (geometry.bytes_per_token + working)


def fit_growing(
    requested: int,
    per_frame: int,
    fixed_bytes: int,
    reserve_bytes: int,
    budget: MemoryBudget,
    step: int = 1,
    least: int = 1,
) -> GrowingFit:
    """Frames of a growing stream that fit ``budget`` after ``fixed_bytes`` (the frames ours
    holds, which the growing one holds too) and ``reserve_bytes`` (a step's working memory);
    ``per_frame`` from :func:`frame_bytes`. A cap is a multiple of ``step`` (the frames of a
    chunk); one under ``least`` (a cache no longer than ours) skips the stream."""
    if requested < 1 or per_frame < 1 or step < 1:
        raise ValueError(
            f"need requested, per_frame and step >= 1, got {requested}, {per_frame}, {step}"
        )
    room = int(budget.free_bytes * _USABLE) - fixed_bytes - reserve_bytes
    frames = max(room, 0) // per_frame // step * step
    if frames >= requested:
        return GrowingFit(requested, requested, None)
    if frames < least:
        frames = 0
    need = fixed_bytes + reserve_bytes + requested * per_frame
    gib = 2**30
    what = (
        f"{requested} frames at {per_frame / 2**20:.3g} MiB each, beside {fixed_bytes / gib:.3g} "
        f"GiB held and a {reserve_bytes / gib:.3g} GiB reserve, need {need / gib:.3g} GiB of "
        f"{_USABLE:.0%} of {budget.source} ({budget.free_bytes / gib:.3g} GiB)"
    )
    if frames == 0:
        return GrowingFit(requested, 0, f"skipped: {what}")
    return GrowingFit(requested, frames, f"capped at {frames} frames: {what}")


def device_budget(device: torch.device, limit_bytes: int | None = None) -> MemoryBudget | None:
    """What the run may still allocate: ``limit_bytes`` when given, else the device's free
    memory (on CUDA, with what torch's allocator holds unused; on the CPU, the host's available
    memory); None where it cannot be told."""
    if limit_bytes is not None:
        return MemoryBudget(limit_bytes, "--memory-budget")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return MemoryBudget(free + unused, "cuda free memory")
    available = _meminfo_bytes("MemAvailable")
    return None if available is None else MemoryBudget(available, "host available memory")


def process_memory(device: torch.device) -> tuple[int, int]:
    """``(held, peak)`` bytes: on CUDA the tensors allocated and the most the allocator has
    reserved since its peak was last reset; on the CPU the process's resident set, twice."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_reserved(device)
    rss = _resident_bytes()
    return rss, rss


def _resident_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:  # no procfs: the peak resident set is what the platform tells
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")


def _meminfo_bytes(field: str) -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # kB
    return None
