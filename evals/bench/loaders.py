"""The models a run measures, loaded once per run and shared by its suites.

A generation preset (:data:`models.registry.GENERATION_PRESETS`) names the understanding model
too: ``toyworld`` runs the shipped toy-world Qwen2.5-VL, ``tiny`` the seeded tiny one, and the
full-size preset Qwen2.5-VL-7B's geometry. Full size is built with random weights on the
device (speed does not depend on weight values) unless ``--model-dir`` / ``--vlm-dir`` name
local folders: real checkpoints, or a random one written by
``python -m framestream.evals.random_checkpoint`` (which also exercises the loading path).
The tiny streaming decoder is the file ``--tiny-decoder`` names (a published ``taew2_1.pth``),
else the preset's (the toy world ships a trained one), else random weights of ``taew2_1``'s
shapes at full size: its speed then, never its quality (:attr:`ModelShelf.tiny_decoder_trained`).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    UMT5Config,
    UMT5EncoderModel,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from framestream.models.qwen_vl import QwenSpecialTokens, QwenVL, load_qwen_vl
from framestream.models.qwen_vl_tiny import tiny_qwen_vl, tiny_tokenizer
from framestream.models.registry import WanModels, WanPaths, load_wan_models, tiny_decoder_of
from framestream.models.text import ByteTokenizer, UMT5TextEncoder
from framestream.models.vae_tiny import TinyWanDecoder

__all__ = ["FULL_SIZE", "ModelShelf", "Target", "release_memory"]

FULL_SIZE = "wan2.1-t2v-1.3b"
# A second of feed is 2 frames of this (height, width): what each understanding model sees.
# Full size: 1008x560 (16:9) = 20 x 36 merged tokens = 720 vision tokens a second.
_VLM_FRAME = {"toyworld": (64, 64), "tiny": (56, 112), FULL_SIZE: (560, 1008)}


@dataclass(frozen=True)
class Target:
    """What a run measures on: a preset on one device, and optional local weights."""

    preset: str
    device: torch.device
    dtype: torch.dtype
    model_dir: Path | None = None  # diffusers-layout Wan folder (real or random_checkpoint's)
    vlm_dir: Path | None = None  # a Qwen2.5-VL / StreamingVLM folder
    tiny_decoder: Path | None = None  # a tiny streaming decoder file (taew2_1.pth's layout)

    def __post_init__(self) -> None:
        if self.preset not in _VLM_FRAME:
            raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(_VLM_FRAME)}")

    @property
    def full_size(self) -> bool:
        return self.preset == FULL_SIZE


class ModelShelf:
    """Loads each model of a :class:`Target` on first use and keeps it for the run."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @cached_property
    def wan(self) -> WanModels:
        t = self.target
        if t.model_dir is not None:
            return load_wan_models(t.preset, WanPaths(t.model_dir), device=t.device, dtype=t.dtype)
        if not t.full_size:
            return load_wan_models(t.preset, device=t.device, dtype=t.dtype)
        return load_wan_models(
            t.preset,
            device=t.device,
            dtype=t.dtype,
            random_weights=True,
            text_encoder=_random_umt5(4096, 512, t.device, t.dtype),
        )

    @cached_property
    def tiny_decoder(self) -> TinyWanDecoder:
        t = self.target
        random_weights = t.tiny_decoder is None and t.full_size
        return tiny_decoder_of(
            t.preset, t.tiny_decoder, random_weights=random_weights, dtype=t.dtype, device=t.device
        )

    @property
    def tiny_decoder_trained(self) -> bool:
        """Whether :attr:`tiny_decoder` and the Wan VAE both have trained weights, so the tiny
        one's frames can be graded against the full one's (the toy world's, or given files)."""
        t = self.target
        if t.preset == "toyworld":
            return t.model_dir is None or t.tiny_decoder is not None
        return t.tiny_decoder is not None and t.model_dir is not None

    @cached_property
    def vlm(self) -> QwenVL:
        t = self.target
        if t.vlm_dir is not None:
            return load_qwen_vl(t.vlm_dir, dtype=t.dtype, device=t.device)
        if t.preset == "toyworld":
            from framestream.models.toyworld.embedded import load_vlm

            return load_vlm(t.dtype, t.device)
        if t.preset == "tiny":
            return tiny_qwen_vl(device=t.device)  # float32 whatever the dtype: a test model
        return _qwen_7b_random(t.device, t.dtype)

    @property
    def vlm_frame(self) -> tuple[int, int]:
        """(height, width) of the frames fed to the understanding model."""
        return _VLM_FRAME[self.target.preset]


def release_memory(device: torch.device) -> None:
    """Give a finished variant's pool back before the next one allocates its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _random_umt5(dim: int, text_len: int, device: torch.device, dtype) -> UMT5TextEncoder:
    """A one-layer umT5 of the real output width: the text encoder is not what is measured
    (a prompt is encoded once per switch, through the prompt cache)."""
    config = UMT5Config(
        vocab_size=384,
        d_model=dim,
        d_kv=64,
        d_ff=256,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    model = UMT5EncoderModel(config).to(device, dtype).eval()
    return UMT5TextEncoder(model, ByteTokenizer(), text_len=text_len)


def _qwen_7b_random(device: torch.device, dtype: torch.dtype) -> QwenVL:
    """Qwen2.5-VL-7B-Instruct's geometry (vision tower included) with random weights, built on
    the device. The tokenizer is the tiny toy-world one, its special tokens written into the
    config; nothing measured depends on the vocabulary's contents."""
    tokenizer = tiny_tokenizer()
    ids = QwenSpecialTokens.from_tokenizer(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
            "bos_token_id": ids.endoftext,
            "eos_token_id": ids.im_end,
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=ids.image_pad,
        video_token_id=ids.video_pad,
        vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        hf = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    min_pixels, max_pixels = 100 * 28 * 28, 768 * 28 * 28
    processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return QwenVL(hf, tokenizer, processor, min_pixels, max_pixels)
