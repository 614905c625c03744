"""Rotary position embedding described per rotation pair, applied from logical positions.

Every model in this project rotates pairs of head dimensions by an angle ``pos[axis] * freq``.
They differ only in three things, which a :class:`RopeSpec` records:

* which position axis each pair reads (Wan: t/h/w by pair range; Qwen2.5-VL M-RoPE: t/h/w by
  ``mrope_section``; plain text: axis 0 only),
* the frequency of each pair,
* how pairs are laid out in the head dimension::

      interleaved (Wan):        pair j = dims (2j, 2j+1)
      half / rotate_half (Qwen): pair j = dims (j, j + D/2)

Positions are always int32 ``[N, 3]`` (t, h, w); 1D text positions repeat the same value on
the three axes, which is exactly how Qwen2.5-VL places text tokens.

Keys are cached *before* rotation, so this rotation is applied at attention time (inside the
Triton kernel on CUDA, by :func:`apply_rope` in the torch twin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RopeSpec", "apply_rope", "mrope", "rope_1d", "wan_rope"]


@dataclass(frozen=True, eq=False)
class RopeSpec:
    """Rotation of a head of ``head_dim`` dims: one frequency and one position axis per pair.

    Attributes:
        inv_freq: float32 ``[head_dim // 2]``, angle per unit of position for each pair.
        axis: int32 ``[head_dim // 2]``, which of the 3 position columns each pair reads.
        interleaved: pair layout, see the module docstring.
    """

    inv_freq: torch.Tensor
    axis: torch.Tensor
    interleaved: bool

    def __post_init__(self) -> None:
        if self.inv_freq.shape != self.axis.shape or self.inv_freq.ndim != 1:
            raise ValueError(
                f"inv_freq {tuple(self.inv_freq.shape)} and axis {tuple(self.axis.shape)} "
                "must be equal 1-D shapes"
            )
        if self.inv_freq.numel() == 0:
            raise ValueError("a RopeSpec needs at least one rotation pair")
        if int(self.axis.min()) < 0 or int(self.axis.max()) > 2:
            raise ValueError("axis entries must be 0, 1 or 2")

    @property
    def head_dim(self) -> int:
        return 2 * self.inv_freq.numel()

    def per_dim(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-dim tables ``(freq, axis, partner, sign)``, each ``[head_dim]``, on ``device``.

        ``rotated[d] = x[d] * cos(a[d]) + sign[d] * x[partner[d]] * sin(a[d])`` with
        ``a[d] = pos[axis[d]] * freq[d]``. Built once per device and cached, so attention calls
        do no host work (and no host-device copies) after the first.
        """
        device = torch.device(device) if device is not None else self.inv_freq.device
        cache = self.__dict__.setdefault("_tables", {})
        if device not in cache:
            cache[device] = tuple(t.to(device) for t in self._build_tables())
        return cache[device]

    def _build_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        half = self.inv_freq.numel()
        device = self.inv_freq.device
        pair = torch.arange(2 * half, device=device)
        if self.interleaved:
            pair_index = pair // 2
            partner = pair ^ 1
            first = pair % 2 == 0
        else:
            pair_index = pair % half
            partner = (pair + half) % (2 * half)
            first = pair < half
        sign = torch.where(first, -1.0, 1.0).to(torch.float32)
        return (
            self.inv_freq[pair_index].float(),
            self.axis[pair_index].to(torch.int32),
            partner.to(torch.int32),
            sign,
        )


def _inv_freq(dim: int, theta: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    # Each model's table is computed as its reference computes it (Wan: float64, rounded once;
    # transformers' Qwen: float32), so trained weights see bit-identical frequencies.
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim
    return (1.0 / theta**exponent).float()


def wan_rope(head_dim: int = 128, theta: float = 10_000.0) -> RopeSpec:
    """Wan2.1 3D RoPE: t, h, w get ``D - 4*(D//6)``, ``2*(D//6)``, ``2*(D//6)`` dims (44/42/42)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    hw_dim = 2 * (head_dim // 6)
    t_dim = head_dim - 2 * hw_dim
    parts = [_inv_freq(t_dim, theta), _inv_freq(hw_dim, theta), _inv_freq(hw_dim, theta)]
    axis = torch.cat([torch.full((p.numel(),), i, dtype=torch.int32) for i, p in enumerate(parts)])
    return RopeSpec(torch.cat(parts), axis, interleaved=True)


def mrope(
    head_dim: int = 128, theta: float = 1_000_000.0, sections: tuple[int, int, int] = (16, 24, 24)
) -> RopeSpec:
    """Qwen2.5-VL multimodal RoPE: frequency pairs split into t/h/w by ``mrope_section``."""
    if sum(sections) != head_dim // 2:
        raise ValueError(f"mrope sections {sections} must sum to head_dim/2 = {head_dim // 2}")
    axis = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(sections)])
    return RopeSpec(_inv_freq(head_dim, theta, torch.float32), axis, interleaved=False)


def rope_1d(head_dim: int, theta: float = 10_000.0, interleaved: bool = False) -> RopeSpec:
    """Plain 1D RoPE over position column 0."""
    inv_freq = _inv_freq(head_dim, theta)
    return RopeSpec(inv_freq, torch.zeros(inv_freq.numel(), dtype=torch.int32), interleaved)


def apply_rope(x: torch.Tensor, pos: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    """Rotate ``x`` ``[N, H, D]`` at int positions ``pos`` ``[N, 3]``; float32 ``[N, H, D]`` out."""
    if x.shape[-1] != rope.head_dim:
        raise ValueError(f"head dim {x.shape[-1]} does not match the rope's {rope.head_dim}")
    freq, axis, partner, sign = rope.per_dim(x.device)
    angle = pos.to(torch.float32).index_select(1, axis.long()) * freq  # [N, D]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    xf = x.float()
    return xf * cos + sign * xf.index_select(-1, partner.long()) * sin
