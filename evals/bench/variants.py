"""Ours and the baselines run beside it in the same process, on the same models.

``ours`` is the service as shipped: the rolling cache and the device's default attention
backend (``$STREAM_ATTENTION_BACKEND``, else ``auto`` on CUDA and the torch twin elsewhere). A
baseline name is either

* ``growing``: eviction off, every frame or round stays in the cache and is attended densely,
  as a loop with an ever-growing cache would (its cost grows with the stream),
* ``fp8kv``: the service as shipped but with the FP8 KV cache (``kv_cache_dtype="fp8_e4m3"``:
  unscaled e4m3 rows, half of bf16's bytes), so its speed and ``cache_bytes`` sit beside
  ours',
* ``tinyvae``: ours with the tiny streaming decoder (:mod:`models.vae_tiny`) in place of the
  full Wan VAE (generation only; the understanding suite leaves it out), its weights those of
  :attr:`~evals.bench.loaders.ModelShelf.tiny_decoder`, or
* an attention backend name (``sdpa``: torch's fused SDPA over keys gathered and rotated from
  our cache by torch ops; ``sdpa_fused``: the same SDPA over keys gathered and rotated by one
  Triton pass, what ``auto`` runs for chunks on CUDA; ``triton``; ``torch``): the same cache,
  another kernel. Any name registered in :mod:`kernels.attention` is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from framestream.kernels.backends import select_backend
from framestream.stream.kvcache import KVCacheDtype

__all__ = ["FP8KV", "GROWING", "OURS", "TINYVAE", "VariantSpec", "variant_specs"]

OURS = "ours"
GROWING = "growing"
FP8KV = "fp8kv"
TINYVAE = "tinyvae"


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    backend: str | None = None  # attention backend; None: the device's default
    growing: bool = False  # eviction off
    kv_cache_dtype: KVCacheDtype = "auto"  # the pipelines' pool rows
    decoder: str = "wan"  # the generation pipelines' decoder (models.registry.DECODERS)

    @property
    def generation_only(self) -> bool:
        """Whether it differs from ours only in what the understanding suite does not run."""
        return self.decoder != "wan"

    @property
    def shares_cache(self) -> bool:
        """Whether it runs on a cache like ours (layout and rows), only its kernel differing,
        so it can take over streams that ours opened."""
        return not self.growing and self.kv_cache_dtype == "auto"


def variant_specs(baselines: Sequence[str], device: torch.device) -> list[VariantSpec]:
    """``ours`` then one spec per baseline name; raises ``ValueError`` for an unknown name."""
    default = os.environ.get("STREAM_ATTENTION_BACKEND") or (
        "auto" if device.type == "cuda" else "torch"
    )
    specs = [VariantSpec(OURS, f"the service as shipped: rolling cache, {default} attention")]
    for name in baselines:
        if name in (OURS, *(s.name for s in specs)):
            raise ValueError(f"baseline {name!r} named twice (ours always runs)")
        if name == GROWING:
            specs.append(
                VariantSpec(
                    GROWING,
                    f"eviction off: the whole stream stays cached and attended, {default} "
                    "attention",
                    growing=True,
                )
            )
            continue
        if name == FP8KV:
            specs.append(
                VariantSpec(
                    FP8KV,
                    f"the service as shipped with an FP8 (e4m3) KV cache, {default} attention",
                    kv_cache_dtype="fp8_e4m3",
                )
            )
            continue
        if name == TINYVAE:
            specs.append(
                VariantSpec(
                    TINYVAE,
                    f"the service as shipped with the tiny streaming decoder, {default} attention",
                    decoder="tiny",
                )
            )
            continue
        select_backend(device, name)  # raises ValueError naming the known backends
        specs.append(VariantSpec(name, f"rolling cache, {name} attention", backend=name))
    return specs
