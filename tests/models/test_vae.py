"""Streaming Wan VAE decode against diffusers' own whole-video decode (tiny config, fp32)."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import AutoencoderKLWan

from framestream.models.vae import DecodeState, WanVAE, from_uint8, tiny_wan_vae, to_uint8

ATOL = 1e-5  # fp32; the streamed and whole decodes run the same convs on the same inputs


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return tiny_wan_vae()


def _latents(seed: int, batch: int = 1, frames: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, 4, 4, generator=gen)


def _whole(vae: WanVAE, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.vae.decode(vae.denormalize(latents)).sample


def _stream(vae: WanVAE, latents: torch.Tensor, chunks: tuple[int, ...]) -> list[torch.Tensor]:
    state = vae.new_decode_state()
    return [vae.decode_chunk(z, state) for z in latents.split(list(chunks), dim=2)]


def test_denormalize_uses_config_mean_and_std(vae: WanVAE) -> None:
    z = _latents(0)
    mean = torch.tensor(vae.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(vae.denormalize(z), z * std + mean)


@pytest.mark.parametrize("chunks", [(3, 3), (1, 2, 3), (6,), (1, 1, 1, 1, 1, 1)])
def test_streamed_decode_equals_whole_video_decode(vae: WanVAE, chunks: tuple[int, ...]) -> None:
    z = _latents(1, batch=2)
    streamed = torch.cat(_stream(vae, z, chunks), dim=2)
    whole = _whole(vae, z)
    assert streamed.shape == whole.shape == (2, 3, 21, 32, 32)
    torch.testing.assert_close(streamed, whole, atol=ATOL, rtol=0)


def test_frame_counts_first_chunk_9_then_12(vae: WanVAE) -> None:
    outs = _stream(vae, _latents(2, frames=9), (3, 3, 3))
    assert [o.shape[2] for o in outs] == [9, 12, 12]
    assert vae.spatial_stride == 8 and vae.temporal_stride == 4


def test_interleaved_streams_equal_each_decoded_alone(vae: WanVAE) -> None:
    za, zb = _latents(3), _latents(4)
    alone_a = torch.cat(_stream(vae, za, (3, 3)), dim=2)
    alone_b = torch.cat(_stream(vae, zb, (1, 2, 3)), dim=2)
    sa, sb = vae.new_decode_state(), vae.new_decode_state()
    a0 = vae.decode_chunk(za[:, :, :3], sa)
    b0 = vae.decode_chunk(zb[:, :, :1], sb)
    b1 = vae.decode_chunk(zb[:, :, 1:3], sb)
    a1 = vae.decode_chunk(za[:, :, 3:], sa)
    b2 = vae.decode_chunk(zb[:, :, 3:], sb)
    torch.testing.assert_close(torch.cat([a0, a1], 2), alone_a, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([b0, b1, b2], 2), alone_b, atol=0, rtol=0)


def test_state_rejects_other_geometry(vae: WanVAE) -> None:
    state = vae.new_decode_state()
    vae.decode_chunk(_latents(5, frames=1), state)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        vae.decode_chunk(torch.zeros(1, 16, 1, 2, 2), state)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode_chunk(torch.zeros(1, 8, 1, 4, 4), DecodeState())


def test_to_uint8_layout_and_values(vae: WanVAE) -> None:
    video = _stream(vae, _latents(6, frames=3), (3,))[0]
    frames = to_uint8(video)
    assert frames.dtype == torch.uint8
    assert frames.shape == (1, 9, 32, 32, 3)
    expected = ((video[0, :, 4] + 1) * 127.5).round().permute(1, 2, 0)
    torch.testing.assert_close(frames[0, 4].float(), expected, atol=0, rtol=0)
    ends = to_uint8(torch.tensor([-1.0, 1.0]).view(1, 1, 1, 1, 2).expand(1, 3, 1, 1, 2))
    assert ends.flatten().tolist() == [0, 0, 0, 255, 255, 255]


def test_diffusers_folder_round_trip(vae: WanVAE, tmp_path) -> None:
    vae.vae.save_pretrained(tmp_path / "vae")
    z = _latents(7)
    expected = torch.cat(_stream(vae, z, (3, 3)), dim=2)
    for path in (tmp_path, tmp_path / "vae"):  # pipeline root or the model folder itself
        loaded = WanVAE.from_pretrained(path)
        torch.testing.assert_close(torch.cat(_stream(loaded, z, (3, 3)), 2), expected)


def test_missing_path_names_it(tmp_path) -> None:
    missing = tmp_path / "no_such_vae"
    with pytest.raises(FileNotFoundError, match="no_such_vae"):
        WanVAE.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        WanVAE.from_pretrained(tmp_path)  # exists, but holds no config


_RES = {"norm1": "0", "conv1": "2", "norm2": "3", "conv2": "6"}


def _to_original_key(key: str) -> str:
    """Inverse of diffusers' ``convert_wan_vae_to_diffusers`` for the Wan2.1 geometry."""
    rules = [
        (r"^quant_conv\.", "conv1."),
        (r"^post_quant_conv\.", "conv2."),
        (r"^(\w+coder)\.conv_in\.", r"\1.conv1."),
        (r"^(\w+coder)\.norm_out\.", r"\1.head.0."),
        (r"^(\w+coder)\.conv_out\.", r"\1.head.2."),
        (r"^(\w+coder)\.mid_block\.attentions\.0\.", r"\1.middle.1."),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    if m := re.match(r"^(\w+coder)\.mid_block\.resnets\.(\d)\.(\w+)\.(.+)$", key):
        coder, i, name, param = m.groups()
        return f"{coder}.middle.{2 * int(i)}.residual.{_RES[name]}.{param}"
    if m := re.match(r"^encoder\.down_blocks\.(\d+)\.(\w+)\.(.+)$", key):
        i, name, rest = m.groups()
        if name in _RES:
            return f"encoder.downsamples.{i}.residual.{_RES[name]}.{rest}"
        return f"encoder.downsamples.{i}.{'shortcut' if name == 'conv_shortcut' else name}.{rest}"
    if m := re.match(r"^decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(\w+)\.(.+)$", key):
        b, r, name, param = m.groups()
        i = 4 * int(b) + int(r)
        part = f"residual.{_RES[name]}" if name in _RES else "shortcut"
        return f"decoder.upsamples.{i}.{part}.{param}"
    if m := re.match(r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)$", key):
        b, rest = m.groups()
        return f"decoder.upsamples.{4 * int(b) + 3}.{rest}"
    raise AssertionError(f"unmapped diffusers key {key}")


def test_original_pth_layout_maps_every_key(tmp_path) -> None:
    # Full Wan2.1 geometry on the meta device: checks the key mapping, not values.
    with torch.device("meta"):
        reference = AutoencoderKLWan()
    original = {_to_original_key(k): v for k, v in reference.state_dict().items()}
    assert "decoder.middle.0.residual.0.gamma" in original  # diffusers' own detection key
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    loaded = WanVAE.from_pretrained(path, device="meta")
    shapes = {k: v.shape for k, v in loaded.vae.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}


def _channels_last(vae: WanVAE) -> WanVAE:
    """``vae``'s weights in a fresh module whose layout is channels-last on the CPU too."""
    forced = tiny_wan_vae()
    forced.load_state_dict(vae.state_dict())
    forced.channels_last_devices = ("cpu",)
    return forced.to("cpu")  # the layout is set on every move


def test_channels_last_layout_streams_the_same_frames(vae: WanVAE) -> None:
    """CUDA decodes channels-last; forced here on the CPU, the streamed frames of two
    interleaved streams match the default layout's over several chunks."""
    forced = _channels_last(vae)
    assert forced.memory_format == torch.channels_last_3d
    assert forced.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last_3d)
    attention = forced.vae.decoder.mid_block.attentions[0].to_qkv.weight
    assert attention.is_contiguous(memory_format=torch.channels_last)
    assert vae.memory_format == torch.contiguous_format
    assert all(p.is_contiguous() for p in vae.parameters())
    for batch, chunks in ((1, (3, 3, 3, 3)), (2, (1, 2, 3, 1))):
        z = _latents(6, batch=batch, frames=sum(chunks))
        default, channels_last = _stream(vae, z, chunks), _stream(forced, z, chunks)
        for a, b in zip(default, channels_last, strict=True):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_layout_follows_the_device_on_every_move(vae: WanVAE) -> None:
    forced = _channels_last(vae)
    forced.channels_last_devices = ()
    forced.to("cpu")
    assert forced.memory_format == torch.contiguous_format
    assert all(p.is_contiguous() for p in forced.parameters())
    for a, b in zip(vae.parameters(), forced.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def _video(seed: int, frames: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, 32, 48, generator=gen) * 2 - 1


@pytest.mark.parametrize("chunks", [(9, 12, 12), (1, 8, 24), (33,)])
def test_streamed_encode_equals_whole_clip_encode_means(
    vae: WanVAE, chunks: tuple[int, ...]
) -> None:
    """9-then-12 frame chunks (a LongLive chunk's input), and other chunkings, encoded
    chunk by chunk equal diffusers' whole-clip ``encode`` means, normalised."""
    video = _video(5, sum(chunks), batch=2)
    state = vae.new_encode_state()
    parts = [vae.encode_chunk(part, state) for part in video.split(list(chunks), dim=2)]
    assert [p.shape[2] for p in parts] == [
        (c - (i == 0)) // 4 + (i == 0) for i, c in enumerate(chunks)
    ]
    with torch.no_grad():
        means = vae.vae.encode(video).latent_dist.mean
    expected = (means - vae.latents_mean) / vae.latents_std
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == (2, 16, 9, 4, 6)
    torch.testing.assert_close(streamed, expected, atol=ATOL, rtol=0)


def test_interleaved_encodes_equal_each_encoded_alone(vae: WanVAE) -> None:
    va, vb = _video(6, 21), _video(7, 21)
    alone = [
        torch.cat([vae.encode_chunk(p, s) for p in v.split([9, 12], 2)], 2)
        for v, s in ((va, vae.new_encode_state()), (vb, vae.new_encode_state()))
    ]
    sa, sb = vae.new_encode_state(), vae.new_encode_state()
    mixed_a, mixed_b = [], []
    for pa, pb in zip(va.split([9, 12], 2), vb.split([9, 12], 2), strict=True):
        mixed_a.append(vae.encode_chunk(pa, sa))
        mixed_b.append(vae.encode_chunk(pb, sb))
    torch.testing.assert_close(torch.cat(mixed_a, 2), alone[0], atol=0, rtol=0)
    torch.testing.assert_close(torch.cat(mixed_b, 2), alone[1], atol=0, rtol=0)


def test_encode_refuses_off_stride_chunks_and_other_geometry(vae: WanVAE) -> None:
    state = vae.new_encode_state()
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        vae.encode_chunk(_video(8, 8), state)
    vae.encode_chunk(_video(8, 9), state)
    with pytest.raises(ValueError, match=r"4k \(k >= 1\)"):
        vae.encode_chunk(_video(8, 5), state)
    with pytest.raises(ValueError, match="do not match"):
        vae.encode_chunk(_video(8, 4)[..., :16], state)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode_chunk(_video(8, 4)[..., :12], vae.new_encode_state())


def test_from_uint8_inverts_to_uint8() -> None:
    pixels = torch.randint(0, 256, (1, 2, 8, 8, 3), dtype=torch.uint8)
    signed = from_uint8(pixels)
    assert signed.shape == (1, 3, 2, 8, 8) and signed.min() >= -1 and signed.max() <= 1
    torch.testing.assert_close(to_uint8(signed), pixels, atol=0, rtol=0)
