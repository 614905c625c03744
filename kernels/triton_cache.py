"""One Triton launch that stores a step's new keys and values into their pool slots.

:func:`kernels.attention.write_kv` in torch is three launches per layer (the slots cast to
int64, then an ``index_copy_`` for the keys and one for the values). Here one launch reads the
int32 slots as they are and copies both::

    k, v [N, H_kv, D] (any row stride: views of a fused q/k/v projection are fine)
          |  grid = (N, 2): program (i, 0) stores k[i], program (i, 1) stores v[i]
          v
    k_cache[slots[i]], v_cache[slots[i]]     cast to the cache dtype on the store

An FP8 cache (``float8_e4m3fn``) gets what :func:`kernels.attention.to_cache_dtype` gives:
clamped to +-448 and rounded to nearest even, bit for bit (:func:`_round_e4m3`).

Graph-safe (no host sync). :func:`kernels.attention.write_kv` dispatches here on CUDA; its
``index_copy_`` path is the torch twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from framestream.kernels.triton_launch import Launcher, next_power_of_2

__all__ = ["write_kv_triton"]


@triton.jit
def _round_e4m3(x):
    """``x`` clamped to +-448 and rounded to the nearest even e4m3 value, in float32.

    The store's own cast then has nothing left to round, so the interpreter (whose fp8 cast
    drops the carry of a round-up into the next binade: 1.96 -> 1.0) and the GPU (``cvt.rn``)
    store the same bits as torch. Rounding works on the float32 bits: e4m3 keeps 3 of the 23
    mantissa bits down to its smallest normal 2^-6 (exponent field 121), one fewer per binade
    below (subnormals, quantum 2^-9); under 2^-9 the result is 0 or 2^-9.
    """
    x = tl.minimum(tl.maximum(x.to(tl.float32), -448.0), 448.0)
    bits = x.to(tl.int32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    exp = mag >> 23
    drop = 20 + tl.minimum(tl.maximum(121 - exp, 0), 3)  # low mantissa bits to round away
    odd = ((mag | 0x800000) >> drop) & 1  # the implicit bit is the kept lsb when drop is 23
    rounded = (mag + (1 << (drop - 1)) - 1 + odd) >> drop << drop  # a carry bumps the exponent
    # below 2^-9 (exponent field 118): 2^-9 past the tie at 2^-10 (0x3A800000), else 0
    tiny = tl.where(mag > 0x3A800000, 0x3B000000, 0)
    mag = tl.where(exp < 118, tiny, rounded)
    return ((bits & -0x80000000) | mag).to(tl.float32, bitcast=True)


@triton.jit
def _cache_rows(x, dtype: tl.constexpr, FP8: tl.constexpr):
    """``x`` as the cache stores it: rounded by :func:`_round_e4m3` first into an FP8 cache."""
    if FP8:
        x = _round_e4m3(x)
    return x.to(dtype)


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_kcn,
    stride_kch,
    stride_vcn,
    stride_vch,
    num_heads,
    head_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FP8: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_heads) & (dims < head_dim)
    if tl.program_id(1) == 0:
        x = tl.load(k_ptr + row * stride_kn + heads * stride_kh + dims, mask=mask)
        dst = k_cache_ptr + slot * stride_kcn + heads * stride_kch + dims
        tl.store(dst, _cache_rows(x, k_cache_ptr.dtype.element_ty, FP8), mask=mask)
    else:
        x = tl.load(v_ptr + row * stride_vn + heads * stride_vh + dims, mask=mask)
        dst = v_cache_ptr + slot * stride_vcn + heads * stride_vch + dims
        tl.store(dst, _cache_rows(x, v_cache_ptr.dtype.element_ty, FP8), mask=mask)


_write_kv = Launcher(_write_kv_kernel)  # a few us of host time a launch (kernels.triton_launch)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def write_kv_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Same contract as :func:`kernels.attention.write_kv`: ``k``/``v [N, H_kv, D]`` into
    rows ``slots [N]`` (int32 or int64) of ``k_cache``/``v_cache [num_slots, H_kv, D]``."""
    if k.shape != v.shape or k.ndim != 3 or slots.shape != (k.shape[0],):
        raise ValueError(
            f"k {tuple(k.shape)}, v {tuple(v.shape)} and slots {tuple(slots.shape)} must be "
            "[N, H_kv, D], [N, H_kv, D] and [N]"
        )
    if k_cache.shape != v_cache.shape or k_cache.shape[1:] != k.shape[1:]:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} do not hold "
            f"rows of {tuple(k.shape[1:])}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need unit stride along the head dim")
    if k_cache.dtype != v_cache.dtype:  # one FP8 switch for both
        raise ValueError(f"k_cache is {k_cache.dtype} but v_cache is {v_cache.dtype}")
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    k, v = _unit_last(k), _unit_last(v)
    _write_kv(
        (num_tokens, 2),
        k,
        v,
        k_cache,
        v_cache,
        slots,
        *k.stride()[:2],
        *v.stride()[:2],
        *k_cache.stride()[:2],
        *v_cache.stride()[:2],
        num_heads,
        head_dim,
        BLOCK_H=next_power_of_2(num_heads),
        BLOCK_D=next_power_of_2(head_dim),
        FP8=k_cache.dtype == torch.float8_e4m3fn,
        num_warps=4 if k.device.type == "cuda" else 1,
    )
