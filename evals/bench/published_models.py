"""The published code's models and pipelines, built on ours (see :mod:`evals.bench.published`):
their DiT holding our DiT's weights, their VAE at our VAE's geometry (holding its weights where
diffusers' renaming covers the layout), our text encoder behind their interface, and the sizes
their code hard-codes for the 1.3B at 832x480 set to the run's."""

from __future__ import annotations

from types import ModuleType
from unittest import mock

import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from framestream.evals.fidelity import longlive, rolling_forcing
from framestream.evals.fidelity.wan import fit_kv_cache, published_dit, published_wrapper
from framestream.models.registry import WanModels
from framestream.stream.pipelines.longlive import LongLiveConfig

__all__ = [
    "TextEncoder",
    "at_published_sizes",
    "copy_vae_weights",
    "fit_sizes",
    "their_dit",
    "their_pipeline",
    "their_vae",
]


def their_dit(kind: str, causal_model: ModuleType, models: WanModels) -> torch.nn.Module:
    """Their ``CausalWanModel`` at our DiT's geometry holding our DiT's weights."""
    window = longlive.WINDOW if kind == "longlive" else {}
    with torch.device(models.device):
        model = published_dit(causal_model.CausalWanModel, models.dit.config, **window)
    # torch's cast: diffusers' ModelMixin.to warns of modules to keep in float32, and names none
    torch.nn.Module.to(model, models.dtype)
    model.load_state_dict(models.dit.state_dict(), strict=True)
    return model.eval().requires_grad_(False)


def their_vae(wan_wrapper: ModuleType, vae_module: ModuleType, models: WanModels):
    """Their ``WanVAEWrapper`` around a ``WanVAE_`` of our VAE's geometry (it would load the
    checkpoint from a relative path), and how its weights were set."""
    ours = models.vae.vae
    c = ours.config

    def video_vae(pretrained_path=None, z_dim=None, **_):
        with torch.device(models.device):
            return vae_module.WanVAE_(
                dim=c.base_dim,
                z_dim=c.z_dim,
                dim_mult=list(c.dim_mult),
                num_res_blocks=c.num_res_blocks,
                attn_scales=list(c.attn_scales),
                temperal_downsample=list(c.temperal_downsample),
                dropout=c.dropout,
            )

    with mock.patch.object(wan_wrapper, "_video_vae", video_vae):
        wrapper = wan_wrapper.WanVAEWrapper()
    wrapper.model.to(models.dtype)
    copied = copy_vae_weights(wrapper.model, ours)
    note = "holds our VAE's weights" if copied else "has its own random weights (layout unmapped)"
    return wrapper, note


def copy_vae_weights(theirs: torch.nn.Module, ours: torch.nn.Module) -> bool:
    """Load our diffusers VAE's weights into their ``WanVAE_`` through diffusers' renaming of
    the original keys (a renaming only: the tensors it returns are theirs); False, and nothing
    loaded, where the renaming does not give exactly our keys and shapes."""
    state = theirs.state_dict()
    renamed = convert_wan_vae_to_diffusers(dict(state))
    mine = ours.state_dict()
    original = {tensor.data_ptr(): name for name, tensor in state.items()}
    if set(renamed) != set(mine) or any(
        renamed[k].shape != mine[k].shape or renamed[k].data_ptr() not in original for k in mine
    ):
        return False
    theirs.load_state_dict({original[renamed[k].data_ptr()]: mine[k] for k in mine}, strict=True)
    return True


def their_pipeline(kind, loop_module, model, vae, models: WanModels) -> torch.nn.Module:
    encoder = TextEncoder(models)
    if kind == "longlive":
        return loop_module.InteractiveCausalInferencePipeline(
            longlive.published_args(global_sink=LongLiveConfig().global_sink),
            models.device,
            generator=published_wrapper(loop_module, model, **longlive.WINDOW),
            text_encoder=encoder,
            vae=vae,
        )
    return loop_module.CausalInferencePipeline(
        rolling_forcing.published_args(),
        models.device,
        generator=published_wrapper(loop_module, model),
        text_encoder=encoder,
        vae=vae,
    )


def fit_sizes(kind, pipeline, causal_model, models: WanModels, size: tuple[int, int]) -> None:
    """The sizes their code hard-codes for the 1.3B at 832x480, set to the run's."""
    rows, cols = models.token_grid(*size)
    config = models.dit.config
    if kind == "longlive":
        pipeline.frame_seq_length = rows * cols
        pipeline.num_transformer_blocks = config.num_layers
        fit_kv_cache(pipeline, "kv_cache1", config.num_heads, config.head_dim)
    else:
        rolling_forcing.fit_geometry(
            pipeline, causal_model, rows * cols, config.num_heads, config.head_dim
        )


def at_published_sizes(models: WanModels, size: tuple[int, int]) -> bool:
    """Whether the run is at the sizes the published code hard-codes (the 1.3B at 832x480)."""
    config = models.dit.config
    rows, cols = models.token_grid(*size)
    sizes = (config.num_layers, config.num_heads, config.head_dim, rows * cols)
    return sizes == (30, 12, 128, 1560)


class TextEncoder(torch.nn.Module):
    """Our text encoder behind their interface: ``text_prompts=`` -> ``prompt_embeds``."""

    def __init__(self, models: WanModels) -> None:
        super().__init__()
        self._models = models

    def forward(self, text_prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"prompt_embeds": torch.cat([self._models.encode_prompt(p) for p in text_prompts])}
