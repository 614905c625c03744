"""A session's tokens in order, as one pair of growable arrays kept up to date by deltas.

:class:`~stream.kvcache.session.SessionCache` keeps each segment's slots and relative positions
apart (eviction and re-basing are per segment). A step's plan needs them the other way round:
every retained token, segment after segment, with its effective position. Built from the
segments each step, that is a few numpy calls and copies per segment over some 13k tokens (a
full StreamingVLM stream: 20 segments; 16 streams a step, a host cost of the order of the
decode step's kernels, round 3 of docs/perf-notes.md). Here the same rows are edited as the
segments are::

    slots  [capacity]     int32    rows [0, n) are live, in segment order
    pos    [capacity, 3]  int32    effective positions: rel_pos + the segment's offset

    append to the last segment   -> rows written at n (amortised O(1): the arrays double)
    append elsewhere, evict, drop -> rows moved once (at a round's start, not per token)
    re-base a segment            -> its rows' positions shifted in place

A decode step writes the sequence's last tokens, so its plan is the live rows as they stand.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SequenceRows"]

_MIN_CAPACITY = 64


class SequenceRows:
    """Slots and effective positions of a session's tokens, in order (see the module doc)."""

    __slots__ = ("_slots", "_pos", "n")

    def __init__(self) -> None:
        self._slots = np.zeros(_MIN_CAPACITY, dtype=np.int32)
        self._pos = np.zeros((_MIN_CAPACITY, 3), dtype=np.int32)
        self.n = 0

    @property
    def slots(self) -> np.ndarray:
        """Live slots ``[n]``: a read-only view, valid until the next edit."""
        return _frozen(self._slots[: self.n])

    @property
    def positions(self) -> np.ndarray:
        """Live positions ``[n, 3]``: a read-only view, valid until the next edit."""
        return _frozen(self._pos[: self.n])

    def insert(self, at: int, slots: np.ndarray, positions: np.ndarray) -> None:
        """Rows ``slots``/``positions`` placed before row ``at`` (``at = n``: appended)."""
        count = len(slots)
        if not 0 <= at <= self.n or len(positions) != count:
            raise ValueError(f"insert of {count} rows at {at} into {self.n}")
        self._reserve(self.n + count)
        if at < self.n:  # numpy copies overlapping slices as if through a temporary
            self._slots[at + count : self.n + count] = self._slots[at : self.n]
            self._pos[at + count : self.n + count] = self._pos[at : self.n]
        self._slots[at : at + count] = slots
        self._pos[at : at + count] = positions
        self.n += count

    def delete(self, at: int, count: int) -> None:
        """Rows ``[at, at + count)`` removed; the rows after them move up."""
        if not 0 <= at <= at + count <= self.n:
            raise ValueError(f"delete of rows [{at}, {at + count}) of {self.n}")
        self._slots[at : self.n - count] = self._slots[at + count : self.n]
        self._pos[at : self.n - count] = self._pos[at + count : self.n]
        self.n -= count

    def shift(self, at: int, count: int, delta: np.ndarray) -> None:
        """Positions of rows ``[at, at + count)`` moved by ``delta [3]`` (a re-based segment)."""
        self._pos[at : at + count] += delta

    def set_positions(self, at: int, positions: np.ndarray) -> None:
        self._pos[at : at + len(positions)] = positions

    def clear(self) -> None:
        self.n = 0

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._slots):
            return
        capacity = max(rows, 2 * len(self._slots))
        slots = np.zeros(capacity, dtype=np.int32)
        pos = np.zeros((capacity, 3), dtype=np.int32)
        slots[: self.n], pos[: self.n] = self._slots[: self.n], self._pos[: self.n]
        self._slots, self._pos = slots, pos


def _frozen(view: np.ndarray) -> np.ndarray:
    view.flags.writeable = False
    return view
