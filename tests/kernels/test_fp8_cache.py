"""The FP8 (unscaled e4m3) KV cache: the store clamps and rounds like torch's cast, and every
backend reads it back.

Each backend over an FP8 pool must equal the float32 twin over the same K/V rounded through e4m3
(the tolerances of tests/kernels/test_triton_attention.py), and stay near what it computes over
the bf16 pool the rows were rounded from. Triton runs in its CPU interpreter without a GPU
(tests/conftest.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from framestream.kernels.attention import (
    FP8_E4M3_MAX,
    paged_attention_ref,
    paged_attention_sdpa,
    to_cache_dtype,
    write_kv,
)
from tests.kernels.test_triton_attention import (  # noqa: F401  (poisoned_empty: a fixture)
    DEVICE,
    assert_matches,
    make_case,
    make_rope,
    poisoned_empty,
)

FP8 = torch.float8_e4m3fn
KV_LENS = [1, 7, 33, 54, 97]


def _e4m3_values() -> torch.Tensor:
    """Every finite e4m3 value, the midpoints between neighbours (ties: round to even) and the
    floats just either side of each midpoint, out-of-range and infinite values."""
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    values = codes[codes.isfinite()].unique()
    mids = (values[1:] + values[:-1]) / 2
    up, down = torch.full_like(mids, float("inf")), torch.full_like(mids, -float("inf"))
    extremes = [1e-10, 2**-10, 3 * 2**-11, 447.9, 464.0, 1e4, float("inf")]
    extremes = torch.tensor(extremes + [-x for x in extremes])
    return torch.cat([values, mids, mids.nextafter(up), mids.nextafter(down), extremes])


def _fp8_case(q_lens, heads, causal, dtype, seed):
    """A case whose bf16 pool is also stored as FP8: ``(q, fp8 k/v, meta), (bf16 k/v)``."""
    q, k_cache, v_cache, meta = make_case(
        q_lens, KV_LENS, *heads, 32, causal, torch.bfloat16, seed=seed
    )
    k8, v8 = to_cache_dtype(k_cache, FP8), to_cache_dtype(v_cache, FP8)
    return (q.to(dtype), k8, v8, meta), (k_cache, v_cache)


def test_to_cache_dtype_clamps_and_rounds_to_nearest_even() -> None:
    x = _e4m3_values()
    stored = to_cache_dtype(x, FP8).float()
    assert not stored.isnan().any() and stored.abs().max() == FP8_E4M3_MAX == 448
    # the nearest e4m3 value, ties to the even code, computed independently in float64
    codes = torch.arange(256, dtype=torch.uint8).view(FP8).float()
    finite = codes.isfinite()
    grid, even = codes[finite].double(), (torch.arange(256)[finite] % 2 == 0)
    clamped = x.double().clamp(-448, 448)
    distance = (clamped[:, None] - grid[None, :]).abs()
    nearest = distance == distance.min(1, keepdim=True).values
    pick = torch.where(nearest.sum(1, keepdim=True) > 1, nearest & even[None, :], nearest)
    want = grid[pick.int().argmax(1)]
    torch.testing.assert_close(stored.double(), want, rtol=0, atol=0)
    assert to_cache_dtype(x, torch.bfloat16).dtype == torch.bfloat16  # others: a plain cast


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_kv_into_fp8_rows_torch_and_triton_agree(monkeypatch, src_dtype) -> None:
    """Every value class (ties, subnormals, past 448, inf) from every model dtype: the Triton
    store writes torch's bits; only the given slots change; nothing becomes NaN."""
    triton_cache = importlib.import_module("framestream.kernels.triton_cache")
    values = _e4m3_values()
    heads, dim = 2, 24  # not powers of two
    n = -(-values.numel() // (heads * dim))
    k = torch.zeros(n * heads * dim)
    k[: values.numel()] = values
    k = k.view(n, heads, dim).to(DEVICE, src_dtype)
    v = k.flip(0)
    slots = torch.randperm(2 * n, generator=torch.Generator().manual_seed(0))[:n].to(DEVICE)
    pools = [torch.zeros(2 * n, 2, heads, dim, dtype=FP8, device=DEVICE) for _ in range(2)]
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "0")
    with torch.no_grad():
        write_kv(pools[0][:, 0], pools[0][:, 1], slots, k, v)
        triton_cache.write_kv_triton(pools[1][:, 0], pools[1][:, 1], slots, k, v)
    want, got = pools[0].view(torch.uint8), pools[1].view(torch.uint8)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    rows = pools[0][slots.long()].float()
    torch.testing.assert_close(rows[:, 0], to_cache_dtype(k, FP8).float(), rtol=0, atol=0)
    assert not rows.isnan().any() and rows.abs().max() == 448
    untouched = torch.ones(2 * n, dtype=torch.bool, device=DEVICE)
    untouched[slots.long()] = False
    assert not want[untouched].any()


def test_write_kv_triton_refuses_mixed_cache_dtypes() -> None:
    triton_cache = importlib.import_module("framestream.kernels.triton_cache")
    k = torch.zeros(1, 1, 8, device=DEVICE)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    k_cache = torch.zeros(2, 1, 8, dtype=FP8, device=DEVICE)
    with pytest.raises(ValueError, match="v_cache is torch.bfloat16"):
        triton_cache.write_kv_triton(k_cache, k_cache.bfloat16(), slots, k, k)


def _backends():
    triton_attention = importlib.import_module("framestream.kernels.triton_attention")
    triton_gather = importlib.import_module("framestream.kernels.triton_gather")
    return {
        "torch": paged_attention_ref,
        "sdpa": paged_attention_sdpa,
        "triton_prefill": triton_attention.prefill_attention,
        "triton_decode": triton_attention.decode_attention,
        "sdpa_fused": triton_gather.paged_attention_sdpa_fused,
    }


@pytest.mark.parametrize("backend", ["torch", "sdpa", "triton_prefill", "sdpa_fused"])
@pytest.mark.parametrize(
    ("rope_kind", "causal", "dtype", "heads"),
    [
        ("wan", False, torch.bfloat16, (4, 2)),
        ("wan", False, torch.float32, (3, 3)),
        ("mrope", True, torch.float16, (7, 1)),
    ],
)
def test_chunk_backends_read_fp8_rows(backend, rope_kind, causal, dtype, heads) -> None:
    q_lens = [1, 7, 20, 54, 40] if causal else [3, 16, 33, 0, 41]
    case, bf16_kv = _fp8_case(q_lens, heads, causal, dtype, seed=len(rope_kind) + causal)
    _check_backend(_backends()[backend], case, bf16_kv, make_rope(rope_kind, 32))


@pytest.mark.parametrize("backend", ["torch", "sdpa", "triton_decode", "sdpa_fused"])
@pytest.mark.parametrize(
    ("rope_kind", "causal", "dtype", "heads"),
    [
        ("mrope", True, torch.bfloat16, (7, 1)),
        ("1d-interleaved", False, torch.float16, (4, 2)),
        ("1d", True, torch.float32, (4, 4)),
    ],
)
def test_decode_backends_read_fp8_rows(backend, rope_kind, causal, dtype, heads) -> None:
    case, bf16_kv = _fp8_case([1, 3, 0, 5, 2], heads, causal, dtype, seed=len(rope_kind))
    _check_backend(_backends()[backend], case, bf16_kv, make_rope(rope_kind, 32))


def _check_backend(fn, case, bf16_kv, rope) -> None:
    q, k8, v8, meta = case
    out = fn(*case, rope)
    assert out.dtype == q.dtype and not out.isnan().any()
    # the twin on the very rows the FP8 pool holds, in float32: the usual tolerances
    assert_matches(out, q, k8.float(), v8.float(), meta, rope)
    # beside the twin on the bf16 rows they were rounded from: e4m3 keeps 3 mantissa bits, a
    # rounding error of about 3.6% RMS per value (2^-4 / sqrt(3)); measured 3.0-3.4% here
    exact = paged_attention_ref(q, *bf16_kv, meta, rope).float()
    rel = torch.linalg.norm(out.float() - exact) / torch.linalg.norm(exact)
    assert rel < 0.05, rel
    torch.testing.assert_close(out.float(), exact, rtol=0.1, atol=0.2)
