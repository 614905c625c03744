"""kernels/triton_launch.py: the cached launch computes what ``kernel[grid]`` computes, under a
new key whenever Triton would specialise differently (dtype, pointer alignment, ints equal to
1 or divisible by 16); on CPU the interpreter path runs (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from framestream.kernels.triton_launch import Launcher, cdiv, next_power_of_2
from tests.kernels.test_triton_attention import DEVICE


@triton.jit
def _scaled_gather_kernel(x_ptr, y_ptr, stride, n, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i * stride, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + i, (x * scale).to(y_ptr.dtype.element_ty), mask=mask)


def test_host_helpers_match_triton():
    for n in (1, 2, 3, 16, 17, 100, 3584, 18944):
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        assert cdiv(n, 16) == triton.cdiv(n, 16)


def _run(launch: Launcher, x: torch.Tensor, stride: int, n: int, dtype: torch.dtype):
    y = torch.full((n,), float("nan"), dtype=dtype, device=DEVICE)
    launch((cdiv(n, 32),), x, y, stride, n, 0.5, BLOCK=32, num_warps=1)
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_launches_match_the_reference(dtype):
    """Each case twice (the second from the cache), then all again in another order."""
    launch = Launcher(_scaled_gather_kernel)
    base = torch.randn(200, device=DEVICE).to(dtype)
    cases = [
        (base, 1, 40),  # aligned, unit stride
        (base[1:], 1, 40),  # pointer off the 16-byte alignment
        (base, 3, 40),  # stride not divisible by 16
        (base, 16, 12),  # stride divisible by 16
        (base, 1, 1),  # n == 1 (Triton makes it a constant)
        (base, 2, 48),
    ]
    for order in (cases, cases[::-1]):
        for x, stride, n in order:
            want = (x[: stride * n : stride].float() * 0.5).to(dtype)
            for _ in range(2):
                torch.testing.assert_close(_run(launch, x, stride, n, dtype), want)
    if DEVICE.type == "cuda":  # distinct specialisations, each compiled once
        assert len(launch._kernels) == len(cases)
