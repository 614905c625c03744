"""The ``sage`` backend's wiring (kernels/sage_attention.py) and the FP8 linear layers
(kernels/fp8_linear.py).

On CPU the SageAttention kernel is stood in for by exact SDPA with its interface (HND layout,
top-left causal mask), so what is checked is ours: the gathered, rotated operands, which
sequences go to their kernel and which to SDPA, and the output's layout. On CUDA, with the
``sageattention`` package, the real kernel is checked against the float32 twin at its 8-bit
error level.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framestream.kernels import fp8_linear, sage_attention
from framestream.kernels.attention import paged_attention_ref
from tests.kernels.test_triton_attention import (  # noqa: F401  (poisoned_empty: a fixture)
    make_case,
    make_rope,
    poisoned_empty,
)

KV_LENS = [1, 7, 33, 54, 97]


@pytest.fixture(scope="module")
def triton_gather():
    """Imported here so that it is interpreted when there is no GPU (tests/conftest.py)."""
    return importlib.import_module("framestream.kernels.triton_gather")


@pytest.mark.parametrize("causal", [False, True])
def test_sage_backend_routes_each_sequence(monkeypatch, triton_gather, causal) -> None:
    calls: list[tuple[int, int]] = []

    def exact_sage(q, k, v, tensor_layout, is_causal, sm_scale):
        assert tensor_layout == "HND" and q.dim() == 4
        calls.append((q.shape[2], k.shape[2]))
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, scale=sm_scale, enable_gqa=gqa
        )

    monkeypatch.setattr(sage_attention, "_sageattn", lambda: exact_sage)
    q_lens = [1, 7, 33, 0, 97] if causal else [3, 16, 33, 0, 41]
    case = make_case(q_lens, KV_LENS, 4, 2, 64, causal, torch.float32, seed=3)
    rope = make_rope("wan", 64)
    out = sage_attention.paged_attention_sage(*case, rope)
    ref = paged_attention_ref(*case, rope)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    to_sage = [
        (q, kv) for q, kv in zip(q_lens, KV_LENS, strict=True) if q and (not causal or q == kv)
    ]
    assert calls == to_sage  # causal with fewer queries than keys: SDPA, bottom-right


def test_sage_backend_without_its_package_says_so(monkeypatch) -> None:
    monkeypatch.setattr(sage_attention, "_sageattn", lambda: None)
    q = k = v = torch.zeros(2, 4, 64)
    with pytest.raises(RuntimeError, match="sageattention package"):
        sage_attention.sage_or_sdpa(q, k, v, causal=False, scale=None)


@pytest.mark.gpu
def test_sage_backend_on_cuda_is_within_8bit_error_of_the_twin() -> None:
    pytest.importorskip("sageattention")
    # chunk-like lengths: a Wan chunk's queries span many of the kernel's 128-row blocks
    case = make_case([256, 200], [1024, 777], 4, 4, 128, False, torch.bfloat16, seed=5)
    rope = make_rope("wan", 128)
    out = sage_attention.paged_attention_sage(*case, rope).float()
    ref = paged_attention_ref(*case, rope).float()
    rel = (torch.linalg.norm(out - ref) / torch.linalg.norm(ref)).item()
    assert rel < 5e-2, rel


def test_fp8_linear_is_the_product_of_its_quantized_operands() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(2, 5, 64) * torch.logspace(-2, 2, 64)  # channels of very different sizes
    layer = fp8_linear.Fp8Linear(linear)
    qx, sx = fp8_linear.quantize_rows(x.reshape(-1, 64))
    qw, sw = fp8_linear.quantize_rows(linear.weight.detach())
    dense = (qx.double() * sx.double()) @ (qw.double() * sw.double()).T + linear.bias.double()
    out = layer(x)
    assert out.shape == (2, 5, 96) and out.dtype == x.dtype
    torch.testing.assert_close(out.double().reshape(-1, 96), dense, rtol=1e-5, atol=1e-5)
    rel = torch.linalg.norm(out - linear(x)) / torch.linalg.norm(linear(x))
    assert rel < 0.06  # e4m3 keeps 3 mantissa bits


def test_fp8_quantize_rows_keeps_zero_rows_finite() -> None:
    q, scale = fp8_linear.quantize_rows(torch.zeros(3, 32))
    assert torch.isfinite(scale).all() and (q.float() == 0).all()


def test_fp8_linear_refuses_dims_the_matrix_units_cannot_take() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        fp8_linear.Fp8Linear(nn.Linear(24, 32))


def test_quantize_dit_linears_replaces_the_blocks_layers_only() -> None:
    from framestream.models.wan.config import WanConfig
    from framestream.models.wan.model import CausalWanModel
    from tests.models.test_wan_loader import CFG

    dit = CausalWanModel(WanConfig(**vars(CFG)))
    replaced = fp8_linear.quantize_dit_linears(dit)
    per_block = 4 + 4 + 2  # self-attention q k v o, cross-attention q k v o, the FFN's two
    assert replaced == per_block * CFG.num_layers
    assert not any(isinstance(m, nn.Linear) for b in dit.blocks for m in b.modules())
    assert isinstance(dit.head.head, nn.Linear)  # outside the blocks: unchanged
