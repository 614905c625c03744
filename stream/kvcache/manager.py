"""The shared rolling KV-cache manager: one pool per model geometry, sessions opened by policy."""

from __future__ import annotations

import itertools

from framestream.stream.kvcache.policies import (
    FrameSinkWindow,
    FrameWindowConfig,
    RollingWindow,
    RollingWindowConfig,
    StreamingVLMConfig,
    StreamingVLMWindow,
    TokenSinkWindow,
    TokenWindowConfig,
)
from framestream.stream.kvcache.pool import BlockPool, CacheGeometry, PoolStats
from framestream.stream.kvcache.session import SessionCache

__all__ = ["KVCacheManager", "Policy", "PolicyConfig"]

Policy = FrameSinkWindow | RollingWindow | StreamingVLMWindow | TokenSinkWindow
PolicyConfig = FrameWindowConfig | RollingWindowConfig | StreamingVLMConfig | TokenWindowConfig

_POLICY_OF: dict[type, type] = {
    FrameWindowConfig: FrameSinkWindow,
    RollingWindowConfig: RollingWindow,
    StreamingVLMConfig: StreamingVLMWindow,
    TokenWindowConfig: TokenSinkWindow,
}


class KVCacheManager:
    """Owns the block pools of one device and admits sessions into them.

    Example::

        manager = KVCacheManager()
        manager.add_pool(geometry, block_size=1560, capacity_bytes=8 << 30)
        cache = manager.open(geometry, FrameWindowConfig(grid=(30, 52)))  # or CacheFullError
        ...
        cache.cache.close()
    """

    def __init__(self) -> None:
        self._pools: dict[CacheGeometry, BlockPool] = {}
        self._ids = itertools.count(1)

    def add_pool(self, geometry: CacheGeometry, block_size: int, capacity_bytes: int) -> BlockPool:
        if geometry in self._pools:
            raise ValueError(f"a pool for {geometry} already exists")
        pool = BlockPool(geometry, block_size, capacity_bytes)
        self._pools[geometry] = pool
        return pool

    def pool(self, geometry: CacheGeometry) -> BlockPool:
        try:
            return self._pools[geometry]
        except KeyError:
            raise ValueError(f"no pool for {geometry}; add one with add_pool") from None

    def open(self, geometry: CacheGeometry, config: PolicyConfig) -> Policy:
        """Admit a session under ``config``'s policy; raises ``CacheFullError`` if it can't fit."""
        policy = _POLICY_OF.get(type(config))
        if policy is None:
            raise TypeError(f"no eviction policy for config type {type(config).__name__}")
        pool = self.pool(geometry)
        cache = SessionCache.open(pool, next(self._ids), config.worst_case_blocks(pool.block_size))
        return policy(cache, config)

    def stats(self) -> dict[CacheGeometry, PoolStats]:
        return {geometry: pool.stats() for geometry, pool in self._pools.items()}
