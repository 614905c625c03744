"""The shared rolling KV-cache manager.

* :mod:`~stream.kvcache.pool` -- preallocated blocks per geometry, reservations (admission).
* :mod:`~stream.kvcache.session` -- a session's ordered segments, logical positions, step plans,
  and :class:`CacheView`, the attention context models call.
* :mod:`~stream.kvcache.policies` -- LongLive, Rolling Forcing, StreamingVLM, StreamingLLM.
* :mod:`~stream.kvcache.manager` -- pools per geometry and policy-driven session opening.
"""

from framestream.stream.kvcache.errors import CacheError, CacheFullError, CacheMisuseError
from framestream.stream.kvcache.manager import KVCacheManager, Policy, PolicyConfig
from framestream.stream.kvcache.policies import (
    FrameSinkWindow,
    FrameWindowConfig,
    RollingWindow,
    RollingWindowConfig,
    StreamingVLMConfig,
    StreamingVLMWindow,
    TokenSinkWindow,
    TokenWindowConfig,
    frame_positions,
    text_positions,
    vision_positions,
)
from framestream.stream.kvcache.pool import (
    KV_CACHE_DTYPES,
    NULL_BLOCK,
    BlockPool,
    CacheGeometry,
    KVCacheDtype,
    PoolStats,
    Reservation,
    cache_dtype,
    check_kv_cache_dtype,
)
from framestream.stream.kvcache.session import (
    CacheStep,
    CacheView,
    SequencePlan,
    SessionCache,
    TokenRange,
    build_step,
    pack_plans,
)

__all__ = [
    "KV_CACHE_DTYPES",
    "NULL_BLOCK",
    "BlockPool",
    "CacheError",
    "CacheFullError",
    "CacheGeometry",
    "CacheMisuseError",
    "CacheStep",
    "CacheView",
    "FrameSinkWindow",
    "FrameWindowConfig",
    "KVCacheDtype",
    "KVCacheManager",
    "Policy",
    "PolicyConfig",
    "PoolStats",
    "Reservation",
    "RollingWindow",
    "RollingWindowConfig",
    "SequencePlan",
    "SessionCache",
    "StreamingVLMConfig",
    "StreamingVLMWindow",
    "TokenRange",
    "TokenSinkWindow",
    "TokenWindowConfig",
    "build_step",
    "pack_plans",
    "cache_dtype",
    "check_kv_cache_dtype",
    "frame_positions",
    "text_positions",
    "vision_positions",
]
