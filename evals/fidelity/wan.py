"""What the LongLive and Rolling Forcing comparisons share: one tiny random Wan DiT in both
codebases, the same text embeddings, the same noise, and the differences reported.

The published loops hard-code the 1.3B model's attention geometry (12 heads of 128 in their
cache buffers, 512 text tokens) and, in Rolling Forcing, 1560 tokens a frame. The tiny model
keeps that width (12 heads of 128) and the 512 text tokens, with 2 layers, a narrow
feed-forward and text embeddings of 32; its frames are 4 x 4 latents (2 x 2 tokens), which the
pipelines' frame-length attributes are set to.

Noise: the published loops draw it with ``torch.randn_like`` inside the loop; :class:`NoiseTape`
records those draws, and our pipeline, through :func:`replaying`, takes the same values in the
same order instead of its own generator's.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from unittest import mock

import torch

from framestream.models.registry import WanModels, load_wan_models
from framestream.models.wan.config import WanConfig
from framestream.models.wan.model import CausalWanModel
from framestream.stream.pipelines.wan import WanStreamPipeline

__all__ = [
    "CONFIG",
    "FRAME_TOKENS",
    "LATENT",
    "SIZE",
    "WAN_STUBS",
    "FixedPrompts",
    "NoiseTape",
    "difference",
    "fit_kv_cache",
    "our_models",
    "published_dit",
    "published_tiny",
    "published_wrapper",
    "replaying",
]

CONFIG = WanConfig(
    dim=1536, ffn_dim=256, num_heads=12, num_layers=2, freq_dim=256, text_dim=32, text_len=512
)
LATENT = (16, 4, 4)  # channels, rows, columns of a latent frame
FRAME_TOKENS = 4  # (4 / 2) x (4 / 2) patches
SIZE = (32, 32)  # pixels (the VAE's stride 8)
# equal means equal up to float32 reordering: a relative difference below this
TOLERANCE = 1e-5
# wan/__init__ imports the image-to-video pipeline, which imports torchvision; PyPI's torchvision
# does not import beside every torch build, and nothing here runs that path
WAN_STUBS = ("torchvision",)


def published_dit(model_class: type, config: WanConfig, **kwargs) -> torch.nn.Module:
    """The published ``CausalWanModel`` (text-to-video) of ``config``'s geometry, built on the
    current default device with the published code's own initialisation."""
    return model_class(
        model_type="t2v",
        patch_size=config.patch_size,
        text_len=config.text_len,
        in_dim=config.in_channels,
        dim=config.dim,
        ffn_dim=config.ffn_dim,
        freq_dim=config.freq_dim,
        text_dim=config.text_dim,
        out_dim=config.out_channels,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        eps=config.eps,
        **kwargs,
    )


def published_tiny(model_class: type, seed: int, **kwargs) -> torch.nn.Module:
    """The published ``CausalWanModel`` at :data:`CONFIG`, every weight drawn from a seeded
    normal (scaled by fan-in, so activations stay O(1) through the layers)."""
    model = published_dit(model_class, CONFIG, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            fan_in = param.shape[-1] if param.ndim > 1 else 1
            scale = 1.0 / math.sqrt(fan_in) if param.ndim > 1 else 0.1
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
            if name.endswith("modulation"):  # the per-block shift/scale/gate table
                param.mul_(0.1)
    return model.eval().float()


def published_wrapper(pipeline_module: ModuleType, model: torch.nn.Module, **kwargs):
    """The published ``WanDiffusionWrapper`` (as ``pipeline_module`` imports it) around
    ``model``: it would load the 1.3B checkpoint from a relative path; here it adopts ``model``.
    Timestep shift 5, as both published inference configs set; ``kwargs`` are the model's
    window settings."""
    wrappers = pipeline_module.WanDiffusionWrapper
    module = sys.modules[wrappers.__module__]
    with mock.patch.object(module.CausalWanModel, "from_pretrained", lambda *a, **k: model):
        return wrappers(timestep_shift=5.0, is_causal=True, **kwargs)


def fit_kv_cache(
    pipeline: torch.nn.Module, cache: str, heads: int, head_dim: int, tokens: int | None = None
) -> None:
    """Make the published pipeline's ``_initialize_kv_cache`` allocate its ``cache`` (the list
    of per-layer dicts) for a model of ``heads`` x ``head_dim`` and, when given, ``tokens`` a
    layer, where the published code hard-codes the 1.3B's. Their function still builds the
    structure (first on the meta device, to read the sizes it asks for); where those are the
    sizes wanted (the 1.3B at 832x480) it then runs as published, else only the buffers'
    sizes change."""
    allocate = pipeline._initialize_kv_cache

    def initialize_kv_cache(batch_size, dtype, device, **kwargs):
        allocate(batch_size=batch_size, dtype=dtype, device=torch.device("meta"), **kwargs)
        layers = getattr(pipeline, cache)
        shape = (batch_size, tokens or layers[0]["k"].shape[1], heads, head_dim)
        if all(layer["k"].shape == shape for layer in layers):
            allocate(batch_size=batch_size, dtype=dtype, device=device, **kwargs)
            return
        for layer in layers:
            for key, value in layer.items():
                size = shape if key in ("k", "v") else value.shape
                layer[key] = torch.zeros(size, dtype=value.dtype, device=device)

    pipeline._initialize_kv_cache = initialize_kv_cache


class FixedPrompts:
    """Stands in for the text encoder: the same embedding for a prompt on both sides."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._embeddings: dict[str, torch.Tensor] = {}

    def embedding(self, prompt: str) -> torch.Tensor:
        """``[1, 512, 32]``: a prompt's tokens, then zero padding, as umT5's output is."""
        if prompt not in self._embeddings:
            index = len(self._embeddings)
            generator = torch.Generator().manual_seed(self._seed * 1000 + index)
            out = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
            out[:, : 7 + index] = torch.randn(1, 7 + index, CONFIG.text_dim, generator=generator)
            self._embeddings[prompt] = out
        return self._embeddings[prompt]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Our :class:`~models.text.PromptCache` interface."""
        return torch.cat([self.embedding(p) for p in prompts])

    def published(self) -> torch.nn.Module:
        """The published ``WanTextEncoder`` interface: ``text_prompts=`` -> ``prompt_embeds``."""
        fixed = self

        class Encoder(torch.nn.Module):
            def forward(self, text_prompts: list[str]) -> dict[str, torch.Tensor]:
                return {"prompt_embeds": fixed.encode(list(text_prompts))}

        return Encoder()


def our_models(published: torch.nn.Module, prompts: FixedPrompts) -> WanModels:
    """Our DiT with the published model's weights (the original Wan names, read by our
    loader's checks), the fixed prompts, and the tiny VAE (never decoded here)."""
    dit = CausalWanModel(CONFIG)
    state = published.state_dict()
    dit.load_state_dict(state, strict=True)
    base = load_wan_models("tiny")
    return replace(base, dit=dit.eval(), text=prompts, dtype=torch.float32, opening=None)


class NoiseTape:
    """The ``torch.randn_like`` draws of a published loop, in order (``[B * F, C, H, W]``)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        def randn_like(x: torch.Tensor, **_) -> torch.Tensor:
            out = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
            self.draws.append(out.clone())
            return out

        with mock.patch.object(torch, "randn_like", randn_like):
            yield


@contextlib.contextmanager
def replaying(pipe: WanStreamPipeline, source: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """Our pipeline draws ``source(frames)`` (``[1, C, frames, h, w]``) instead of noise."""
    with mock.patch.object(pipe, "_noise", lambda state, frames: source(frames)):
        yield


@dataclass(frozen=True)
class Difference:
    max_abs: float
    max_rel: float  # max |ours - theirs| / max |theirs|

    @property
    def equal(self) -> bool:
        return self.max_rel <= TOLERANCE


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float | bool]:
    """How far ``ours`` is from ``theirs`` (same shape), as a JSON-able dict."""
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: ours {tuple(ours.shape)}, theirs {tuple(theirs.shape)}")
    delta = (ours.double() - theirs.double()).abs().max().item()
    scale = theirs.double().abs().max().item() or 1.0
    diff = Difference(delta, delta / scale)
    return {"max_abs": diff.max_abs, "max_rel": diff.max_rel, "equal": diff.equal}
