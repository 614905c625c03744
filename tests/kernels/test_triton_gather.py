"""The ``sdpa_fused`` backend (kernels/triton_gather.py) against the torch twin, and its gathered,
rotated operands against torch's gather and :func:`kernels.rope.apply_rope`.

Under ``TRITON_INTERPRET=1`` on CPU (tests/conftest.py), with the NaN-poisoned pools and fresh
buffers of tests/kernels/test_triton_attention.py.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import framestream.kernels.backends as backends_mod
from framestream.kernels.attention import DECODE_MAX_Q_LEN
from framestream.kernels.backends import select_backend
from framestream.kernels.rope import apply_rope
from tests.kernels.test_triton_attention import (  # noqa: F401  (poisoned_empty: a fixture)
    DEVICE,
    assert_matches,
    make_case,
    make_rope,
    poisoned_empty,
)

KV_LENS = [1, 7, 33, 54, 97]


@pytest.fixture(scope="module")
def tg():
    """The gather module, interpreted when there is no GPU (it registers ``sdpa_fused``)."""
    return importlib.import_module("framestream.kernels.triton_gather")


@pytest.mark.parametrize(
    ("rope_kind", "causal", "dtype", "heads"),
    [
        ("wan", False, torch.float32, (4, 2)),
        ("wan", False, torch.bfloat16, (3, 3)),
        ("mrope", True, torch.float32, (7, 1)),
        ("1d", True, torch.bfloat16, (4, 2)),
        ("1d-interleaved", False, torch.float16, (4, 4)),
    ],
)
def test_sdpa_fused_matches_reference(tg, rope_kind, causal, dtype, heads):
    """Several sequences of odd lengths (an empty one; q_len > kv_len when full), GQA."""
    q_lens = [1, 7, 20, 54, 40] if causal else [3, 16, 33, 0, 41]
    case = make_case(q_lens, KV_LENS, *heads, 32, causal, dtype, seed=len(rope_kind) + causal)
    rope = make_rope(rope_kind, 32)
    assert_matches(tg.paged_attention_sdpa_fused(*case, rope), *case, rope)


@pytest.mark.parametrize(("rope_kind", "head_dim"), [("wan", 16), ("mrope", 128), ("wan", 128)])
def test_operands_match_torch_gather_and_rope(tg, rope_kind, head_dim):
    """Each sequence's [H, len, D] block is torch's gather + apply_rope, rounded once; far
    positions (large angles) included."""
    dtype = torch.bfloat16
    q, k_cache, v_cache, meta = make_case(
        [5, 0, 19], [9, 3, 30], 4, 2, head_dim, False, dtype, seed=3, max_pos=(60_000, 30, 52)
    )
    rope = make_rope(rope_kind, head_dim)
    queries, keys, values = tg.gather_rotate(q, k_cache, v_cache, meta, rope)
    index = meta.kv_slots.long()
    expected = {
        "q": (queries, apply_rope(q, meta.q_pos, rope).to(dtype), meta.q_indptr_host),
        "k": (
            keys,
            apply_rope(k_cache.index_select(0, index), meta.kv_pos, rope).to(dtype),
            meta.kv_indptr_host,
        ),
        "v": (values, v_cache.index_select(0, index), meta.kv_indptr_host),
    }
    for name, (flat, packed, indptr) in expected.items():
        heads = packed.shape[1]
        for s in range(meta.num_seqs):
            got = tg.sequence_view(flat, indptr, s, heads, head_dim)
            want = packed[indptr[s] : indptr[s + 1]].transpose(0, 1)
            assert got.is_contiguous(), name
            # float32 cos/sin of two implementations: at most one rounding step apart in bf16
            tol = 0.0 if name == "v" else 2**-7
            torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_registered_and_chosen_by_auto_for_chunks_on_cuda(tg, monkeypatch):
    assert select_backend(DEVICE, "sdpa_fused") is tg.paged_attention_sdpa_fused
    called = []
    backends = {
        name: (lambda *args, name=name: called.append(name))
        for name in ("triton", "sdpa", "sdpa_fused")
    }
    monkeypatch.setattr(backends_mod, "_BACKENDS", backends)
    rope = make_rope("wan", 32)
    for q_lens in ([1, 2], [DECODE_MAX_Q_LEN + 1, 3]):
        case = make_case(q_lens, [40, 45], 4, 2, 32, True, torch.float32, seed=0)
        backends_mod.paged_attention_auto(*case, rope)
    chunk = "sdpa_fused" if DEVICE.type == "cuda" else "sdpa"
    assert called == ["triton", chunk]


def test_rejects_bad_shapes(tg):
    q, k_cache, v_cache, meta = make_case([2], [4], 3, 2, 32, False, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        tg.paged_attention_sdpa_fused(q, k_cache, v_cache, meta, make_rope("wan", 32))
    q, k_cache, v_cache, meta = make_case([2], [4], 2, 2, 24, False, torch.float32, seed=0)
    with pytest.raises(ValueError, match="power of two"):
        tg.paged_attention_sdpa_fused(q, k_cache, v_cache, meta, make_rope("wan", 24))
