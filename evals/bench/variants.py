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
  :attr:`~evals.bench.loaders.ModelShelf.tiny_decoder`,
* ``fp8gemm``: the service as shipped with the DiT blocks' linear layers as FP8 GEMMs
  (:mod:`kernels.fp8_linear`: e4m3 weights per row, activations per token; CUDA only), on a
  quantized copy of the same DiT,
* ``restyle`` (or ``restyle<strength>``, e.g. ``restyle0.9``): ours as a restyle stream
  (generation only): a synthetic input video is fed ahead of each step, encoded by the causal
  VAE encoder and denoised from the strength (default 1.0: every level runs, the worst case:
  generation's DiT plus the encode); its ``dit_ms`` holds the encode,
* ``published``: the published LongLive / Rolling Forcing loops from checkouts the user names
  (generation only; :mod:`evals.bench.published`), or
* an attention backend name (``sdpa``: torch's fused SDPA over keys gathered and rotated from
  our cache by torch ops; ``sdpa_fused``: the same SDPA over keys gathered and rotated by one
  Triton pass, what ``auto`` runs for chunks on CUDA; ``triton``; ``torch``): the same cache,
  another kernel. Any name registered in :mod:`kernels.backends` is accepted (``sage``:
  SageAttention's 8-bit kernel, where its package imports).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from framestream.kernels.backends import select_backend
from framestream.kernels.fp8_linear import quantize_dit_linears
from framestream.models.registry import WanModels
from framestream.stream.kvcache import KVCacheDtype

__all__ = [
    "FP8GEMM",
    "FP8KV",
    "GROWING",
    "OURS",
    "PUBLISHED",
    "RESTYLE",
    "TINYVAE",
    "VariantSpec",
    "variant_models",
    "variant_specs",
]

OURS = "ours"
GROWING = "growing"
FP8KV = "fp8kv"
FP8GEMM = "fp8gemm"
PUBLISHED = "published"
TINYVAE = "tinyvae"
RESTYLE = "restyle"


@dataclass(frozen=True)
class VariantSpec:
    name: str
    description: str
    backend: str | None = None  # attention backend; None: the device's default
    growing: bool = False  # eviction off
    kv_cache_dtype: KVCacheDtype = "auto"  # the pipelines' pool rows
    fp8_linear: bool = False  # the DiT blocks' linear layers as FP8 GEMMs
    published: bool = False  # the published loop, not our pipeline (generation only)
    decoder: str = "wan"  # the generation pipelines' decoder (models.registry.DECODERS)
    restyle: float | None = None  # a restyle stream at this strength; None: plain generation

    @property
    def generation_only(self) -> bool:
        """Whether it differs from ours only in what the understanding suite does not run
        (the Wan pipelines' decoder or DiT, or the published generation loops)."""
        return self.decoder != "wan" or self.fp8_linear or self.published or bool(self.restyle)

    @property
    def shares_cache(self) -> bool:
        """Whether it runs on a cache like ours (layout and rows), only its kernel differing,
        so it can take over streams that ours opened."""
        plain = not (self.growing or self.fp8_linear or self.published or self.restyle)
        return plain and self.kv_cache_dtype == "auto"


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
        if name == PUBLISHED:
            specs.append(
                VariantSpec(
                    PUBLISHED,
                    "the published loops from the named checkouts (generation only)",
                    published=True,
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
        if name == FP8GEMM:
            if device.type != "cuda":
                raise ValueError("the fp8gemm baseline needs CUDA (FP8 matrix units)")
            specs.append(
                VariantSpec(
                    FP8GEMM,
                    f"the service as shipped with the DiT blocks' linear layers as FP8 (e4m3) "
                    f"GEMMs, {default} attention",
                    fp8_linear=True,
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
        if name.startswith(RESTYLE):
            strength = _restyle_strength(name)
            specs.append(
                VariantSpec(
                    name,
                    f"the service as shipped as a restyle stream at strength {strength:g}: input "
                    f"frames encoded by the causal VAE encoder each step, {default} attention",
                    restyle=strength,
                )
            )
            continue
        select_backend(device, name)  # raises ValueError naming the known backends
        specs.append(VariantSpec(name, f"rolling cache, {name} attention", backend=name))
    return specs


def _restyle_strength(name: str) -> float:
    """``restyle`` -> 1.0, ``restyle0.9`` -> 0.9; ValueError otherwise."""
    tail = name[len(RESTYLE) :]
    try:
        strength = float(tail) if tail else 1.0
    except ValueError:
        raise ValueError(f"baseline {name!r}: restyle takes a strength, e.g. restyle0.9") from None
    if not 0 < strength <= 1:
        raise ValueError(f"baseline {name!r}: the strength must be in (0, 1]")
    return strength


_fp8_copy: list[tuple[WanModels, WanModels]] = []  # (bundle, its FP8 copy): the last one


def variant_models(models: WanModels, spec: VariantSpec) -> WanModels:
    """The models ``spec`` runs: ``models``, or for ``fp8_linear`` a copy whose DiT blocks'
    linear layers are FP8 (made once per bundle; the text and VAE modules are shared)."""
    if not spec.fp8_linear:
        return models
    if not _fp8_copy or _fp8_copy[0][0] is not models:
        _fp8_copy.clear()  # the previous bundle's copy goes before the next one is made
        dit = copy.deepcopy(models.dit)
        quantize_dit_linears(dit)
        _fp8_copy.append((models, replace(models, dit=dit)))
    return _fp8_copy[0][1]
