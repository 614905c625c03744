"""umT5 text encoding (Wan's zero-padded context) and the prompt LRU cache, tiny and offline."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from framestream.models.text import (
    ByteTokenizer,
    PromptCache,
    TextEncoder,
    UMT5TextEncoder,
    WordTokenizer,
    clean_prompt,
    tiny_umt5_encoder,
)

WORDS = ["a", "red", "ball", "rolls", "blue", "square", "jumps", "over", "the", "fence"]


@pytest.fixture(scope="module")
def encoder() -> UMT5TextEncoder:
    return tiny_umt5_encoder()


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer built offline, with T5's pad 0 / eos 1 / unk 2 and eos appended."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def test_tiny_encoder_geometry(encoder: UMT5TextEncoder) -> None:
    assert isinstance(encoder, TextEncoder)
    assert (encoder.text_len, encoder.dim) == (16, 32)
    out = encoder.encode(["a red ball", "a blue square"])
    assert out.shape == (2, 16, 32) and out.dtype == torch.float32


def test_padding_is_zero_and_tokens_are_not(encoder: UMT5TextEncoder) -> None:
    prompts = ["a red ball", "", "x" * 40]
    out = encoder.encode(prompts)
    lengths = [len("a red ball") + 1, 1, 16]  # bytes + eos, truncated to text_len keeping eos
    for row, n in zip(out, lengths, strict=True):
        assert (row[n:] == 0).all()
        assert (row[:n].abs().sum(-1) > 0).all()


def test_byte_tokenizer_matches_hf_contract() -> None:
    tokens = ByteTokenizer()(["ab", "abcdef"], max_length=4)
    assert tokens["input_ids"].tolist() == [[100, 101, 1, 0], [100, 101, 102, 1]]
    assert tokens["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="padding='longest'"):
        ByteTokenizer()(["ab"], max_length=4, padding="longest")


def test_word_tokenizer_matches_a_hugging_face_word_level_tokenizer(tmp_path) -> None:
    ours, reference = WordTokenizer(WORDS), _word_tokenizer()
    texts = ["a red ball rolls", "the blue square jumps over a cat", "", "a red " * 10]
    kwargs = {"max_length": 8, "padding": "max_length", "truncation": True}
    got, want = ours(texts, **kwargs), reference(texts, return_tensors="pt", **kwargs)
    assert torch.equal(got["input_ids"], want["input_ids"])  # "cat" is unk, eos kept when cut
    assert torch.equal(got["attention_mask"], want["attention_mask"])
    assert ours.unknown("The blue CAT, jumps!") == ["cat"]  # case folded, punctuation dropped
    assert ours(["The blue, square!"], max_length=4)["input_ids"].tolist() == [[11, 7, 8, 1]]

    ours.save(tmp_path / "words.json")
    assert WordTokenizer.load(tmp_path / "words.json").words == tuple(WORDS)
    for bad in (["a", "a"], ["Red"], ["two words"]):
        with pytest.raises(ValueError, match="distinct lower-case"):
            WordTokenizer(bad)
    with pytest.raises(ValueError, match="do not fit"):
        tiny_umt5_encoder(tokenizer=WordTokenizer(["w" + "a" * i for i in range(400)]))


def test_clean_prompt_collapses_whitespace() -> None:
    assert clean_prompt("  a\n red \t ball &amp;amp; ") == "a red ball &"


def test_same_prompt_same_embedding_regardless_of_batch(encoder: UMT5TextEncoder) -> None:
    alone = encoder.encode(["a red ball"])
    batched = encoder.encode(["something much longer than that", "a red ball"])
    torch.testing.assert_close(batched[1:], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(encoder.encode(["a red ball"]), alone, atol=0, rtol=0)


def test_prompt_cache_hits_misses_and_lru_eviction(encoder: UMT5TextEncoder) -> None:
    cache = PromptCache(encoder, max_entries=2)
    assert isinstance(cache, TextEncoder) and (cache.text_len, cache.dim) == (16, 32)
    a = cache.encode(["a"])
    cache.encode(["b"])
    assert (cache.hits, cache.misses) == (0, 2)
    torch.testing.assert_close(cache.encode(["a"]), a, atol=0, rtol=0)  # a is now the newest
    assert (cache.hits, cache.misses) == (1, 2)
    cache.encode(["c"])  # evicts b, the least recently used
    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2
    out = cache.encode(["c", "b", "b"])  # duplicates in one call encode once
    assert (cache.hits, cache.misses) == (3, 4)
    torch.testing.assert_close(out[1], out[2], atol=0, rtol=0)
    torch.testing.assert_close(out[0], encoder.encode(["c"])[0], atol=0, rtol=0)
    assert "a" not in cache
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(encoder, max_entries=0)


@pytest.mark.parametrize("layout", ["pipeline", "single"])
def test_saved_folder_loads_and_matches(encoder: UMT5TextEncoder, tmp_path, layout: str) -> None:
    tokenizer = _word_tokenizer()
    if layout == "pipeline":
        encoder.model.save_pretrained(tmp_path / "text_encoder")
        tokenizer.save_pretrained(tmp_path / "tokenizer")
    else:
        encoder.model.save_pretrained(tmp_path)
        tokenizer.save_pretrained(tmp_path)
    loaded = UMT5TextEncoder.from_pretrained(tmp_path, text_len=16, dtype=torch.float32)
    in_memory = UMT5TextEncoder(encoder.model, tokenizer, text_len=16)
    prompts = ["a red ball rolls", "the blue square jumps over the fence again"]
    out = loaded.encode(prompts)
    torch.testing.assert_close(out, in_memory.encode(prompts), atol=0, rtol=0)
    assert (out[0, 5:] == 0).all() and (out[0, :5].abs().sum(-1) > 0).all()  # 4 words + eos


def test_bf16_load(encoder: UMT5TextEncoder, tmp_path) -> None:
    encoder.model.save_pretrained(tmp_path / "text_encoder")
    _word_tokenizer().save_pretrained(tmp_path / "tokenizer")
    loaded = UMT5TextEncoder.from_pretrained(tmp_path, text_len=16)
    out = loaded.encode(["a red ball"])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(
        out.float(),
        UMT5TextEncoder(encoder.model, _word_tokenizer(), 16).encode(["a red ball"]),
        atol=0.1,
        rtol=0.05,
    )


def test_missing_folder_names_it(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_t5"):
        UMT5TextEncoder.from_pretrained(tmp_path / "no_such_t5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        UMT5TextEncoder.from_pretrained(tmp_path / "empty")
    (tmp_path / "models_t5_umt5-xxl-enc-bf16.pth").touch()
    with pytest.raises(FileNotFoundError, match="umt5-xxl"):  # no tokenizer beside it
        UMT5TextEncoder.from_pretrained(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")


def _to_original_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' UMT5 names -> Wan's original encoder names, written independently."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif parts[:2] == ["encoder", "block"]:
            n, layer, sub = parts[2], parts[4], ".".join(parts[5:])
            names = {
                "SelfAttention.q.weight": "attn.q.weight",
                "SelfAttention.k.weight": "attn.k.weight",
                "SelfAttention.v.weight": "attn.v.weight",
                "SelfAttention.o.weight": "attn.o.weight",
                "SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
                "layer_norm.weight": "norm1.weight" if layer == "0" else "norm2.weight",
                "DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
                "DenseReluDense.wi_1.weight": "ffn.fc1.weight",
                "DenseReluDense.wo.weight": "ffn.fc2.weight",
            }
            out[f"blocks.{n}.{names[sub]}"] = value
    return out


def test_original_wan_checkpoint_loads_and_matches(encoder: UMT5TextEncoder, tmp_path) -> None:
    """Wan's release layout: models_t5_umt5-xxl-enc-bf16.pth beside google/umt5-xxl/."""
    checkpoint = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(_to_original_names(encoder.model.state_dict()), checkpoint)
    _word_tokenizer().save_pretrained(tmp_path / "google" / "umt5-xxl")
    loaded = UMT5TextEncoder.from_pretrained(checkpoint, text_len=16, dtype=torch.float32)
    prompts = ["a red ball rolls", "the blue square"]
    expected = UMT5TextEncoder(encoder.model, _word_tokenizer(), 16).encode(prompts)
    torch.testing.assert_close(loaded.encode(prompts), expected, atol=0, rtol=0)
    torch.save({"blocks.0.attn.q.weight": torch.zeros(2, 2), "mystery": torch.zeros(1)}, checkpoint)
    with pytest.raises(ValueError, match="mystery"):
        UMT5TextEncoder.from_pretrained(checkpoint, text_len=16)
