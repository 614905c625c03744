"""Triton paged attention against its torch twin :func:`kernels.attention.paged_attention_ref`.

Without CUDA the kernels run in Triton's CPU interpreter, which tests/conftest.py switches on
before anything imports triton (Triton picks interpreted or compiled when each ``@triton.jit``
function is defined, its own library included).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from framestream.kernels.attention import AttentionMetadata, paged_attention_ref, write_kv
from framestream.kernels.backends import select_backend
from framestream.kernels.rope import RopeSpec, mrope, rope_1d, wan_rope

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {  # (rtol, atol) against the float32 twin, after rounding to the output dtype
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


@pytest.fixture(scope="module")
def ta():
    """The kernel module, interpreted when there is no GPU (it registers its backend)."""
    return importlib.import_module("framestream.kernels.triton_attention")


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """Fill every fresh float buffer with NaN so unwritten output or workspace rows show up."""
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)


def make_case(
    q_lens: list[int],
    kv_lens: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    causal: bool,
    dtype: torch.dtype,
    seed: int,
    max_pos: tuple[int, int, int] = (24, 30, 52),
):
    """Random queries, a NaN-poisoned pool with keys in permuted slots, packed metadata.

    q, k_cache and v_cache are strided views (q of a fused qkv, k/v of one pool), as in a model.
    """
    gen = torch.Generator().manual_seed(seed)
    num_q, num_kv = sum(q_lens), sum(kv_lens)
    num_slots = 2 * num_kv + 5
    pool = torch.full((num_slots, 2, num_kv_heads, head_dim), float("nan"), dtype=dtype)
    k_cache, v_cache = pool[:, 0], pool[:, 1]
    slots = torch.randperm(num_slots, generator=gen)[:num_kv].to(torch.int32)
    keys = torch.randn(num_kv, num_kv_heads, head_dim, generator=gen)
    write_kv(k_cache, v_cache, slots, keys, torch.randn(keys.shape, generator=gen))
    qkv = torch.randn(num_q, num_q_heads + 2, head_dim, generator=gen).to(dtype)
    q = qkv[:, :num_q_heads]

    def positions(n: int) -> torch.Tensor:
        cols = [torch.randint(0, m, (n,), generator=gen) for m in max_pos]
        return torch.stack(cols, 1).to(torch.int32)

    q_indptr, kv_indptr = [0], [0]
    for q_len, kv_len in zip(q_lens, kv_lens, strict=True):
        q_indptr.append(q_indptr[-1] + q_len)
        kv_indptr.append(kv_indptr[-1] + kv_len)
    meta = AttentionMetadata(
        q_pos=positions(num_q).to(DEVICE),
        kv_slots=slots.to(DEVICE),
        kv_pos=positions(num_kv).to(DEVICE),
        q_indptr=torch.tensor(q_indptr, dtype=torch.int32, device=DEVICE),
        kv_indptr=torch.tensor(kv_indptr, dtype=torch.int32, device=DEVICE),
        q_indptr_host=tuple(q_indptr),
        kv_indptr_host=tuple(kv_indptr),
        causal=causal,
    )
    meta.validate()
    return q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), meta


def make_rope(kind: str, head_dim: int) -> RopeSpec:
    if kind == "wan":
        return wan_rope(head_dim)
    if kind == "mrope":
        half = head_dim // 2  # Qwen2.5-VL's 16/24/24 split of 64 pairs, scaled
        t_pairs = half // 4
        hw_pairs = (half - t_pairs) // 2
        return mrope(head_dim, sections=(half - 2 * hw_pairs, hw_pairs, hw_pairs))
    return rope_1d(head_dim, interleaved=kind == "1d-interleaved")


def assert_matches(out: torch.Tensor, q, k_cache, v_cache, meta, rope, scale=None) -> None:
    ref = paged_attention_ref(q, k_cache, v_cache, meta, rope, scale)
    assert out.shape == ref.shape and out.dtype == q.dtype
    rtol, atol = TOLERANCE[q.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)


KV_LENS = [1, 7, 33, 54, 97]


@pytest.mark.parametrize(
    ("rope_kind", "causal", "dtype", "heads"),
    [
        ("wan", False, torch.float32, (4, 2)),
        ("wan", True, torch.float16, (4, 2)),
        ("mrope", True, torch.float32, (7, 1)),
        ("mrope", False, torch.float16, (4, 4)),
        ("1d", True, torch.bfloat16, (4, 2)),
    ],
)
def test_prefill_matches_reference(ta, rope_kind, causal, dtype, heads):
    head_dim = 32
    q_lens = [1, 7, 20, 54, 40] if causal else [3, 16, 33, 0, 41]
    case = make_case(q_lens, KV_LENS, *heads, head_dim, causal, dtype, seed=len(rope_kind) + causal)
    rope = make_rope(rope_kind, head_dim)
    assert_matches(ta.prefill_attention(*case, rope), *case, rope)


@pytest.mark.parametrize(
    ("rope_kind", "causal", "dtype", "heads", "q_lens", "num_splits"),
    [
        ("mrope", True, torch.float32, (7, 1), [1, 1, 1, 1, 1], 3),
        ("mrope", True, torch.float16, (4, 2), [1, 3, 0, 5, 2], None),
        ("wan", False, torch.float32, (4, 2), [2, 1, 4, 3, 1], 5),
        ("1d-interleaved", False, torch.float16, (7, 1), [1, 1, 1, 1, 1], 1),
        ("1d", True, torch.bfloat16, (4, 2), [1, 2, 3, 4, 5], 2),
    ],
)
def test_decode_matches_reference(ta, rope_kind, causal, dtype, heads, q_lens, num_splits):
    head_dim = 32
    case = make_case(q_lens, KV_LENS, *heads, head_dim, causal, dtype, seed=len(rope_kind))
    rope = make_rope(rope_kind, head_dim)
    out = ta.decode_attention(*case, rope, num_splits=num_splits)
    assert_matches(out, *case, rope)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_head_dims_far_positions_and_scale(ta, head_dim):
    """Other head sizes, positions in the ten thousands (large angles), a non-default scale."""
    case = make_case(
        [5, 9],
        [9, 30],
        2,
        1,
        head_dim,
        True,
        torch.float32,
        seed=head_dim,
        max_pos=(60_000, 30, 52),
    )
    rope = make_rope("mrope", head_dim)
    assert_matches(ta.prefill_attention(*case, rope, scale=0.3), *case, rope, scale=0.3)
    assert_matches(ta.decode_attention(*case, rope, scale=0.3), *case, rope, scale=0.3)


def test_backend_dispatch(ta):
    """The registered backend picks decode for few queries and prefill for many; both match."""
    assert select_backend(DEVICE, "triton") is ta.paged_attention_triton
    rope = make_rope("wan", 32)
    for q_lens in ([1, 2], [ta.DECODE_MAX_Q_LEN + 1, 3]):
        case = make_case(q_lens, [40, 45], 4, 2, 32, True, torch.float16, seed=sum(q_lens))
        assert_matches(ta.paged_attention_triton(*case, rope), *case, rope)


def test_rejects_bad_shapes(ta):
    q, k_cache, v_cache, meta = make_case([2], [4], 3, 2, 32, False, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        ta.paged_attention_triton(q, k_cache, v_cache, meta, make_rope("wan", 32))
    with pytest.raises(ValueError, match="head_dim"):
        ta.paged_attention_triton(q, k_cache, v_cache, meta, make_rope("wan", 64))
    q, k_cache, v_cache, meta = make_case([2], [4], 2, 2, 16, False, torch.float32, seed=0)
    with pytest.raises(ValueError, match="head_dim"):  # pair halves of 8 are too narrow
        ta.paged_attention_triton(q, k_cache, v_cache, meta, make_rope("wan", 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", ["wan_chunk", "qwen_decode"])
def test_full_size_on_gpu(ta, shape):
    """The production shapes in bf16: a Wan chunk and batched Qwen2.5-VL-7B decode."""
    if shape == "wan_chunk":
        case = make_case([4680], [18720], 12, 12, 128, False, torch.bfloat16, seed=1)
        rope = wan_rope(128)
    else:
        case = make_case(
            [1] * 16,
            [13_000 + 17 * i for i in range(16)],
            28,
            4,
            128,
            True,
            torch.bfloat16,
            seed=2,
            max_pos=(13_000, 13_000, 13_000),
        )
        rope = mrope(128)
    out = ta.paged_attention_triton(*case, rope)
    ref = paged_attention_ref(*case, rope).float()
    assert torch.linalg.norm(out.float() - ref) / torch.linalg.norm(ref) < 1e-2
