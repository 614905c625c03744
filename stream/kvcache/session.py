"""A session's cache: ordered segments of tokens in pool blocks, each token with a logical position.

::

    SessionCache (one live stream)
      segment "sink"     blocks [7]         tokens 0..1559    offset (0, 0, 0)
      segment "window"   blocks [3, 9, 4]   tokens ...        offset (-37, 0, 0)
                         ^ start: first live token inside blocks[0] (front eviction is O(1))

Keys are stored un-rotated, so a token's position is pure bookkeeping::

    position = rel_pos (written once, with the token) + segment offset (changed at will)

Re-basing a segment (contiguous positions after an eviction, a sink placed just before the recent
window, unbounded streams) therefore touches no device memory.

A step is planned on the host: :meth:`SessionCache.plan` lists the tokens written this step
(appended or overwritten in place) and every token they attend to, as numpy arrays; a batch of
sessions becomes one :class:`CacheStep` with a single host-to-device copy, and every layer then
calls :meth:`CacheView.attend` with no further host work. The plan is not rebuilt from the
segments each step: the session keeps all its tokens' slots and positions in order
(:class:`~stream.kvcache.sequence.SequenceRows`), edited by every append, eviction and
re-basing, so a step that writes the session's last tokens plans with no copy at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from framestream.kernels.attention import AttentionMetadata, write_kv
from framestream.kernels.backends import select_backend
from framestream.kernels.rope import RopeSpec
from framestream.stream.kvcache.errors import CacheFullError, CacheMisuseError
from framestream.stream.kvcache.pool import BlockPool
from framestream.stream.kvcache.sequence import SequenceRows

__all__ = [
    "CacheStep",
    "CacheView",
    "SequencePlan",
    "SessionCache",
    "TokenRange",
    "build_step",
    "pack_plans",
]

_EMPTY_POS = np.zeros((0, 3), dtype=np.int32)
_EMPTY_SLOTS = np.zeros(0, dtype=np.int32)


@dataclass(frozen=True, slots=True)
class TokenRange:
    """Tokens ``[start, stop)`` of a segment, indexed from its oldest live token."""

    segment: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class _Segment:
    """Tokens of one segment: their blocks, slots and relative positions, oldest first."""

    __slots__ = ("blocks", "start", "slots", "rel_pos", "offset")

    def __init__(self) -> None:
        self.blocks: deque[int] = deque()
        self.start = 0  # index of the first live token inside blocks[0]
        self.slots = _EMPTY_SLOTS
        self.rel_pos = _EMPTY_POS
        self.offset = np.zeros(3, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.slots)


@dataclass(slots=True)
class SequencePlan:
    """One session's share of a step, on the host.

    The arrays may be read-only views of the session's own rows: pack them
    (:func:`pack_plans`, :func:`build_step`) before the session changes again.
    """

    write_slots: np.ndarray  # int32 [n_q]: where each query token's K/V goes
    q_pos: np.ndarray  # int32 [n_q, 3]
    kv_slots: np.ndarray  # int32 [n_kv]: context first, this step's written tokens last
    kv_pos: np.ndarray  # int32 [n_kv, 3]


class SessionCache:
    """The retained tokens of one stream, as ordered named segments drawn from a :class:`BlockPool`.

    Open with :meth:`open`, which reserves the session's worst case or raises
    :class:`CacheFullError`. Eviction policies (see :mod:`stream.kvcache.policies`) drive it.
    """

    def __init__(self, pool: BlockPool, session_id: int, reservation) -> None:
        self.pool = pool
        self.session_id = session_id
        self.closed = False  # every block returned; nothing may use it any more
        self._reservation = reservation
        self._segments: dict[str, _Segment] = {}
        self._rows = SequenceRows()  # every segment's tokens, in order: the plans' source

    @classmethod
    def open(cls, pool: BlockPool, session_id: int, worst_case_blocks: int) -> SessionCache:
        reservation = pool.reserve(session_id, worst_case_blocks)
        if reservation is None:
            raise CacheFullError(
                needed_bytes=worst_case_blocks * pool.bytes_per_block,
                available_bytes=max(pool.available_blocks(), 0) * pool.bytes_per_block,
            )
        return cls(pool, session_id, reservation)

    def close(self) -> None:
        """Return every block. Closing twice is a :class:`CacheMisuseError`."""
        if self.closed:
            raise CacheMisuseError(f"session {self.session_id} closed twice")
        self.pool.release(self._reservation)
        self._segments.clear()
        self._rows.clear()
        self.closed = True

    # -- inspection ------------------------------------------------------------------------

    @property
    def segment_names(self) -> list[str]:
        return list(self._segments)

    def __len__(self) -> int:
        return sum(len(s) for s in self._segments.values())

    def length(self, name: str) -> int:
        return len(self._get(name))

    def num_blocks(self) -> int:
        return len(self._reservation.held)

    def slots(self, name: str) -> np.ndarray:
        return self._get(name).slots

    def positions(self, name: str) -> np.ndarray:
        """Effective positions ``[n, 3]`` of a segment's tokens (relative + offset)."""
        seg = self._get(name)
        return seg.rel_pos + seg.offset

    def rel_positions(self, name: str) -> np.ndarray:
        return self._get(name).rel_pos

    def offset(self, name: str) -> np.ndarray:
        return self._get(name).offset.copy()

    # -- mutation --------------------------------------------------------------------------

    def add_segment(self, name: str, before: str | None = None) -> None:
        """Create an empty segment at the end, or just before segment ``before``."""
        self._check_open()
        if name in self._segments:
            raise CacheMisuseError(f"segment {name!r} already exists")
        if before is None:
            self._segments[name] = _Segment()
            return
        self._get(before)
        items = list(self._segments.items())
        index = [n for n, _ in items].index(before)
        items.insert(index, (name, _Segment()))
        self._segments = dict(items)

    def append(self, name: str, rel_pos: np.ndarray) -> TokenRange:
        """Add ``len(rel_pos)`` tokens at the end of a segment; their K/V is written by the step
        that lists the returned range."""
        seg = self._get(name)
        rel_pos = _as_positions(rel_pos)
        count, bs = len(rel_pos), self.pool.block_size
        end = seg.start + len(seg)
        missing = -(-(end + count - len(seg.blocks) * bs) // bs)
        if missing > 0:
            seg.blocks.extend(self.pool.allocate(self._reservation, missing))
        where = np.arange(end, end + count)
        blocks = np.fromiter(seg.blocks, dtype=np.int64, count=len(seg.blocks))
        new_slots = (blocks[where // bs] * bs + where % bs).astype(np.int32)
        first = len(seg)
        self._rows.insert(self._start(name) + first, new_slots, rel_pos + seg.offset)
        seg.slots = np.concatenate([seg.slots, new_slots])
        seg.rel_pos = np.concatenate([seg.rel_pos, rel_pos])
        return TokenRange(name, first, first + count)

    def evict_front(self, name: str, count: int) -> None:
        """Forget the ``count`` oldest tokens of a segment, freeing blocks they emptied."""
        seg = self._get(name)
        if not 0 <= count <= len(seg):
            raise ValueError(f"cannot evict {count} tokens from segment {name!r} of {len(seg)}")
        self._rows.delete(self._start(name), count)
        seg.slots, seg.rel_pos = seg.slots[count:], seg.rel_pos[count:]
        bs = self.pool.block_size
        if len(seg) == 0:
            freed, seg.start = list(seg.blocks), 0
            seg.blocks.clear()
        else:
            seg.start += count
            freed = [seg.blocks.popleft() for _ in range(seg.start // bs)]
            seg.start %= bs
        if freed:
            self.pool.free(self._reservation, freed)

    def drop(self, name: str) -> None:
        """Remove a segment and free all its blocks."""
        seg = self._get(name)
        self._rows.delete(self._start(name), len(seg))
        self.pool.free(self._reservation, list(seg.blocks))
        del self._segments[name]

    def set_offset(self, name: str, offset: Sequence[int] | np.ndarray) -> None:
        """Re-base a segment: ``position = rel_pos + offset``. Host-only; K/V untouched."""
        self._set_offset(name, np.asarray(offset, dtype=np.int32).reshape(3).copy())

    def set_rel_positions(self, name: str, rel_pos: np.ndarray) -> None:
        """Give a segment's tokens new relative positions (before rewriting their K/V)."""
        seg = self._get(name)
        rel_pos = _as_positions(rel_pos)
        if len(rel_pos) != len(seg):
            raise ValueError(
                f"segment {name!r} has {len(seg)} tokens, got {len(rel_pos)} positions"
            )
        seg.rel_pos = rel_pos
        self._rows.set_positions(self._start(name), rel_pos + seg.offset)

    def copy_tokens(self, src: TokenRange, dst: str, rel_pos: np.ndarray) -> TokenRange:
        """Append copies of ``src``'s K/V (all layers, on device) to segment ``dst``.

        How StreamingVLM folds old assistant text into its "previous text" block without
        recomputing it: keys are un-rotated, so they are valid at any new position.
        """
        src_slots = self._range_slots(src)
        out = self.append(dst, rel_pos)
        if len(out) != len(src_slots):
            raise ValueError(f"{len(src_slots)} tokens copied but {len(out)} positions given")
        device = self.pool.kv.device
        self.pool.copy_slots(
            torch.from_numpy(src_slots.astype(np.int64)).to(device),
            torch.from_numpy(self._range_slots(out).astype(np.int64)).to(device),
        )
        return out

    def layout_contiguous(
        self, parts: Sequence[str | TokenRange], axes: Sequence[int], start: int = 0
    ) -> int:
        """Re-base ``parts`` so they follow each other with no position gaps, from ``start``.

        A part is a segment, or a range of one: the range is what must follow the part before
        it, and its segment's offset moves with it (a pass that reads only a segment's tail
        places that tail). Only ``axes`` move (Wan: time only, ``(0,)``; Qwen M-RoPE: all
        three). Each part spans ``max - min + 1`` positions over those axes. Returns the next
        free position.
        """
        cursor = start
        axes = list(axes)
        for part in map(self._as_range, parts):
            seg = self._get(part.segment)
            if len(part) == 0:
                continue
            used = seg.rel_pos[part.start : part.stop, axes]
            low, high = int(used.min()), int(used.max())
            offset = np.zeros(3, dtype=np.int32)
            offset[axes] = cursor - low
            self._set_offset(part.segment, offset)
            cursor += high - low + 1
        return cursor

    # -- planning --------------------------------------------------------------------------

    def plan(
        self,
        write: Sequence[TokenRange],
        context: Sequence[str | TokenRange] | None = None,
    ) -> SequencePlan:
        """Plan one forward of this session.

        Args:
            write: the tokens this forward computes and stores (appended ones, or existing ones
                overwritten in place by a recompute pass); they are its queries, in order, and
                every query's K/V is kept (a token whose K/V would be thrown away influences
                no other token, so a pass never computes one).
            context: what the queries attend to besides themselves, in order: segments, or
                ranges of one (a pass that reads only a segment's tail); all segments by
                default. Written tokens are never also context.

        Returns:
            Queries: the written tokens. Keys: context tokens, then the written tokens.
        """
        self._check_open()
        if context is None:
            return self._plan_all(write)
        writing: dict[str, np.ndarray] = {}
        for r in write:
            seg = self._checked(r)
            mask = writing.setdefault(r.segment, np.zeros(len(seg), dtype=bool))
            if mask[r.start : r.stop].any():
                raise ValueError(f"range {r} overlaps another written range")
            mask[r.start : r.stop] = True
        ctx_slots, ctx_pos = [], []
        for part in map(self._as_range, context):
            seg = self._get(part.segment)
            keep = np.arange(part.start, part.stop)
            if part.segment in writing:
                keep = keep[~writing[part.segment][part.start : part.stop]]
            ctx_slots.append(seg.slots[keep])
            ctx_pos.append(seg.rel_pos[keep] + seg.offset)
        w_slots = [self._range_slots(r) for r in write]
        w_pos = [self._range_positions(r) for r in write]
        return SequencePlan(
            write_slots=np.concatenate([_EMPTY_SLOTS, *w_slots]),
            q_pos=np.concatenate([_EMPTY_POS, *w_pos]),
            kv_slots=np.concatenate([*ctx_slots, *w_slots]),
            kv_pos=np.concatenate([*ctx_pos, *w_pos]),
        )

    def _plan_all(self, write: Sequence[TokenRange]) -> SequencePlan:
        """:meth:`plan` with every segment as context, read off the session's rows: views
        when ``write`` is the sequence's last tokens in order (a decode step, an appended
        chunk), else one gather of the rows."""
        rows = self._rows
        spans = []  # (first, stop) row of each written range, in write order
        for r in write:
            self._checked(r)
            if len(r):
                first = self._start(r.segment) + r.start
                spans.append((first, first + len(r)))
        written = sum(stop - first for first, stop in spans)
        tail = rows.n - written
        cursor = tail  # the spans are the last rows, in order, when each starts here
        for first, stop in spans:
            cursor = stop if first == cursor else -1
        if cursor == rows.n:
            return SequencePlan(
                write_slots=rows.slots[tail:],
                q_pos=rows.positions[tail:],
                kv_slots=rows.slots,
                kv_pos=rows.positions,
            )
        index = np.concatenate([np.arange(first, stop) for first, stop in spans])
        keep = np.ones(rows.n, dtype=bool)
        keep[index] = False
        if np.count_nonzero(keep) != tail:
            raise ValueError(f"written ranges {list(write)} overlap")
        order = np.concatenate([np.flatnonzero(keep), index])
        return SequencePlan(
            write_slots=rows.slots[index],
            q_pos=rows.positions[index],
            kv_slots=rows.slots[order],
            kv_pos=rows.positions[order],
        )

    # -- helpers ---------------------------------------------------------------------------

    def _get(self, name: str) -> _Segment:
        self._check_open()
        try:
            return self._segments[name]
        except KeyError:
            raise CacheMisuseError(f"session {self.session_id} has no segment {name!r}") from None

    def _checked(self, r: TokenRange) -> _Segment:
        seg = self._get(r.segment)
        if not 0 <= r.start <= r.stop <= len(seg):
            raise ValueError(f"range {r} is outside segment {r.segment!r} of {len(seg)} tokens")
        return seg

    def _start(self, name: str) -> int:
        """Row of segment ``name``'s first token in the session's rows; counted from the end,
        where the segments a step writes are."""
        after = 0
        for other in reversed(self._segments):
            after += len(self._segments[other])
            if other == name:
                return self._rows.n - after
        raise CacheMisuseError(f"session {self.session_id} has no segment {name!r}")

    def _set_offset(self, name: str, offset: np.ndarray) -> None:
        seg = self._get(name)
        self._rows.shift(self._start(name), len(seg), offset - seg.offset)
        seg.offset = offset

    def _check_open(self) -> None:
        if self.closed:
            raise CacheMisuseError(f"session {self.session_id} used after close")

    def _as_range(self, part: str | TokenRange) -> TokenRange:
        """A whole segment as a range, or a range checked against its segment."""
        if isinstance(part, str):
            return TokenRange(part, 0, len(self._get(part)))
        if not 0 <= part.start <= part.stop <= len(self._get(part.segment)):
            raise ValueError(f"range {part} is outside segment {part.segment!r}")
        return part

    def _range_slots(self, r: TokenRange) -> np.ndarray:
        return self._get(r.segment).slots[r.start : r.stop]

    def _range_positions(self, r: TokenRange) -> np.ndarray:
        seg = self._get(r.segment)
        return seg.rel_pos[r.start : r.stop] + seg.offset


def _as_positions(rel_pos: np.ndarray) -> np.ndarray:
    rel_pos = np.asarray(rel_pos, dtype=np.int32)
    if rel_pos.ndim != 2 or rel_pos.shape[1] != 3:
        raise ValueError(f"positions must be [n, 3], got shape {rel_pos.shape}")
    return rel_pos


@dataclass(slots=True)
class CacheStep:
    """A planned step of one or more sessions of one pool, on the device."""

    meta: AttentionMetadata
    write_slots: torch.Tensor  # int64 [N_q]


def pack_plans(
    plans: Sequence[SequencePlan], out: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The step's metadata on the host, sessions back to back: ``q_pos``, ``kv_slots``,
    ``kv_pos``, ``q_indptr``, ``kv_indptr`` (int32) and ``write_slots`` (int64).

    With ``out`` (arrays of those names and dtypes, large enough), each plan is copied once
    into its place there (a pinned staging buffer, say) and the filled prefixes are returned.
    """
    q_lens = [len(p.q_pos) for p in plans]
    kv_lens = [len(p.kv_slots) for p in plans]
    q_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    kv_indptr = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    if out is None:
        return {
            "q_pos": np.concatenate([p.q_pos for p in plans]),
            "kv_slots": np.concatenate([p.kv_slots for p in plans]),
            "kv_pos": np.concatenate([p.kv_pos for p in plans]),
            "q_indptr": q_indptr,
            "kv_indptr": kv_indptr,
            "write_slots": np.concatenate([p.write_slots for p in plans]).astype(np.int64),
        }
    bounds = zip(q_indptr[:-1], q_indptr[1:], kv_indptr[:-1], kv_indptr[1:], strict=True)
    for plan, (q0, q1, k0, k1) in zip(plans, bounds, strict=True):
        out["q_pos"][q0:q1] = plan.q_pos
        out["write_slots"][q0:q1] = plan.write_slots
        out["kv_slots"][k0:k1] = plan.kv_slots
        out["kv_pos"][k0:k1] = plan.kv_pos
    out["q_indptr"][: len(q_indptr)] = q_indptr
    out["kv_indptr"][: len(kv_indptr)] = kv_indptr
    rows = {"q_pos": q_indptr[-1], "write_slots": q_indptr[-1], "kv_slots": kv_indptr[-1]}
    rows.update(kv_pos=kv_indptr[-1], q_indptr=len(q_indptr), kv_indptr=len(kv_indptr))
    return {name: out[name][: rows[name]] for name in rows}


def build_step(
    plans: Sequence[SequencePlan], causal: bool, device: torch.device | str
) -> CacheStep:
    """Pack sessions' plans into one step: one host-to-device copy, shared by every layer."""
    host = pack_plans(plans)
    q_indptr, kv_indptr = host["q_indptr"], host["kv_indptr"]
    device = torch.device(device)
    pin = device.type == "cuda"
    moved = {}
    for key, array in host.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        moved[key] = tensor.pin_memory().to(device, non_blocking=True) if pin else tensor
    meta = AttentionMetadata(
        q_pos=moved["q_pos"],
        kv_slots=moved["kv_slots"],
        kv_pos=moved["kv_pos"],
        q_indptr=moved["q_indptr"],
        kv_indptr=moved["kv_indptr"],
        q_indptr_host=tuple(int(x) for x in q_indptr),
        kv_indptr_host=tuple(int(x) for x in kv_indptr),
        causal=causal,
    )
    meta.validate()
    return CacheStep(meta, moved["write_slots"])


class CacheView:
    """The :class:`models.attention.AttentionContext` over a pool, for one planned step.

    ``attend`` writes the new tokens' K/V into their slots, then attends over the planned keys;
    it does no host work, so a whole forward can be captured in a CUDA graph.
    """

    def __init__(
        self, pool: BlockPool, step: CacheStep, rope: RopeSpec, backend: str | None = None
    ) -> None:
        self.pool = pool
        self.step = step
        self.rope = rope
        rope.per_dim(pool.kv.device)  # build the device tables now, outside any captured step
        self._attention = select_backend(pool.kv.device, backend)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self.pool.layer_kv(layer)
        write_kv(k_cache, v_cache, self.step.write_slots, k, v)
        return self._attention(q, k_cache, v_cache, self.step.meta, self.rope, None)
