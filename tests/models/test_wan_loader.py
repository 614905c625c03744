"""The Wan checkpoint loader (models/wan/loader.py and the checkpoint_*.py modules it reads
through): every checkpoint layout read back to the original Wan names, LoRA merge, shape checks,
error messages, and assign-loading into a meta-device stand-in model."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from framestream.models.wan.checkpoint_error import CheckpointError
from framestream.models.wan.checkpoint_lora import merge_lora
from framestream.models.wan.checkpoint_wan import expected_wan_shapes
from framestream.models.wan.loader import (
    LAYOUTS,
    check_state_dict,
    detect_wan_layout,
    load_wan_weights,
    read_wan_state_dict,
)

CFG = types.SimpleNamespace(
    dim=64,
    ffn_dim=128,
    freq_dim=32,
    num_heads=2,
    num_layers=2,
    in_channels=16,
    out_channels=16,
    patch_size=(1, 2, 2),
    text_dim=32,
    text_len=16,
    eps=1e-6,
)
LORA_RANK = 4
LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o")
LORA_TARGETS += ("cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")

# Original → diffusers, written out independently of the loader's table (reference §6.4,
# diffusers scripts/convert_wan_to_diffusers.py), applied as ordered substring replacement.
WAN_TO_DIFFUSERS = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm3", "norm2"),
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
)


def to_diffusers(key: str) -> str:
    for old, new in WAN_TO_DIFFUSERS:
        key = key.replace(old, new)
    return key


@pytest.fixture
def sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in expected_wan_shapes(CFG).items()}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), k


def make_lora(sd: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(CFG.num_layers):
        for t in LORA_TARGETS:
            out_f, in_f = sd[f"blocks.{n}.{t}.weight"].shape
            base = f"base_model.model.blocks.{n}.{t}"
            out[f"{base}.lora_A.weight"] = torch.randn(LORA_RANK, in_f, generator=g)
            out[f"{base}.lora_B.weight"] = torch.randn(out_f, LORA_RANK, generator=g)
    return out


def expected_merge(sd, lora, scale=1.0):
    want = dict(sd)
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora[key.replace("lora_A", "lora_B")]
        target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        want[target] = sd[target] + scale * (b @ a)
    return want


# ------------------------------------------------------------------------------ shape table


def test_expected_shapes_table():
    shapes = expected_wan_shapes(CFG)
    assert len(shapes) == 12 + 3 + CFG.num_layers * (2 * 10 + 2 + 4 + 1)
    assert shapes["patch_embedding.weight"] == (64, 16, 1, 2, 2)
    assert shapes["text_embedding.0.weight"] == (64, 32)
    assert shapes["time_embedding.0.weight"] == (64, 32)
    assert shapes["time_projection.1.weight"] == (384, 64)
    assert shapes["blocks.1.cross_attn.norm_k.weight"] == (64,)
    assert shapes["blocks.0.ffn.0.weight"] == (128, 64)
    assert shapes["blocks.0.ffn.2.weight"] == (64, 128)
    assert shapes["blocks.0.modulation"] == (1, 6, 64)
    assert shapes["head.head.weight"] == (64, 64)
    assert shapes["head.modulation"] == (1, 2, 64)
    with pytest.raises(TypeError, match="'ffn_dim'"):
        expected_wan_shapes(types.SimpleNamespace(dim=8))


def test_expected_shapes_match_the_model_when_it_exists():
    model_mod = pytest.importorskip("framestream.models.wan.model")
    config_mod = pytest.importorskip("framestream.models.wan.config")
    cfg = config_mod.WanConfig(**vars(CFG))
    with torch.device("meta"):
        model = model_mod.CausalWanModel(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_wan_shapes(cfg)


def test_load_into_real_model_when_it_exists(tmp_path, sd):
    model_mod = pytest.importorskip("framestream.models.wan.model")
    config_mod = pytest.importorskip("framestream.models.wan.config")
    with torch.device("meta"):
        model = model_mod.CausalWanModel(config_mod.WanConfig(**vars(CFG)))
    save_file(sd, tmp_path / "w.safetensors")
    load_wan_weights(model, tmp_path / "w.safetensors", dtype=torch.float32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


# ------------------------------------------------------------------------------ layouts


def test_wan_single_safetensors(tmp_path, sd):
    save_file(sd, tmp_path / "w.safetensors")
    assert_same(read_wan_state_dict(tmp_path / "w.safetensors"), sd)
    assert_same(read_wan_state_dict(tmp_path / "w.safetensors", layout="wan"), sd)
    assert detect_wan_layout(tmp_path / "w.safetensors") == "wan"


def test_wan_folder_sharded_with_index(tmp_path, sd):
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2]}
    shards["diffusion_pytorch_model-00002-of-00002.safetensors"] = keys[len(keys) // 2 :]
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, tmp_path / name)
        weight_map.update(dict.fromkeys(ks, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text("{}")
    assert_same(read_wan_state_dict(tmp_path), sd)
    assert detect_wan_layout(tmp_path) == "wan"

    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="00002-of-00002"):
        read_wan_state_dict(tmp_path)


def test_wan_folder_single_file(tmp_path, sd):
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    assert_same(read_wan_state_dict(tmp_path, layout="wan"), sd)


def test_wan_pth(tmp_path, sd):
    torch.save(sd, tmp_path / "model.pth")
    assert_same(read_wan_state_dict(tmp_path / "model.pth"), sd)
    assert detect_wan_layout(tmp_path / "model.pth") == "wan"


def _write_diffusers(root: Path, sd) -> Path:
    folder = root / "transformer"
    folder.mkdir()
    dsd = {to_diffusers(k): v for k, v in sd.items()}
    assert len(dsd) == len(sd)
    g = torch.Generator().manual_seed(2)
    dsd["rope.freqs_cos"] = torch.randn(1024, 16, generator=g)  # ignored if present
    save_file(dsd, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    return folder


def test_diffusers_folder(tmp_path, sd):
    folder = _write_diffusers(tmp_path, sd)
    assert_same(read_wan_state_dict(tmp_path), sd)  # pipeline root → transformer/
    assert_same(read_wan_state_dict(folder, layout="diffusers"), sd)
    assert detect_wan_layout(tmp_path) == "diffusers"


def test_diffusers_real_model_names(tmp_path):
    """Key names and shapes of the installed diffusers WanTransformer3DModel map onto ours."""
    transformer_wan = pytest.importorskip("diffusers.models.transformers.transformer_wan")
    torch.manual_seed(0)
    model = transformer_wan.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=CFG.num_heads,
        attention_head_dim=CFG.dim // CFG.num_heads,
        in_channels=CFG.in_channels,
        out_channels=CFG.out_channels,
        text_dim=CFG.text_dim,
        freq_dim=CFG.freq_dim,
        ffn_dim=CFG.ffn_dim,
        num_layers=CFG.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=CFG.eps,
    )
    model.save_pretrained(tmp_path / "transformer", max_shard_size="50KB")
    assert list((tmp_path / "transformer").glob("*.index.json"))  # really sharded
    got = read_wan_state_dict(tmp_path, layout="diffusers")
    check_state_dict(got, expected_wan_shapes(CFG))
    assert torch.equal(got["head.modulation"], model.scale_shift_table)
    assert torch.equal(got["head.head.weight"], model.proj_out.weight)
    assert torch.equal(got["blocks.1.modulation"], model.blocks[1].scale_shift_table)
    assert torch.equal(got["blocks.1.norm3.weight"], model.blocks[1].norm2.weight)
    assert torch.equal(got["blocks.0.self_attn.o.bias"], model.blocks[0].attn1.to_out[0].bias)
    assert torch.equal(
        got["blocks.0.cross_attn.norm_k.weight"], model.blocks[0].attn2.norm_k.weight
    )
    assert torch.equal(got["blocks.0.ffn.0.weight"], model.blocks[0].ffn.net[0].proj.weight)
    emb = model.condition_embedder
    assert torch.equal(got["time_projection.1.weight"], emb.time_proj.weight)
    assert torch.equal(got["text_embedding.2.bias"], emb.text_embedder.linear_2.bias)


def test_longlive_with_lora(tmp_path, sd):
    torch.save(
        {"generator": {"model." + k: v for k, v in sd.items()}, "step": 3}, tmp_path / "b.pt"
    )
    lora = make_lora(sd)
    torch.save({"generator_lora": lora, "critic_lora": {}, "step": 3}, tmp_path / "lora.pt")

    base = read_wan_state_dict(tmp_path / "b.pt", layout="longlive")
    assert_same(base, sd)
    assert detect_wan_layout(tmp_path / "b.pt") == "longlive"
    assert_same(read_wan_state_dict(tmp_path / "b.pt"), sd)

    merged = merge_lora(base, tmp_path / "lora.pt")
    want = expected_merge(sd, lora)
    assert sorted(merged) == sorted(want)
    for k in want:
        torch.testing.assert_close(merged[k], want[k], rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged["blocks.1.ffn.2.weight"], sd["blocks.1.ffn.2.weight"])
    assert merged["head.head.weight"] is base["head.head.weight"]  # untouched
    assert torch.equal(base["blocks.0.self_attn.q.weight"], sd["blocks.0.self_attn.q.weight"])

    scaled = merge_lora(base, lora, alpha=2 * LORA_RANK, rank=LORA_RANK)
    want2 = expected_merge(sd, lora, scale=2.0)
    torch.testing.assert_close(scaled["blocks.0.ffn.0.weight"], want2["blocks.0.ffn.0.weight"])


def test_lora_tolerates_adapter_name_and_model_segment(sd):
    lora = make_lora(sd)
    renamed = {
        k.replace("base_model.model.", "base_model.model.model.")
        .replace("lora_A.", "lora_A.default.")
        .replace("lora_B.", "lora_B.default."): v
        for k, v in lora.items()
    }
    merged = merge_lora(sd, renamed)
    want = expected_merge(sd, lora)
    torch.testing.assert_close(
        merged["blocks.1.cross_attn.v.weight"], want["blocks.1.cross_attn.v.weight"]
    )


def test_lora_merge_in_float32_then_cast_back(sd):
    bf = {k: v.to(torch.bfloat16) for k, v in sd.items()}
    lora = make_lora(sd)
    merged = merge_lora(bf, lora)
    key = "blocks.0.self_attn.k.weight"
    assert merged[key].dtype == torch.bfloat16
    a = lora["base_model.model.blocks.0.self_attn.k.lora_A.weight"]
    b = lora["base_model.model.blocks.0.self_attn.k.lora_B.weight"]
    want = (bf[key].float() + b @ a).to(torch.bfloat16)
    assert torch.equal(merged[key], want)


@pytest.mark.parametrize("layout", ["self_forcing", "rolling_forcing", "auto"])
def test_self_forcing_and_rolling_forcing_prefer_ema(tmp_path, sd, layout):
    ema = {k: v + 1 for k, v in sd.items()}
    ckpt = {
        "generator_ema": {"model._fsdp_wrapped_module." + k: v for k, v in ema.items()},
        "generator": {"model." + k: v for k, v in sd.items()},
        "critic": {"model.x": torch.zeros(1)},
    }
    torch.save(ckpt, tmp_path / "rolling_forcing_dmd.pt")
    path = tmp_path / "rolling_forcing_dmd.pt"
    assert_same(read_wan_state_dict(path, layout=layout), ema)
    assert_same(read_wan_state_dict(path, layout=layout, use_ema=False), sd)
    assert detect_wan_layout(path) == "self_forcing"


def test_longlive_falls_back_to_model_key(tmp_path, sd):
    torch.save({"model": {"model." + k: v for k, v in sd.items()}}, tmp_path / "c.pt")
    assert_same(read_wan_state_dict(tmp_path / "c.pt", layout="longlive"), sd)


def test_auto_reads_content_not_file_names(tmp_path, sd):
    # Named like a diffusers file, holds original keys: the keys win.
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    assert detect_wan_layout(tmp_path) == "wan"
    # Named like a LongLive checkpoint, holds a flat original state dict.
    torch.save(sd, tmp_path / "longlive_base.pt")
    assert detect_wan_layout(tmp_path / "longlive_base.pt") == "wan"


# ------------------------------------------------------------------------------ errors


def test_check_reports_missing_extra_and_misshaped(sd):
    broken = dict(sd)
    del broken["blocks.1.norm3.bias"]
    broken["blocks.0.norm2.weight"] = torch.zeros(64)
    broken["blocks.0.self_attn.q.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(broken, expected_wan_shapes(CFG))
    msg = str(info.value)
    assert "1 missing key(s): blocks.1.norm3.bias" in msg
    assert "1 unexpected key(s): blocks.0.norm2.weight" in msg
    assert "blocks.0.self_attn.q.weight: expected (64, 64), found (64, 32)" in msg
    assert info.value.missing == ["blocks.1.norm3.bias"]
    assert info.value.unexpected == ["blocks.0.norm2.weight"]
    assert info.value.mismatched == [("blocks.0.self_attn.q.weight", (64, 64), (64, 32))]
    assert isinstance(info.value, ValueError)


def test_check_names_first_few_of_many(sd):
    broken = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
    with pytest.raises(CheckpointError, match=r"54 missing key\(s\): blocks\.0\..*\(\+49 more\)"):
        check_state_dict(broken, expected_wan_shapes(CFG))


@pytest.mark.parametrize("kind", ["missing", "extra", "misshaped"])
def test_load_rejects_broken_checkpoint(tmp_path, sd, kind):
    broken = dict(sd)
    if kind == "missing":
        del broken["time_embedding.2.bias"]
        pattern = "missing key.*time_embedding.2.bias"
    elif kind == "extra":
        broken["blocks.0.self_attn.extra.weight"] = torch.zeros(3)
        pattern = "unexpected key.*blocks.0.self_attn.extra.weight"
    else:
        broken["head.modulation"] = torch.zeros(1, 3, 64)
        pattern = re.escape("head.modulation: expected (1, 2, 64), found (1, 3, 64)")
    save_file(broken, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=pattern):
        load_wan_weights(stand_in_model(), tmp_path / "w.safetensors")


def test_lora_errors(sd):
    lora = make_lora(sd)
    ghost = {
        "base_model.model.blocks.7.self_attn.q.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.blocks.7.self_attn.q.lora_B.weight": torch.zeros(64, 4),
    }
    with pytest.raises(CheckpointError, match=r"blocks\.7\.self_attn\.q\.lora_A.*blocks\.7"):
        merge_lora(sd, {**lora, **ghost})

    unpaired = dict(lora)
    del unpaired["base_model.model.blocks.1.ffn.0.lora_B.weight"]
    with pytest.raises(CheckpointError, match=r"blocks\.1\.ffn\.0\.lora_A\.weight.*lora_B"):
        merge_lora(sd, unpaired)

    wrong = dict(lora)
    wrong["base_model.model.blocks.0.ffn.2.lora_A.weight"] = torch.zeros(4, 64)  # in is 128
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.2\.weight.*\(64, 128\)"):
        merge_lora(sd, wrong)

    with pytest.raises(CheckpointError, match="rank 4, but rank=256"):
        merge_lora(sd, lora, rank=256)

    with pytest.raises(CheckpointError, match="found keys critic_lora, step"):
        merge_lora(sd, {"critic_lora": {}, "step": 1})


def test_dict_without_generator_key(tmp_path, sd):
    torch.save({"critic": {"model." + k: v for k, v in sd.items()}, "step": 1}, tmp_path / "x.pt")
    for layout in ("auto", "longlive", "self_forcing"):
        with pytest.raises(CheckpointError, match=r"found keys critic, step"):
            read_wan_state_dict(tmp_path / "x.pt", layout=layout)


def test_layout_must_agree_with_content(tmp_path, sd):
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="layout='diffusers' but the keys .* 'wan' names"):
        read_wan_state_dict(tmp_path / "w.safetensors", layout="diffusers")
    with pytest.raises(CheckpointError, match="layout='longlive' expects a training checkpoint"):
        read_wan_state_dict(tmp_path / "w.safetensors", layout="longlive")
    torch.save({"generator": sd}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="layout='wan' expects a flat state dict"):
        read_wan_state_dict(tmp_path / "g.pt", layout="wan")


def test_unrecognised_keys(tmp_path):
    save_file({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path / "t5.safetensors")
    with pytest.raises(CheckpointError, match="neither original Wan nor diffusers.*encoder"):
        read_wan_state_dict(tmp_path / "t5.safetensors")


def test_folded_diffusers_norm_out_refused(tmp_path, sd):
    dsd = {to_diffusers(k): v for k, v in sd.items()}
    dsd["norm_out.linear.weight"] = torch.zeros(128, 64)
    save_file(dsd, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="norm_out.linear.weight.*folded"):
        read_wan_state_dict(tmp_path)


def test_missing_path_and_unknown_layout(tmp_path, sd):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_wan_state_dict(tmp_path / "nope.pt")
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="layout='comfy'.*'diffusers'.*'rolling_forcing'"):
        read_wan_state_dict(tmp_path / "w.safetensors", layout="comfy")
    assert "auto" in LAYOUTS
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no Wan weights"):
        read_wan_state_dict(tmp_path / "empty")


def test_pickled_objects_need_trust_pickle(tmp_path, sd):
    ckpt = {
        "generator": {"model." + k: v for k, v in sd.items()},
        "config": types.SimpleNamespace(),
    }
    torch.save(ckpt, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_wan_state_dict(tmp_path / "p.pt")
    assert_same(read_wan_state_dict(tmp_path / "p.pt", trust_pickle=True), sd)


# ------------------------------------------------------------------------------ load into a model


def stand_in_model() -> nn.Module:
    """A module tree whose state_dict has exactly the expected names and shapes, on meta."""
    root = nn.Module()
    with torch.device("meta"):
        for name, shape in expected_wan_shapes(CFG).items():
            *path, leaf = name.split(".")
            module = root
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, nn.Parameter(torch.empty(shape)))
    return root


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_load_into_meta_model(tmp_path, sd, dtype):
    save_file(sd, tmp_path / "w.safetensors")
    model = stand_in_model()
    assert all(p.is_meta for p in model.parameters())
    out = load_wan_weights(model, tmp_path / "w.safetensors", dtype=dtype)
    assert out is model
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(sd)
    for k, v in sd.items():
        assert not params[k].is_meta
        assert isinstance(params[k], nn.Parameter)
        assert params[k].dtype == dtype
        assert torch.equal(params[k], v.to(dtype)), k


def test_load_adopts_the_read_tensor_without_a_copy(tmp_path, sd, monkeypatch):
    save_file(sd, tmp_path / "w.safetensors")
    import framestream.models.wan.loader as loader

    seen = {}
    real = loader.read_wan_state_dict

    def spy(*args, **kwargs):
        seen.update(real(*args, **kwargs))
        return seen

    monkeypatch.setattr(loader, "read_wan_state_dict", spy)
    model = loader.load_wan_weights(
        stand_in_model(), tmp_path / "w.safetensors", dtype=torch.float32
    )
    q = model.get_submodule("blocks.0.self_attn.q").weight
    assert q.data_ptr() == seen["blocks.0.self_attn.q.weight"].data_ptr()


def test_load_longlive_with_lora(tmp_path, sd):
    torch.save({"generator": {"model." + k: v for k, v in sd.items()}}, tmp_path / "b.pt")
    lora = make_lora(sd)
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    model = load_wan_weights(
        stand_in_model(), tmp_path / "b.pt", lora=tmp_path / "lora.pt", dtype=torch.float32
    )
    want = expected_merge(sd, lora)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p, want[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64])
def test_load_refuses_other_dtypes(tmp_path, sd, dtype):
    save_file(sd, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"dtype={dtype!r}")):
        load_wan_weights(stand_in_model(), tmp_path / "w.safetensors", dtype=dtype)
