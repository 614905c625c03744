"""Text encoders for the Wan generators (umT5 encoder) and a prompt-embedding LRU cache.

Wan conditions on umT5-XXL encoder states: prompts are whitespace-cleaned, tokenised to exactly
``text_len = 512`` tokens (eos appended, truncated, padded), encoded with the attention mask, and
the states at padding positions are then set to zero::

    tokens   [ t0 t1 ... tn eos pad pad ... pad ]      text_len
    mask     [  1  1 ...  1   1   0   0 ...   0 ]
    output   [ e0 e1 ... en  ee   0   0 ...   0 ]      [B, text_len, dim]

:class:`PromptCache` sits in front of any :class:`TextEncoder`, so switching back to an earlier
prompt costs no encoder pass. :func:`tiny_umt5_encoder` is a file-free tiny umT5 with a byte
(or closed word) tokenizer for tests and the embedded default (``text_len`` 16, ``dim`` 32).

Weights load from local folders only (``local_files_only=True``); nothing is downloaded.
"""

from __future__ import annotations

import html
import json
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load_model
from torch import nn
from transformers import AutoTokenizer, BatchEncoding, UMT5Config, UMT5EncoderModel

__all__ = [
    "ByteTokenizer",
    "PromptCache",
    "TextEncoder",
    "UMT5TextEncoder",
    "WordTokenizer",
    "clean_prompt",
    "tiny_umt5_encoder",
]


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompts into the context a generator cross-attends to."""

    text_len: int
    """Tokens per prompt ``L`` (fixed: prompts are padded or truncated to it)."""
    dim: int
    """Embedding width ``D``."""

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts.

        Args:
            prompts: ``B`` strings.

        Returns:
            ``[B, L, D]`` embeddings, zero at padding positions.
        """
        ...


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: unescape HTML entities, collapse whitespace, strip.

    (Wan and diffusers also run ``ftfy.fix_text`` when it is installed; this does not.)
    """
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class _PaddedTokenizer(ABC):
    """A file-free tokenizer with the Hugging Face call signature: ids ``pad = 0``, ``eos = 1``,
    ``unk = 2``, then a subclass's own from 3. Like T5's tokenizer, ``eos`` is appended and
    survives truncation."""

    pad_token_id = 0
    eos_token_id = 1
    unk_token_id = 2
    offset = 3

    @abstractmethod
    def _ids(self, text: str) -> list[int]:
        """The ids of ``text``, before eos, padding and truncation."""

    def __call__(
        self,
        texts: list[str],
        *,
        max_length: int,
        padding: str = "max_length",
        truncation: bool = True,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        return_tensors: str = "pt",
    ) -> BatchEncoding:
        """Tokenise to exactly ``max_length`` ids per text.

        Returns:
            ``input_ids`` and ``attention_mask``, int64 ``[B, max_length]``.
        """
        if padding != "max_length" or not truncation or return_tensors != "pt":
            raise ValueError(
                f"{type(self).__name__} supports only padding='max_length', truncation=True, "
                f"return_tensors='pt'; got {padding=}, {truncation=}, {return_tensors=}"
            )
        ids = torch.full((len(texts), max_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), max_length), dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = self._ids(text)
            if add_special_tokens:
                tokens = tokens[: max_length - 1] + [self.eos_token_id]
            tokens = tokens[:max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        out = {"input_ids": ids}
        if return_attention_mask:
            out["attention_mask"] = mask
        return BatchEncoding(out)


class ByteTokenizer(_PaddedTokenizer):
    """UTF-8 bytes: byte ``b`` -> ``b + 3`` (``unk`` unused); vocabulary 259."""

    vocab_size = 256 + _PaddedTokenizer.offset

    def _ids(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]


class WordTokenizer(_PaddedTokenizer):
    """A closed vocabulary of lower-case words: ``words[i]`` -> ``i + 3``, any other word ->
    ``unk``. Text splits into runs of letters, case folded, so punctuation drops out.

    A small model reads a word as one token, as umT5's sentencepiece reads ``red``; from bytes
    it must first learn where words are (the toy-world generator's runs 6-10, BENCHMARKS.md).

    Args:
        words: the vocabulary, distinct lower-case words.
    """

    def __init__(self, words: Sequence[str]) -> None:
        words = tuple(words)
        bad = [w for w in words if not re.fullmatch(r"[a-z]+", w)]
        if bad or len(set(words)) != len(words):
            raise ValueError(f"words must be distinct lower-case letter runs; bad: {bad[:5]}")
        self.words = words
        self.vocab_size = len(words) + self.offset
        self._index = {w: i + self.offset for i, w in enumerate(words)}

    def _ids(self, text: str) -> list[int]:
        return [self._index.get(w, self.unk_token_id) for w in _letter_runs(text)]

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary, in order."""
        return [w for w in _letter_runs(text) if w not in self._index]

    def save(self, path: str | Path) -> None:
        """Write ``{"words": [...]}`` to ``path``."""
        Path(path).write_text(json.dumps({"words": list(self.words)}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a file :meth:`save` wrote."""
        return cls(json.loads(Path(path).read_text())["words"])


def _letter_runs(text: str) -> list[str]:
    """``text``'s words as :class:`WordTokenizer` reads them: runs of letters, case folded."""
    return re.findall(r"[a-z]+", text.lower())


class UMT5TextEncoder(nn.Module):
    """umT5 encoder + tokenizer producing Wan's zero-padded text context.

    Args:
        model: a transformers ``UMT5EncoderModel``.
        tokenizer: any callable with the Hugging Face tokenizer call signature (a HF tokenizer,
            or :class:`ByteTokenizer`).
        text_len: tokens per prompt (512 for Wan).
    """

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int = 512) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.dim = model.config.d_model

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tokenizer: str | Path | None = None,
        text_len: int = 512,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
    ) -> UMT5TextEncoder:
        """Load from local files, never downloading.

        Args:
            path: a diffusers pipeline folder holding ``text_encoder/`` and ``tokenizer/``; one
                folder holding both the encoder (``config.json`` + weights) and the tokenizer;
                or the original Wan checkpoint ``models_t5_umt5-xxl-enc-bf16.pth``.
            tokenizer: the tokenizer folder for an original checkpoint; by default
                ``google/umt5-xxl/`` beside it, as in the Wan2.1 release.
            text_len: tokens per prompt.
            dtype: parameter dtype (``torch.bfloat16`` as Wan runs it, or ``torch.float32``).
            device: where the weights go.

        Raises:
            FileNotFoundError: ``path`` (or the tokenizer folder) does not exist or holds no
                encoder config; the message names the path.
            ValueError: an original checkpoint holds a key the umT5 mapping does not know.
        """
        path = Path(path)
        if path.is_file():
            tok_dir = Path(tokenizer) if tokenizer else path.parent / "google" / "umt5-xxl"
            if not tok_dir.is_dir():
                raise FileNotFoundError(f"umT5 tokenizer folder does not exist: {str(tok_dir)!r}")
            model = _load_original_umt5(path, dtype)
            tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
            return cls(model.eval().to(device), tok, text_len=text_len)
        if not path.is_dir():
            raise FileNotFoundError(f"umT5 text encoder folder does not exist: {str(path)!r}")
        if (path / "text_encoder" / "config.json").is_file():
            model_dir, tok_dir = path / "text_encoder", path / "tokenizer"
        elif (path / "config.json").is_file():
            model_dir = tok_dir = path
        else:
            raise FileNotFoundError(
                f"no umT5 config in {str(path)!r}: expected text_encoder/config.json or config.json"
            )
        if not tok_dir.is_dir():
            raise FileNotFoundError(f"umT5 tokenizer folder does not exist: {str(tok_dir)!r}")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        return cls(model.eval().to(device), tokenizer, text_len=text_len)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts as Wan does.

        Args:
            prompts: ``B`` strings (whitespace-cleaned here).

        Returns:
            ``[B, text_len, dim]`` in the model's dtype, zero at padding positions.
        """
        ids, mask = self.tokenize(prompts)
        return self.forward(ids, mask)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, ``[B, text_len]`` each, on the model's device."""
        if isinstance(prompts, str):
            raise TypeError(f"prompts must be a list of strings, got the string {prompts!r}")
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            max_length=self.text_len,
            padding="max_length",
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.model.device
        return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, text_len, dim]`` states of tokenized prompts, zero at padding positions (with
        gradients: the toy-world generator trains its encoder through this)."""
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return states * mask.unsqueeze(-1).to(states.dtype)


class PromptCache:
    """A bounded LRU of prompt -> ``[L, D]`` embedding in front of a :class:`TextEncoder`.

    It is itself a :class:`TextEncoder`. Misses of one call are encoded in one batch. Not
    thread-safe: one engine (thread) owns it.

    Args:
        encoder: the encoder to call on misses.
        max_entries: prompts kept; the least recently used is evicted beyond it.
    """

    def __init__(self, encoder: TextEncoder, max_entries: int = 32) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.encoder = encoder
        self.max_entries = max_entries
        self.text_len = encoder.text_len
        self.dim = encoder.dim
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings for ``prompts``, ``[B, L, D]``, encoding only the prompts not cached.

        Every requested prompt becomes most recently used; hits and misses count per prompt.
        """
        missing = list(dict.fromkeys(p for p in prompts if p not in self._entries))
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        fresh = dict(zip(missing, self.encoder.encode(missing), strict=True)) if missing else {}
        rows = []
        for prompt in prompts:
            if prompt in fresh:
                self._entries[prompt] = fresh[prompt]
            rows.append(self._entries[prompt])
            self._entries.move_to_end(prompt)
        out = torch.stack(rows)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return out


def tiny_umt5_encoder(
    seed: int = 0,
    text_len: int = 16,
    weights: str | Path | None = None,
    tokenizer: WordTokenizer | None = None,
) -> UMT5TextEncoder:
    """A 2-layer umT5 (d_model 32, 2 heads, d_ff 64, vocab 384) with seeded random weights and
    a :class:`ByteTokenizer` (or ``tokenizer``); fp32. Matches the tiny Wan DiT (text_dim 32,
    text_len 16). ``weights``: a safetensors file of trained weights (the toy-world generator
    trains its encoder with its DiT) to load over the seeded ones. The global RNG is left
    untouched.
    """
    config = UMT5Config(
        vocab_size=384,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=ByteTokenizer.pad_token_id,
        eos_token_id=ByteTokenizer.eos_token_id,
        decoder_start_token_id=ByteTokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config)
    if weights is not None:
        load_model(model, weights, strict=True)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{tokenizer.vocab_size} words do not fit umT5's {config.vocab_size}")
    return UMT5TextEncoder(model.eval(), tokenizer or ByteTokenizer(), text_len=text_len)


# Original Wan umT5 names (wan/modules/t5.py, encoder only) -> transformers' UMT5EncoderModel.
_ORIGINAL_UMT5_RENAMES = (
    (r"token_embedding\.weight", "shared.weight"),
    (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"blocks\.(\d+)\.norm1\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (
        r"blocks\.(\d+)\.ffn\.gate\.0\.weight",
        r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight",
    ),
    (r"blocks\.(\d+)\.ffn\.fc1\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"blocks\.(\d+)\.ffn\.fc2\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"blocks\.(\d+)\.norm2\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"norm\.weight", "encoder.final_layer_norm.weight"),
)


def _load_original_umt5(path: Path, dtype: torch.dtype) -> UMT5EncoderModel:
    """Build a UMT5EncoderModel from Wan's original encoder checkpoint; the config is read off
    the tensor shapes (umT5-XXL: 24 layers, d_model 4096, 64 heads, d_ff 10240)."""
    original = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for key, value in original.items():
        for pattern, target in _ORIGINAL_UMT5_RENAMES:
            if re.fullmatch(pattern, key):
                state[re.sub(pattern, target, key)] = value
                break
        else:
            raise ValueError(f"{str(path)!r}: unexpected key {key!r} for an original umT5 encoder")
    if "shared.weight" not in state:
        raise ValueError(f"{str(path)!r}: no token_embedding.weight; not a umT5 encoder checkpoint")
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    vocab, d_model = state["shared.weight"].shape
    num_buckets, num_heads = state[
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    ].shape
    config = UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // num_heads,
        d_ff=state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        num_layers=1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block.")),
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model
