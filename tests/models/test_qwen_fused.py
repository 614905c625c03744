"""The Qwen decoder's fused inference path: concatenated q/k/v and gate/up projections (views,
no copies) and the Triton kernels (add + RMSNorm, SiLU * up, the K/V store) forced on against
the torch path and transformers; on CPU the kernels run in Triton's interpreter
(tests/conftest.py)."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from framestream.kernels import triton_cache, triton_norms
from framestream.models.attention import DenseAttention
from framestream.models.qwen_vl import QwenVL
from framestream.models.qwen_vl_tiny import tiny_qwen_vl
from framestream.stream.kvcache import CacheView, build_step
from tests.models.test_qwen_vl import ATOL, _hf_logits, _pool, _Session


@pytest.fixture(scope="module")
def tiny() -> QwenVL:
    return tiny_qwen_vl(seed=0)


@pytest.fixture
def calls(monkeypatch):
    """Count the fused kernels' calls, so a test sees that the fused path really ran."""
    counts: collections.Counter = collections.Counter()
    for module, name in [
        (triton_norms, "add_rms_norm"),
        (triton_norms, "silu_mul"),
        (triton_cache, "write_kv_triton"),
    ]:
        original = getattr(module, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            with record_function("fused_kernel"):
                return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return counts


def test_fused_projections_are_views_not_copies(tiny: QwenVL) -> None:
    """Every q/k/v and gate/up parameter is a view of its layer's concatenation, shared with
    transformers (same objects): the parameters' storage adds up to their sizes, no more."""
    lm = tiny.hf.model.language_model
    for ours, theirs in zip(tiny.decoder.layers, lm.layers, strict=True):
        attn, mlp = ours.self_attn, ours.mlp
        assert attn.q_proj.weight is theirs.self_attn.q_proj.weight
        assert mlp.up_proj.weight is theirs.mlp.up_proj.weight
        weight, bias = attn.qkv
        for p, fused in [
            (attn.q_proj.weight, weight),
            (attn.v_proj.weight, weight),
            (attn.k_proj.bias, bias),
            (mlp.gate_proj.weight, mlp.gate_up),
            (mlp.up_proj.weight, mlp.gate_up),
        ]:
            assert p.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        torch.testing.assert_close(weight[-attn.sizes[2] :], attn.v_proj.weight, rtol=0, atol=0)
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage() for p in tiny.hf.parameters()}
    params = {id(p): p for p in tiny.hf.parameters()}.values()
    assert sum(s.nbytes() for s in storages.values()) == sum(
        p.numel() * p.element_size() for p in params
    )


def _decode_logits(tiny: QwenVL, steps: int) -> tuple[list[torch.Tensor], _Session]:
    """Prefill a StreamingVLM round through the real cache, then greedy-decode ``steps``."""
    pool = _pool(tiny)
    session = _Session(tiny, pool, 0, seed=1, prev="a blue square bounces")
    video = session.video
    embeds = tiny.embed(torch.tensor(session.ids), video.pixel_values_videos, video.video_grid_thw)
    plans = [session.prefill_plan()]
    out = []
    for _ in range(steps + 1):
        step = build_step(plans, causal=True, device="cpu")
        logits = tiny.decoder.logits(tiny.decoder(embeds, CacheView(pool, step, tiny.rope)))
        out.append(logits[-1])
        token = int(logits[-1].argmax())
        plans, embeds = [session.decode_plan(token)], tiny.embed(torch.tensor([token]))
    return out, session


@torch.no_grad()
def test_fused_decode_matches_torch_and_transformers(monkeypatch, calls, tiny: QwenVL) -> None:
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "0")
    ref, _ = _decode_logits(tiny, 2)
    assert not calls
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "1")
    got, session = _decode_logits(tiny, 2)
    layers = tiny.args.num_layers
    forwards = 3  # the prefill and 2 decode steps
    assert calls == {
        "add_rms_norm": forwards * (2 * layers + 1),
        "silu_mul": forwards * layers,
        "write_kv_triton": forwards * layers,
    }
    torch.testing.assert_close(torch.stack(got), torch.stack(ref), rtol=0, atol=1e-5)
    hf = _hf_logits(tiny, session.ids[:-1], session.video)[-1]
    torch.testing.assert_close(got[-1], hf, rtol=0, atol=ATOL)


@torch.no_grad()
def test_decode_step_launches_ten_kernels_a_layer(monkeypatch, calls, tiny: QwenVL) -> None:
    """One decode step, fused: per layer 2 add + norms, silu * up and the K/V store (Triton),
    and 4 matmuls are all that compute outside the attention backend (the Triton decode and
    combine on CUDA: 10 launches a layer); the final norm is one more."""
    monkeypatch.setenv("STREAM_FUSED_KERNELS", "1")
    pool = _pool(tiny)
    session = _Session(tiny, pool, 0, seed=1, prev="a red circle")
    video = session.video
    embeds = tiny.embed(torch.tensor(session.ids), video.pixel_values_videos, video.video_grid_thw)
    tiny.decoder(
        embeds, CacheView(pool, build_step([session.prefill_plan()], True, "cpu"), tiny.rope)
    )
    view = CacheView(pool, build_step([session.decode_plan(7)], True, "cpu"), tiny.rope)
    backend = view._attention

    def attention(*args):
        with record_function("attention_backend"):
            return backend(*args)

    view._attention = attention
    calls.clear()
    embeds = tiny.embed(torch.tensor([7]))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("decoder"):
            tiny.decoder(embeds, view)
    layers = tiny.args.num_layers
    assert calls == {"add_rms_norm": 2 * layers + 1, "silu_mul": layers, "write_kv_triton": layers}
    computing = collections.Counter()
    quiet = {"aten::empty", "aten::view", "aten::reshape", "aten::select", "aten::split_with_sizes"}
    for event in prof.events():
        parents, parent = [], event.cpu_parent
        while parent is not None:
            parents.append(parent.name)
            parent = parent.cpu_parent
        top_level = parents and not parents[0].startswith("aten::")
        inside = {"attention_backend", "fused_kernel"} & set(parents)
        if event.name.startswith("aten::") and event.name not in quiet and top_level:
            computing[event.name] += "decoder" in parents and not inside
    assert +computing == {"aten::linear": 4 * layers}


def test_moved_model_is_fused_again() -> None:
    vl = tiny_qwen_vl(seed=2)
    vl.hf.to(torch.float64)  # new storage for every parameter: the concatenations are stale
    embeds = vl.embed(torch.tensor([3, 4, 5]))
    pos = torch.arange(3, dtype=torch.int32)[:, None].repeat(1, 3)
    with torch.no_grad():
        hidden = vl.decoder(embeds, DenseAttention(pos, (0, 3), vl.rope, causal=True))
    assert hidden.dtype == torch.float64
    attn = vl.decoder.layers[0].self_attn
    assert attn.qkv[0].dtype == torch.float64
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.qkv[0].data_ptr()


def test_training_updates_reach_the_fused_weights() -> None:
    """With gradients recorded the separate parameters compute (transformers' optimiser sees
    their gradients); an in-place update of them is what inference then computes with."""
    vl = tiny_qwen_vl(seed=3)
    vl.hf.requires_grad_(True)
    embeds = vl.embed(torch.tensor([3, 4, 5, 6])).detach()
    pos = torch.arange(4, dtype=torch.int32)[:, None].repeat(1, 3)

    def forward():
        attention = DenseAttention(pos, (0, 4), vl.rope, causal=True)
        return vl.decoder.logits(vl.decoder(embeds, attention))

    forward().square().mean().backward()
    params = list(vl.decoder.parameters())  # transformers' own objects
    assert all(p.grad is not None for p in params)
    with torch.no_grad():
        for p in params:
            p.sub_(0.1 * p.grad)
        fused = forward()
    unfused = forward().detach()  # gradients recorded: the separate parameters
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-5)
