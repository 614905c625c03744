"""Each eviction policy over thousands of steps keeps exactly the tokens it should, at the
positions it should, and its size stays bounded (StreamingVLM's: test_kvcache_vlm_window.py).

Every token's K row carries its identity (``k[..., 0] = frame or token id``) so the tests read
back from device memory which tokens a plan really attends to.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.stream.kvcache import (
    CacheGeometry,
    FrameWindowConfig,
    KVCacheManager,
    RollingWindowConfig,
    TokenRange,
    TokenWindowConfig,
)

GEOMETRY = CacheGeometry(num_layers=2, num_kv_heads=1, head_dim=4, dtype=torch.float32)


def manager(block_size: int, capacity: int = 4 << 20) -> KVCacheManager:
    m = KVCacheManager()
    m.add_pool(GEOMETRY, block_size, capacity)
    return m


def tag(session, ranges: list[TokenRange], ids: np.ndarray) -> None:
    """Write each written token's id into its K row (layer 0), like a forward would."""
    slots = np.concatenate([session.cache.slots(r.segment)[r.start : r.stop] for r in ranges])
    k = session.cache.pool.layer_kv(0)[0]
    k[torch.from_numpy(slots).long(), 0, 0] = torch.from_numpy(ids.astype(np.float32))


def attended_ids(session, write, context=None) -> np.ndarray:
    plan = session.cache.plan(write, context=context)
    k = session.cache.pool.layer_kv(0)[0]
    return k[torch.from_numpy(plan.kv_slots.astype(np.int64)), 0, 0].numpy().astype(np.int64)


@pytest.mark.parametrize("positions", ["absolute", "contiguous"])
def test_frame_sink_window_over_2000_chunks(positions: str) -> None:
    grid = (2, 3)
    config = FrameWindowConfig(
        grid=grid, sink_frames=3, window_frames=9, positions=positions, max_position=64
    )
    m = manager(block_size=6)
    s = m.open(GEOMETRY, config)
    pool = m.pool(GEOMETRY)
    for chunk in range(2000):
        ranges = s.begin_chunk(3)
        frames = np.arange(3 * chunk, 3 * chunk + 3)
        tag(s, ranges, np.repeat(frames, 6))
        expected_window = np.arange(max(3, 3 * chunk - 6), 3 * chunk + 3)
        np.testing.assert_array_equal(s.sink_frames(), [0, 1, 2])
        np.testing.assert_array_equal(s.window_frames(), expected_window)
        ids = attended_ids(s, ranges)
        expected = np.concatenate([np.repeat([0, 1, 2], 6), np.repeat(expected_window, 6)])
        np.testing.assert_array_equal(np.sort(ids), np.sort(expected))
        # the new chunk comes last: its own keys are at the end of the list
        np.testing.assert_array_equal(ids[-18:], np.repeat(frames, 6) if chunk else ids[-18:])
        t = s.cache.plan(ranges).kv_pos[:, 0]
        assert t.max() < config.max_position
        assert pool.stats().used_blocks <= config.worst_case_blocks(6)
    t_window = s.cache.positions("window")[::6, 0]
    if positions == "contiguous":
        np.testing.assert_array_equal(t_window, np.arange(3, 12))
    else:  # newest frame pinned at max_position - 1, the window contiguous below it
        np.testing.assert_array_equal(t_window, np.arange(55, 64))
    np.testing.assert_array_equal(s.cache.positions("sink")[::6, 0], [0, 1, 2])
    # h and w are never shifted
    np.testing.assert_array_equal(
        s.cache.positions("window")[:6, 1:], [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    )


def test_frame_recache_keeps_sink_and_rewrites_window() -> None:
    config = FrameWindowConfig(grid=(1, 2), sink_frames=3, window_frames=9)
    s = manager(block_size=2).open(GEOMETRY, config)
    for _ in range(10):
        s.begin_chunk(3)
    window_slots = s.cache.slots("window").copy()
    ranges = s.recache(12, refresh_sink=False)
    plan = s.cache.plan(ranges)
    # 9 query frames: the window, rewritten in place; evicted frames 18-20 are not computed
    np.testing.assert_array_equal(plan.q_pos[::2, 0], np.arange(21, 30))
    np.testing.assert_array_equal(plan.write_slots, window_slots)
    # keys: the sink (old prompt's K/V) then the rewritten window
    np.testing.assert_array_equal(plan.kv_pos[::2, 0], [0, 1, 2, *range(21, 30)])
    with pytest.raises(ValueError, match="window frames"):
        s.recache(8, refresh_sink=False)


def test_frame_recache_refreshes_sink() -> None:
    config = FrameWindowConfig(grid=(1, 2), sink_frames=3, window_frames=9)
    s = manager(block_size=2).open(GEOMETRY, config)
    for _ in range(10):
        s.begin_chunk(3)
    with pytest.raises(ValueError, match="refresh_sink needs the last 12 frames"):
        s.recache(11, refresh_sink=True)
    ranges = s.recache(12, refresh_sink=True)
    plan = s.cache.plan(ranges)
    np.testing.assert_array_equal(s.sink_frames(), [18, 19, 20])
    np.testing.assert_array_equal(plan.q_pos[::2, 0], np.arange(18, 30))
    np.testing.assert_array_equal(plan.kv_pos[::2, 0], np.arange(18, 30))
    np.testing.assert_array_equal(
        plan.write_slots, np.concatenate([s.cache.slots("sink"), s.cache.slots("window")])
    )


def test_early_recache_computes_only_the_window() -> None:
    config = FrameWindowConfig(grid=(1, 1), sink_frames=3, window_frames=9)
    s = manager(block_size=1).open(GEOMETRY, config)
    s.begin_chunk(3)
    assert s.recache(12, refresh_sink=False) == []  # only the sink: nothing to recompute
    s.begin_chunk(3)
    ranges = s.recache(12, refresh_sink=False)  # the sink frames in the span are not queries
    np.testing.assert_array_equal(s.cache.plan(ranges).q_pos[:, 0], [3, 4, 5])
    ranges = s.recache(6, refresh_sink=True)  # sink and window already hold every frame
    np.testing.assert_array_equal(s.sink_frames(), [0, 1, 2])
    np.testing.assert_array_equal(s.cache.plan(ranges).q_pos[:, 0], np.arange(6))


def test_rolling_window_over_3000_steps() -> None:
    """A window pass reads the sink, the newest 3 clean frames and the window, back to back; a
    block's clean pass reads the newest 21 clean frames, itself last (the sink while among
    them), at their true distances."""
    grid = (1, 2)
    tpf = 2
    config = RollingWindowConfig(grid=grid)
    m = manager(block_size=2)
    s = m.open(GEOMETRY, config)
    pool = m.pool(GEOMETRY)
    exited: list[int] = []
    for step in range(3000):
        if s.window_blocks < config.window_blocks:
            s.enter_block()
        write, context = s.window_pass()
        window = s.frames("window")
        tag(s, write, np.repeat(window, tpf))
        ids = attended_ids(s, write, context)
        recent = exited[3:][-3:] if len(window) == 15 else exited[3:][-(21 - 3 - len(window)) :]
        expected = np.concatenate([exited[:3], recent, window]).astype(np.int64)
        np.testing.assert_array_equal(ids[::tpf], expected)
        plan = s.cache.plan(write, context=context)
        # contiguous: the sink right before the recent frames, they right before the window
        np.testing.assert_array_equal(plan.kv_pos[::tpf, 0], np.arange(len(expected)))
        if s.window_blocks == config.window_blocks or step > 3000 - 6:
            write, context = s.exit_block()
            block = s.cache.rel_positions(write[0].segment)[write[0].start : write[0].stop : tpf, 0]
            exited.extend(block.tolist())
            tag(s, write, np.repeat(block, tpf))
            ids = attended_ids(s, write, context)
            np.testing.assert_array_equal(ids[::tpf], exited[-21:])
            plan = s.cache.plan(write, context=context)
            np.testing.assert_array_equal(np.diff(plan.kv_pos[::tpf, 0]), np.diff(exited[-21:]))
        assert pool.stats().used_blocks <= config.worst_case_blocks(2)
        if step >= 8:
            np.testing.assert_array_equal(s.frames("sink"), [0, 1, 2])
            np.testing.assert_array_equal(s.frames("history"), exited[3:][-21:])
    assert exited == list(range(len(exited)))  # every block exits once, in order
    assert len(exited) == 3 * (3000 - 4)


def test_rolling_window_clean_passes_replay_each_block_s_span() -> None:
    config = RollingWindowConfig(grid=(1, 1))
    s = manager(block_size=1).open(GEOMETRY, config)
    for _ in range(13):  # 9 blocks out: sink + blocks 1..8; the history keeps 2..8 (21 frames)
        if s.window_blocks < config.window_blocks:
            s.enter_block()
        s.window_pass()
        if s.window_blocks == config.window_blocks:
            s.exit_block()
    passes = s.clean_passes()
    clean = [*s.frames("sink"), *s.frames("history")]
    assert clean == list(range(27)[:3]) + list(range(6, 27))
    for i, (write, context) in enumerate(passes):
        block = clean[3 * i : 3 * i + 3]
        plan = s.cache.plan(write, context)
        read = [s.frames(part.segment)[part.start : part.stop].tolist() for part in context]
        # the retained frames before it, newest 18 at most
        assert sum(read, []) == clean[: 3 * i][-18:]
        assert plan.q_pos[:, 0].tolist() == [clean.index(f) for f in block]


def test_token_sink_window_over_5000_tokens() -> None:
    config = TokenWindowConfig(sink_tokens=4, window_tokens=60)
    m = manager(block_size=16)
    s = m.open(GEOMETRY, config)
    for token in range(5000):
        ranges = s.append(1)
        tag(s, ranges, np.array([token]))
        ids = attended_ids(s, ranges)
        expected = [*range(min(4, token + 1)), *range(max(4, token - 59), token + 1)]
        np.testing.assert_array_equal(ids, expected)
        plan = s.cache.plan(ranges)
        np.testing.assert_array_equal(plan.kv_pos[:, 0], np.arange(len(expected)))
        assert m.pool(GEOMETRY).stats().used_blocks <= config.worst_case_blocks(16)
