"""One Triton launch that stores a step's new keys and values into their pool slots.

:func:`kernels.attention.write_kv` in torch is three launches per layer (the slots cast to
int64, then an ``index_copy_`` for the keys and one for the values). Here one launch reads the
int32 slots as they are and copies both::

    k, v [N, H_kv, D] (any row stride: views of a fused q/k/v projection are fine)
          |  grid = (N, 2): program (i, 0) stores k[i], program (i, 1) stores v[i]
          v
    k_cache[slots[i]], v_cache[slots[i]]     cast to the cache dtype on the store

Graph-safe (no host sync). :func:`kernels.attention.write_kv` dispatches here on CUDA; its
``index_copy_`` path is the torch twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Importing the device code also patches the CPU interpreter for NumPy 2 (TRITON_INTERPRET=1).
import kernels.triton_kernels  # noqa: F401
from kernels.triton_launch import Launcher, next_power_of_2

__all__ = ["write_kv_triton"]


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
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_heads) & (dims < head_dim)
    if tl.program_id(1) == 0:
        x = tl.load(k_ptr + row * stride_kn + heads * stride_kh + dims, mask=mask)
        dst = k_cache_ptr + slot * stride_kcn + heads * stride_kch + dims
        tl.store(dst, x.to(k_cache_ptr.dtype.element_ty), mask=mask)
    else:
        x = tl.load(v_ptr + row * stride_vn + heads * stride_vh + dims, mask=mask)
        dst = v_cache_ptr + slot * stride_vcn + heads * stride_vch + dims
        tl.store(dst, x.to(v_cache_ptr.dtype.element_ty), mask=mask)


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
        num_warps=4 if k.device.type == "cuda" else 1,
    )
