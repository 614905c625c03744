"""paged_attention_ref / write_kv / AttentionMetadata / select_backend against a naive float64
reference with explicit loops over sequences and heads."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import framestream.kernels.backends as backends_mod
from framestream.kernels.attention import (
    AttentionMetadata,
    paged_attention_ref,
    paged_attention_sdpa,
    write_kv,
)
from framestream.kernels.backends import paged_attention, register_backend, select_backend
from framestream.kernels.rope import RopeSpec, mrope, rope_1d, wan_rope


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _indptr(lengths: list[int]) -> tuple[int, ...]:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return tuple(out)


def _rope_f64(x: torch.Tensor, pos: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """Float64 rotation of ``x`` ``[..., D]`` at one position ``pos`` ``[3]``, pair by pair."""
    x = x.double()
    out = x.clone()
    half = spec.inv_freq.numel()
    for j in range(half):
        a, b = (2 * j, 2 * j + 1) if spec.interleaved else (j, j + half)
        angle = float(pos[int(spec.axis[j])]) * float(spec.inv_freq[j])
        c, s = math.cos(angle), math.sin(angle)
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., a] * s + x[..., b] * c
    return out


def _naive_attention(q, k_cache, v_cache, meta: AttentionMetadata, spec, scale):
    """Loops over sequences and query heads; gathers keys by slot; float64 throughout."""
    num_q_heads, num_kv_heads, d = q.shape[1], k_cache.shape[1], q.shape[2]
    group = num_q_heads // num_kv_heads
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float64)
    qi, ki = meta.q_indptr_host, meta.kv_indptr_host
    for s in range(len(qi) - 1):
        q_len, kv_len = qi[s + 1] - qi[s], ki[s + 1] - ki[s]
        slots = [int(x) for x in meta.kv_slots[ki[s] : ki[s + 1]]]
        keys = torch.stack(
            [_rope_f64(k_cache[slot], meta.kv_pos[ki[s] + j], spec) for j, slot in enumerate(slots)]
        )  # [kv_len, H_kv, D]
        values = torch.stack([v_cache[slot].double() for slot in slots])
        queries = (
            torch.stack(
                [_rope_f64(q[qi[s] + i], meta.q_pos[qi[s] + i], spec) for i in range(q_len)]
            )
            if q_len
            else torch.zeros(0, num_q_heads, d, dtype=torch.float64)
        )
        for h in range(num_q_heads):
            kh = h // group
            logits = queries[:, h] @ keys[:, kh].T * scale  # [q_len, kv_len]
            if meta.causal:
                for i in range(q_len):
                    for j in range(kv_len):
                        if j > kv_len - q_len + i:
                            logits[i, j] = -math.inf
            probs = torch.softmax(logits, dim=-1)
            out[qi[s] : qi[s + 1], h] = probs @ values[:, kh]
    return out


def _make_case(seed, q_lens, kv_lens, num_q_heads, num_kv_heads, head_dim, dtype, causal, extra):
    g = _gen(seed)
    total_q, total_kv = sum(q_lens), sum(kv_lens)
    num_slots = total_kv + extra
    # un-read slots hold NaN: any gather of a wrong slot poisons the output
    k_cache = torch.full((num_slots, num_kv_heads, head_dim), math.nan)
    v_cache = torch.full((num_slots, num_kv_heads, head_dim), math.nan)
    slots = torch.randperm(num_slots, generator=g)[:total_kv]
    k_cache[slots] = torch.randn(total_kv, num_kv_heads, head_dim, generator=g)
    v_cache[slots] = torch.randn(total_kv, num_kv_heads, head_dim, generator=g)
    q = torch.randn(total_q, num_q_heads, head_dim, generator=g)
    meta = AttentionMetadata(
        q_pos=torch.randint(0, 50, (total_q, 3), generator=g).to(torch.int32),
        kv_slots=slots.to(torch.int32),
        kv_pos=torch.randint(0, 50, (total_kv, 3), generator=g).to(torch.int32),
        q_indptr=torch.tensor(_indptr(q_lens), dtype=torch.int32),
        kv_indptr=torch.tensor(_indptr(kv_lens), dtype=torch.int32),
        q_indptr_host=_indptr(q_lens),
        kv_indptr_host=_indptr(kv_lens),
        causal=causal,
    )
    meta.validate()
    return q.to(dtype), k_cache.to(dtype), v_cache.to(dtype), meta


# (q_lens, kv_lens): odd lengths, decode (q_len 1), prefill (q_len == kv_len), empty query seq
CAUSAL_LAYOUT = ([1, 5, 3, 0, 7], [9, 5, 11, 3, 7])
FULL_LAYOUT = ([3, 5, 1, 7], [7, 5, 9, 3])  # full allows q_len > kv_len
ROPES = {
    "mrope": lambda d: mrope(d, 1_000_000.0, (d // 8, 3 * d // 16, 3 * d // 16)),
    "wan": lambda d: wan_rope(d),
    "1d": lambda d: rope_1d(d),
    "1d_interleaved": lambda d: rope_1d(d, interleaved=True),
}
TOLS = {torch.float32: {"atol": 2e-5, "rtol": 2e-5}, torch.bfloat16: {"atol": 1e-2, "rtol": 1e-2}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads", [(4, 2), (7, 1), (3, 3)], ids=["gqa4-2", "gqa7-1", "mha3"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("rope_name", list(ROPES))
def test_paged_attention_ref_matches_naive(dtype, heads, causal, rope_name):
    num_q_heads, num_kv_heads = heads
    head_dim = 16
    q_lens, kv_lens = CAUSAL_LAYOUT if causal else FULL_LAYOUT
    seed = zlib.crc32(f"{dtype}-{heads}-{causal}-{rope_name}".encode())
    q, k_cache, v_cache, meta = _make_case(
        seed, q_lens, kv_lens, num_q_heads, num_kv_heads, head_dim, dtype, causal, extra=13
    )
    spec = ROPES[rope_name](head_dim)
    out = paged_attention_ref(q, k_cache, v_cache, meta, spec)
    assert out.dtype == dtype and out.shape == q.shape
    ref = _naive_attention(q, k_cache, v_cache, meta, spec, None)
    assert torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.double(), ref, **TOLS[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_paged_attention_sdpa_matches_naive(dtype, causal):
    """The input-dtype variant (the CUDA baseline) computes the same function."""
    q_lens, kv_lens = CAUSAL_LAYOUT if causal else FULL_LAYOUT
    q, k_cache, v_cache, meta = _make_case(11, q_lens, kv_lens, 4, 2, 16, dtype, causal, extra=5)
    spec = ROPES["mrope"](16)
    out = paged_attention_sdpa(q, k_cache, v_cache, meta, spec)
    assert out.dtype == dtype
    ref = _naive_attention(q, k_cache, v_cache, meta, spec, None)
    torch.testing.assert_close(out.double(), ref, **TOLS[dtype])


@pytest.mark.parametrize("scale", [0.05, 1.0])
def test_paged_attention_ref_explicit_scale(scale):
    q, k_cache, v_cache, meta = _make_case(
        11, [2, 4], [6, 4], 4, 2, 24, torch.float32, causal=True, extra=5
    )
    spec = wan_rope(24)
    out = paged_attention_ref(q, k_cache, v_cache, meta, spec, scale=scale)
    ref = _naive_attention(q, k_cache, v_cache, meta, spec, scale)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_causal_decode_sees_all_keys_and_prefill_is_lower_triangular():
    """Bottom-right alignment spot checks: changing a key the query must not see changes
    nothing; changing one it sees changes the output."""
    q, k_cache, v_cache, meta = _make_case(
        21, [3], [8], 2, 1, 16, torch.float32, causal=True, extra=0
    )
    spec = rope_1d(16)
    base = paged_attention_ref(q, k_cache, v_cache, meta, spec)
    # query 0 of 3 over 8 keys sees keys 0..5; key 6 (kv index) is hidden from it, not from query 1
    slot6 = int(meta.kv_slots[6])
    v2 = v_cache.clone()
    v2[slot6] += 10.0
    moved = paged_attention_ref(q, k_cache, v2, meta, spec)
    torch.testing.assert_close(moved[0], base[0], atol=0, rtol=0)
    assert not torch.allclose(moved[1], base[1])
    assert not torch.allclose(moved[2], base[2])


def test_paged_attention_dispatches_to_ref_on_cpu(monkeypatch):
    monkeypatch.delenv("STREAM_ATTENTION_BACKEND", raising=False)
    q, k_cache, v_cache, meta = _make_case(
        31, [2, 3], [5, 3], 4, 2, 16, torch.float32, causal=False, extra=4
    )
    spec = mrope(16, sections=(2, 3, 3))
    torch.testing.assert_close(
        paged_attention(q, k_cache, v_cache, meta, spec),
        paged_attention_ref(q, k_cache, v_cache, meta, spec),
        atol=0,
        rtol=0,
    )


def test_paged_attention_ref_rejects_non_multiple_heads():
    g = _gen(41)
    q = torch.randn(2, 3, 16, generator=g)
    k_cache = torch.randn(4, 2, 16, generator=g)
    meta = AttentionMetadata(
        q_pos=torch.zeros(2, 3, dtype=torch.int32),
        kv_slots=torch.arange(4, dtype=torch.int32),
        kv_pos=torch.zeros(4, 3, dtype=torch.int32),
        q_indptr=torch.tensor([0, 2], dtype=torch.int32),
        kv_indptr=torch.tensor([0, 4], dtype=torch.int32),
        q_indptr_host=(0, 2),
        kv_indptr_host=(0, 4),
        causal=True,
    )
    with pytest.raises(ValueError):
        paged_attention_ref(q, k_cache, k_cache, meta, rope_1d(16))


# --------------------------------------------------------------------------------------------
# write_kv
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_write_kv_writes_exactly_the_slots(cache_dtype):
    g = _gen(51)
    num_slots, h_kv, d = 40, 2, 8
    k_cache = torch.full((num_slots, h_kv, d), math.nan, dtype=cache_dtype)
    v_cache = torch.full((num_slots, h_kv, d), math.nan, dtype=cache_dtype)

    perm = torch.randperm(num_slots, generator=g)
    first = perm[:11].to(torch.int32)
    k1 = torch.randn(11, h_kv, d, generator=g)
    v1 = torch.randn(11, h_kv, d, generator=g)
    write_kv(k_cache, v_cache, first, k1, v1)

    written = torch.zeros(num_slots, dtype=torch.bool)
    written[first.long()] = True
    assert torch.isnan(k_cache[~written].float()).all()
    assert torch.isnan(v_cache[~written].float()).all()
    torch.testing.assert_close(k_cache[first.long()], k1.to(cache_dtype), atol=0, rtol=0)
    torch.testing.assert_close(v_cache[first.long()], v1.to(cache_dtype), atol=0, rtol=0)

    # second write: overwrite 4 already-written slots and fill 5 fresh ones
    second = torch.cat([first[[2, 7, 0, 9]], perm[11:16].to(torch.int32)])
    k2 = torch.randn(9, h_kv, d, generator=g)
    v2 = torch.randn(9, h_kv, d, generator=g)
    write_kv(k_cache, v_cache, second, k2, v2)

    expect_k = torch.full((num_slots, h_kv, d), math.nan)
    expect_v = torch.full((num_slots, h_kv, d), math.nan)
    expect_k[first.long()] = k1
    expect_v[first.long()] = v1
    expect_k[second.long()] = k2
    expect_v[second.long()] = v2
    torch.testing.assert_close(k_cache, expect_k.to(cache_dtype), atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, expect_v.to(cache_dtype), atol=0, rtol=0, equal_nan=True)
    assert int(torch.isnan(k_cache.float()).any(-1).any(-1).sum()) == num_slots - 16


def test_write_kv_then_attention_reads_written_values():
    g = _gen(61)
    num_slots, h_kv, d = 20, 1, 16
    k_cache = torch.full((num_slots, h_kv, d), math.nan)
    v_cache = torch.full((num_slots, h_kv, d), math.nan)
    slots = torch.randperm(num_slots, generator=g)[:6].to(torch.int32)
    k = torch.randn(6, h_kv, d, generator=g)
    v = torch.randn(6, h_kv, d, generator=g)
    write_kv(k_cache, v_cache, slots, k, v)
    q = torch.randn(6, 2, d, generator=g)
    pos = torch.arange(6, dtype=torch.int32)[:, None].expand(6, 3).contiguous()
    meta = AttentionMetadata(
        q_pos=pos,
        kv_slots=slots,
        kv_pos=pos,
        q_indptr=torch.tensor([0, 6], dtype=torch.int32),
        kv_indptr=torch.tensor([0, 6], dtype=torch.int32),
        q_indptr_host=(0, 6),
        kv_indptr_host=(0, 6),
        causal=True,
    )
    spec = rope_1d(d)
    out = paged_attention_ref(q, k_cache, v_cache, meta, spec)
    torch.testing.assert_close(
        out.double(), _naive_attention(q, k_cache, v_cache, meta, spec, None), atol=2e-5, rtol=2e-5
    )


# --------------------------------------------------------------------------------------------
# AttentionMetadata.validate
# --------------------------------------------------------------------------------------------


def _meta(
    q_lens, kv_lens, causal=True, q_rows=None, kv_rows=None, slot_rows=None, qi=None, ki=None
):
    qi = _indptr(q_lens) if qi is None else qi
    ki = _indptr(kv_lens) if ki is None else ki
    q_rows = qi[-1] if q_rows is None else q_rows
    kv_rows = ki[-1] if kv_rows is None else kv_rows
    slot_rows = ki[-1] if slot_rows is None else slot_rows
    return AttentionMetadata(
        q_pos=torch.zeros(q_rows, 3, dtype=torch.int32),
        kv_slots=torch.arange(slot_rows, dtype=torch.int32),
        kv_pos=torch.zeros(kv_rows, 3, dtype=torch.int32),
        q_indptr=torch.tensor(qi, dtype=torch.int32),
        kv_indptr=torch.tensor(ki, dtype=torch.int32),
        q_indptr_host=tuple(qi),
        kv_indptr_host=tuple(ki),
        causal=causal,
    )


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param(_meta([1, 2], [3, 4], qi=(0, 1, 3), ki=(0, 3)), id="indptr-length-mismatch"),
        pytest.param(_meta([], [], qi=(0,), ki=(0,)), id="no-sequences"),
        pytest.param(_meta([], [], qi=(0, 3, 2), ki=(0, 4, 6)), id="negative-q-len"),
        pytest.param(_meta([], [], causal=False, qi=(0, 1, 2), ki=(0, 4, 3)), id="negative-kv"),
        pytest.param(_meta([2, 5], [4, 3], causal=True), id="causal-more-queries-than-keys"),
        pytest.param(_meta([2, 3], [4, 5], q_rows=4), id="q-pos-rows"),
        pytest.param(_meta([2, 3], [4, 5], kv_rows=8), id="kv-pos-rows"),
        pytest.param(_meta([2, 3], [4, 5], slot_rows=10), id="kv-slots-rows"),
    ],
)
def test_validate_rejects(meta):
    with pytest.raises(ValueError):
        meta.validate()


def test_validate_rejects_bad_pos_columns():
    meta = _meta([2], [3])
    meta.q_pos = torch.zeros(2, 2, dtype=torch.int32)
    with pytest.raises(ValueError):
        meta.validate()


@pytest.mark.parametrize(
    ("q_lens", "kv_lens", "causal"),
    [([1, 5, 0], [9, 5, 3], True), ([5, 2], [3, 2], False), ([3], [3], True)],
)
def test_validate_accepts(q_lens, kv_lens, causal):
    meta = _meta(q_lens, kv_lens, causal=causal)
    meta.validate()
    assert meta.num_seqs == len(q_lens)
    assert meta.max_q_len == max(q_lens) and meta.max_kv_len == max(kv_lens)


# --------------------------------------------------------------------------------------------
# select_backend
# --------------------------------------------------------------------------------------------


@pytest.fixture
def isolated_backends(monkeypatch):
    monkeypatch.delenv("STREAM_ATTENTION_BACKEND", raising=False)
    monkeypatch.setattr(backends_mod, "_BACKENDS", dict(backends_mod._BACKENDS))
    return monkeypatch


def _fake_backend(*args):
    raise AssertionError("not to be called")


def test_select_backend_torch_on_cpu(isolated_backends):
    assert select_backend(torch.device("cpu")) is paged_attention_ref
    register_backend("triton", _fake_backend)  # even when triton is registered
    assert select_backend(torch.device("cpu")) is paged_attention_ref


def test_select_backend_cuda_default(isolated_backends):
    assert select_backend(torch.device("cuda")) is backends_mod.paged_attention_auto


def test_select_backend_explicit_name(isolated_backends):
    register_backend("custom", _fake_backend)
    assert select_backend(torch.device("cpu"), "custom") is _fake_backend
    assert select_backend(torch.device("cuda"), "torch") is paged_attention_ref


def test_select_backend_env_var(isolated_backends):
    register_backend("custom", _fake_backend)
    isolated_backends.setenv("STREAM_ATTENTION_BACKEND", "custom")
    assert select_backend(torch.device("cpu")) is _fake_backend
    # an explicit name wins over the environment
    assert select_backend(torch.device("cpu"), "torch") is paged_attention_ref
    isolated_backends.setenv("STREAM_ATTENTION_BACKEND", "nope")
    with pytest.raises(ValueError):
        select_backend(torch.device("cpu"))


@pytest.mark.parametrize("name", ["nope", "Torch", "triton "])
def test_select_backend_unknown_name(isolated_backends, name):
    with pytest.raises(ValueError):
        select_backend(torch.device("cpu"), name)
