"""stream/kvcache/sequence.py: a session's plan, read off rows edited by deltas, equals the plan
rebuilt from its segments, after random sequences of appends, evictions, drops, re-basings,
copies, new sessions and closed ones; and so does the packed step of several sessions.

The rebuilt plan below uses only the session's inspection API (segment names, each segment's
slots and positions), as the planner did before it kept rows of its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.stream.kvcache import (
    BlockPool,
    CacheGeometry,
    KVCacheManager,
    SequencePlan,
    SessionCache,
    TokenRange,
    pack_plans,
)
from framestream.stream.kvcache.sequence import SequenceRows
from framestream.stream.kvcache.vlm_window import StreamingVLMConfig
from tests.stream.test_kvcache_vlm_window import GEOMETRY as VLM_GEOMETRY
from tests.stream.test_kvcache_vlm_window import SYSTEM, Stream

GEOMETRY = CacheGeometry(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.float32)


def rebuilt(cache: SessionCache, write: list[TokenRange]) -> SequencePlan:
    """The plan from scratch: every segment's tokens but the written ones, then those."""
    written = {(r.segment, i) for r in write for i in range(r.start, r.stop)}
    ctx_slots, ctx_pos = [np.zeros(0, np.int32)], [np.zeros((0, 3), np.int32)]
    for name in cache.segment_names:
        keep = [i for i in range(cache.length(name)) if (name, i) not in written]
        ctx_slots.append(cache.slots(name)[keep])
        ctx_pos.append(cache.positions(name)[keep])
    w_slots = [np.zeros(0, np.int32)] + [cache.slots(r.segment)[r.start : r.stop] for r in write]
    w_pos = [np.zeros((0, 3), np.int32)] + [
        cache.positions(r.segment)[r.start : r.stop] for r in write
    ]
    return SequencePlan(
        write_slots=np.concatenate(w_slots),
        q_pos=np.concatenate(w_pos),
        kv_slots=np.concatenate(ctx_slots + w_slots[1:]),
        kv_pos=np.concatenate(ctx_pos + w_pos[1:]),
    )


def assert_same_plan(got: SequencePlan, want: SequencePlan) -> None:
    for name in ("write_slots", "q_pos", "kv_slots", "kv_pos"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


class Sessions:
    """Random edits of several sessions of one pool, each followed by a check of every plan."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = BlockPool(GEOMETRY, 4, 4096 * 4 * GEOMETRY.bytes_per_token)
        self.live: list[SessionCache] = []
        self.opened = 0
        self.writes: dict[int, list[TokenRange]] = {}  # the last append of each session

    def open(self) -> None:
        self.opened += 1
        self.live.append(SessionCache.open(self.pool, self.opened, 256))

    def close(self) -> None:
        cache = self.live.pop(int(self.rng.integers(len(self.live))))
        cache.close()
        self.writes.pop(cache.session_id, None)

    def edit(self, cache: SessionCache) -> None:
        rng, names = self.rng, cache.segment_names
        op = rng.choice(["add", "append", "append", "append", "evict", "drop", "rebase", "rel"])
        if op == "add" or not names:
            before = rng.choice(names) if names and rng.random() < 0.3 else None
            cache.add_segment(f"s{self.opened}.{rng.integers(1 << 30)}", before=before)
            return
        name = str(rng.choice(names))
        length = cache.length(name)
        if op == "append" or (op == "evict" and not length):
            if length and rng.random() < 0.2:  # a fold: K/V copied from another segment
                src = TokenRange(name, 0, int(rng.integers(1, length + 1)))
                target = str(rng.choice(names))
                rel = rng.integers(0, 50, (len(src), 3))
                self.writes[cache.session_id] = [cache.copy_tokens(src, target, rel)]
                return
            count = int(rng.integers(1, 9))
            written = cache.append(name, rng.integers(0, 50, (count, 3)))
            self.writes[cache.session_id] = [written]
        elif op == "evict":
            cache.evict_front(name, int(rng.integers(0, length + 1)))
            self.writes.pop(cache.session_id, None)
        elif op == "drop":
            cache.drop(name)
            self.writes.pop(cache.session_id, None)
        elif op == "rebase":
            if rng.random() < 0.5:
                cache.set_offset(name, rng.integers(-20, 20, 3))
            else:
                parts = [str(n) for n in rng.permutation(names)[: int(rng.integers(1, 4))]]
                cache.layout_contiguous(parts, axes=(0,) if rng.random() < 0.5 else (0, 1, 2))
        else:
            cache.set_rel_positions(name, rng.integers(0, 50, (length, 3)))

    def check(self) -> None:
        plans = []
        for cache in self.live:
            last = self.writes.get(cache.session_id, [])
            for write in (last, [], self.random_write(cache)):
                got = cache.plan(write)
                assert_same_plan(got, rebuilt(cache, write))
            plans.append(cache.plan(last))
        if plans:
            want = pack_plans([rebuilt(c, self.writes.get(c.session_id, [])) for c in self.live])
            for key, array in pack_plans(plans).items():
                np.testing.assert_array_equal(array, want[key], err_msg=key)

    def random_write(self, cache: SessionCache) -> list[TokenRange]:
        """Up to three disjoint ranges of different segments, in a random order."""
        names = [n for n in cache.segment_names if cache.length(n)]
        ranges = []
        for name in self.rng.permutation(names)[:3]:
            length = cache.length(str(name))
            start = int(self.rng.integers(0, length))
            ranges.append(TokenRange(str(name), start, int(self.rng.integers(start, length + 1))))
        return ranges


@pytest.mark.parametrize("seed", range(4))
def test_plans_from_rows_equal_rebuilt_plans(seed) -> None:
    sessions = Sessions(seed)
    for _ in range(300):
        if not sessions.live or (len(sessions.live) < 6 and sessions.rng.random() < 0.05):
            sessions.open()
        elif len(sessions.live) > 1 and sessions.rng.random() < 0.04:
            sessions.close()
        else:
            cache = sessions.live[int(sessions.rng.integers(len(sessions.live)))]
            sessions.edit(cache)
        sessions.check()
    sessions.pool.check_invariants()


def test_a_decode_plan_is_a_view_and_a_mid_sequence_write_a_gather() -> None:
    """The written tokens at the end: the plan is the rows as they stand (no copy, read-only);
    written tokens elsewhere come last, the rest in order."""
    pool = BlockPool(GEOMETRY, 4, 256 * 4 * GEOMETRY.bytes_per_token)
    cache = SessionCache.open(pool, 1, 32)
    for name in ("a", "b"):
        cache.add_segment(name)
    cache.append("a", np.zeros((5, 3)))
    last = cache.append("b", np.ones((3, 3)))
    plan = cache.plan([last])
    assert np.shares_memory(plan.kv_slots, plan.write_slots)
    assert not plan.kv_slots.flags.writeable
    middle = TokenRange("a", 1, 3)
    plan = cache.plan([middle])
    np.testing.assert_array_equal(plan.write_slots, cache.slots("a")[1:3])
    order = [*cache.slots("a")[[0, 3, 4]], *cache.slots("b"), *cache.slots("a")[1:3]]
    np.testing.assert_array_equal(plan.kv_slots, order)
    with pytest.raises(ValueError, match="outside"):
        cache.plan([TokenRange("b", 2, 4)])
    with pytest.raises(ValueError, match="overlap"):
        cache.plan([TokenRange("a", 0, 2), TokenRange("a", 1, 3)])


def test_rows_edits() -> None:
    rows = SequenceRows()
    rows.insert(0, np.arange(100, dtype=np.int32), np.zeros((100, 3)))  # past the first capacity
    rows.insert(10, np.array([-1, -2]), np.ones((2, 3)))
    rows.delete(0, 5)
    rows.shift(0, 3, np.array([1, 2, 3]))
    assert rows.n == 97
    np.testing.assert_array_equal(rows.slots[:8], [5, 6, 7, 8, 9, -1, -2, 10])
    np.testing.assert_array_equal(rows.positions[:6], [[1, 2, 3]] * 3 + [[0, 0, 0]] * 2 + [[1] * 3])
    with pytest.raises(ValueError, match="delete"):
        rows.delete(90, 10)


def test_streaming_vlm_rounds_plan_from_rows() -> None:
    """The StreamingVLM window through 40 rounds (evictions, folds, re-basing each round) and
    its replies token by token: every plan, prefill and decode, equals the rebuilt one."""
    manager = KVCacheManager()
    manager.add_pool(VLM_GEOMETRY, 4, 64 << 20)
    config = StreamingVLMConfig(
        text_rounds=3, vision_seconds=2, prev_sink_tokens=4, prev_window_tokens=5
    )
    rng = np.random.default_rng(0)
    streams = [Stream(manager.open(VLM_GEOMETRY, config), list(range(20, 28))) for _ in range(2)]
    for _ in range(40):
        for stream in streams:
            ranges = stream.step([int(t) for t in rng.integers(100, 200, rng.integers(1, 6))])
            cache = stream.window.cache
            assert_same_plan(cache.plan(ranges), rebuilt(cache, ranges))
            token = stream.window.append_reply([7])
            assert_same_plan(cache.plan([token]), rebuilt(cache, [token]))
    assert list(streams[0].window.retained()[0][:3]) == SYSTEM
