"""Triton paged attention with rotary embedding applied inside the kernel.

Same contract as :func:`kernels.attention.paged_attention_ref`: keys sit *un-rotated* in a slot
pool, every key is gathered through ``meta.kv_slots`` and rotated from ``meta.kv_pos`` while it is
loaded, queries are rotated from ``meta.q_pos``, and the softmax runs online in float32 (the
flash-attention recurrence with ``exp2``). Two kernels share one inner loop, :func:`_attend_keys`:

**Chunk / prefill** (``max_q_len > 32``: a Wan chunk, a recache, a long text prompt). One program
owns ``BLOCK_M`` queries of one head of one sequence and sweeps that sequence's keys::

        grid = (cdiv(max_q_len, BLOCK_M), H_q, S)

                  keys of sequence s (gathered by slot, rotated) ->
               +--------+--------+--------+--------+
    q tile m   | BLOCK_N| BLOCK_N|  ...   |        |    acc, max, sum in registers,
    head h     +--------+--------+--------+--------+    written once, in q.dtype

**Decode** (``max_q_len <= 32``: one or a few new text tokens per sequence, many cached keys).
There are too few queries to fill a tile per head, so one program takes *all* query heads of a
GQA group times all query tokens of the sequence as its rows (``row = token * GROUP + head``);
every key is loaded and rotated once per group instead of once per query head. The keys are
split over a third grid axis (flash-decoding) so that 16 sequences x 4 kv heads still fill the
GPU::

        grid = (S, H_kv, SPLITS)

                    split 0        split 1               split SPLITS-1
               +--------------+--------------+-- ... --+--------------+
    GROUP x    | acc, max, sum| acc, max, sum|         | acc, max, sum|  -> fp32 workspace
    q tokens   +--------------+--------------+-- ... --+--------------+
                                     |
                  combine: grid = (N_q, H_q), rescale by the split maxima, sum, divide

The rotation works on pairs, as :class:`RopeSpec` defines it (:meth:`RopeSpec.per_dim` spells
the same map out per dim): pair ``j`` turns by ``a = pos[axis[j]] * inv_freq[j]``. A kernel loads
a row as its two pair halves ``(x_a, x_b)`` (interleaved: one load, split in registers;
rotate-half: two contiguous half loads), rotates them in float32 with one cos/sin per *pair*,
and takes ``q . k`` as ``q_a . k_a + q_b . k_b``, so the model's dim order is never rebuilt.
cos/sin come from :func:`_sincos` (FMA range reduction and polynomials), not libdevice.

Measured on one H200, bf16, Triton 3.6 (``python -m evals.bench_kernels``): Wan chunk
4680 x 18720 x 12 x 128 in 3.8 ms (142 TFLOP/s, 3.7x dense cuDNN SDPA on pre-rotated keys);
Qwen2.5-VL decode, 16 x 13k keys, 28/4 heads, 0.28 ms (2.4x SDPA). Every key is rotated once
per query tile in the prefill kernel; that and the pointer gathers (no TMA) are the gap.
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from kernels.attention import DECODE_MAX_Q_LEN, AttentionMetadata, register_backend
from kernels.rope import RopeSpec

__all__ = [
    "DECODE_MAX_Q_LEN",
    "decode_attention",
    "paged_attention_triton",
    "prefill_attention",
]


_LOG2E = 1.4426950408889634
_TORCH_TO_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def _patch_interpreter_for_numpy2() -> None:
    """Let ``range(lo, hi)`` take loaded scalars under ``TRITON_INTERPRET=1`` with NumPy >= 2.4.

    The interpreter holds scalars as 1-element arrays and converts loop bounds with
    ``int(array)``, which NumPy 2.4 rejects for ``ndim > 0``. Only the CPU interpreter is touched.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_numpy2_patched", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_lang_tensor._numpy2_patched = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if triton.knobs.runtime.interpret:
    _patch_interpreter_for_numpy2()


# --------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------


@triton.jit
def _sincos(angle):
    """``(sin, cos)`` of float32 ``angle`` to ~1e-7 for |angle| up to ~4e6, on FMAs only.

    ``tl.sin``/``tl.cos`` lower to libdevice's full-range versions, whose slow-path code more
    than doubled the registers and time of the key loop. Here: Cody-Waite reduction by pi/2 in
    three fused multiply-adds (exact for large quadrant counts, as positions grow in a stream),
    Cephes polynomials on [-pi/4, pi/4], and a quadrant swap.
    """
    k = tl.floor(angle * 0.6366197723675814 + 0.5)
    r = tl.fma(k, -1.5703125, angle)
    r = tl.fma(k, -4.837512969970703125e-4, r)
    r = tl.fma(k, -7.54978995489188216e-8, r)
    z = r * r
    sin_r = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4))
    cos_r = (
        1.0
        - 0.5 * z
        + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5))
    )
    quadrant = k.to(tl.int32) & 3
    swap = (quadrant & 1) == 1
    sin = tl.where(swap, cos_r, sin_r)
    cos = tl.where(swap, sin_r, cos_r)
    sin = tl.where((quadrant & 2) == 2, -sin, sin)
    cos = tl.where(((quadrant + 1) & 2) == 2, -cos, cos)
    return sin, cos


@triton.jit
def _load_rotated(
    base_ptr,
    row_off,
    stride_d,
    pos_ptr,
    pos_row,
    mask,
    freq,
    axis,
    ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
):
    """Load ``ROWS`` head vectors at element offsets ``row_off`` and rotate them in float32.

    Returns the two halves of every rotation pair, ``(a, b)``, each ``[ROWS, HEAD_DIM // 2]``:
    ``a' = a cos - b sin``, ``b' = b cos + a sin``. Dot products are taken half by half, so the
    pairs never need to be put back into the model's layout. ``pos_row`` indexes the ``[N, 3]``
    position table (token order, not slot order).
    """
    HALF: tl.constexpr = HEAD_DIM // 2
    row_off = row_off[:, None]
    if INTERLEAVED:  # pair j = dims (2j, 2j+1): one contiguous load, split in registers
        dims = tl.arange(0, HEAD_DIM)
        x = tl.load(base_ptr + row_off + dims[None, :] * stride_d, mask=mask[:, None], other=0.0)
        a, b = tl.split(tl.reshape(x.to(tl.float32), [ROWS, HALF, 2]))
    else:  # pair j = dims (j, j + D/2): two contiguous half loads
        half = tl.arange(0, HALF)
        a_ptr = base_ptr + row_off + half[None, :] * stride_d
        a = tl.load(a_ptr, mask=mask[:, None], other=0.0).to(tl.float32)
        b = tl.load(a_ptr + HALF * stride_d, mask=mask[:, None], other=0.0).to(tl.float32)
    # Three column loads and a select instead of a [ROWS, HALF] gather of positions.
    pos_t = tl.load(pos_ptr + pos_row * 3 + 0, mask=mask, other=0)[:, None]
    pos_h = tl.load(pos_ptr + pos_row * 3 + 1, mask=mask, other=0)[:, None]
    pos_w = tl.load(pos_ptr + pos_row * 3 + 2, mask=mask, other=0)[:, None]
    axis = axis[None, :]
    pos = tl.where(axis == 0, pos_t, tl.where(axis == 1, pos_h, pos_w))
    # Same float32 product as the torch twin, so both take cos/sin of the same angle.
    angle = pos.to(tl.float32) * freq[None, :]
    sin, cos = _sincos(angle)
    return a * cos - b * sin, b * cos + a * sin


@triton.jit
def _attend_keys(
    acc,
    m_i,
    l_i,
    q_a,
    q_b,
    q_tok,
    lo,
    hi,
    kv_start,
    kv_len,
    q_len,
    kv_head,
    k_ptr,
    v_ptr,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vs,
    stride_vh,
    stride_vd,
    slots_ptr,
    kv_pos_ptr,
    freq,
    axis,
    CAUSAL: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Fold keys ``[lo, hi)`` of one sequence into the running ``(acc, m_i, l_i)``.

    ``q_a``/``q_b`` are the rotated query pair halves, pre-scaled by ``scale * log2(e)`` so that
    scores are in the exp2 domain. ``q_tok`` is each row's query index inside its sequence.
    """
    dims = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < hi
        slots = tl.load(slots_ptr + kv_start + offs_n, mask=n_mask, other=0).to(tl.int64)
        k_a, k_b = _load_rotated(
            k_ptr,
            slots * stride_ks + kv_head * stride_kh,
            stride_kd,
            kv_pos_ptr,
            kv_start + offs_n,
            n_mask,
            freq,
            axis,
            BLOCK_N,
            HEAD_DIM,
            INTERLEAVED,
        )
        v_off = slots[:, None] * stride_vs + kv_head * stride_vh + dims[None, :] * stride_vd
        v = tl.load(v_ptr + v_off, mask=n_mask[:, None], other=0.0)

        # q . k summed over both halves of every rotation pair.
        s = tl.dot(q_a, tl.trans(k_a.to(DOT_DTYPE)), input_precision=PRECISION)
        s = tl.dot(q_b, tl.trans(k_b.to(DOT_DTYPE)), s, input_precision=PRECISION)
        visible = n_mask[None, :]
        if CAUSAL:  # bottom-right aligned: query i sees keys j <= kv_len - q_len + i
            visible = visible & (offs_n[None, :] <= (kv_len - q_len + q_tok)[:, None])
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps max -inf; subtract 0 instead to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(
            p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION
        )
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    stride_qn,
    stride_qh,
    stride_qd,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vs,
    stride_vh,
    stride_vd,
    stride_on,
    stride_oh,
    stride_od,
    q_pos_ptr,
    kv_pos_ptr,
    slots_ptr,
    q_indptr_ptr,
    kv_indptr_ptr,
    freq_ptr,
    axis_ptr,
    qk_scale,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(q_indptr_ptr + seq)
    q_len = tl.load(q_indptr_ptr + seq + 1) - q_start
    if pid_m * BLOCK_M >= q_len:  # the grid is sized for the longest sequence
        return
    kv_start = tl.load(kv_indptr_ptr + seq)
    kv_len = tl.load(kv_indptr_ptr + seq + 1) - kv_start
    freq = tl.load(freq_ptr + tl.arange(0, HEAD_DIM // 2))
    axis = tl.load(axis_ptr + tl.arange(0, HEAD_DIM // 2))

    q_tok = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q_mask = q_tok < q_len
    rows = (q_start + q_tok).to(tl.int64)
    q_a, q_b = _load_rotated(
        q_ptr,
        rows * stride_qn + head * stride_qh,
        stride_qd,
        q_pos_ptr,
        rows,
        q_mask,
        freq,
        axis,
        BLOCK_M,
        HEAD_DIM,
        INTERLEAVED,
    )
    q_a = (q_a * qk_scale).to(DOT_DTYPE)
    q_b = (q_b * qk_scale).to(DOT_DTYPE)

    hi = kv_len
    if CAUSAL:  # keys past the tile's last query are masked for every row: skip them
        hi = tl.minimum(kv_len, kv_len - q_len + (pid_m + 1) * BLOCK_M)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_keys(
        acc,
        m_i,
        l_i,
        q_a,
        q_b,
        q_tok,
        0,
        hi,
        kv_start,
        kv_len,
        q_len,
        head // GROUP,
        k_ptr,
        v_ptr,
        stride_ks,
        stride_kh,
        stride_kd,
        stride_vs,
        stride_vh,
        stride_vd,
        slots_ptr,
        kv_pos_ptr,
        freq,
        axis,
        CAUSAL,
        HEAD_DIM,
        INTERLEAVED,
        BLOCK_N,
        DOT_DTYPE,
        PRECISION,
    )
    out = acc / l_i[:, None]  # every row sees key 0 (validated metadata): l_i > 0
    dims = tl.arange(0, HEAD_DIM)
    o_off = rows[:, None] * stride_on + head * stride_oh + dims[None, :] * stride_od
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=q_mask[:, None])


@triton.jit
def _decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    acc_ptr,
    ml_ptr,
    stride_qn,
    stride_qh,
    stride_qd,
    stride_ks,
    stride_kh,
    stride_kd,
    stride_vs,
    stride_vh,
    stride_vd,
    q_pos_ptr,
    kv_pos_ptr,
    slots_ptr,
    q_indptr_ptr,
    kv_indptr_ptr,
    freq_ptr,
    axis_ptr,
    qk_scale,
    num_q_heads,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    CAUSAL: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(q_indptr_ptr + seq)
    q_len = tl.load(q_indptr_ptr + seq + 1) - q_start
    kv_start = tl.load(kv_indptr_ptr + seq)
    kv_len = tl.load(kv_indptr_ptr + seq + 1) - kv_start
    freq = tl.load(freq_ptr + tl.arange(0, HEAD_DIM // 2))
    axis = tl.load(axis_ptr + tl.arange(0, HEAD_DIM // 2))

    # Rows are (query token, head of the group) pairs, token-major.
    r = tl.arange(0, BLOCK_M)
    q_tok = r // GROUP
    head = kv_head * GROUP + r % GROUP
    r_mask = q_tok < q_len
    tokens = (q_start + q_tok).to(tl.int64)
    q_a, q_b = _load_rotated(
        q_ptr,
        tokens * stride_qn + head * stride_qh,
        stride_qd,
        q_pos_ptr,
        tokens,
        r_mask,
        freq,
        axis,
        BLOCK_M,
        HEAD_DIM,
        INTERLEAVED,
    )
    q_a = (q_a * qk_scale).to(DOT_DTYPE)
    q_b = (q_b * qk_scale).to(DOT_DTYPE)

    # Each sequence splits its own keys evenly, in whole key blocks.
    per_split = tl.cdiv(tl.cdiv(kv_len, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(kv_len, lo + per_split)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_keys(
        acc,
        m_i,
        l_i,
        q_a,
        q_b,
        q_tok,
        lo,
        hi,
        kv_start,
        kv_len,
        q_len,
        kv_head,
        k_ptr,
        v_ptr,
        stride_ks,
        stride_kh,
        stride_kd,
        stride_vs,
        stride_vh,
        stride_vd,
        slots_ptr,
        kv_pos_ptr,
        freq,
        axis,
        CAUSAL,
        HEAD_DIM,
        INTERLEAVED,
        BLOCK_N,
        DOT_DTYPE,
        PRECISION,
    )
    # Workspace rows are (query token, query head, split); empty splits write max -inf, sum 0.
    part = (tokens * num_q_heads + head) * SPLITS + split
    dims = tl.arange(0, HEAD_DIM)
    tl.store(acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=r_mask[:, None])
    tl.store(ml_ptr + part * 2, m_i, mask=r_mask)
    tl.store(ml_ptr + part * 2 + 1, l_i, mask=r_mask)


@triton.jit
def _combine_kernel(
    acc_ptr,
    ml_ptr,
    o_ptr,
    stride_on,
    stride_oh,
    stride_od,
    num_q_heads,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    SPLITS_P2: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_P2)
    dims = tl.arange(0, HEAD_DIM)
    part = (token * num_q_heads + head) * SPLITS + splits
    valid = splits < SPLITS
    m = tl.load(ml_ptr + part * 2, mask=valid, other=float("-inf"))
    l_s = tl.load(ml_ptr + part * 2 + 1, mask=valid, other=0.0)
    acc_off = part[:, None] * HEAD_DIM + dims[None, :]
    acc = tl.load(acc_ptr + acc_off, mask=valid[:, None], other=0.0)
    # Split 0 holds key 0, which every query sees, so the maximum is finite; splits that saw
    # no key (max -inf) get weight 0.
    weight = tl.exp2(m - tl.max(m, 0))
    out = tl.sum(acc * weight[:, None], 0) / tl.sum(l_s * weight, 0)
    o_off = token * stride_on + head * stride_oh + dims * stride_od
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty))


# --------------------------------------------------------------------------------------------
# Host code
# --------------------------------------------------------------------------------------------

# Pair tables (inv_freq, axis) per RopeSpec (by identity) and device; they die with the spec.
_ROPE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rope_tables(rope: RopeSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    per_device = _ROPE_TABLES.setdefault(rope, {})
    if device not in per_device:  # one copy per spec and device: no host-device traffic later
        per_device[device] = (
            rope.inv_freq.to(device, torch.float32).contiguous(),
            rope.axis.to(device, torch.int32).contiguous(),
        )
    return per_device[device]


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, rope: RopeSpec) -> int:
    """Validate shapes; return the GQA group size."""
    head_dim = q.shape[-1]
    if k_cache.shape != v_cache.shape or k_cache.shape[-1] != head_dim:
        raise ValueError(
            f"k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} "
            f"do not match q {tuple(q.shape)}"
        )
    # Each pair half is a matrix-product operand of HEAD_DIM // 2 >= 16 columns.
    if head_dim != rope.head_dim or head_dim < 32 or head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} must be a power of two >= 32 and match the rope")
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    return num_q_heads // num_kv_heads


def _dot_config(q: torch.Tensor, k_cache: torch.Tensor) -> tuple[tl.dtype, str]:
    """Tensor-core input type: the shared input dtype, float32 (exact) when they differ.

    The CPU interpreter multiplies bfloat16 blocks wrongly (NumPy has no bfloat16), so there
    bfloat16 inputs are multiplied in float32 after the loads.
    """
    half = (torch.float16,) if triton.knobs.runtime.interpret else (torch.float16, torch.bfloat16)
    if q.dtype == k_cache.dtype and q.dtype in half:
        return _TORCH_TO_TL[q.dtype], "tf32"  # precision only matters for float32 inputs
    return tl.float32, "ieee"


def _common_args(meta: AttentionMetadata, rope: RopeSpec, device: torch.device) -> list:
    return [
        meta.q_pos.contiguous(),
        meta.kv_pos.contiguous(),
        meta.kv_slots.contiguous(),
        meta.q_indptr,
        meta.kv_indptr,
        *_rope_tables(rope, device),
    ]


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The chunk/prefill kernel for any query count; see :func:`paged_attention_triton`."""
    group = _check(q, k_cache, v_cache, rope)
    num_tokens, num_q_heads, head_dim = q.shape
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    on_gpu = q.device.type == "cuda"
    # Tuned on an H200 (Wan chunk, bf16): 128 x 128 tiles, 8 warps, 3 stages; float32 tiles
    # take half the keys and 2 stages to fit shared memory. The interpreter (CPU) runs the same
    # code fastest on small tiles.
    wide = k_cache.element_size() > 2
    block_m = block_m or (128 if on_gpu else 16)
    block_n = block_n or ((64 if wide else 128) if on_gpu else 16)
    num_stages = num_stages or (2 if wide else 3)
    dot_dtype, precision = _dot_config(q, k_cache)
    scale = head_dim**-0.5 if scale is None else scale
    grid = (triton.cdiv(meta.max_q_len, block_m), num_q_heads, meta.num_seqs)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *out.stride(),
        *_common_args(meta, rope, q.device),
        scale * _LOG2E,
        GROUP=group,
        HEAD_DIM=head_dim,
        INTERLEAVED=rope.interleaved,
        CAUSAL=meta.causal,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=num_warps or (8 if on_gpu else 4),
        num_stages=num_stages,
    )
    return out


_SM_COUNT: dict[int, int] = {}


def _num_splits(device: torch.device, programs: int, max_kv_len: int, block_n: int) -> int:
    """Enough key splits for about four programs per SM (best on an H200 for Qwen decode),
    never more than there are key blocks."""
    if device.type != "cuda":
        return max(1, min(4, triton.cdiv(max_kv_len, block_n)))
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    wanted = triton.cdiv(4 * _SM_COUNT[index], programs)
    return max(1, min(wanted, triton.cdiv(max_kv_len, block_n), 64))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The split-key decode kernel plus combine; for ``meta.max_q_len <= DECODE_MAX_Q_LEN``."""
    group = _check(q, k_cache, v_cache, rope)
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0:
        return out
    if meta.max_q_len > DECODE_MAX_Q_LEN:
        raise ValueError(
            f"decode kernel takes <= {DECODE_MAX_Q_LEN} queries per sequence, got {meta.max_q_len}"
        )
    on_gpu = q.device.type == "cuda"
    # Tuned on an H200 (Qwen2.5-VL decode, bf16); float32 keys take one stage less.
    block_n = block_n or (64 if on_gpu else 16)
    num_stages = num_stages or (2 if k_cache.element_size() > 2 else 3)
    block_m = max(16, triton.next_power_of_2(group * meta.max_q_len))  # tl.dot needs >= 16 rows
    splits = num_splits or _num_splits(
        q.device, meta.num_seqs * num_kv_heads, meta.max_kv_len, block_n
    )
    dot_dtype, precision = _dot_config(q, k_cache)
    scale = head_dim**-0.5 if scale is None else scale
    # No zero-fill: every (token, head, split) row is written by exactly one decode program.
    acc = torch.empty(
        (num_tokens, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device
    )
    ml = torch.empty((num_tokens, num_q_heads, splits, 2), dtype=torch.float32, device=q.device)
    _decode_kernel[(meta.num_seqs, num_kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        acc,
        ml,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *_common_args(meta, rope, q.device),
        scale * _LOG2E,
        num_q_heads,
        GROUP=group,
        HEAD_DIM=head_dim,
        INTERLEAVED=rope.interleaved,
        CAUSAL=meta.causal,
        SPLITS=splits,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_DTYPE=dot_dtype,
        PRECISION=precision,
        num_warps=num_warps or 4,
        num_stages=num_stages,
    )
    _combine_kernel[(num_tokens, num_q_heads)](
        acc,
        ml,
        out,
        *out.stride(),
        num_q_heads,
        HEAD_DIM=head_dim,
        SPLITS=splits,
        SPLITS_P2=triton.next_power_of_2(splits),
        num_warps=4 if on_gpu else 1,
    )
    return out


def paged_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    rope: RopeSpec,
    scale: float | None = None,
) -> torch.Tensor:
    """Triton twin of :func:`kernels.attention.paged_attention_ref` (same arguments, result).

    Few queries per sequence (``<= DECODE_MAX_Q_LEN``) take the split-key decode kernel, the
    rest the prefill kernel. Grids come from the host copies in ``meta``; nothing syncs.
    """
    if meta.max_q_len <= DECODE_MAX_Q_LEN:
        return decode_attention(q, k_cache, v_cache, meta, rope, scale)
    return prefill_attention(q, k_cache, v_cache, meta, rope, scale)


register_backend("triton", paged_attention_triton)
