"""The tiny streaming decoder (TAEHV layout): loading a file of the published ``taew2_1.pth``
names and shapes, decoding against a frame-by-frame reference written from that layout's
published semantics, streamed == whole, and one-line errors for wrong files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from framestream.models.vae_tiny import (
    TAEW2_1,
    TinyDecoderConfig,
    is_tiny_decoder_file,
    load_tiny_decoder,
    random_tiny_decoder,
    save_tiny_decoder,
)

SMALL = TinyDecoderConfig(widths=(8, 6, 4, 4))


def published_taew2_1_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of the published ``taew2_1.pth`` with its shape (encoder included), written
    out from the published architecture: encoder widths 64, decoder widths 256/128/64/64,
    encoder time pools (2, 2, 1), decoder time grows (1, 2, 2)."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.0.weight": (64, 3, 3, 3),
        "encoder.0.bias": (64,),
    }

    def memory_block(prefix: str, c: int) -> None:
        for position, c_in in ((0, 2 * c), (2, c), (4, c)):
            shapes[f"{prefix}.conv.{position}.weight"] = (c, c_in, 3, 3)
            shapes[f"{prefix}.conv.{position}.bias"] = (c,)

    for stage, pool in enumerate((2, 2, 1)):
        base = 2 + 5 * stage
        shapes[f"encoder.{base}.conv.weight"] = (64, 64 * pool, 1, 1)
        shapes[f"encoder.{base + 1}.weight"] = (64, 64, 3, 3)
        for j in range(3):
            memory_block(f"encoder.{base + 2 + j}", 64)
    shapes["encoder.17.weight"], shapes["encoder.17.bias"] = (16, 64, 3, 3), (16,)
    shapes["decoder.1.weight"], shapes["decoder.1.bias"] = (256, 16, 3, 3), (256,)
    widths = (256, 128, 64, 64)
    for stage, grow in enumerate((1, 2, 2)):
        base, c = 3 + 6 * stage, widths[stage]
        for j in range(3):
            memory_block(f"decoder.{base + j}", c)
        shapes[f"decoder.{base + 4}.conv.weight"] = (c * grow, c, 1, 1)
        shapes[f"decoder.{base + 5}.weight"] = (widths[stage + 1], c, 3, 3)
    shapes["decoder.22.weight"], shapes["decoder.22.bias"] = (3, 64, 3, 3), (3,)
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of ``shapes``, weights scaled by fan-in so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        fan_in = torch.Size(shape[1:]).numel() if len(shape) > 1 else 100
        state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
    return state


def _reference(state: dict[str, torch.Tensor], latents: torch.Tensor, grows=(1, 2, 2)):
    """The published decoder's semantics, one frame at a time, straight from the keys: soft
    clamp, conv, 3 memory blocks (x_t beside x_{t-1}, zeros first), nearest 2x upsample, grow
    (channel group i -> the frame's i-th child), conv, ...; the first 3 frames dropped, clamp to
    [0, 1]. Returns ``[B, 3, T_out, H, W]`` in [-1, 1]."""

    def conv(x, key, bias=True):
        w = state[f"{key}.weight"].to(x.dtype)
        b = state[f"{key}.bias"].to(x.dtype) if bias else None
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2)

    memory: dict[int, torch.Tensor] = {}

    def run(x, position):  # frame x enters the decoder at published position ``position``
        while position <= 22:
            if position == 0:
                x = torch.tanh(x / 3) * 3
            elif position == 1:
                x = F.relu(conv(x, "decoder.1"))
                position = 2
            elif position == 22:
                return [conv(F.relu(x), "decoder.22")]
            else:
                stage, offset = divmod(position - 3, 6)
                key = f"decoder.{position}"
                if offset < 3:
                    past = memory.get(position, torch.zeros_like(x))
                    memory[position] = x
                    y = F.relu(conv(torch.cat([x, past], 1), f"{key}.conv.0"))
                    y = conv(F.relu(conv(y, f"{key}.conv.2")), f"{key}.conv.4")
                    x = F.relu(y + x)
                elif offset == 3:
                    x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                elif offset == 4:
                    grown = F.conv2d(x, state[f"{key}.conv.weight"].to(x.dtype))
                    frames = []
                    for child in grown.chunk(grows[stage], dim=1):
                        frames += run(child, position + 1)
                    return frames
                else:
                    x = conv(x, key, bias=False)
                    if position == 20:
                        position = 21
            position += 1
        raise AssertionError("unreachable")

    out = []
    for t in range(latents.shape[2]):
        out += run(latents[:, :, t], 0)
    return torch.stack(out[3:], dim=2).clamp(0, 1) * 2 - 1


@pytest.fixture(scope="module")
def taew2_1_file(tmp_path_factory) -> tuple[object, dict[str, torch.Tensor]]:
    state = _random_state(published_taew2_1_shapes())
    state["decoder.22.bias"] += 0.5  # centre the frames in [0, 1], so few values are clamped
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save(state, path)
    return path, state


def test_published_layout_loads_and_decodes_as_the_reference(taew2_1_file) -> None:
    path, state = taew2_1_file
    assert is_tiny_decoder_file(path)
    model = load_tiny_decoder(path, dtype=torch.float64)
    assert model.config == TAEW2_1
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(1, 16, 2, 2, 3, generator=gen, dtype=torch.float64)
    out = model.decode_chunk(z, model.new_decode_state())
    assert out.shape == (1, 3, 5, 16, 24)
    state64 = {k: v.double() for k, v in state.items()}
    torch.testing.assert_close(out, _reference(state64, z), atol=1e-10, rtol=0)


def test_a_wider_first_grow_keeps_its_last_rows(tmp_path, taew2_1_file) -> None:
    """The published loader's rule for a first stage trained to grow time (512 rows)."""
    _, state = taew2_1_file
    wide = dict(state)
    extra = torch.randn(256, 256, 1, 1)
    wide["decoder.7.conv.weight"] = torch.cat([extra, state["decoder.7.conv.weight"]])
    path = tmp_path / "wide.pth"
    torch.save(wide, path)
    model = load_tiny_decoder(path)
    torch.testing.assert_close(model.stages[0].grow.weight, state["decoder.7.conv.weight"])


@pytest.mark.parametrize("chunks", [(3, 3), (1, 2, 3), (6,), (1, 1, 1, 1, 1, 1)])
def test_streamed_decode_equals_whole_decode(chunks: tuple[int, ...]) -> None:
    model = random_tiny_decoder(SMALL, seed=3).double()
    z = torch.randn(2, 16, 6, 3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    whole = model.decode_chunk(z, model.new_decode_state())
    state = model.new_decode_state()
    parts = [model.decode_chunk(part, state) for part in z.split(list(chunks), dim=2)]
    assert whole.shape == (2, 3, 21, 24, 16)
    # the Wan VAE's frame counts: 1 + 4 (T - 1) for the stream's first chunk, then 4 T
    assert [p.shape[2] for p in parts] == [
        4 * c - (3 if i == 0 else 0) for i, c in enumerate(chunks)
    ]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-12, rtol=0)


def test_save_then_load_round_trips(tmp_path) -> None:
    model = random_tiny_decoder(SMALL, seed=5)
    path = tmp_path / "toy.safetensors"
    save_tiny_decoder(model, path)
    loaded = load_tiny_decoder(path)
    assert loaded.config == SMALL
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_state_rejects_other_geometry() -> None:
    model = random_tiny_decoder(SMALL)
    state = model.new_decode_state()
    model.decode_chunk(torch.zeros(1, 16, 1, 2, 2), state)
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        model.decode_chunk(torch.zeros(1, 16, 1, 3, 2), state)
    with pytest.raises(ValueError, match="latents must be"):
        model.decode_chunk(torch.zeros(1, 8, 1, 2, 2), model.new_decode_state())


def _one_line_error(path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        load_tiny_decoder(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_wrong_files_give_one_line_errors(tmp_path, taew2_1_file) -> None:
    _, state = taew2_1_file
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    _one_line_error(garbage, "not a readable checkpoint")
    wan = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(384, 16, 3, 3, 3)}, wan)
    _one_line_error(wan, "not a tiny-decoder")
    assert not is_tiny_decoder_file(wan) and not is_tiny_decoder_file(garbage)
    missing = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "decoder.4.conv.2.bias"}, missing)
    _one_line_error(missing, "decoder.4.conv.2.bias")
    reshaped = tmp_path / "reshaped.pth"
    torch.save({**state, "decoder.9.conv.0.weight": torch.zeros(128, 128, 3, 3)}, reshaped)
    _one_line_error(reshaped, "decoder.9.conv.0.weight has shape")
    with pytest.raises(FileNotFoundError):
        load_tiny_decoder(tmp_path / "nowhere.pth")


@pytest.mark.gpu
def test_bf16_on_cuda_streams_near_the_fp32_whole_decode() -> None:
    """taew2_1's shapes at a full-size chunk's latent grid (60x104), bf16 on the device and
    streamed 3 latent frames a chunk, against one float32 CPU decode of the whole video."""
    model = random_tiny_decoder(TAEW2_1, seed=6)
    with torch.no_grad():
        model.conv_out.bias += 0.5  # mid-range frames: none clamped
    z = torch.randn(1, 16, 6, 60, 104, generator=torch.Generator().manual_seed(7))
    whole = model.decode_chunk(z, model.new_decode_state())
    device = model.to("cuda", torch.bfloat16)
    state = device.new_decode_state()
    parts = [device.decode_chunk(p.cuda(), state) for p in z.split(3, dim=2)]
    streamed = torch.cat(parts, dim=2).float().cpu()
    assert [p.shape[2] for p in parts] == [9, 12]
    assert (streamed - whole).abs().mean() < 0.1 * whole.std()  # bf16 rounding, not a bug
