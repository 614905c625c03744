"""Named model presets and the bundles pipelines run on.

A generation preset is a Wan DiT, a streaming Wan VAE and a text encoder behind a prompt cache:

* ``toyworld`` -- the embedded default: small configurations of the real architectures trained
  on the procedural toy world (:mod:`models.toyworld`), shipped in the repository
  (:mod:`models.toyworld.embedded`); 64x64 video on a CPU, following the prompt.
* ``tiny`` -- the same architectures smaller still, with seeded random weights built in memory
  (tests and benchmarks of the machinery; it streams noise).
* ``wan2.1-t2v-1.3b`` -- full size.

A preset fixes the architecture; weights come from :class:`WanPaths` when given: a
diffusers-layout model folder (``transformer/ vae/ text_encoder/ tokenizer/``), with the DiT
optionally replaced by a LongLive / Self-Forcing / Rolling Forcing checkpoint (+ LoRA).
``random_weights`` builds the DiT and VAE with random weights, for speed measurements.

The decoder is the full Wan VAE (``decoder="wan"``) or a tiny streaming one
(:mod:`models.vae_tiny`, ``decoder="tiny"``): the toy world ships one distilled from its VAE
(:data:`~models.toyworld.embedded.TINY_DECODER_DIR`); at full size it is the published
``taew2_1.pth``, named as ``WanPaths.vae`` (a file of that layout is recognised by its keys,
whichever ``decoder`` says), or random weights of its shapes with ``random_weights``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from framestream.kernels.rope import RopeSpec, wan_rope
from framestream.models.schedule import FlowSchedule, opening_schedule
from framestream.models.text import PromptCache, TextEncoder, UMT5TextEncoder, tiny_umt5_encoder
from framestream.models.toyworld.embedded import (
    DEFAULT_PRESET,
    GENERATOR_DIR,
    TINY_DECODER_DIR,
    require,
    toy_text_encoder,
)
from framestream.models.vae import WanVAE, tiny_wan_vae
from framestream.models.vae_tiny import (
    TAEW2_1,
    TinyDecoderConfig,
    TinyWanDecoder,
    is_tiny_decoder_file,
    load_tiny_decoder,
    random_tiny_decoder,
)
from framestream.models.wan import CausalWanModel, WanConfig, load_wan_weights, wan_config

__all__ = [
    "DECODERS",
    "DEFAULT_PRESET",
    "GENERATION_PRESETS",
    "StreamingDecoder",
    "WanModels",
    "WanPaths",
    "load_wan_models",
    "tiny_decoder_of",
]

GENERATION_PRESETS = {
    "toyworld": {"dit": "toyworld", "size": (64, 64), "embedded": GENERATOR_DIR},
    "tiny": {"dit": "tiny", "size": (128, 128)},
    "wan2.1-t2v-1.3b": {"dit": "wan2.1-t2v-1.3b", "size": (480, 832)},
}
# which decoder turns a bundle's latents into frames: the full Wan VAE or a tiny streaming one
DECODERS = ("wan", "tiny")
# the tiny decoder of the random small presets (tests of the machinery, like tiny_wan_vae)
_SMALL_TINY_DECODER = TinyDecoderConfig(widths=(16, 16, 8, 8))
# either decoder serves the pipelines alike: new_decode_state(), decode_chunk(), the strides
StreamingDecoder = WanVAE | TinyWanDecoder

# the small presets' text encoder: frozen, seeded, rebuilt in memory (the toy-world generator
# was trained on its outputs, so the seed is part of the model)
_SMALL_TEXT_SEED = 0


@dataclass(frozen=True)
class WanPaths:
    """Where full-size weights live; any field left None falls back to ``model_dir``."""

    model_dir: Path | None = None  # diffusers layout: transformer/ vae/ text_encoder/ tokenizer/
    dit: Path | None = None  # a DiT checkpoint file or folder, any layout the loader knows
    dit_layout: str = "auto"
    lora: Path | None = None  # LongLive lora.pt, merged into the DiT at load
    vae: Path | None = None  # a diffusers vae/ folder, Wan2.1_VAE.pth, or a taew2_1.pth
    text_encoder: Path | None = None  # a folder with text_encoder/ and tokenizer/

    def resolve(self, part: str, subfolder: str) -> Path:
        path = getattr(self, part) or (self.model_dir / subfolder if self.model_dir else None)
        if path is None:
            raise ValueError(
                f"no path for the {part}: pass --{part.replace('_', '-')} or --model-dir"
            )
        if not Path(path).exists():
            raise FileNotFoundError(f"{part} path does not exist: {path}")
        return Path(path)


@dataclass(eq=False)
class WanModels:
    """The shared modules of a Wan generation preset on one device."""

    dit: CausalWanModel
    vae: StreamingDecoder  # the full Wan VAE or a tiny streaming decoder (DECODERS)
    text: PromptCache
    device: torch.device
    dtype: torch.dtype
    default_size: tuple[int, int]  # (height, width) in pixels
    sample_shift: float | None = None  # the sigma shift the DiT was trained for, when known
    opening: FlowSchedule | None = None  # ODE steps of a stream's first, context-free chunk
    dit_path: Path | None = None  # the file or folder the DiT was loaded from; None if random

    def schedule_for(self, schedule: FlowSchedule) -> FlowSchedule:
        """A pipeline's step list at this DiT's shift: a model is sampled at the shift it was
        trained for (the toy world's 64x64 video unshifted); published checkpoints declare
        none, and the pipeline's published shift stays."""
        if self.sample_shift is None:
            return schedule
        return replace(schedule, shift=self.sample_shift)

    @cached_property
    def rope(self) -> RopeSpec:
        """One spec per bundle, so its device tables are built once."""
        return wan_rope(self.dit.config.head_dim)

    @property
    def pixels_per_token(self) -> int:
        """Pixels per DiT token side: the VAE's spatial stride times the DiT's patch (Wan2.1:
        8 x 2)."""
        patch = self.dit.config.patch_size
        if patch[1] != patch[2]:
            raise ValueError(f"a DiT patch must be square, got {patch}")
        return self.vae.spatial_stride * patch[1]

    def check_size(self, height: int, width: int) -> None:
        step = self.pixels_per_token
        if height <= 0 or width <= 0 or height % step or width % step:
            raise ValueError(
                f"height and width must be positive multiples of {step}, got {height}x{width}"
            )

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, rows, columns) of one latent frame for a ``height`` x ``width`` video."""
        self.check_size(height, width)
        stride = self.vae.spatial_stride
        return (self.dit.config.in_channels, height // stride, width // stride)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """DiT tokens per latent frame, as (rows, columns)."""
        self.check_size(height, width)
        stride = self.vae.spatial_stride
        return self.dit.config.token_grid(height // stride, width // stride)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """``[1, text_len, text_dim]`` embedding on the DiT's device and dtype (cached)."""
        return self.text.encode([prompt]).to(self.device, self.dtype)


def load_wan_models(
    preset: str = DEFAULT_PRESET,
    paths: WanPaths | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    text_encoder: TextEncoder | None = None,
    prompt_cache_size: int = 32,
    decoder: str = "wan",
) -> WanModels:
    """Build a generation preset on ``device``.

    Args:
        preset: a key of :data:`GENERATION_PRESETS`.
        paths: where weights live (``toyworld``: replaces the shipped ones; ignored by ``tiny``
            and ``random_weights``).
        random_weights: full-size DiT and VAE with random weights (benchmarks only).
        text_encoder: use this encoder instead of the preset's (benchmarks, tests).
        prompt_cache_size: prompts whose embeddings stay cached.
        decoder: one of :data:`DECODERS`; ``paths.vae`` naming a tiny-decoder file loads that.
    """
    if preset not in GENERATION_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(GENERATION_PRESETS)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; known: {DECODERS}")
    spec = GENERATION_PRESETS[preset]
    device = torch.device(device)
    config = wan_config(spec["dit"])
    small = preset in ("tiny", "toyworld")
    sample_shift, opening = None, None
    given_encoder = text_encoder
    if small:
        text_encoder = text_encoder or tiny_umt5_encoder(_SMALL_TEXT_SEED, config.text_len)
    dit_path = None
    if random_weights or (preset == "tiny" and paths is None):
        generator = torch.Generator(device).manual_seed(0)
        with torch.device(device):
            dit = CausalWanModel(config)
        dit.init_weights(generator)
        if decoder == "tiny":
            vae = tiny_decoder_of(preset, random_weights=True)
        else:
            vae = tiny_wan_vae() if small else WanVAE(AutoencoderKLWan().eval())
        encoder = text_encoder
    else:
        if "embedded" in spec and (paths is None or not (paths.model_dir or paths.dit)):
            # the shipped DiT and VAE; a decoder file given alone replaces only the VAE
            folder = require(spec["embedded"], "dit.safetensors")
            vae_path = (paths.vae if paths else None) or folder / "vae"
            paths = WanPaths(dit=folder / "dit.safetensors", dit_layout="wan", vae=vae_path)
        if small and paths and paths.dit:
            # a toy-world training run's folder says how its DiT is built and sampled, and
            # holds the text encoder it trained with it
            run = Path(paths.dit).parent
            config = _run_dit_config(run, config)
            sample_shift, opening = _sampling(run)
            if given_encoder is None:
                text_encoder = toy_text_encoder(config.text_len, run, seed=_SMALL_TEXT_SEED)
        paths = paths or WanPaths()
        with torch.device("meta"):
            dit = CausalWanModel(config)
        dit_path = paths.resolve("dit", "transformer")
        layout = paths.dit_layout if paths.dit else "diffusers"
        load_wan_weights(dit, dit_path, layout=layout, lora=paths.lora, dtype=dtype, device=device)
        vae = _decoder(preset, paths, decoder, dtype, device)
        encoder = text_encoder or UMT5TextEncoder.from_pretrained(
            paths.resolve("text_encoder", ""), text_len=config.text_len, dtype=dtype, device=device
        )
    if encoder is None:
        raise ValueError(
            "random_weights needs a text_encoder (a full-size umT5 is not random-built)"
        )
    if encoder.dim != config.text_dim:
        raise ValueError(f"text encoder width {encoder.dim} != DiT text_dim {config.text_dim}")
    return WanModels(
        dit=dit.to(device, dtype).eval().requires_grad_(False),
        vae=vae.to(device, dtype).eval().requires_grad_(False),
        text=PromptCache(encoder, prompt_cache_size),
        device=device,
        dtype=dtype,
        default_size=spec["size"],
        sample_shift=sample_shift,
        opening=opening,
        dit_path=dit_path,
    )


def tiny_decoder_of(
    preset: str,
    path: str | Path | None = None,
    *,
    random_weights: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> TinyWanDecoder:
    """A preset's tiny streaming decoder: the file at ``path`` (the published layout), else
    seeded random weights (``random_weights`` or the ``tiny`` preset; full size gets
    ``taew2_1``'s shapes), else the one the preset ships (the toy world's).

    Raises:
        ValueError: a full-size preset with neither a file nor ``random_weights`` (no tiny
            decoder ships for it), or ``path`` is not a tiny-decoder file.
    """
    if path is not None:
        return load_tiny_decoder(path, dtype=dtype, device=device)
    if random_weights or preset == "tiny":
        small = preset in ("tiny", "toyworld")
        decoder = random_tiny_decoder(_SMALL_TINY_DECODER if small else TAEW2_1)
        return decoder.to(device, dtype)
    if "embedded" not in GENERATION_PRESETS[preset]:
        raise ValueError(
            f"no tiny decoder ships for the {preset} preset: pass its file, --vae PATH/taew2_1.pth"
        )
    folder = require(TINY_DECODER_DIR, "decoder.safetensors")
    return load_tiny_decoder(folder / "decoder.safetensors", dtype=dtype, device=device)


def _decoder(
    preset: str, paths: WanPaths, decoder: str, dtype: torch.dtype, device: torch.device
) -> StreamingDecoder:
    """The bundle's decoder: a tiny-decoder file named as ``paths.vae``, else the preset's
    tiny decoder for ``decoder="tiny"``, else the Wan VAE of ``paths``."""
    if paths.vae is not None and is_tiny_decoder_file(paths.vae):
        return load_tiny_decoder(paths.vae, dtype=dtype, device=device)
    if decoder == "tiny":
        return tiny_decoder_of(preset, dtype=dtype, device=device)
    return WanVAE.from_pretrained(paths.resolve("vae", "vae"), dtype=dtype, device=device)


def _run_dit_config(folder: Path, default: WanConfig) -> WanConfig:
    """The DiT preset a toy-world run trained (its ``train.json``), else ``default``."""
    record = folder / "train.json"
    if not record.is_file():
        return default
    name = json.loads(record.read_text()).get("config", {}).get("dit_preset")
    return default if name is None else wan_config(name)


def _sampling(folder: Path) -> tuple[float | None, FlowSchedule | None]:
    """How a trained DiT is sampled, from its folder's ``sampling.json``: the sigma ``shift``
    it was trained at, and ``opening_steps``, the Euler ODE steps that take a stream's first
    chunk from pure noise (:func:`~models.schedule.opening_schedule`)."""
    record = folder / "sampling.json"
    if not record.is_file():
        return None, None
    sampling = json.loads(record.read_text())
    shift, steps = sampling.get("shift"), sampling.get("opening_steps")
    return shift, None if steps is None else opening_schedule(steps, shift or 1.0)
