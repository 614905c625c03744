"""Block pool: one preallocated K/V arena per model geometry, carved into fixed-size blocks.

Memory layout (one tensor, all layers; a block id names the same rows in every layer)::

    kv[layer, 0 = K | 1 = V, slot, kv_head, head_dim]      slot = block * block_size + offset

    block:   0 (null)  1         2         3        ...  num_blocks - 1
    slots:   [0, bs)   [bs, 2bs) [2bs,3bs) ...
             never handed out and never read

Sessions are admitted by *reservation*: a session reserves its worst-case block count when it
opens, and later allocations come out of that reservation, so a running session can never be
starved by a newcomer. ``reserve`` returns ``None`` when the blocks don't fit (a result, not an
exception); refusing the session is the caller's policy.

The rows hold the model's dtype, or FP8 (``kv_cache_dtype="fp8_e4m3"``: unscaled
``float8_e4m3fn``, half of bf16's bytes per block; :mod:`kernels.attention` says how it is
written and read, and why it has no scales).

All bookkeeping is host-side Python; nothing here reads device memory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from framestream.stream.kvcache.errors import CacheMisuseError

__all__ = [
    "KV_CACHE_DTYPES",
    "NULL_BLOCK",
    "BlockPool",
    "CacheGeometry",
    "KVCacheDtype",
    "PoolStats",
    "Reservation",
    "cache_dtype",
    "check_kv_cache_dtype",
]

NULL_BLOCK = 0

# What a pipeline config's ``kv_cache_dtype`` may say: ``auto`` keeps the model's dtype.
KVCacheDtype = Literal["auto", "fp8_e4m3"]
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KVCacheDtype)
# Row dtypes the kernels read and write.
_ROW_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn)


def check_kv_cache_dtype(kv_cache_dtype: str) -> None:
    """Raise ``ValueError`` unless ``kv_cache_dtype`` is one of :data:`KV_CACHE_DTYPES`."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}"
        )


def cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The pool's row dtype for a config's ``kv_cache_dtype`` and the model's dtype."""
    check_kv_cache_dtype(kv_cache_dtype)
    return model_dtype if kv_cache_dtype == "auto" else torch.float8_e4m3fn


@dataclass(frozen=True)
class CacheGeometry:
    """What a pool's K/V rows look like; one pool per distinct geometry."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.bfloat16
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in _ROW_DTYPES:
            raise ValueError(f"dtype must be one of {_ROW_DTYPES}, got {self.dtype}")

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token over all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


@dataclass(frozen=True, slots=True)
class PoolStats:
    block_size: int  # tokens per block
    bytes_per_block: int
    num_blocks: int  # usable blocks (the null block excluded)
    used_blocks: int  # allocated to sessions
    reserved_blocks: int  # promised to sessions but not yet allocated
    free_blocks: int  # neither used nor reserved: what a new session can get
    bytes_by_session: dict[int, int]  # allocated bytes per session id

    @property
    def usage(self) -> float:
        """Fraction of usable blocks allocated, in [0, 1]."""
        return self.used_blocks / self.num_blocks if self.num_blocks else 0.0


@dataclass(slots=True)
class Reservation:
    """A session's claim on the pool: at most ``limit`` blocks held at once."""

    owner: int
    limit: int
    held: set[int]
    released: bool = False


class BlockPool:
    """Preallocated K/V blocks for one geometry with reservation-based admission.

    Args:
        geometry: layers, KV heads, head dim, dtype, device of the rows.
        block_size: tokens per block (a Wan latent frame is a natural block; text uses 16-64).
        capacity_bytes: memory for the whole arena, the null block included.
    """

    def __init__(self, geometry: CacheGeometry, block_size: int, capacity_bytes: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.geometry = geometry
        self.block_size = block_size
        self.bytes_per_block = block_size * geometry.bytes_per_token
        total_blocks = capacity_bytes // self.bytes_per_block
        if total_blocks < 2:
            raise ValueError(
                f"capacity_bytes={capacity_bytes} holds {total_blocks} blocks of "
                f"{self.bytes_per_block} bytes; at least 2 are needed (one is the null block)"
            )
        self.num_blocks = total_blocks - 1
        # Uninitialised: attention reads only the slots a step wrote and the null block (where
        # padding points), so zeroing gigabytes up front would buy nothing; on the CPU it cost
        # seconds per pool, and untouched pages now cost no memory either.
        self.kv = torch.empty(
            geometry.num_layers,
            2,
            total_blocks * block_size,
            geometry.num_kv_heads,
            geometry.head_dim,
            dtype=geometry.dtype,
            device=geometry.device,
        )
        null = slice(NULL_BLOCK * block_size, (NULL_BLOCK + 1) * block_size)
        self.kv[:, :, null].zero_()
        # LIFO free list: O(1) both ways, and recently freed (cache-warm) blocks are reused first.
        self._free: list[int] = list(range(total_blocks - 1, NULL_BLOCK, -1))
        self._reservations: dict[int, Reservation] = {}
        self._unallocated_reserved = 0
        # the device thread changes the books while the server's loop may read stats()
        self._lock = threading.RLock()

    # -- admission -------------------------------------------------------------------------

    def available_blocks(self) -> int:
        """Blocks a new reservation could claim now."""
        return len(self._free) - self._unallocated_reserved

    def reserve(self, owner: int, num_blocks: int) -> Reservation | None:
        """Claim ``num_blocks`` for ``owner``; ``None`` if they don't fit."""
        with self._lock:
            if num_blocks <= 0:
                raise ValueError(f"num_blocks must be positive, got {num_blocks}")
            if owner in self._reservations:
                raise CacheMisuseError(f"session {owner} already holds a reservation")
            if num_blocks > self.available_blocks():
                return None
            reservation = Reservation(owner, num_blocks, set())
            self._reservations[owner] = reservation
            self._unallocated_reserved += num_blocks
            return reservation

    def release(self, reservation: Reservation) -> None:
        """Return every block ``reservation`` holds and drop the claim."""
        with self._lock:
            if reservation.released:
                raise CacheMisuseError(f"reservation of session {reservation.owner} released twice")
            self.free(reservation, list(reservation.held))
            reservation.released = True
            self._unallocated_reserved -= reservation.limit
            del self._reservations[reservation.owner]

    # -- blocks ----------------------------------------------------------------------------

    def allocate(self, reservation: Reservation, count: int) -> list[int]:
        """Take ``count`` blocks out of ``reservation``; raises if that exceeds its limit."""
        with self._lock:
            if reservation.released:
                raise CacheMisuseError(f"session {reservation.owner} allocates after release")
            if len(reservation.held) + count > reservation.limit:
                raise CacheMisuseError(
                    f"session {reservation.owner} needs {len(reservation.held) + count} blocks, "
                    f"over its reservation of {reservation.limit}: its policy's worst case is wrong"
                )
            blocks = [self._free.pop() for _ in range(count)]
            reservation.held.update(blocks)
            self._unallocated_reserved -= count
            return blocks

    def free(self, reservation: Reservation, blocks: list[int]) -> None:
        """Give ``blocks`` back; they return to ``reservation``'s unallocated claim."""
        with self._lock:
            for block in blocks:
                if block not in reservation.held:
                    raise CacheMisuseError(
                        f"session {reservation.owner} frees block {block} it does not hold"
                    )
                reservation.held.remove(block)
                self._free.append(block)
            self._unallocated_reserved += len(blocks)

    # -- device data -----------------------------------------------------------------------

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k, v)`` views ``[num_slots, H_kv, D]`` of one layer."""
        return self.kv[layer, 0], self.kv[layer, 1]

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy K/V rows ``src`` -> ``dst`` (int64 slot tensors) in every layer, on device."""
        # as bytes: the same copy, and index_copy_ has no float8 kernel on the CPU
        raw = self.kv.view(torch.uint8) if self.kv.element_size() == 1 else self.kv
        raw.index_copy_(2, dst, raw.index_select(2, src))

    def stats(self) -> PoolStats:
        with self._lock:
            used = sum(len(r.held) for r in self._reservations.values())
            return PoolStats(
                block_size=self.block_size,
                bytes_per_block=self.bytes_per_block,
                num_blocks=self.num_blocks,
                used_blocks=used,
                reserved_blocks=self._unallocated_reserved,
                free_blocks=self.available_blocks(),
                bytes_by_session={
                    owner: len(r.held) * self.bytes_per_block
                    for owner, r in self._reservations.items()
                },
            )

    def check_invariants(self) -> None:
        """Every block is free, or held by exactly one session; counts agree (tests, debugging)."""
        with self._lock:
            held = [b for r in self._reservations.values() for b in r.held]
            assert len(held) == len(set(held)), "a block is held twice"
            assert not set(held) & set(self._free), "a block is both free and held"
            assert len(set(self._free)) == len(self._free), "a block is free twice"
            assert NULL_BLOCK not in self._free and NULL_BLOCK not in held, "the null block escaped"
            assert len(held) + len(self._free) == self.num_blocks, "blocks leaked"
            outstanding = sum(r.limit - len(r.held) for r in self._reservations.values())
            assert outstanding == self._unallocated_reserved, "reservation counts drifted"
