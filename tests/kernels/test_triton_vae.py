"""The fused Wan VAE norm kernel (kernels/triton_vae.py) against its torch twin
(kernels/norms.py) and diffusers' ``WanRMS_norm`` + SiLU, channels-last, into a time slice of a
larger buffer as the VAE walk writes it; interpreted on CPU (tests/conftest.py)."""

from __future__ import annotations

import importlib

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from framestream.kernels.norms import rms_norm_silu_into_ref
from tests.kernels.test_triton_attention import DEVICE

CL = torch.channels_last_3d
# Kernel and twin compute in float32 and round once: a value at a rounding boundary may round
# the other way. diffusers rounds to bf16 four times (normalised, * scale, * gamma, SiLU).
TWIN_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2**-7, 2**-7)}
MODULE_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2**-5, 2**-5)}
SHAPES = [(1, 4, 3, 5, 7), (2, 33, 2, 3, 5), (2, 96, 1, 4, 6), (1, 384, 2, 3, 3)]  # B, C, T, H, W


@pytest.fixture(scope="module")
def tv():
    return importlib.import_module("framestream.kernels.triton_vae")


def _norm(channels: int, dtype: torch.dtype, gen: torch.Generator) -> WanRMS_norm:
    norm = WanRMS_norm(channels, images=False)  # the residual blocks' and norm_out's
    with torch.no_grad():
        norm.gamma.copy_(torch.randn(norm.gamma.shape, generator=gen) * 0.5 + 1)
    return norm.to(DEVICE, dtype)


def _input(shape, dtype, gen) -> torch.Tensor:
    x = (torch.randn(shape, generator=gen) * 3 + 0.5).to(DEVICE, dtype)
    x[:, :, 0, 0, 0] = 0  # an all-zero row: the norm's floor, silu(0) = 0
    return x.contiguous(memory_format=CL)


def _close(out, ref, tolerance):
    rtol, atol = tolerance[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_into_a_time_slice_matches_twin_and_diffusers(tv, shape, dtype):
    """``out = buf[:, :, 2:]`` of a channels-last ``[B, C, 2 + T, H, W]`` buffer (another batch
    stride than ``x``'s); the two history slots stay untouched."""
    gen = torch.Generator().manual_seed(sum(shape))
    b, c, t, h, w = shape
    x, norm = _input(shape, dtype, gen), _norm(c, dtype, gen)
    buf = torch.full((b, c, 2 + t, h, w), 7.0, dtype=dtype, device=DEVICE).contiguous(
        memory_format=CL
    )
    tv.rms_norm_silu_into(x, norm.gamma, buf[:, :, 2:])

    assert (buf[:, :, :2] == 7).all()
    ref = torch.empty_like(x)
    rms_norm_silu_into_ref(x, norm.gamma, ref)
    _close(buf[:, :, 2:], ref, TWIN_TOLERANCE)
    with torch.no_grad():
        _close(buf[:, :, 2:], torch.nn.functional.silu(norm(x)), MODULE_TOLERANCE)
    assert (buf[:, :, 2, 0, 0] == 0).all()


def test_float32_input_into_bfloat16_out(tv):
    gen = torch.Generator().manual_seed(5)
    x, norm = _input((2, 17, 2, 3, 4), torch.float32, gen), _norm(17, torch.float32, gen)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=DEVICE).contiguous(memory_format=CL)
    tv.rms_norm_silu_into(x, norm.gamma, out)
    ref = torch.empty_like(out)
    rms_norm_silu_into_ref(x, norm.gamma, ref)
    _close(out, ref, TWIN_TOLERANCE)


def test_twin_is_diffusers_exactly_in_float64():
    """The twin is the module's math without its intermediate roundings: in float64 there are
    none, so it equals diffusers' modules bit for bit (the VAE walk's exactness tests)."""
    gen = torch.Generator().manual_seed(6)
    x, norm = _input((2, 12, 3, 4, 5), torch.float64, gen), _norm(12, torch.float64, gen)
    out = torch.empty_like(x)
    rms_norm_silu_into_ref(x, norm.gamma, out)
    with torch.no_grad():
        torch.testing.assert_close(out, torch.nn.functional.silu(norm(x)), rtol=0, atol=0)


def test_rejects_bad_inputs(tv):
    x = torch.randn(2, 8, 3, 4, 5, device=DEVICE).contiguous(memory_format=CL)
    gamma, out = torch.ones(8, 1, 1, 1, device=DEVICE), torch.empty_like(x)
    swapped = out.permute(0, 2, 4, 3, 1).contiguous().permute(0, 4, 1, 3, 2)  # channels last, W, H
    cases = [
        ((x[0], gamma, out[0]), r"must be \[B, C, T, H, W\]"),
        ((x, gamma, out[:, :, :2]), "does not match x"),
        ((x, gamma[:7], out), "does not hold 8 channels"),
        ((x.double(), gamma, out), "dtype torch.float64"),
        ((x, gamma, out.int()), "dtype torch.int32"),
        ((x.contiguous(), gamma, out), "x .* must be channels-last"),
        ((x, gamma, out.contiguous()), "out .* must be channels-last"),
        ((x, gamma, swapped), "out .* must be channels-last"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            tv.rms_norm_silu_into(*args)
