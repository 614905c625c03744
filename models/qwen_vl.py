"""Qwen2.5-VL for streaming video understanding (StreamingVLM): our decoder, transformers' parts.

transformers does the standard parts (vision tower, token embeddings, ``lm_head``, tokenizer,
image processor); the language decoder is our own, gpt-fast style, and attends through a
:class:`models.attention.AttentionContext`, so the service's paged rolling cache owns keys,
values and logical M-RoPE positions::

    frames --video_inputs--> pixel_values_videos, video_grid_thw, merged grid (t, h/2, w/2)
    input_ids [N] + pixels --embed--> [N, hidden]   (video_pad rows = vision tower features)
        --QwenDecoder.forward(embeds, attention)--> hidden [N, hidden] --logits--> [N, vocab]
                 each layer: attention.attend(layer, q, k, v), un-rotated, packed

:class:`QwenDecoder` shares the transformers model's parameter tensors (no copies), so both
compute with the same weights. :func:`load_qwen_vl` reads a local Hugging Face folder (e.g. the
StreamingVLM release) with ``local_files_only=True``; :func:`tiny_qwen_vl` builds a seeded tiny
model with a toy-world tokenizer in memory (parts in :mod:`models.qwen_vl_tiny`), for tests and
the embedded default.

Video frames are prepared as transformers' PIL Qwen2-VL image processor prepares them (resize
with Qwen's ``smart_resize`` rule, rescale, normalise, patchify) and interleaved in time as
``Qwen2VLVideoProcessor`` lays them out, but with torch ops on the model's device; the vision
tower runs transformers' modules with one attention call per block. Both live in
:mod:`models.qwen_vision`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from framestream.kernels.attention import fused_kernels
from framestream.kernels.norms import add_rms_norm_ref, silu_mul_ref
from framestream.kernels.rope import RopeSpec, mrope
from framestream.models.attention import AttentionContext
from framestream.models.qwen_vision import VideoPreprocessor, VisionTower

__all__ = [
    "MAX_ASPECT_RATIO",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "QwenDecoder",
    "QwenDecoderArgs",
    "QwenSpecialTokens",
    "QwenVL",
    "VideoInputs",
    "load_qwen_vl",
]

logger = logging.getLogger(__name__)

VIDEO_MAX_PIXELS = 768 * 28 * 28  # per frame: <= 768 merged tokens per 1 s chunk (qwen-vl-utils)
VIDEO_MIN_PIXELS = 100 * 28 * 28  # livecc_utils override used by StreamingVLM
MAX_ASPECT_RATIO = 200  # Qwen's smart_resize refuses frames longer than this to one side


# --------------------------------------------------------------------------------------------
# 1. The language decoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QwenDecoderArgs:
    """Geometry of the Qwen2.5-VL language decoder (from ``config.text_config``)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    head_dim: int = 0  # derived: hidden_size // num_heads, as transformers' attention does

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size}, num_heads {self.num_heads} and num_kv_heads "
                f"{self.num_kv_heads} must divide evenly"
            )
        object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @classmethod
    def from_config(cls, config: Qwen2_5_VLConfig) -> QwenDecoderArgs:
        text = config.text_config
        # transformers 5 keeps theta and mrope_section in ``rope_parameters``; 4.x configs have
        # ``rope_theta`` and ``rope_scaling = {"type": "mrope", "mrope_section": [...]}``.
        rope = dict(getattr(text, "rope_parameters", None) or {})
        legacy = getattr(text, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", legacy.get("type", "default")))
        if rope_type not in ("default", "mrope"):
            raise ValueError(f"rope type {rope_type!r} is not supported (only plain M-RoPE)")
        theta = rope.get("rope_theta", getattr(text, "rope_theta", None))
        section = rope.get("mrope_section", legacy.get("mrope_section"))
        if theta is None or section is None:
            raise ValueError(f"config lacks rope_theta or mrope_section: {rope or legacy}")
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            vocab_size=text.vocab_size,
            rms_norm_eps=text.rms_norm_eps,
            rope_theta=float(theta),
            mrope_section=tuple(int(s) for s in section),
        )

    def rope(self) -> RopeSpec:
        """The M-RoPE of the decoder; its tables equal transformers' bit for bit."""
        return mrope(self.head_dim, self.rope_theta, self.mrope_section)


def _triton_norms():
    # Imported on first use: triton may be missing where the fused path never runs.
    from framestream.kernels import triton_norms

    return triton_norms


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: normalise in float32, round back, then scale (transformers' order).

    With ``fused`` one Triton launch (:mod:`kernels.triton_norms`), else the torch twin
    (:mod:`kernels.norms`, transformers' ops).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_norm(x, None, fused_kernels(x.device))[1]

    def add_norm(
        self, x: torch.Tensor, y: torch.Tensor | None, fused: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A residual add, then the norm: ``(s, norm(s))`` with ``s = x + y`` in ``x.dtype``
        (``s = x`` when ``y`` is None); fused, both are one launch."""
        if fused:
            return _triton_norms().add_rms_norm(x, y, self.weight, self.eps)
        return add_rms_norm_ref(x, y, self.weight, self.eps)


@torch.no_grad()
def _concatenate(params: list[nn.Parameter]) -> torch.Tensor:
    """One new tensor holding ``params`` back to back along dim 0; each parameter's ``.data``
    becomes a view of it and its own storage is freed (the parameter objects stay the same)."""
    fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        p.data = fused[start : start + p.shape[0]]
        start += p.shape[0]
    return fused


class Attention(nn.Module):
    """GQA self-attention with q/k/v biases; rotation and caching belong to the context.

    After :meth:`fuse`, inference (no gradients recorded) runs q/k/v as one matmul over the
    concatenated weight and bias, of which the three projections' parameters are views.
    """

    def __init__(self, args: QwenDecoderArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = (
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
        )
        kv_dim = args.num_kv_heads * args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, args.num_heads * args.head_dim, bias=True)
        self.k_proj = nn.Linear(args.hidden_size, kv_dim, bias=True)
        self.v_proj = nn.Linear(args.hidden_size, kv_dim, bias=True)
        self.o_proj = nn.Linear(args.num_heads * args.head_dim, args.hidden_size, bias=False)
        self.sizes = (args.num_heads * args.head_dim, kv_dim, kv_dim)
        self.qkv: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, bias), by fuse()

    def fuse(self) -> None:
        """Concatenate q/k/v (weights, biases); see :meth:`QwenDecoder.fuse`."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        self.qkv = (
            _concatenate([p.weight for p in projections]),
            _concatenate([p.bias for p in projections]),
        )

    def forward(self, x: torch.Tensor, attention: AttentionContext) -> torch.Tensor:
        """``x [N, hidden]`` -> ``[N, hidden]``."""
        n = x.shape[0]
        if self.qkv is not None and not torch.is_grad_enabled():
            q, k, v = F.linear(x, *self.qkv).split(self.sizes, dim=-1)  # views of one output
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        out = attention.attend(  # [N, H_q, D] in q's dtype
            self.layer,
            q.view(n, self.num_heads, self.head_dim),
            k.view(n, self.num_kv_heads, self.head_dim),
            v.view(n, self.num_kv_heads, self.head_dim),
        )
        return self.o_proj(out.reshape(n, -1))


class FeedForward(nn.Module):
    """SiLU-gated MLP: ``down(silu(gate(x)) * up(x))``.

    After :meth:`fuse`, inference runs gate and up as one matmul over the concatenated weight
    and ``silu(gate) * up`` as one op (a Triton launch when fused).
    """

    def __init__(self, args: QwenDecoderArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)
        self.gate_up: torch.Tensor | None = None  # [2 * intermediate, hidden], by fuse()

    def fuse(self) -> None:
        """Concatenate gate/up; see :meth:`QwenDecoder.fuse`."""
        self.gate_up = _concatenate([self.gate_proj.weight, self.up_proj.weight])

    def forward(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        if self.gate_up is None or torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = F.linear(x, self.gate_up)
        return self.down_proj(_triton_norms().silu_mul(gate_up) if fused else silu_mul_ref(gate_up))


class DecoderLayer(nn.Module):
    """A pre-norm layer over the residual stream, carried between layers as ``x + delta``::

        x, delta --add, input_layernorm--> self_attn --add, post_attention_layernorm--> mlp
          -> (x + delta + attn, mlp out)

    Each add is taken by the norm after it (one launch for both when fused), so a layer's
    last add is the next layer's, or the final norm's. Rounding as transformers' layer: each
    sum in the model dtype, then normed.
    """

    def __init__(self, args: QwenDecoderArgs, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args, layer)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = FeedForward(args)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        attention: AttentionContext,
        fused: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, delta [N, hidden]`` (``delta`` None: zero) -> the next ``(x, delta)``;
        ``fused`` runs the Triton kernels (:func:`kernels.fused_kernels`)."""
        x, h = self.input_layernorm.add_norm(x, delta, fused)
        x, h = self.post_attention_layernorm.add_norm(x, self.self_attn(h, attention), fused)
        return x, self.mlp(h, fused)


class QwenDecoder(nn.Module):
    """The Qwen2.5-VL language decoder over packed tokens, attending through a context.

    Parameter names mirror transformers' ``model.language_model.layers.*`` plus ``norm`` and
    ``lm_head``; :meth:`from_hf` shares the tensors of a loaded transformers model.
    The token embedding is not here: inputs are embeddings (see :meth:`QwenVL.embed`).

    A decode step on CUDA makes ten launches a layer: the add + RMSNorm (Triton), q/k/v (one
    matmul), the K/V write and the attention's two (Triton, in the context), ``o_proj``, the
    add + RMSNorm, gate/up (one matmul), ``silu(gate) * up`` (Triton), ``down_proj``; cuBLAS
    may add a split-K reduction to some of the matmuls.
    """

    def __init__(self, args: QwenDecoderArgs) -> None:
        super().__init__()
        self.args = args
        with torch.device("cpu"):  # host tables, even when the modules are built on meta
            self.rope = args.rope()
        self.layers = nn.ModuleList(DecoderLayer(args, i) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    @classmethod
    def from_hf(cls, hf_model: Qwen2_5_VLForConditionalGeneration) -> QwenDecoder:
        """Build on ``meta``, adopt ``hf_model``'s parameters (same tensors, no copies) and
        :meth:`fuse` its projections (which re-points transformers' parameters too)."""
        args = QwenDecoderArgs.from_config(hf_model.config)
        with torch.device("meta"):
            decoder = cls(args)
        source = dict(hf_model.model.language_model.named_parameters())
        source.update({f"lm_head.{k}": p for k, p in hf_model.lm_head.named_parameters()})
        ours = dict(decoder.named_parameters())
        missing = sorted(set(ours) - set(source))
        if missing:
            raise ValueError(f"transformers model lacks decoder parameters {missing[:5]}")
        for name in ours:
            module_name, _, attr = name.rpartition(".")
            module = decoder.get_submodule(module_name)
            setattr(module, attr, source[name])
        decoder.fuse()
        # The RoPE tables live on the device of the weights (built now, not inside a step).
        decoder.rope.per_dim(decoder.lm_head.weight.device)
        return decoder

    def fuse(self) -> None:
        """Concatenate every layer's q/k/v projections (weights and biases) and its gate/up
        weights, so inference runs one matmul for each group instead of three and two.

        Memory: none extra once done. Each group's parameters become views of the concatenated
        tensor and their own storage is freed; the parameter objects stay the same, so tensors
        shared with transformers stay shared (its modules compute with the views) and training
        through either model updates the weights both see. While a group is being fused it is
        held twice (Qwen2.5-VL-7B, bf16: 0.27 GB at most, one layer's gate/up). A move of the
        whole model afterwards (``hf_model.to(...)``: new storage for every parameter) is seen
        by the next :meth:`forward`, which fuses again; replacing single parameters
        (``load_state_dict(assign=True)``) needs ``fuse()`` called (``load_state_dict``,
        copying in place, does not). Training (gradients recorded) uses the separate
        parameters.
        """
        with torch.inference_mode(False):  # plain tensors, even when called inside a step
            for layer in self.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()

    def _fused_stale(self) -> bool:
        """Whether the parameters were given new storage (moved) since :meth:`fuse`."""
        attn = self.layers[0].self_attn if len(self.layers) else None
        if attn is None or attn.qkv is None:
            return False
        return attn.q_proj.weight.data_ptr() != attn.qkv[0].data_ptr()

    def forward(self, inputs_embeds: torch.Tensor, attention: AttentionContext) -> torch.Tensor:
        """Run the decoder over the packed new tokens of one or more sequences.

        Args:
            inputs_embeds: ``[N, hidden]`` embeddings of the new tokens, sequences back to back.
            attention: the step's context; it owns positions, caching and masking.

        Returns:
            ``[N, hidden]`` final-normed hidden states (feed them to :meth:`logits`).
        """
        if self._fused_stale():
            logger.info("decoder parameters moved since they were fused: fusing them again")
            self.fuse()
        fused = fused_kernels(inputs_embeds.device)  # once a step: it reads the environment
        x, delta = inputs_embeds, None
        for layer in self.layers:
            x, delta = layer(x, delta, attention, fused)
        return self.norm.add_norm(x, delta, fused)[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, hidden]`` -> ``[N, vocab]``."""
        return self.lm_head(hidden)


# --------------------------------------------------------------------------------------------
# 2. The bundle: vision tower, embeddings, decoder, tokenizer, image processor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QwenSpecialTokens:
    """Ids of Qwen's chat and vision markers, read from the tokenizer."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    video_pad: int
    image_pad: int
    endoftext: int

    TOKENS = {
        "im_start": "<|im_start|>",
        "im_end": "<|im_end|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
        "video_pad": "<|video_pad|>",
        "image_pad": "<|image_pad|>",
        "endoftext": "<|endoftext|>",
    }

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> QwenSpecialTokens:
        ids = {}
        for field, token in cls.TOKENS.items():
            index = tokenizer.convert_tokens_to_ids(token)
            if index is None or (
                tokenizer.unk_token_id is not None and index == tokenizer.unk_token_id
            ):
                raise ValueError(f"tokenizer has no {token} token")
            ids[field] = int(index)
        return cls(**ids)


class VideoInputs(NamedTuple):
    """One chunk of video ready for the vision tower."""

    pixel_values_videos: torch.Tensor  # [t*h*w, C*temporal_patch*patch*patch], model's device
    video_grid_thw: torch.Tensor  # int64 [1, 3]: (t, h, w) in patches
    merged_grid: tuple[int, int, int]  # (t, h/merge, w/merge): one LLM token per cell


class QwenVL:
    """A loaded Qwen2.5-VL: transformers' model (vision, embeddings), our decoder, tokenizer.

    Args:
        hf_model: the transformers model; its parameters are shared with :attr:`decoder`.
        tokenizer: the model's tokenizer (chat template included when the folder has one).
        image_processor: transformers' Qwen2-VL image processor (PIL backend); its settings
            (resample filter, rescale factor, mean, std) drive :meth:`video_inputs`.
        video_min_pixels, video_max_pixels: per-frame pixel bounds of :meth:`video_inputs`.
    """

    def __init__(
        self,
        hf_model: Qwen2_5_VLForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Qwen2VLImageProcessorPil,
        video_min_pixels: int = VIDEO_MIN_PIXELS,
        video_max_pixels: int = VIDEO_MAX_PIXELS,
    ) -> None:
        self.hf = hf_model.eval().requires_grad_(False)  # an inference bundle
        self.config = hf_model.config
        self.decoder = QwenDecoder.from_hf(hf_model)
        self.rope = self.decoder.rope
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.special = QwenSpecialTokens.from_tokenizer(tokenizer)
        self.video_min_pixels, self.video_max_pixels = video_min_pixels, video_max_pixels
        vision = self.config.vision_config
        self.merge_size = vision.spatial_merge_size
        self.temporal_patch_size = vision.temporal_patch_size
        self.patch_size = vision.patch_size
        self._check_consistent()
        self.video_preprocessor = VideoPreprocessor(image_processor)
        self.vision = VisionTower(hf_model.model.visual)  # transformers' tower, batched attention

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.lm_head.weight.dtype

    @property
    def args(self) -> QwenDecoderArgs:
        return self.decoder.args

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each ``<|video_pad|>`` row replaced by a vision feature.

        Args:
            input_ids: int ``[N]`` packed token ids (several sequences may follow each other).
            pixel_values_videos: the videos' patches in order of their pad runs, or None.
            video_grid_thw: int ``[num_videos, 3]`` patch grids of those videos; read on the
                host, so keep it on the CPU (as :meth:`video_inputs` returns it).

        Returns:
            ``[N, hidden]``, merged as transformers merges them (``masked_scatter`` in order).
            The features are transformers' ``get_video_features``, computed by
            :class:`~models.qwen_vision.VisionTower` with one attention call per block.
        """
        embeds = self.hf.get_input_embeddings()(input_ids.to(self.device))
        if pixel_values_videos is None:
            return embeds
        if video_grid_thw is None:
            raise ValueError("pixel_values_videos given without video_grid_thw")
        features = self.vision(pixel_values_videos.to(self.device), video_grid_thw)
        features = features.to(embeds.dtype)
        mask = (input_ids.to(self.device) == self.special.video_pad)[:, None]
        if features.shape[0] != int(mask.sum()):
            raise ValueError(
                f"{features.shape[0]} video features for {int(mask.sum())} <|video_pad|> tokens"
            )
        return embeds.masked_scatter(mask, features)

    def video_inputs(
        self,
        frames: list[np.ndarray],
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ) -> VideoInputs:
        """Prepare a chunk of frames (2 frames = one second at 2 fps) for the vision tower.

        The frames are uploaded once to the model's device; each is resized (only when Qwen's
        ``smart_resize`` changes its size: multiples of patch*merge, pixels within
        ``[min_pixels, max_pixels]``), rescaled and normalised with the image processor's
        settings; pairs of frames then form temporal patches in ``Qwen2VLVideoProcessor``'s
        layout. An odd frame count repeats the last frame, as that processor does. All of it
        runs as torch ops (:class:`~models.qwen_vision.VideoPreprocessor`): without a resize the
        values equal the PIL image processor's bit for bit; resized frames may differ from
        PIL's resampling by up to 2 uint8 levels on a few values (at most 0.03 after
        normalising).

        Args:
            frames: uint8 ``[H, W, 3]`` arrays of one size.
            max_pixels, min_pixels: per-frame bounds; the bundle's defaults when None.

        Returns:
            ``VideoInputs(pixel_values_videos, video_grid_thw, merged_grid)``: the pixel values
            on the model's device in its dtype, the grid on the CPU.
        """
        if not frames:
            raise ValueError("frames is empty")
        shapes = {tuple(f.shape) for f in frames}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[2] != 3:
            raise ValueError(f"frames must be uint8 [H, W, 3] of one size, got shapes {shapes}")
        dtypes = {f.dtype for f in frames}
        if dtypes != {np.dtype(np.uint8)}:
            raise ValueError(f"frames must be uint8 [H, W, 3] of one size, got dtypes {dtypes}")
        pixel_values, (t, h, w) = self.video_preprocessor.prepare(
            frames,
            self.video_min_pixels if min_pixels is None else min_pixels,
            self.video_max_pixels if max_pixels is None else max_pixels,
            self.device,
            self.dtype,
        )
        video_grid_thw = torch.tensor([[t, h, w]], dtype=torch.int64)
        merged = (t, h // self.merge_size, w // self.merge_size)
        return VideoInputs(pixel_values, video_grid_thw, merged)

    def _check_consistent(self) -> None:
        cfg, sp = self.config, self.special
        expected = {
            "video_token_id": sp.video_pad,
            "image_token_id": sp.image_pad,
            "vision_start_token_id": sp.vision_start,
            "vision_end_token_id": sp.vision_end,
        }
        wrong = {k: (getattr(cfg, k), v) for k, v in expected.items() if getattr(cfg, k) != v}
        if wrong:
            raise ValueError(
                f"config and tokenizer disagree on token ids (config, tokenizer): {wrong}"
            )
        if len(self.tokenizer) > self.args.vocab_size:
            raise ValueError(
                f"tokenizer has {len(self.tokenizer)} tokens, the model {self.args.vocab_size}"
            )
        ip = self.image_processor
        if (ip.patch_size, ip.merge_size, ip.temporal_patch_size) != (
            self.patch_size,
            self.merge_size,
            self.temporal_patch_size,
        ):
            raise ValueError("image processor and vision config disagree on patch/merge sizes")


# --------------------------------------------------------------------------------------------
# 3. Loading a local folder
# --------------------------------------------------------------------------------------------


def load_qwen_vl(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    video_min_pixels: int = VIDEO_MIN_PIXELS,
    video_max_pixels: int = VIDEO_MAX_PIXELS,
    attn_implementation: str = "sdpa",
) -> QwenVL:
    """Load Qwen2.5-VL (e.g. StreamingVLM) from a local Hugging Face folder; nothing is downloaded.

    The folder holds ``config.json`` (``model_type`` ``qwen2_5_vl``), safetensors weights, the
    tokenizer files and optionally ``preprocessor_config.json`` (image processor settings).

    Raises:
        FileNotFoundError: the folder, its config, or its weights/tokenizer are missing.
        ValueError: the folder holds another architecture or inconsistent files.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Qwen2.5-VL folder {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model folder")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "qwen2_5_vl":
        raise ValueError(f"{path} holds a {model_type!r} model, expected 'qwen2_5_vl' (Qwen2.5-VL)")
    try:
        hf_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, local_files_only=True, attn_implementation=attn_implementation
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as error:
        raise FileNotFoundError(f"cannot load Qwen2.5-VL from {path}: {error}") from error
    vision = hf_model.config.vision_config
    if (path / "preprocessor_config.json").is_file():
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
    else:
        logger.warning("%s has no preprocessor_config.json; using Qwen2-VL defaults", path)
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size,
        )
    try:
        return QwenVL(
            hf_model.to(device), tokenizer, image_processor, video_min_pixels, video_max_pixels
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


# --------------------------------------------------------------------------------------------
# 4. The tiny model (tests, embedded default): no files
# --------------------------------------------------------------------------------------------
