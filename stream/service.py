"""What one device serves: the models, their cache pools, and the pipelines built on them.

LongLive and Rolling Forcing share the Wan models and, having one geometry, one KV pool;
StreamingVLM has its own model and pool. Everything comes from local paths or, by default,
from the embedded toy-world models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from framestream.models.registry import DECODERS, DEFAULT_PRESET, WanPaths, load_wan_models
from framestream.stream.engine import Pipeline
from framestream.stream.kvcache import (
    CacheFullError,
    KVCacheDtype,
    KVCacheManager,
    check_kv_cache_dtype,
)

__all__ = ["PIPELINES", "ServiceModels", "build_pipelines", "warm_up"]

logger = logging.getLogger(__name__)

PIPELINES = ("longlive", "rolling_forcing", "streaming_vlm")


@dataclass(frozen=True)
class ServiceModels:
    """Which models a device loads, and how much cache each geometry gets."""

    preset: str = DEFAULT_PRESET  # Wan preset for the generation pipelines
    paths: WanPaths | None = None  # local Wan weights; None: the preset's embedded weights
    decoder: str = "wan"  # the full Wan VAE, or "tiny": a tiny streaming one (registry.DECODERS)
    vlm_dir: Path | None = None  # a local Qwen2.5-VL / StreamingVLM folder; None: the embedded
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    cache_bytes: int = 512 << 20  # the Wan pool (LongLive and Rolling Forcing share it)
    vlm_cache_bytes: int = 256 << 20
    pipelines: tuple[str, ...] = PIPELINES
    # the generation pipelines' pool rows: "auto" (the models' dtype) or "fp8_e4m3" (half of
    # bf16's bytes, so twice the sessions per cache_bytes; stream.kvcache.pool)
    kv_cache_dtype: KVCacheDtype = "auto"
    # warm the pipelines up and time a step of each, for admission by compute (compute_full)
    calibrate: bool = True

    def __post_init__(self) -> None:
        check_kv_cache_dtype(self.kv_cache_dtype)
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        unknown = set(self.pipelines) - set(PIPELINES)
        if unknown or not self.pipelines:
            raise ValueError(
                f"pipelines must be a non-empty subset of {PIPELINES}, got {self.pipelines}"
            )


def build_pipelines(
    spec: ServiceModels, manager: KVCacheManager | None = None
) -> dict[str, Pipeline]:
    """Load the models of ``spec`` on its device and build its pipelines over one manager, and
    :func:`warm_up` them (unless ``spec.calibrate`` is off)."""
    from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
    from framestream.stream.pipelines.rolling_forcing import (
        RollingForcingConfig,
        RollingForcingPipeline,
    )
    from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline

    manager = manager or KVCacheManager()
    pipelines: dict[str, Pipeline] = {}
    if {"longlive", "rolling_forcing"} & set(spec.pipelines):
        wan = load_wan_models(
            spec.preset, spec.paths, device=spec.device, dtype=spec.dtype, decoder=spec.decoder
        )
        kv = spec.kv_cache_dtype
        if "longlive" in spec.pipelines:
            ll_config = LongLiveConfig(kv_cache_dtype=kv)
            pipelines["longlive"] = LongLivePipeline(wan, manager, spec.cache_bytes, ll_config)
        if "rolling_forcing" in spec.pipelines:
            rf_config = RollingForcingConfig(kv_cache_dtype=kv)
            pipelines["rolling_forcing"] = RollingForcingPipeline(
                wan, manager, spec.cache_bytes, rf_config
            )
    if "streaming_vlm" in spec.pipelines:
        from framestream.models.qwen_vl import load_qwen_vl
        from framestream.models.toyworld.embedded import load_vlm
        from framestream.stream.pipelines.sampling import published_sampling
        from framestream.stream.pipelines.streaming_vlm import UnderstandingConfig

        # a checkpoint folder samples as the published inference does; the embedded toy model
        # answers greedily (its quality floors are measured so)
        if spec.vlm_dir is None:
            vlm, vlm_config = load_vlm(spec.dtype, spec.device), UnderstandingConfig()
        else:
            vlm = load_qwen_vl(spec.vlm_dir, dtype=spec.dtype, device=spec.device)
            vlm_config = UnderstandingConfig(sampling=published_sampling(spec.vlm_dir))
        pipelines["streaming_vlm"] = StreamingVLMPipeline(
            vlm, manager, spec.vlm_cache_bytes, vlm_config
        )
    if spec.calibrate:
        warm_up(pipelines)
    return pipelines


def warm_up(pipelines: dict[str, Pipeline]) -> None:
    """Capture the understanding pipeline's decode graphs (CUDA), then calibrate every
    pipeline: a timed step at its default size, from which admission estimates what a
    session will ask of the device (``compute_full``; stream.scheduler).

    The first step of a process compiles the Triton kernels and plans cuDNN, many times a warm
    step's time: a server pays it while it loads, not in a user's first session.
    """
    for name, pipeline in pipelines.items():
        if hasattr(pipeline, "warm_up"):
            pipeline.warm_up()
        try:
            pipeline.calibrate()
        except CacheFullError as exc:
            logger.warning(
                "%s: not calibrated, the cache pool cannot hold a session of the default size "
                "(%s): such sessions are refused cache_full; give the pipeline a larger pool",
                name,
                exc,
            )
