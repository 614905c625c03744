"""The tiny Qwen2.5-VL's parts, built in memory: a toy-world tokenizer and toy-size configs.

Used by :func:`models.qwen_vl.tiny_qwen_vl` (tests and the embedded default); no files are read.
:func:`toy_qwen_vl` is the larger, trainable geometry that ``models.toyworld.train_vlm`` trains
into the shipped toy-world commentator (64x64 frames seen at 112x112: 16 tokens a second).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from framestream.models.qwen_vl import QwenSpecialTokens, QwenVL, load_qwen_vl

__all__ = [
    "TINY_VIDEO_MAX_PIXELS",
    "TINY_VIDEO_MIN_PIXELS",
    "tiny_qwen_vl",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TOY_VIDEO_PIXELS",
    "TOY_WORDS",
    "load_toy_qwen_vl",
    "tiny_config",
    "tiny_tokenizer",
    "toy_config",
    "toy_qwen_vl",
]

# Per-frame pixels of the toy model, both bounds: a 64x64 frame is resized to 112x112 (8x8
# patches of 14, 4x4 merged tokens), so a 13-20 px shape covers 2-3 patches a side.
TOY_VIDEO_PIXELS = 112 * 112

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

TOY_WORDS = """
red green blue yellow orange purple pink white black gray grey cyan magenta brown gold silver
circle circles square squares triangle triangles star stars rectangle rectangles diamond hexagon
ball balls box boxes shape shapes dot dots ring object objects
move moves moving moved bounce bounces bouncing spin spins spinning rotate rotates rotating
grow grows growing shrink shrinks shrinking appear appears disappear disappears enter enters
leave leaves stop stops stopped jump jumps fall falls rise rises slide slides drift drifts
turn turns flash flashes change changes collide collides hit hits pass passes follow follows
left right up down top bottom center middle corner edge side screen frame background
fast slow slowly quickly still again now then while toward towards across around into out
the a an and or but is are was were it its they them this that these those there here
of in on at to from with by over under near behind above below next between each both
one two three four five six seven eight nine ten zero no some all many more fewer same other
big small large tiny bigger smaller first second last new
system user assistant You you helpful previous text Time Commentate commentate video match
what What how How many Describe describe happens happening see seen I we
""".split()

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level tokenizer for the toy world, built in memory, with Qwen's special tokens.

    Words, digits and punctuation are tokens, with and without one leading space (GPT style);
    ``\\n`` and `` `` are tokens too, so decoding reproduces the text exactly. Letters are in the
    vocabulary, so only unknown multi-letter words become ``<unk>``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
        chr(c) for c in range(ord("A"), ord("Z") + 1)
    ]
    pieces = list(dict.fromkeys(TOY_WORDS + letters + list("0123456789") + list(".,!?:;=-'\"()/")))
    vocab = {"<unk>": 0, "\n": 1, " ": 2}
    for piece in pieces:
        for form in (piece, " " + piece):
            vocab.setdefault(form, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(
        Regex(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"), behavior="isolated"
    )
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(
    tokenizer: PreTrainedTokenizerBase, text: dict, vision: dict, mrope: list[int]
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of the given text and vision sizes; the rest is shared."""
    ids = QwenSpecialTokens.from_tokenizer(tokenizer)
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            **{k: v for k, v in text.items() if k != "rope_theta"},
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": text["rope_theta"],
                "mrope_section": mrope,
            },
            "bos_token_id": ids.endoftext,
            "eos_token_id": ids.im_end,
            "pad_token_id": ids.endoftext,
        },
        vision_config={
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "out_hidden_size": text["hidden_size"],
            **vision,
        },
        image_token_id=ids.image_pad,
        video_token_id=ids.video_pad,
        vision_start_token_id=ids.vision_start,
        vision_end_token_id=ids.vision_end,
        tie_word_embeddings=False,
    )


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL at toy size: vision depth 2 / width 32; text 64 wide, 2 layers, 4+2 heads."""
    return _config(
        tokenizer,
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "max_position_embeddings": 4096,
            "rope_theta": 1e6,
        },
        vision={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "window_size": 56,  # 2x2 merged tokens per window
            "fullatt_block_indexes": [1],
        },
        mrope=[2, 3, 3],
    )


def toy_config(tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL at toy-world size (about 1.7 M parameters).

    Text: 128 wide, 4 layers, 4 query + 2 key/value heads of 32, M-RoPE sections (4, 6, 6),
    theta 1e4. Vision: 96 wide, 4 layers, 4 heads of 24, patch 14, 2x2 merge; its window
    (112 px) covers a whole 112x112 frame, so every block attends over the frame.
    """
    return _config(
        tokenizer,
        text={
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "max_position_embeddings": 8192,
            "rope_theta": 1e4,
        },
        vision={
            "depth": 4,
            "hidden_size": 96,
            "intermediate_size": 256,
            "num_heads": 4,
            "window_size": 112,  # 4x4 merged tokens: the whole frame
            "fullatt_block_indexes": [3],
        },
        mrope=[4, 6, 6],
    )


def toy_qwen_vl(seed: int = 0, device: torch.device | str = "cpu") -> QwenVL:
    """The untrained toy-world model (float32, transformers' seeded initialisation).

    Its image processor and pixel bounds are :data:`TOY_VIDEO_PIXELS` on both sides; a saved
    folder must be loaded with ``video_min_pixels = video_max_pixels = TOY_VIDEO_PIXELS``.
    """
    tokenizer = tiny_tokenizer()
    config = toy_config(tokenizer)
    torch.manual_seed(seed)
    hf_model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=TOY_VIDEO_PIXELS,
        max_pixels=TOY_VIDEO_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return QwenVL(
        hf_model.to(device), tokenizer, image_processor, TOY_VIDEO_PIXELS, TOY_VIDEO_PIXELS
    )


def load_toy_qwen_vl(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> QwenVL:
    """A trained toy-world folder (``models.toyworld.train_vlm``'s output) with the pixel bounds
    it was trained at; :func:`models.qwen_vl.load_qwen_vl`'s defaults would resize 64x64
    frames to 280x280 (100 tokens a second) instead of 112x112."""
    return load_qwen_vl(path, dtype, device, TOY_VIDEO_PIXELS, TOY_VIDEO_PIXELS)


TINY_VIDEO_MIN_PIXELS = 56 * 56
TINY_VIDEO_MAX_PIXELS = 16 * 28 * 28  # <= 16 merged tokens per second


def tiny_qwen_vl(seed: int = 0, device: torch.device | str = "cpu") -> QwenVL:
    """A seeded tiny Qwen2.5-VL (float32) with the toy-world tokenizer; no files are read.

    Weights are drawn so that activations and logits are O(1) (not transformers' 0.02 init),
    which makes greedy decoding and numerical comparisons meaningful.
    """
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer)
    hf_model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if param.ndim == 1 and ("norm" in name or "ln_" in name):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.ndim > 1 else param.numel()
                std = 1.0 if "embed_tokens" in name else fan_in**-0.5
                param.copy_(std * torch.randn(param.shape, generator=generator))
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=TINY_VIDEO_MIN_PIXELS,
        max_pixels=TINY_VIDEO_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return QwenVL(
        hf_model.to(device),
        tokenizer,
        image_processor,
        TINY_VIDEO_MIN_PIXELS,
        TINY_VIDEO_MAX_PIXELS,
    )
