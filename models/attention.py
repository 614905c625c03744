"""The attention contract between models and whatever holds their keys and values.

A model's attention layer computes q, k, v for its new tokens and hands them to an
:class:`AttentionContext`; it never sees positions, caches or kernels. Two implementations:

* ``stream.kvcache.CacheView``: the service's paged rolling cache (writes K/V, attends over the
  retained tokens at their re-based logical positions);
* :class:`DenseAttention` here: no cache, one packed set of sequences attended in full or
  causally, for training, tests and offline use.

Shapes use packed sequences: ``N`` tokens of every sequence of the batch back to back.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from framestream.kernels.attention import AttentionMetadata, paged_attention_ref
from framestream.kernels.rope import RopeSpec

__all__ = ["AttentionContext", "DenseAttention"]


@runtime_checkable
class AttentionContext(Protocol):
    """What an attention layer calls, once per layer per forward."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend the new tokens' queries over the context plus the new tokens themselves.

        Args:
            layer: index of the calling layer (selects its slice of the cache).
            q: ``[N, H_q, D]`` un-rotated queries of the new tokens.
            k, v: ``[N, H_kv, D]`` un-rotated keys and values of the same tokens.

        Returns:
            ``[N, H_q, D]`` attention output, rotary embedding applied from logical positions.
        """
        ...


class DenseAttention:
    """No cache: each sequence attends to exactly its own new tokens.

    Args:
        pos: int32 ``[N, 3]`` logical positions of the packed tokens.
        indptr: sequence boundaries ``[0, len_0, len_0 + len_1, ...]``.
        rope: rotation of the model.
        causal: causal (text) or full (video) attention inside each sequence.
        mask: optional bool ``[N, N]`` keep-mask used instead of ``causal`` (for example a
            block-causal window); only valid for a single sequence.
    """

    def __init__(
        self,
        pos: torch.Tensor,
        indptr: tuple[int, ...],
        rope: RopeSpec,
        causal: bool,
        mask: torch.Tensor | None = None,
    ) -> None:
        if mask is not None and len(indptr) != 2:
            raise ValueError("an explicit mask supports one sequence only")
        n = pos.shape[0]
        index = torch.arange(n, dtype=torch.int32, device=pos.device)
        ptr = torch.tensor(indptr, dtype=torch.int32, device=pos.device)
        self._meta = AttentionMetadata(
            pos, index, pos, ptr, ptr, tuple(indptr), tuple(indptr), causal
        )
        self._meta.validate()
        self._rope = rope
        self._mask = mask

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._mask is None:
            return paged_attention_ref(q, k, v, self._meta, self._rope)
        from framestream.kernels.rope import (
            apply_rope,  # local: the masked path is for tests and training
        )

        qr = apply_rope(q, self._meta.q_pos, self._rope).transpose(0, 1)
        kr = apply_rope(k, self._meta.kv_pos, self._rope).transpose(0, 1)
        out = torch.nn.functional.scaled_dot_product_attention(
            qr,
            kr,
            v.float().transpose(0, 1),
            attn_mask=self._mask,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.transpose(0, 1).to(q.dtype)
