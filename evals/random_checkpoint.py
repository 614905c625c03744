"""Write a diffusers-layout model folder with random weights, each part saved by its own
library's ``save_pretrained``: ``transformer/ vae/ text_encoder/ tokenizer/``.

It exercises the full-size loading path (``stream generate --preset wan2.1-t2v-1.3b
--model-dir DIR``) where no real checkpoint can be downloaded, and lets a deployment smoke-test
its setup. Speed does not depend on weight values; quality obviously does.

    python -m framestream.evals.random_checkpoint --preset wan2.1-t2v-1.3b --out /tmp/wan-random

The text encoder keeps umT5-XXL's width (4096, what the DiT reads) but ``--text-layers`` layers
and a small word-level vocabulary, so the folder fits a CPU machine; pass ``--text-layers 24``
on a large machine for the real depth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from framestream.models.vae import tiny_wan_vae
from framestream.models.wan import wan_config

WORDS = "a an the red blue green cube ball star moves bounces surfing corgi wave sunset".split()


def write_model_folder(preset: str, out: Path, text_layers: int, dtype: torch.dtype) -> None:
    cfg = wan_config(preset)
    torch.manual_seed(0)
    WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    ).to(dtype).save_pretrained(out / "transformer")
    vae = tiny_wan_vae().vae if preset == "tiny" else AutoencoderKLWan()
    vae.save_pretrained(out / "vae")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    text = UMT5Config(
        vocab_size=len(vocab),
        d_model=cfg.text_dim,
        d_kv=64,
        d_ff=2 * cfg.text_dim,
        num_layers=text_layers,
        num_heads=max(1, cfg.text_dim // 64),
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    UMT5EncoderModel(text).to(dtype).save_pretrained(out / "text_encoder")
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(out / "tokenizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    write_model_folder(args.preset, args.out, args.text_layers, dtype)
    print(f"wrote a random {args.preset} model folder to {args.out}")


if __name__ == "__main__":
    main()
