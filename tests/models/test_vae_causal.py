"""The chunk-parallel Wan VAE walk against diffusers' own chunked encode and per-frame decode."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock

from framestream.kernels import triton_vae
from framestream.models.vae import tiny_wan_vae
from framestream.models.vae_causal import (
    _interleave,
    _per_frame,
    decode_frames,
    encode_frames,
    encode_video,
)

CL = torch.channels_last_3d


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    return tiny_wan_vae(seed=3).vae.double()


@pytest.mark.parametrize("frames", [1, 5, 13])
def test_encode_video_equals_diffusers_encode(vae: AutoencoderKLWan, frames: int) -> None:
    gen = torch.Generator().manual_seed(frames)
    video = torch.rand(2, 3, frames, 32, 48, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(video).latent_dist.parameters
        got = encode_video(vae, video)
    assert got.shape == (2, 32, 1 + (frames - 1) // 4, 4, 6)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunks", [(9, 12), (1, 4, 8), (5, 16)])
def test_encode_frames_in_chunks_equals_diffusers_encode(
    vae: AutoencoderKLWan, chunks: tuple[int, ...]
) -> None:
    gen = torch.Generator().manual_seed(sum(chunks))
    video = torch.rand(2, 3, sum(chunks), 32, 48, generator=gen, dtype=torch.float64) * 2 - 1
    history: list = []
    with torch.no_grad():
        expected = vae.encode(video).latent_dist.parameters
        parts = [encode_frames(vae, part, history) for part in video.split(list(chunks), 2)]
        got = vae.quant_conv(torch.cat(parts, 2))
    assert [p.shape[2] for p in parts] == [c // 4 + (i == 0) for i, c in enumerate(chunks)]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_encode_video_rejects_frame_counts_off_the_stride(vae: AutoencoderKLWan) -> None:
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        encode_video(vae, torch.zeros(1, 3, 6, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("chunks", [(7,), (1, 6), (3, 3, 1), (1, 1, 2, 3)])
def test_decode_frames_in_any_chunks_equals_diffusers_decode(
    vae: AutoencoderKLWan, chunks: tuple[int, ...]
) -> None:
    gen = torch.Generator().manual_seed(len(chunks))
    z = torch.randn(2, 16, sum(chunks), 4, 6, generator=gen, dtype=torch.float64)
    history: list = []
    with torch.no_grad():
        expected = vae.decode(z).sample
        x = vae.post_quant_conv(z)
        parts = [decode_frames(vae.decoder, part, history) for part in x.split(list(chunks), 2)]
    assert [p.shape[2] for p in parts] == [4 * c - 3 * (i == 0) for i, c in enumerate(chunks)]
    torch.testing.assert_close(torch.cat(parts, 2).clamp(-1, 1), expected, atol=1e-12, rtol=0)


def _rms(error: torch.Tensor) -> torch.Tensor:
    return error.square().mean().sqrt()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decode_frames_equals_diffusers_decode(monkeypatch, dtype: torch.dtype) -> None:
    """The fused norm kernel forced on (Triton's interpreter on CPU), channels-last activations,
    chunks of one frame included: every norm + SiLU + causal conv of every chunk runs the
    kernel, the activations stay channels-last, and the frames match diffusers' float32 decode
    (in bfloat16: no further off than diffusers' own bfloat16 decode)."""
    calls = []
    kernel = triton_vae.rms_norm_silu_into
    monkeypatch.setattr(triton_vae, "rms_norm_silu_into", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "1")
    # the CPU's conv3d returns channels-last only on its oneDNN path, which one thread skips
    # (an earlier test may leave torch at one); then the walk rightly takes the torch twin
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        _decode_fused_and_compare(calls, dtype)
    finally:
        torch.set_num_threads(threads)


def _decode_fused_and_compare(calls: list, dtype: torch.dtype) -> None:
    vae = tiny_wan_vae(seed=4).vae
    sites = 1 + 2 * sum(isinstance(m, WanResidualBlock) for m in vae.decoder.modules())
    chunks = [1, 2, 1, 1]
    z = torch.randn(2, 16, sum(chunks), 4, 6, generator=torch.Generator().manual_seed(5))
    history: list = []
    with torch.no_grad():
        expected = vae.decode(z).sample
        own = vae.to(dtype).decode(z.to(dtype)).sample.float()
        x = vae.post_quant_conv(z.to(dtype)).contiguous(memory_format=CL)
        parts = [decode_frames(vae.decoder, part, history) for part in x.split(chunks, 2)]
    assert len(calls) == sites * len(chunks)
    assert all(p.is_contiguous(memory_format=CL) for p in parts)
    assert all(h.is_contiguous(memory_format=CL) for h in history)
    got = torch.cat(parts, 2).clamp(-1, 1).float()
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    else:
        # root mean square: the maximum of a few thousand rounding errors is too noisy to bound
        assert _rms(got - expected) <= 1.25 * _rms(own - expected)


def test_gradients_flow_through_a_whole_clip(vae: AutoencoderKLWan) -> None:
    video = torch.rand(1, 3, 5, 16, 16, dtype=torch.float64, requires_grad=True)
    moments = encode_video(vae, video)
    recon = decode_frames(vae.decoder, vae.post_quant_conv(moments[:, :16]), [])
    recon.square().mean().backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert all(p.grad is not None for p in vae.decoder.parameters())
    vae.zero_grad(set_to_none=True)


def test_wan22_layout_is_refused() -> None:
    wan22 = AutoencoderKLWan(base_dim=8, z_dim=16, is_residual=True, patch_size=2)
    with pytest.raises(ValueError, match="Wan2.1 VAE layout"):
        encode_video(wan22, torch.zeros(1, 3, 1, 16, 16))


def test_channels_last_stays_channels_last_without_copies() -> None:
    """The per-frame 2D path flattens channels-last frames as a view, and the temporal
    up-sampling's interleave writes its one copy channels-last, with the same values."""
    cl = torch.channels_last_3d
    x = torch.randn(2, 6, 3, 4, 5).contiguous(memory_format=cl)
    seen = []
    y = _per_frame(lambda f: seen.append(f) or f * 2, x)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert seen[0].data_ptr() == x.data_ptr() and y.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y, x * 2, atol=0, rtol=0)
    out = _interleave(x)
    assert out.shape == (2, 3, 6, 4, 5) and out.is_contiguous(memory_format=cl)
    torch.testing.assert_close(out, _interleave(x.contiguous()), atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 1::2], x[:, 3:], atol=0, rtol=0)
    one = x[:, :, :1].contiguous(memory_format=cl)  # a single frame, as a 1-frame chunk has
    out = _interleave(one)
    assert out.is_contiguous(memory_format=cl)
    torch.testing.assert_close(out, _interleave(one.contiguous()), atol=0, rtol=0)
