"""Which decoder a generation bundle gets (``models.registry``): the full Wan VAE, the shipped
toy-world tiny decoder (``decoder="tiny"``), a tiny-decoder file recognised by its keys, random
``taew2_1`` shapes for speed runs; and a pipeline streaming through the tiny one."""

from __future__ import annotations

import pytest
import torch

from framestream.models.registry import WanPaths, load_wan_models, tiny_decoder_of
from framestream.models.toyworld.embedded import TINY_DECODER_DIR
from framestream.models.vae import WanVAE
from framestream.models.vae_tiny import (
    TAEW2_1,
    TinyDecoderConfig,
    TinyWanDecoder,
    load_tiny_decoder,
    random_tiny_decoder,
    save_tiny_decoder,
)


def test_the_toy_world_ships_a_trained_tiny_decoder() -> None:
    toy_tiny = load_wan_models(decoder="tiny")
    assert isinstance(toy_tiny.vae, TinyWanDecoder)
    shipped = load_tiny_decoder(TINY_DECODER_DIR / "decoder.safetensors")
    for name, value in shipped.state_dict().items():
        torch.testing.assert_close(toy_tiny.vae.state_dict()[name], value, atol=0, rtol=0)
    assert (TINY_DECODER_DIR / "train.json").is_file()
    assert isinstance(load_wan_models().vae, WanVAE)  # the default stays the Wan VAE


def test_a_tiny_decoder_file_is_recognised_by_its_keys(tmp_path) -> None:
    path = tmp_path / "my_decoder.pth"
    save_tiny_decoder(random_tiny_decoder(TinyDecoderConfig(widths=(8, 8, 4, 4)), seed=2), path)
    models = load_wan_models(paths=WanPaths(vae=path))  # the toy world's DiT, this decoder
    assert isinstance(models.vae, TinyWanDecoder)
    assert models.vae.config.widths == (8, 8, 4, 4)


def test_random_weights_at_full_size_take_taew2_1_shapes() -> None:
    decoder = tiny_decoder_of("wan2.1-t2v-1.3b", random_weights=True)
    assert decoder.config == TAEW2_1
    with pytest.raises(ValueError, match="no tiny decoder ships for the wan2.1-t2v-1.3b"):
        tiny_decoder_of("wan2.1-t2v-1.3b")
    with pytest.raises(ValueError, match="unknown decoder 'small'"):
        load_wan_models("tiny", decoder="small")
    assert isinstance(load_wan_models("tiny", decoder="tiny").vae, TinyWanDecoder)
