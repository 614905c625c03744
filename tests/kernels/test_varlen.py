"""kernels/varlen.py: one attention call over all of a step's sequences.

On the CPU, under ``TRITON_INTERPRET=1``: the gather pass's token-major layout against torch's
gather + :func:`kernels.rope.apply_rope`, and the ``sdpa_fused`` backend's packed path against
the torch twin (per-sequence dense attention in float32), with FlashAttention's varlen call
stood in for by a dense computation of its documented contract (cumulative lengths,
bottom-right causal, GQA), so the operands, lengths and flags handed to it are what is checked
here; on CUDA the real kernel is checked the same way.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import framestream.kernels.varlen as varlen
from framestream.kernels.attention import AttentionMetadata
from framestream.kernels.rope import apply_rope
from tests.kernels.test_triton_attention import (  # noqa: F401  (poisoned_empty: a fixture)
    DEVICE,
    assert_matches,
    make_case,
    make_rope,
    poisoned_empty,
)


@pytest.fixture(scope="module")
def tg():
    """The gather module, interpreted when there is no GPU."""
    return importlib.import_module("framestream.kernels.triton_gather")


def dense_varlen(calls: list[dict]):
    """FlashAttention's varlen contract computed densely per sequence; each call's arguments
    are recorded in ``calls``."""

    def attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kwargs):
        calls.append(dict(kwargs, cu_seq_q=cu_seq_q, cu_seq_k=cu_seq_k, max_q=max_q, max_k=max_k))
        causal = kwargs.get("is_causal", kwargs.get("window_size") == (-1, 0))
        out = torch.empty_like(query)
        group = query.shape[1] // key.shape[1]
        for s in range(len(cu_seq_q) - 1):
            q0, q1, k0, k1 = (int(x) for x in (cu_seq_q[s], cu_seq_q[s + 1], *cu_seq_k[s : s + 2]))
            q = query[q0:q1].transpose(0, 1).float()
            k = key[k0:k1].repeat_interleave(group, 1).transpose(0, 1).float()
            v = value[k0:k1].repeat_interleave(group, 1).transpose(0, 1).float()
            mask = None
            if causal:  # query i sees keys j <= kv_len - q_len + i
                rows = torch.arange(q1 - q0)[:, None] + (k1 - k0) - (q1 - q0)
                mask = torch.arange(k1 - k0)[None, :] <= rows
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=kwargs["scale"])
            out[q0:q1] = o.transpose(0, 1).to(out.dtype)
        return out

    return attend


@pytest.fixture
def forced_varlen(monkeypatch):
    """The varlen path taken on the CPU too, through :func:`dense_varlen`; yields its calls."""
    calls: list[dict] = []
    if DEVICE.type != "cuda":
        monkeypatch.setattr(varlen, "_varlen_attn", dense_varlen(calls))
        real = varlen.use_varlen

        def on_cpu(q, k, meta):
            return real(_AsCuda(q), k, meta)

        monkeypatch.setattr(varlen, "use_varlen", on_cpu)
        monkeypatch.setattr("framestream.kernels.triton_gather.use_varlen", on_cpu)
    return calls


class _AsCuda:
    """``q`` as :func:`use_varlen` reads it (shape, dtype, device), on CUDA."""

    is_cuda = True

    def __init__(self, q: torch.Tensor) -> None:
        self.shape, self.dtype = q.shape, q.dtype


@pytest.mark.parametrize(("rope_kind", "head_dim"), [("mrope", 128), ("wan", 16)])
def test_token_major_operands(tg, rope_kind, head_dim):
    """Packed ``[N, H, D]``: torch's gather + apply_rope, rounded once."""
    dtype = torch.bfloat16
    q, k_cache, v_cache, meta = make_case(
        [5, 0, 19], [9, 3, 30], 4, 2, head_dim, True, dtype, seed=5, max_pos=(60_000, 30, 52)
    )
    rope = make_rope(rope_kind, head_dim)
    queries, keys, values = tg.gather_rotate(q, k_cache, v_cache, meta, rope, token_major=True)
    index = meta.kv_slots.long()
    want_k = apply_rope(k_cache.index_select(0, index), meta.kv_pos, rope).to(dtype)
    tol = 2**-7  # float32 cos/sin of two implementations: one bf16 rounding step apart
    for got, want, t in (
        (queries.view(q.shape), apply_rope(q, meta.q_pos, rope).to(dtype), tol),
        (keys.view(want_k.shape), want_k, tol),
        (values.view(want_k.shape), v_cache.index_select(0, index), 0.0),
    ):
        torch.testing.assert_close(got.float(), want.float(), rtol=t, atol=t)


@pytest.mark.parametrize(
    ("causal", "heads", "q_lens", "kv_lens"),
    [
        (True, (4, 2), [1, 7, 20, 0, 40], [1, 33, 54, 8, 97]),  # decode-like, empty, prefill
        (True, (7, 1), [16, 16, 16], [16, 50, 16]),
        (False, (4, 4), [3, 16, 33, 0, 41], [1, 7, 33, 54, 97]),  # q_len > kv_len when full
    ],
)
def test_sdpa_fused_one_varlen_call_matches_reference(
    tg, forced_varlen, causal, heads, q_lens, kv_lens
):
    case = make_case(q_lens, kv_lens, *heads, 32, causal, torch.bfloat16, seed=sum(q_lens))
    rope = make_rope("mrope", 32)
    assert varlen.use_varlen(case[0], case[0], case[3])
    assert_matches(tg.paged_attention_sdpa_fused(*case, rope), *case, rope)
    if DEVICE.type == "cuda":
        return
    (call,) = forced_varlen  # one call for every sequence
    meta: AttentionMetadata = case[3]
    assert call["cu_seq_q"] is meta.q_indptr and call["cu_seq_k"] is meta.kv_indptr
    assert (call["max_q"], call["max_k"]) == (max(q_lens), max(kv_lens))
    assert call["enable_gqa"] == (heads[0] != heads[1])


def test_per_sequence_calls_where_varlen_does_not_serve(tg, forced_varlen, monkeypatch):
    """One sequence, float32, a long chunk, or turned off: SDPA per sequence, same result."""
    rope = make_rope("mrope", 32)
    long_chunk = [varlen.VARLEN_MAX_Q_LEN + 1, 2]
    for q_lens, kv_lens, dtype in (
        ([20], [54], torch.bfloat16),
        ([20, 3], [54, 9], torch.float32),
        (long_chunk, [long_chunk[0], 9], torch.bfloat16),
    ):
        case = make_case(q_lens, kv_lens, 4, 2, 32, True, dtype, seed=1)
        assert not varlen.use_varlen(case[0], case[0], case[3])
        if q_lens is not long_chunk:  # the interpreter is slow on the long one
            assert_matches(tg.paged_attention_sdpa_fused(*case, rope), *case, rope)
    case = make_case([20, 3], [54, 9], 4, 2, 32, True, torch.bfloat16, seed=1)
    monkeypatch.setenv("STREAM_VARLEN_ATTENTION", "0")
    assert not varlen.use_varlen(case[0], case[0], case[3])
    assert_matches(tg.paged_attention_sdpa_fused(*case, rope), *case, rope)
    assert not forced_varlen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_vlm_prefill_shape_on_gpu(tg):
    """16 StreamingVLM rounds of a batched prefill (Qwen2.5-VL-7B heads, bf16), one call."""
    q_lens = [743 + 3 * i for i in range(16)]
    kv_lens = [13_000 + 17 * i for i in range(16)]
    case = make_case(q_lens, kv_lens, 28, 4, 128, True, torch.bfloat16, seed=2)
    assert varlen.use_varlen(case[0], case[0], case[3])
    rope = make_rope("mrope", 128)
    assert_matches(tg.paged_attention_sdpa_fused(*case, rope), *case, rope)
