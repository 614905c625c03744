"""Flow-matching few-step schedules of the Self-Forcing family (pure math, no modules).

The distilled generators predict a velocity ``v`` with ``x_t = (1 - sigma) * x0 + sigma * noise``,
so ``x0 = x_t - sigma * v``. Timesteps live on a 1000-step grid whose sigmas are shifted::

    s_i = 1 - i / 1000                        i = 0 .. 999
    sigma_i = shift * s_i / (1 + (shift - 1) * s_i)
    t_i = 1000 * sigma_i

A published step list such as ``[1000, 750, 500, 250]`` is *warped* through that grid
(``t = t_{1000 - step}``), which with shift 5 gives ``[1000, 937.5, 833.3, 625.0]``.

The published loops read warped levels from their scheduler's float32 table (``linspace``, then
the shift, then ``* 1000``, each rounded to float32), not from the formula in exact arithmetic;
a level computed once in float64 and rounded differs from it by an ulp at some steps, so warped
levels here are read from the same table. Their clean estimate is computed in float64.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["FlowSchedule", "opening_schedule"]

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowSchedule:
    """A warped, shifted list of denoising steps.

    Attributes:
        steps: the published step list, e.g. ``(1000, 750, 500, 250)``.
        shift: sigma shift (5.0 for LongLive and Rolling Forcing).
        warp: map ``steps`` through the shifted grid (``warp_denoising_step: true``).
    """

    steps: tuple[int, ...]
    shift: float = 5.0
    warp: bool = True

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in self.steps):
            raise ValueError(f"steps must be in (0, {NUM_TRAIN_TIMESTEPS}], got {self.steps}")
        if list(self.steps) != sorted(self.steps, reverse=True):
            raise ValueError(f"steps must decrease, got {self.steps}")

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Noise level of each step, in (0, 1]."""
        if self.warp:
            sigmas, _ = _shifted_grid(self.shift)
            return tuple(float(sigmas[NUM_TRAIN_TIMESTEPS - s]) for s in self.steps)
        raw = [s / NUM_TRAIN_TIMESTEPS for s in self.steps]
        return tuple(self.shift * s / (1 + (self.shift - 1) * s) for s in raw)

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Model timesteps of each step on the 0..1000 scale."""
        if self.warp:
            _, timesteps = _shifted_grid(self.shift)
            return tuple(float(timesteps[NUM_TRAIN_TIMESTEPS - s]) for s in self.steps)
        return tuple(NUM_TRAIN_TIMESTEPS * s for s in self.sigmas)

    @staticmethod
    def to_x0(
        x_t: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor
    ) -> torch.Tensor:
        """Clean estimate from a velocity prediction: computed in float64 as the published
        loops do, returned in float32."""
        sigma = sigma.double() if isinstance(sigma, torch.Tensor) else sigma
        return (x_t.double() - sigma * velocity.double()).float()

    @staticmethod
    def ode_step(
        x_t: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float
    ) -> torch.Tensor:
        """One Euler step of the flow ODE from ``sigma`` to ``sigma_next``: the noise implied by
        ``x_t`` and the estimate ``x0`` is kept, not redrawn, so a sample's layout, once the
        noise suggests one, survives the step (a model not distilled for few steps needs this
        to leave the mean)."""
        noise = (x_t.float() - (1 - sigma) * x0) / sigma
        return (1 - sigma_next) * x0 + sigma_next * noise

    @staticmethod
    def add_noise(
        x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor
    ) -> torch.Tensor:
        """Re-noise a clean estimate to ``sigma`` (fresh noise: the stochastic DMD sampler)."""
        return (1 - sigma) * x0 + sigma * noise


@functools.cache
def _shifted_grid(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The published scheduler's float32 table of the 1000-step grid: ``(sigmas, timesteps)``,
    each ``[1000]``, computed by the same float32 operations on the CPU."""
    sigmas = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas, sigmas * NUM_TRAIN_TIMESTEPS


def opening_schedule(steps: int, shift: float = 1.0) -> FlowSchedule:
    """``steps`` evenly spaced levels from pure noise (unwarped), at ``shift``."""
    if steps < 1:
        raise ValueError(f"opening steps must be >= 1, got {steps}")
    levels = tuple(round(NUM_TRAIN_TIMESTEPS * (steps - i) / steps) for i in range(steps))
    return FlowSchedule(levels, shift=shift, warp=False)
