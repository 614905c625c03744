"""Handing freed memory back to the system once the service is idle.

A large session's activations, a feed render or a burst of decoded input frames leave the
process's resident memory high long after they end: glibc keeps the freed heap pages for
reuse, and CUDA's caching allocator keeps its unused blocks. Neither is a leak, but on a host
shared with other services it reads as one (a server idle at twice its starting size). When
the last session ends, and after each feed render, the service asks both to return what they
keep; the next session pays a few page faults, never a stall.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import torch

__all__ = ["release_free_memory"]

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is another (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return the allocators' free pages to the system (CUDA's only where it is in use)."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
