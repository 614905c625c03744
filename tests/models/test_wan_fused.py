"""The Wan DiT with its fused Triton norms (kernels/triton_norms.py) forced on against the torch
code it replaces on CUDA; on CPU the kernels run in Triton's interpreter (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.kernels import triton_norms
from framestream.kernels.attention import fused_kernels
from framestream.kernels.rope import wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.wan import CausalWanModel, wan_config
from framestream.models.wan.model import WanBlock
from framestream.stream.kvcache import frame_positions

CFG = wan_config("tiny")


def _dense(frames: int, grid: tuple[int, int], batch: int) -> DenseAttention:
    pos = torch.from_numpy(frame_positions(np.arange(frames), grid)).repeat(batch, 1)
    indptr = tuple(i * frames * grid[0] * grid[1] for i in range(batch + 1))
    return DenseAttention(pos, indptr, wan_rope(CFG.head_dim), causal=False)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.fixture
def calls(monkeypatch):
    """Count the fused kernels' calls, so a test sees that the fused path really ran."""
    counts: dict[str, int] = {}
    for name in triton_norms.__all__:
        original = getattr(triton_norms, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_norms, name, counted)
    return counts


def _run(monkeypatch, fused: bool, fn):
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "1" if fused else "0")
    with torch.no_grad():
        return fn()


def test_switch(monkeypatch) -> None:
    monkeypatch.delenv("STREAM_FUSED_KERNELS", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with torch.no_grad():
        assert fused_kernels(cuda) and not fused_kernels(cpu)
        monkeypatch.setenv("STREAM_FUSED_KERNELS", "0")
        assert not fused_kernels(cuda)
        monkeypatch.setenv("STREAM_FUSED_KERNELS", "1")
        assert fused_kernels(cpu)
    assert not fused_kernels(cuda)  # recording gradients: the kernels have no backward


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_block_fused_matches_torch(monkeypatch, calls, dtype, tol) -> None:
    """One block, two streams of 2 frames with per-frame timestep projections."""
    block = WanBlock(CFG)
    _randomize(block, seed=1)
    block = block.to(dtype)
    gen = torch.Generator().manual_seed(2)
    frames, grid, batch = 2, (2, 3), 2
    x = torch.randn(batch, frames * 6, CFG.dim, generator=gen).to(dtype)
    e0 = torch.randn(batch, frames, 6, CFG.dim, generator=gen)
    text_k, text_v = (
        torch.randn(batch, 5, CFG.num_heads, CFG.head_dim, generator=gen).to(dtype)
        for _ in range(2)
    )

    def forward():
        return block(x, e0, 0, text_k, text_v, _dense(frames, grid, batch))

    ref = _run(monkeypatch, False, forward)
    assert not calls
    got = _run(monkeypatch, True, forward)
    assert calls == {"layer_norm": 3, "gated_residual": 2, "rms_norm_pair": 1, "rms_norm": 1}
    assert got.dtype == ref.dtype == dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol * ref.abs().max())


def test_model_fused_matches_torch(monkeypatch, calls) -> None:
    """The whole tiny model (head modulation too), float32: equal up to float32 rounding."""
    model = CausalWanModel(CFG).eval()
    _randomize(model, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, CFG.in_channels, 2, 4, 6, generator=gen)
    t = torch.tensor([[900.0, 300.0]])
    context = torch.randn(1, CFG.text_len, CFG.text_dim, generator=gen)

    def forward():
        return model(x, t, model.encode_text(context), _dense(2, (2, 3), 1))

    ref = _run(monkeypatch, False, forward)
    got = _run(monkeypatch, True, forward)
    assert calls["layer_norm"] == 3 * CFG.num_layers + 1
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
