"""The one-launch K/V store (kernels/triton_cache.py) against write_kv's torch path
(``index_copy_``); interpreted on CPU (tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

from framestream.kernels.attention import write_kv
from tests.kernels.test_triton_attention import DEVICE


@pytest.fixture(scope="module")
def tc():
    return importlib.import_module("framestream.kernels.triton_cache")


def _pool(slots: int, heads: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    # [slots, 2, H, D]: k and v caches are strided views of one pool, as a layer's are
    return torch.full((slots, 2, heads, dim), float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize(
    ("heads", "dim", "src_dtype", "cache_dtype", "slot_dtype"),
    [
        (2, 16, torch.float32, torch.float32, torch.int32),
        (3, 24, torch.float32, torch.bfloat16, torch.int64),  # non-power-of-2 heads and dim
        (4, 32, torch.bfloat16, torch.bfloat16, torch.int32),
    ],
)
def test_write_kv_matches_index_copy(
    monkeypatch, tc, heads, dim, src_dtype, cache_dtype, slot_dtype
):
    """k and v as views of a fused q/k/v row (row stride > H*D); cast on the store; only the
    given slots change."""
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "0")
    gen = torch.Generator().manual_seed(heads)
    n, num_slots = 5, 13
    qkv = torch.randn(n, heads + 2 * heads, dim, generator=gen).to(DEVICE, src_dtype)
    k, v = qkv[:, heads : 2 * heads], qkv[:, 2 * heads :]
    slots = torch.randperm(num_slots, generator=gen)[:n].to(DEVICE, slot_dtype)
    want, got = _pool(num_slots, heads, dim, cache_dtype), _pool(num_slots, heads, dim, cache_dtype)
    with torch.no_grad():
        write_kv(want[:, 0], want[:, 1], slots, k, v)  # torch path (fused kernels off)
        tc.write_kv_triton(got[:, 0], got[:, 1], slots, k, v)
    # bit-equal, but the CPU interpreter truncates float32 to bfloat16 (torch rounds): one ulp
    ulp = 2**-7 if (src_dtype, cache_dtype) == (torch.float32, torch.bfloat16) else 0.0
    torch.testing.assert_close(
        got, want, rtol=0 if DEVICE.type == "cuda" else ulp, atol=0, equal_nan=True
    )


def test_write_kv_dispatches_and_checks(monkeypatch, tc):
    calls = []
    monkeypatch.setattr(tc, "write_kv_triton", lambda *args: calls.append(args))
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "1")
    pool = _pool(4, 1, 8, torch.float32)
    k = torch.zeros(1, 1, 8, device=DEVICE)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    with torch.no_grad():
        write_kv(pool[:, 0], pool[:, 1], slots, k, k)
    assert len(calls) == 1
    monkeypatch.undo()
    with pytest.raises(ValueError, match="rows of"):
        tc.write_kv_triton(pool[:, 0], pool[:, 1], slots, k[..., :4], k[..., :4])
    with pytest.raises(ValueError, match=r"\[N\]"):
        tc.write_kv_triton(pool[:, 0], pool[:, 1], slots[:0], k, k)
