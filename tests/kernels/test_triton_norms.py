"""The fused norm kernels (kernels/triton_norms.py) against their torch twins (kernels/norms.py,
the Wan block's and the Qwen decoder's elementwise code), on odd sizes; interpreted on CPU
(tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch

from framestream.kernels.norms import (
    add_rms_norm_ref,
    gated_residual_ref,
    layer_norm_ref,
    rms_norm_pair_ref,
    rms_norm_ref,
    silu_mul_ref,
)
from tests.kernels.test_triton_attention import DEVICE

# Both sides compute in float32 and round to the output dtype: a value near a rounding boundary
# may round the other way, at each of RMSNorm's two roundings (bf16: up to 2**-7 relative each).
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2**-6, 2**-6)}
SHAPES = [(2, 3, 5, 24), (1, 2, 7, 64)]  # (B, F, tokens per frame, dim): non-power-of-2 dims


@pytest.fixture(scope="module")
def tn():
    return importlib.import_module("framestream.kernels.triton_norms")


def _inputs(shape, dtype, seed):
    b, f, t, dim = shape
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, f * t, dim, generator=gen) * 3 + 1).to(DEVICE, dtype)
    # per-frame float32 [B, F, 1, dim] views of one [B, F, 6, dim] tensor, as the block slices
    mod = torch.randn(b, f, 6, dim, generator=gen).to(DEVICE)
    return x, mod.chunk(6, dim=2), gen


def _close(out, ref, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_modulated_and_affine(tn, shape, dtype):
    x, (shift, scale, *_), gen = _inputs(shape, dtype, seed=1)
    dim, eps = shape[-1], 1e-6
    ref = layer_norm_ref(x, eps, scale=scale, shift=shift)
    _close(tn.layer_norm(x, eps, scale=scale, shift=shift), ref, dtype)

    weight = torch.randn(dim, generator=gen).to(DEVICE, dtype)
    bias = torch.randn(dim, generator=gen).to(DEVICE, dtype)
    _close(tn.layer_norm(x, eps, weight, bias), layer_norm_ref(x, eps, weight, bias), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual(tn, shape, dtype):
    x, (*_, gate), gen = _inputs(shape, dtype, seed=2)
    y = torch.randn(x.shape, generator=gen).to(DEVICE, dtype)
    _close(tn.gated_residual(x, y, gate), gated_residual_ref(x, y, gate), dtype)


@pytest.mark.parametrize(
    ("dtype", "weight_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, None)],
)
def test_rms_norm_and_pair(tn, dtype, weight_dtype):
    """Rounded to x's dtype before the weight; the product in the promoted dtype (float32
    weights with bf16 activations give float32, as in torch)."""
    weight_dtype = weight_dtype or torch.float32
    gen = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, 11, 24, generator=gen).to(DEVICE, dtype) for _ in range(2))
    wq, wk = (torch.randn(24, generator=gen).to(DEVICE, weight_dtype) for _ in range(2))
    eps = 1e-6
    _close(tn.rms_norm(q, wq, eps), rms_norm_ref(q, wq, eps), dtype)
    pair = tn.rms_norm_pair(q, k, wq, wk, eps)
    for got, want in zip(pair, rms_norm_pair_ref(q, k, wq, wk, eps), strict=True):
        _close(got, want, dtype)


def test_strided_inputs_and_bad_shapes(tn):
    """Row-strided views (a slice of a wider tensor) read correctly; misuse raises."""
    x, (shift, scale, *_), _ = _inputs((1, 2, 3, 24), torch.float32, seed=4)
    wide = torch.cat([x, x], dim=-1)[..., :24]  # rows 48 apart
    ref = tn.layer_norm(x, 1e-6, scale=scale, shift=shift)
    torch.testing.assert_close(tn.layer_norm(wide, 1e-6, scale=scale, shift=shift), ref)
    with pytest.raises(ValueError, match="pairs"):
        tn.layer_norm(x, 1e-6, scale=scale)
    with pytest.raises(ValueError, match="frames"):
        tn.gated_residual(x[:, :5], x[:, :5], scale)
    with pytest.raises(ValueError, match="float32"):
        tn.gated_residual(x, x, scale.to(torch.bfloat16))


def _store_ulp(dtype: torch.dtype) -> float:
    """Relative error of a float32 value stored as ``dtype``: none on a GPU, which rounds to
    nearest as torch does; the CPU interpreter truncates to bfloat16 (one ulp, 2**-7)."""
    return 2**-7 if dtype == torch.bfloat16 and DEVICE.type != "cuda" else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "dim"), [(1, 24), (7, 100)])
def test_add_rms_norm(tn, rows, dim, dtype):
    """The sum is rounded to x's dtype as torch's add rounds it (bit-equal on a GPU), then
    normed; a strided y (a slice of a wider output), and no y (the first layer)."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(rows, dim, generator=gen) * 3).to(DEVICE, dtype)
    y = torch.randn(rows, 2 * dim, generator=gen).to(DEVICE, dtype)[:, :dim]
    weight = (1 + 0.1 * torch.randn(dim, generator=gen)).to(DEVICE, dtype)
    s, normed = tn.add_rms_norm(x, y, weight, 1e-6)
    s_ref, normed_ref = add_rms_norm_ref(x, y, weight, 1e-6)
    torch.testing.assert_close(s, s_ref, rtol=_store_ulp(dtype), atol=0)
    _close(normed, normed_ref, dtype)
    same, normed = tn.add_rms_norm(x, None, weight, 1e-6)
    assert same is x
    _close(normed, rms_norm_ref(x, weight, 1e-6), dtype)
    with pytest.raises(ValueError, match="does not match"):
        tn.add_rms_norm(x, y[:, :-1], weight, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "inter"), [(1, 40), (3, 1500)])  # 1500: two column blocks
def test_silu_mul(tn, rows, inter, dtype):
    gen = torch.Generator().manual_seed(6)
    gate_up = (torch.randn(rows, 2 * inter, generator=gen) * 4).to(DEVICE, dtype)
    _close(tn.silu_mul(gate_up), silu_mul_ref(gate_up), dtype)
    with pytest.raises(ValueError, match="halves"):
        tn.silu_mul(gate_up[:, 1:])
