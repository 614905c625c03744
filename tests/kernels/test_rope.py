"""RopeSpec / apply_rope against transformers' Qwen2.5-VL M-RoPE, diffusers' Wan RoPE and
float64 references written from the published definitions."""

from __future__ import annotations

import pytest
import torch

from framestream.kernels.rope import RopeSpec, apply_rope, mrope, rope_1d, wan_rope


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Qwen2.5-VL M-RoPE vs transformers
# --------------------------------------------------------------------------------------------


def _hf_qwen_rotary(head_dim: int, theta: float, sections: tuple[int, int, int]):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding

    cfg = Qwen2_5_VLTextConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        num_hidden_layers=1,
        intermediate_size=16,
        vocab_size=32,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": theta,
            "mrope_section": list(sections),
        },
    )
    return Qwen2_5_VLRotaryEmbedding(cfg)


def _hf_mrope_apply(head_dim, theta, sections, q, k, pos3):
    """transformers 5.x: the rotary module returns cos/sin already recomposed per mrope_section
    ([B, L, D]); ``apply_rotary_pos_emb`` then uses rotate_half on q/k ``[B, H, L, D]``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    emb = _hf_qwen_rotary(head_dim, theta, sections)
    cos, sin = emb(q, pos3)
    q_embed, k_embed = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    return q_embed, k_embed, emb.inv_freq


def _to_ours(x_bhld: torch.Tensor) -> torch.Tensor:
    b, h, seq, d = x_bhld.shape
    return x_bhld.permute(0, 2, 1, 3).reshape(b * seq, h, d)


def _from_ours(x_nhd: torch.Tensor, b: int, seq: int) -> torch.Tensor:
    _, h, d = x_nhd.shape
    return x_nhd.reshape(b, seq, h, d).permute(0, 2, 1, 3)


MROPE_CASES = [
    (128, 1_000_000.0, (16, 24, 24)),
    (16, 10_000.0, (2, 3, 3)),
    (32, 1_000_000.0, (4, 6, 6)),
]


@pytest.mark.parametrize(("head_dim", "theta", "sections"), MROPE_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_mrope_matches_transformers(head_dim, theta, sections, seed):
    g = _gen(seed)
    b, h, seq = 2, 3, 9
    q = torch.randn(b, h, seq, head_dim, generator=g)
    k = torch.randn(b, 2, seq, head_dim, generator=g)
    # small positions: fp32 angle error grows with |pos| (see test_mrope_same_table_is_bitwise)
    pos3 = torch.randint(0, 48, (3, b, seq), generator=g)

    q_hf, k_hf, _ = _hf_mrope_apply(head_dim, theta, sections, q, k, pos3)

    spec = mrope(head_dim, theta, sections)
    pos = pos3.permute(1, 2, 0).reshape(b * seq, 3).to(torch.int32)
    q_ours = _from_ours(apply_rope(_to_ours(q), pos, spec), b, seq)
    k_ours = _from_ours(apply_rope(_to_ours(k), pos, spec), b, seq)

    torch.testing.assert_close(q_ours, q_hf, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(k_ours, k_hf, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("head_dim", "theta", "sections"), MROPE_CASES)
def test_mrope_same_table_is_bitwise(head_dim, theta, sections):
    """Our table is transformers' float32 table bit for bit, so the rotation reproduces it
    exactly even at large positions."""
    g = _gen(7)
    b, h, seq = 1, 2, 33
    q = torch.randn(b, h, seq, head_dim, generator=g)
    pos3 = torch.randint(0, 30_000, (3, b, seq), generator=g)
    q_hf, _, hf_inv_freq = _hf_mrope_apply(head_dim, theta, sections, q, q, pos3)

    ours = mrope(head_dim, theta, sections)
    assert torch.equal(ours.inv_freq, hf_inv_freq.float())
    spec = ours
    pos = pos3.permute(1, 2, 0).reshape(b * seq, 3).to(torch.int32)
    q_ours = _from_ours(apply_rope(_to_ours(q), pos, spec), b, seq)
    torch.testing.assert_close(q_ours, q_hf, atol=1e-6, rtol=1e-6)


def test_mrope_axis_layout():
    spec = mrope(128, 1_000_000.0, (16, 24, 24))
    assert spec.head_dim == 128 and not spec.interleaved
    assert spec.axis.tolist() == [0] * 16 + [1] * 24 + [2] * 24
    with pytest.raises(ValueError):
        mrope(128, 1_000_000.0, (16, 24, 23))


def test_mrope_text_positions_equal_rope_1d():
    """Text tokens repeat one position on all three axes -> plain 1D rotate_half RoPE."""
    g = _gen(3)
    x = torch.randn(11, 2, 128, generator=g)
    p = torch.randint(0, 500, (11, 1), generator=g).to(torch.int32).expand(11, 3)
    spec = mrope(128, 1_000_000.0)
    torch.testing.assert_close(
        apply_rope(x, p, spec),
        apply_rope(x, p, RopeSpec(spec.inv_freq, torch.zeros_like(spec.axis), False)),
        atol=0,
        rtol=0,
    )


# --------------------------------------------------------------------------------------------
# Wan RoPE vs float64 complex reference and diffusers
# --------------------------------------------------------------------------------------------


def _wan_reference_f64(x: torch.Tensor, pos: torch.Tensor, theta: float = 10_000.0):
    """Wan2.1 definition: adjacent dim pairs as complex numbers, t/h/w frequency blocks."""
    d = x.shape[-1]
    hw = 2 * (d // 6)
    t = d - 2 * hw
    freqs = []
    for d_axis in (t, hw, hw):
        freqs.append(1.0 / theta ** (torch.arange(0, d_axis, 2, dtype=torch.float64) / d_axis))
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    angles = torch.cat(
        [pos[:, a].double()[:, None] * f[None, :] for a, f in enumerate(freqs)], dim=-1
    )  # [N, D/2]
    rot = torch.polar(torch.ones_like(angles), angles)[:, None, :]  # [N, 1, D/2]
    return torch.view_as_real(xc * rot).reshape(x.shape)


@pytest.mark.parametrize("head_dim", [128, 64, 96, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_wan_rope_matches_complex_reference(head_dim, seed):
    g = _gen(100 + seed)
    n, h = 40, 3
    x = torch.randn(n, h, head_dim, generator=g)
    pos = torch.randint(0, 64, (n, 3), generator=g).to(torch.int32)
    ours = apply_rope(x, pos, wan_rope(head_dim))
    ref = _wan_reference_f64(x, pos)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)


def test_wan_rope_split_128():
    spec = wan_rope(128)
    assert spec.interleaved and spec.head_dim == 128
    assert spec.axis.tolist() == [0] * 22 + [1] * 21 + [2] * 21
    exact = torch.cat(
        [1.0 / 10_000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d) for d in (44, 42, 42)]
    )
    torch.testing.assert_close(spec.inv_freq, exact.float(), atol=0, rtol=0)
    with pytest.raises(ValueError):
        wan_rope(127)


def _diffusers_wan_apply(x_blhd, freqs_cos, freqs_sin):
    """Copy of the apply_rotary_emb closure in diffusers' WanAttnProcessor.__call__."""
    x1, x2 = x_blhd.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x_blhd)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x_blhd)


@pytest.mark.parametrize(("head_dim", "grid"), [(128, (3, 4, 5)), (64, (2, 3, 2)), (16, (4, 2, 3))])
def test_wan_rope_matches_diffusers(head_dim, grid):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    frames, height, width = grid
    patch = (1, 2, 2)
    emb = WanRotaryPosEmbed(head_dim, patch, max_seq_len=1024)
    latents = torch.zeros(1, 4, frames * patch[0], height * patch[1], width * patch[2])
    freqs_cos, freqs_sin = emb(latents)  # [1, F*H*W, 1, D], frame-major then row then column
    n = frames * height * width
    assert freqs_cos.shape == (1, n, 1, head_dim)

    f, hh, ww = torch.meshgrid(
        torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij"
    )
    pos = torch.stack([f, hh, ww], dim=-1).reshape(n, 3).to(torch.int32)

    g = _gen(head_dim)
    x = torch.randn(1, n, 2, head_dim, generator=g)  # diffusers layout [B, L, H, D]
    ref = _diffusers_wan_apply(x, freqs_cos, freqs_sin)[0]
    ours = apply_rope(x[0], pos, wan_rope(head_dim))
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# rope_1d
# --------------------------------------------------------------------------------------------


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("head_dim", [8, 64, 128])
@pytest.mark.parametrize("theta", [10_000.0, 1_000_000.0])
def test_rope_1d_half_matches_rotate_half(head_dim, theta):
    g = _gen(head_dim)
    n, h = 17, 2
    x = torch.randn(n, h, head_dim, generator=g)
    p = torch.randint(0, 200, (n,), generator=g)
    pos = torch.stack([p, p + 5, p + 11], dim=-1).to(torch.int32)  # only column 0 is read

    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = p.double()[:, None] * inv_freq[None, :]
    emb = torch.cat([ang, ang], dim=-1)[:, None, :]
    ref = x.double() * emb.cos() + _rotate_half(x.double()) * emb.sin()

    ours = apply_rope(x, pos, rope_1d(head_dim, theta, interleaved=False))
    torch.testing.assert_close(ours.double(), ref, atol=5e-5, rtol=1e-5)


def test_rope_1d_interleaved_matches_complex():
    g = _gen(5)
    x = torch.randn(13, 2, 32, generator=g)
    p = torch.randint(0, 100, (13,), generator=g)
    pos = torch.stack([p, p, p], dim=-1).to(torch.int32)
    inv_freq = 1.0 / 10_000.0 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    ang = p.double()[:, None] * inv_freq[None, :]
    xc = torch.view_as_complex(x.double().reshape(13, 2, 16, 2).contiguous())
    ref = torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[:, None]).reshape(x.shape)
    ours = apply_rope(x, pos, rope_1d(32, interleaved=True))
    torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)


def test_apply_rope_position_zero_is_identity_and_bf16_input():
    x = torch.randn(5, 2, 24, generator=_gen(9)).bfloat16()
    pos = torch.zeros(5, 3, dtype=torch.int32)
    for spec in (wan_rope(24), mrope(24, sections=(4, 4, 4)), rope_1d(24)):
        out = apply_rope(x, pos, spec)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, x.float(), atol=0, rtol=0)


def test_apply_rope_rejects_wrong_head_dim():
    with pytest.raises(ValueError):
        apply_rope(torch.zeros(3, 1, 16), torch.zeros(3, 3, dtype=torch.int32), rope_1d(32))


# --------------------------------------------------------------------------------------------
# RopeSpec validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inv_freq", "axis"),
    [
        (torch.ones(4), torch.zeros(5, dtype=torch.int32)),  # length mismatch
        (torch.ones(2, 4), torch.zeros(2, 4, dtype=torch.int32)),  # not 1-D
        (torch.ones(4), torch.zeros(2, 2, dtype=torch.int32)),  # same numel, other shape
        (torch.ones(4), torch.tensor([0, 1, 2, 3], dtype=torch.int32)),  # axis > 2
        (torch.ones(4), torch.tensor([0, -1, 1, 2], dtype=torch.int32)),  # axis < 0
    ],
)
def test_ropespec_rejects_bad_inputs(inv_freq, axis):
    with pytest.raises(ValueError):
        RopeSpec(inv_freq, axis, interleaved=False)


def test_ropespec_accepts_valid_and_reports_head_dim():
    spec = RopeSpec(torch.ones(6), torch.tensor([0, 0, 1, 1, 2, 2], dtype=torch.int32), True)
    assert spec.head_dim == 12
    _, axis, partner, sign = spec.per_dim()
    assert partner.tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]
    assert sign.tolist() == [-1.0, 1.0] * 6
    assert axis.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
