"""Block pool and session lifecycle: admission, reservations, stats, misuse, leaks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from framestream.models.registry import load_wan_models
from framestream.stream.kvcache import (
    BlockPool,
    CacheFullError,
    CacheGeometry,
    CacheMisuseError,
    FrameWindowConfig,
    KVCacheManager,
    SessionCache,
    cache_dtype,
    check_kv_cache_dtype,
    text_positions,
)
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.requests import GenerationRequest

GEOMETRY = CacheGeometry(num_layers=2, num_kv_heads=2, head_dim=8, dtype=torch.float32)


@pytest.mark.parametrize("pipeline", [LongLivePipeline, RollingForcingPipeline])
def test_no_step_reads_cache_memory_it_did_not_write(pipeline) -> None:
    """The pool is left uninitialised but for its null block: over a pool whose every other
    slot holds NaN, a stream draws the same frames through its window and a recached switch
    (the VLM's rounds: test_streaming_vlm)."""
    tiny, runs = load_wan_models("tiny"), []
    for poison in (False, True):
        pipe = pipeline(tiny, KVCacheManager(), 16 << 20)
        if poison:
            pipe.pool.kv[:, :, pipe.pool.block_size :] = float("nan")
        state = pipe.open(GenerationRequest("a red ball", seed=3, height=32, width=32))
        frames = [pipe.step(state).frames for _ in range(8)]
        pipe.switch_prompt(state, "a blue cube")
        frames += [pipe.step(state).frames for _ in range(3)]
        pipe.close(state)
        runs.append(np.concatenate(frames))
    np.testing.assert_array_equal(runs[0], runs[1])


def make_pool(blocks: int, block_size: int = 4) -> BlockPool:
    # +1 for the null block
    return BlockPool(GEOMETRY, block_size, (blocks + 1) * block_size * GEOMETRY.bytes_per_token)


def test_geometry_bytes_per_token() -> None:
    assert GEOMETRY.bytes_per_token == 2 * 2 * 2 * 8 * 4
    wan = CacheGeometry(30, 12, 128, torch.bfloat16)
    # LongLive: 12 frames x 1560 tokens x 30 layers x K+V x 12 x 128 x bf16 = 3.45 GB
    assert wan.bytes_per_token * 12 * 1560 == 3_450_470_400


def test_fp8_rows_halve_bf16_bytes_and_copy_on_the_cpu() -> None:
    """The FP8 cache: the LongLive session of 3.45 GB in bf16 takes 1.73 GB; a pool of the same
    bytes holds twice the blocks; copy_slots (StreamingVLM's text fold) moves FP8 rows."""
    assert cache_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert cache_dtype("fp8_e4m3", torch.float32) == torch.float8_e4m3fn
    wan = CacheGeometry(30, 12, 128, cache_dtype("fp8_e4m3", torch.bfloat16))
    assert wan.bytes_per_token * 12 * 1560 == 3_450_470_400 // 2
    bf16 = replace(GEOMETRY, dtype=torch.bfloat16)
    capacity = 11 * 4 * bf16.bytes_per_token  # 10 blocks and the null block in bf16
    pool = BlockPool(replace(GEOMETRY, dtype=torch.float8_e4m3fn), 4, capacity)
    assert pool.kv.dtype == torch.float8_e4m3fn and pool.num_blocks == 2 * 11 - 1
    assert pool.bytes_per_block * 2 == BlockPool(bf16, 4, capacity).bytes_per_block
    pool.kv[:, :, 4:8] = torch.arange(1, 5.0)[:, None, None].to(torch.float8_e4m3fn)
    pool.copy_slots(torch.arange(4, 8), torch.arange(12, 16))
    assert torch.equal(pool.kv[:, :, 12:16].float(), pool.kv[:, :, 4:8].float())


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "bf16", "float8_e4m3fn", ""])
def test_unknown_kv_cache_dtype_is_named(kv_cache_dtype: str) -> None:
    with pytest.raises(ValueError, match=f"auto, fp8_e4m3, got '{kv_cache_dtype}'"):
        check_kv_cache_dtype(kv_cache_dtype)
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        cache_dtype(kv_cache_dtype, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float8_e5m2, torch.int8])
def test_geometry_refuses_rows_the_kernels_do_not_read(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match=f"got {dtype}"):
        CacheGeometry(1, 1, 8, dtype)


def test_capacity_is_carved_into_blocks() -> None:
    pool = make_pool(10)
    stats = pool.stats()
    assert (stats.num_blocks, stats.free_blocks, stats.used_blocks) == (10, 10, 0)
    assert pool.kv.shape == (2, 2, 11 * 4, 2, 8)
    with pytest.raises(ValueError, match="at least 2"):
        BlockPool(GEOMETRY, 4, 4 * GEOMETRY.bytes_per_token)


def test_admission_refuses_with_needed_and_available_bytes() -> None:
    pool = make_pool(10)
    first = SessionCache.open(pool, 1, 6)
    with pytest.raises(CacheFullError) as refused:
        SessionCache.open(pool, 2, 5)
    assert refused.value.needed_bytes == 5 * pool.bytes_per_block
    assert refused.value.available_bytes == 4 * pool.bytes_per_block
    first.close()
    SessionCache.open(pool, 2, 5)  # fits once the first is gone


def test_running_session_keeps_its_reservation() -> None:
    pool = make_pool(10)
    cache = SessionCache.open(pool, 1, 3)
    cache.add_segment("text")
    cache.append("text", text_positions(4))  # one block of 3 reserved is taken
    SessionCache.open(pool, 2, 7)  # a newcomer gets exactly what is left
    cache.append("text", text_positions(8))  # the first session still grows to its reservation
    assert cache.num_blocks() == 3
    with pytest.raises(CacheMisuseError, match="over its reservation"):
        cache.append("text", text_positions(1))


def test_close_returns_every_block_and_refuses_reuse() -> None:
    pool = make_pool(10)
    cache = SessionCache.open(pool, 1, 8)
    cache.add_segment("a")
    cache.add_segment("b")
    cache.append("a", text_positions(9))
    cache.append("b", text_positions(3))
    assert pool.stats().used_blocks == 4
    assert pool.stats().bytes_by_session == {1: 4 * pool.bytes_per_block}
    cache.close()
    assert cache.closed
    assert pool.stats().free_blocks == 10
    with pytest.raises(CacheMisuseError, match="closed twice"):
        cache.close()
    with pytest.raises(CacheMisuseError, match="used after close"):
        cache.append("a", text_positions(1))
    pool.check_invariants()


def test_front_eviction_frees_whole_blocks_only() -> None:
    pool = make_pool(10)
    cache = SessionCache.open(pool, 1, 10)
    cache.add_segment("w")
    cache.append("w", text_positions(10))  # 3 blocks
    cache.evict_front("w", 3)
    assert cache.num_blocks() == 3  # the first block still holds token 3
    cache.evict_front("w", 1)
    assert cache.num_blocks() == 2
    np.testing.assert_array_equal(cache.rel_positions("w")[:, 0], np.arange(4, 10))
    cache.evict_front("w", 6)
    assert cache.num_blocks() == 0 and cache.length("w") == 0


def test_manager_opens_policy_sessions_in_pools() -> None:
    manager = KVCacheManager()
    pool = manager.add_pool(GEOMETRY, block_size=6, capacity_bytes=1 << 20)
    session = manager.open(GEOMETRY, FrameWindowConfig(grid=(2, 3)))
    assert pool.stats().reserved_blocks == FrameWindowConfig(grid=(2, 3)).worst_case_blocks(6)
    with pytest.raises(ValueError, match="no pool"):
        manager.open(CacheGeometry(1, 1, 8), FrameWindowConfig(grid=(2, 3)))
    with pytest.raises(TypeError, match="no eviction policy"):
        manager.open(GEOMETRY, object())
    session.cache.close()
    assert manager.stats()[GEOMETRY].free_blocks == pool.num_blocks


class PoolMachine(RuleBasedStateMachine):
    """Random open / append / evict / drop / close sequences never leak or double-count."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = make_pool(24, block_size=3)
        self.sessions: dict[int, SessionCache] = {}
        self.lengths: dict[tuple[int, str], int] = {}
        self.next_id = 0

    @rule(blocks=st.integers(1, 12))
    def open(self, blocks: int) -> None:
        available = self.pool.available_blocks()
        self.next_id += 1
        try:
            cache = SessionCache.open(self.pool, self.next_id, blocks)
        except CacheFullError:
            assert blocks > available
            return
        assert blocks <= available
        for name in ("a", "b"):
            cache.add_segment(name)
            self.lengths[(self.next_id, name)] = 0
        self.sessions[self.next_id] = cache

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), count=st.integers(1, 7), name=st.sampled_from(["a", "b"]))
    def append(self, data: st.DataObject, count: int, name: str) -> None:
        sid = data.draw(st.sampled_from(sorted(self.sessions)))
        cache = self.sessions[sid]
        try:
            cache.append(name, text_positions(count))
        except CacheMisuseError:
            return  # over its reservation: refused, nothing changed
        self.lengths[(sid, name)] += count

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), name=st.sampled_from(["a", "b"]))
    def evict(self, data: st.DataObject, name: str) -> None:
        sid = data.draw(st.sampled_from(sorted(self.sessions)))
        count = data.draw(st.integers(0, self.lengths[(sid, name)]))
        self.sessions[sid].evict_front(name, count)
        self.lengths[(sid, name)] -= count

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.sessions)))
        self.sessions.pop(sid).close()

    @invariant()
    def books_balance(self) -> None:
        self.pool.check_invariants()
        bs = self.pool.block_size
        for sid, cache in self.sessions.items():
            for name in ("a", "b"):
                assert cache.length(name) == self.lengths[(sid, name)]
                slots = cache.slots(name)
                assert len(set(slots.tolist())) == len(slots), "a slot is used twice"
                assert (slots >= bs).all(), "a live token sits in the null block"
            assert cache.num_blocks() <= self._blocks_needed(sid) + 2

    def _blocks_needed(self, sid: int) -> int:
        bs = self.pool.block_size
        return sum(-(-self.lengths[(sid, n)] // bs) for n in ("a", "b"))

    def teardown(self) -> None:
        for cache in self.sessions.values():
            cache.close()
        stats = self.pool.stats()
        assert stats.used_blocks == 0 and stats.free_blocks == self.pool.num_blocks


PoolMachine.TestCase.settings = settings(
    max_examples=1000, stateful_step_count=25, deadline=None, derandomize=True
)
TestPoolMachine = PoolMachine.TestCase
