"""A trained DiT grown deeper draws what it drew before, and its new blocks learn."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from framestream.kernels.rope import wan_rope
from framestream.models.attention import DenseAttention
from framestream.models.positions import frame_positions
from framestream.models.toyworld import train_generator as tg
from framestream.models.toyworld.deepen import deepened_dit, kept_positions
from framestream.models.toyworld.generator_eval import generate
from framestream.models.wan import WAN_PRESETS, CausalWanModel, wan_config


def _saved_model(path, preset: str, seed: int = 0) -> CausalWanModel:
    model = CausalWanModel(wan_config(preset))
    model.init_weights(torch.Generator().manual_seed(seed))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model.eval()


def test_trained_blocks_keep_their_order_spread_among_the_new():
    assert kept_positions(6, 12) == [0, 2, 4, 6, 8, 10]
    assert kept_positions(4, 6) == [0, 1, 3, 4]
    assert kept_positions(6, 6) == list(range(6))
    with pytest.raises(ValueError, match="cannot deepen 6 layers into 4"):
        kept_positions(6, 4)


def test_the_deepened_dit_samples_exactly_what_it_grew_from(tmp_path):
    path = tmp_path / "dit.safetensors"
    shallow = _saved_model(path, "toyworld-m-words")
    deep, record = deepened_dit(path, "toyworld-l-words", torch.Generator().manual_seed(1))
    assert record == {"from_layers": 6, "to_layers": 12, "kept_at": [0, 2, 4, 6, 8, 10]}
    assert len(deep.blocks) == 12
    torch.testing.assert_close(deep.blocks[4].ffn[0].weight, shallow.blocks[2].ffn[0].weight)

    context = torch.randn(1, wan_config("toyworld-m-words").text_len, 32)

    def sample(model: CausalWanModel) -> torch.Tensor:
        return generate(model, context, 6, (8, 8), torch.Generator().manual_seed(2))

    torch.testing.assert_close(sample(deep), sample(shallow), rtol=1e-5, atol=1e-5)


def test_the_new_blocks_learn(tmp_path):
    path = tmp_path / "dit.safetensors"
    _saved_model(path, "toyworld-m-words")
    deep, _ = deepened_dit(path, "toyworld-l-words")
    grid = deep.config.token_grid(8, 8)
    pos = torch.from_numpy(frame_positions(np.arange(3), grid))
    attention = DenseAttention(pos, (0, pos.shape[0]), wan_rope(deep.config.head_dim), causal=False)
    text = deep.encode_text(torch.randn(1, 32, 32))
    x = torch.randn(1, deep.config.in_channels, 3, 8, 8)
    deep(x, torch.full((1, 3), 500.0), text, attention).square().mean().backward()
    new = deep.blocks[1]
    for out in (new.self_attn.o, new.cross_attn.o, new.ffn[2]):
        assert torch.count_nonzero(out.weight) == 0 and out.weight.grad.abs().sum() > 0


def test_other_architecture_differences_are_refused(tmp_path):
    path = tmp_path / "dit.safetensors"
    _saved_model(path, "toyworld-words")  # dim 128: not a shallower toyworld-l-words
    with pytest.raises(RuntimeError, match="size mismatch"):
        deepened_dit(path, "toyworld-l-words")


def test_a_resumed_run_deepens_its_dit_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setitem(WAN_PRESETS, "tiny-deep", replace(WAN_PRESETS["tiny"], num_layers=3))
    first, grown = tmp_path / "first", tmp_path / "grown"
    tg.main(["--smoke", "--out", str(first)])
    report = tg.main(["--smoke", "--resume", str(first), "--dit-preset", "tiny-deep",
                      "--out", str(grown)])  # fmt: skip
    assert report["deepened"] == {"from_layers": 2, "to_layers": 3, "kept_at": [0, 1]}
    assert report["config"]["dit_preset"] == "tiny-deep"
    assert report["generator"]["steps"] > 0
