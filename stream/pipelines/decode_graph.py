"""StreamingVLM's decode step as CUDA graphs: one per batch-size bucket, captured on first use.

A reply token of Qwen2.5-VL-7B is host-bound when run eagerly: a dozen kernel launches a layer
cost more host time than the card spends on the token (docs/perf-notes.md, round 3, names the
profile). A graph replays the whole step (embedding, 28 layers, logits, the banned-token mask,
the sampler: penalty, temperature, top-k, the seeded draw) with one launch.

What makes the step capturable:

* its metadata lives in static device buffers sized for the bucket's worst case (``size``
  sequences of ``kv_per_sequence`` keys), refilled before each replay: each session's plan is
  read off its rows with no copy (:mod:`stream.kvcache.sequence`), copied once into a pinned
  host twin of the buffers and sent in one asynchronous copy per buffer; so do the sequences'
  sampler settings (:class:`SamplerBatch`: presence row, temperature, penalty, top-k, seed,
  draw count), and each session's penalty set is a row of a device table the step indexes;
* grids are sized from that worst case: the Triton split-key decode kernel reads each
  sequence's real key count from ``kv_indptr`` on the device, so splits past a sequence's end
  contribute nothing;
* a batch smaller than its bucket is padded with one-token sequences that write and read the
  pool's null slot (block 0 is never handed out) and the sampler's null row, greedily;
* only the Triton decode backend is graph-safe: the SDPA backends loop over sequences on the
  host (:func:`graph_safe_backend`).

Where CUDA is missing the same static, padded step runs eagerly, so the CPU tests check the
padding and packing against the plain decode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from framestream.kernels.attention import AttentionMetadata
from framestream.stream.kvcache import (
    NULL_BLOCK,
    BlockPool,
    CacheStep,
    CacheView,
    SequencePlan,
    pack_plans,
)
from framestream.stream.pipelines.sampling import PADDING, SamplerBatch, SampleSlot

__all__ = ["DecodeGraphs", "graph_safe_backend"]

# the step to capture: token ids [B], a view of the cache and the sampler's inputs -> next
# token ids [B]
StepFn = Callable[[torch.Tensor, CacheView, SamplerBatch], torch.Tensor]
_GRAPH_SAFE = ("auto", "triton")  # backends whose decode is the Triton split-key kernel


def graph_safe_backend(name: str | None, device: torch.device) -> bool:
    """Whether attention backend ``name`` on ``device`` (resolved as
    :func:`kernels.select_backend` resolves it) decodes with no host work per sequence, so a
    step can be captured."""
    default = "auto" if device.type == "cuda" else "torch"
    return (name or os.environ.get("STREAM_ATTENTION_BACKEND") or default) in _GRAPH_SAFE


@dataclass(eq=False)
class _Bucket:
    """Static buffers of one batch size and, once captured, its graph."""

    size: int
    ids: torch.Tensor  # int64 [size]
    buffers: dict[str, torch.Tensor]  # pack_plans' arrays at their worst-case sizes
    staging: dict[str, torch.Tensor]  # their host twins (pinned on CUDA), packed into
    view: CacheView
    sampler: SamplerBatch  # per-sequence sampler settings
    graph: torch.cuda.CUDAGraph | None = None
    tokens: torch.Tensor | None = None  # the captured step's output


class DecodeGraphs:
    """Decode steps of up to ``max_batch`` sequences through static buffers (and graphs).

    Args:
        step_fn: the decode step (ids, view, sampler -> next ids); the eager path runs the same
            one.
        pool: the cache pool the sequences live in.
        view: builds a :class:`CacheView` over ``pool`` for a :class:`CacheStep`.
        kv_per_sequence: the most keys one sequence's step reads (its cache's worst case).
        max_batch: the largest batch; buckets are powers of two up to it.
        capture: capture CUDA graphs (the pool is on CUDA); else run the static step eagerly.
    """

    def __init__(
        self,
        step_fn: StepFn,
        pool: BlockPool,
        view: Callable[[CacheStep], CacheView],
        kv_per_sequence: int,
        max_batch: int,
        capture: bool,
    ) -> None:
        if kv_per_sequence < 1 or max_batch < 1:
            raise ValueError(
                f"kv_per_sequence ({kv_per_sequence}) and max_batch ({max_batch}) must be >= 1"
            )
        self._step_fn = step_fn
        self._view = view
        self.device = pool.kv.device
        self.kv_per_sequence = kv_per_sequence
        self.max_batch = max_batch
        self.capture = capture
        null = NULL_BLOCK * pool.block_size  # a slot no session owns
        self._padding = SequencePlan(
            write_slots=np.array([null], dtype=np.int32),
            q_pos=np.zeros((1, 3), dtype=np.int32),
            kv_slots=np.array([null], dtype=np.int32),
            kv_pos=np.zeros((1, 3), dtype=np.int32),
        )
        self._buckets: dict[int, _Bucket] = {}
        self._memory = torch.cuda.graph_pool_handle() if capture else None

    def fits(self, plans: Sequence[SequencePlan]) -> bool:
        """Whether a step of ``plans`` (one query each) can run here."""
        return (
            0 < len(plans) <= self.max_batch
            and all(len(p.q_pos) == 1 for p in plans)
            and all(len(p.kv_slots) <= self.kv_per_sequence for p in plans)
        )

    def step(
        self, ids: Sequence[int], plans: Sequence[SequencePlan], slots: Sequence[SampleSlot]
    ) -> list[int]:
        """The next token of each sequence (``ids[i]`` is sequence ``i``'s current token,
        ``slots[i]`` how it samples)."""
        if len(ids) != len(plans) or len(slots) != len(plans) or not self.fits(plans):
            raise ValueError(
                f"{len(ids)} ids and {len(slots)} slots for {len(plans)} plans; a step takes "
                f"1..{self.max_batch} sequences of one query and <= {self.kv_per_sequence} keys "
                "each"
            )
        bucket = self._bucket(len(plans))
        self._load(bucket, ids, plans, slots)
        if not self.capture:
            return self._step_fn(bucket.ids, bucket.view, bucket.sampler)[: len(ids)].tolist()
        if bucket.graph is None:
            self._capture(bucket)
        bucket.graph.replay()
        return bucket.tokens[: len(ids)].tolist()

    def capture_all(self) -> None:
        """Capture every bucket's graph now (on padding alone), so that no stream pays a
        capture, or the Triton compilation behind it, at its first reply; nothing off CUDA."""
        if not self.capture:
            return
        sizes = {min(1 << i, self.max_batch) for i in range(self.max_batch.bit_length() + 1)}
        for size in sorted(sizes):
            bucket = self._bucket(size)
            if bucket.graph is None:
                self._capture(bucket)

    def _bucket(self, n: int) -> _Bucket:
        size = min(1 << (n - 1).bit_length(), self.max_batch)
        if size not in self._buckets:
            self._buckets[size] = self._new_bucket(size)
        return self._buckets[size]

    def _new_bucket(self, size: int) -> _Bucket:
        kv = size * self.kv_per_sequence

        def zeros(*shape: int, dtype: torch.dtype = torch.int32, host: bool = False):
            if host:
                return torch.zeros(shape, dtype=dtype, pin_memory=self.device.type == "cuda")
            return torch.zeros(shape, dtype=dtype, device=self.device)

        buffers = {
            "q_pos": zeros(size, 3),
            "kv_slots": zeros(kv),
            "kv_pos": zeros(kv, 3),
            "q_indptr": zeros(size + 1),
            "kv_indptr": zeros(size + 1),
            "write_slots": zeros(size, dtype=torch.int64),
        }
        staging = {name: zeros(*b.shape, dtype=b.dtype, host=True) for name, b in buffers.items()}
        # grids from the worst case: every sequence at kv_per_sequence keys
        meta = AttentionMetadata(
            q_pos=buffers["q_pos"],
            kv_slots=buffers["kv_slots"],
            kv_pos=buffers["kv_pos"],
            q_indptr=buffers["q_indptr"],
            kv_indptr=buffers["kv_indptr"],
            q_indptr_host=tuple(range(size + 1)),
            kv_indptr_host=tuple(i * self.kv_per_sequence for i in range(size + 1)),
            causal=True,
        )
        view = self._view(CacheStep(meta, buffers["write_slots"]))
        sampler = SamplerBatch.empty(size, self.device)
        ids = zeros(size, dtype=torch.int64)
        bucket = _Bucket(size, ids, buffers, staging, view, sampler)
        # all padding: warm-up and capture touch the null slot and the sampler's null row only
        self._load(bucket, [], [], [])
        return bucket

    def _load(
        self,
        bucket: _Bucket,
        ids: Sequence[int],
        plans: Sequence[SequencePlan],
        slots: Sequence[SampleSlot],
    ) -> None:
        padding = bucket.size - len(plans)
        # the copies out of staging are queued in order; a step reads its tokens back (a
        # synchronisation) before the next one refills staging, and a refill before any use
        # (a new bucket's) is overwritten by the copy queued after it
        out = {name: host.numpy() for name, host in bucket.staging.items()}
        for name, array in pack_plans([*plans, *[self._padding] * padding], out).items():
            rows = len(array)
            bucket.buffers[name][:rows].copy_(bucket.staging[name][:rows], non_blocking=True)
        bucket.ids.copy_(torch.tensor([*ids, *[0] * (bucket.size - len(ids))]))
        bucket.sampler.load([*slots, *[PADDING] * padding])

    def _capture(self, bucket: _Bucket) -> None:
        # warm-up on a side stream, as torch.cuda.graphs asks: kernels compile, cuBLAS sets up
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step_fn(bucket.ids, bucket.view, bucket.sampler)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._memory):
            bucket.tokens = self._step_fn(bucket.ids, bucket.view, bucket.sampler)
        bucket.graph = graph
