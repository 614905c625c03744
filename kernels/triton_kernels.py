"""Device code of the Triton paged attention: the ``@triton.jit`` kernels and their helpers.

The host wrappers, the backend registration and the picture of both grids are in
:mod:`kernels.triton_attention`, the only module that launches these kernels:

* :func:`_prefill_kernel`: chunk / prefill, ``grid = (cdiv(max_q_len, BLOCK_M), H_q, S)``;
* :func:`_decode_kernel`: split-key decode, ``grid = (S, H_kv, SPLITS)``, into an fp32
  workspace that :func:`_combine_kernel` (``grid = (N_q, H_q)``) reduces;
* :func:`_attend_keys`: the online-softmax inner loop both share; :func:`_load_rotated` loads a
  head vector as its two rotation-pair halves, rotated with :func:`_sincos`.

Imports only triton.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__: list[str] = []  # device code, launched by kernels.triton_attention only


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
