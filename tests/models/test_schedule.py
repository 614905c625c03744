"""The few-step schedules carry the published loops' float32 levels bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framestream.models.schedule import FlowSchedule, opening_schedule


def published_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The published scheduler's table (FlowMatchScheduler(shift, sigma_min=0,
    extra_one_step=True).set_timesteps(1000)), with the 0 the loops append."""
    sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.cat([sigmas * 1000, torch.tensor([0.0])])
    return sigmas, timesteps


@pytest.mark.parametrize(
    "steps", [(1000, 800, 600, 400, 200), (1000, 750, 500, 250)], ids=["rolling", "longlive"]
)
def test_warped_levels_are_the_published_float32_table(steps) -> None:
    schedule = FlowSchedule(steps, shift=5.0)
    sigmas, timesteps = published_table(5.0)
    index = [1000 - s for s in steps]
    assert schedule.timesteps == tuple(timesteps[index].tolist())
    assert schedule.sigmas == tuple(sigmas[index].tolist())


def test_the_table_is_not_the_formula_rounded_once() -> None:
    schedule = FlowSchedule((1000, 800, 600, 400, 200), shift=5.0)
    exact = np.float32([5 * (s / 1000) / (1 + 4 * (s / 1000)) for s in schedule.steps])
    ulps = np.abs(np.float32(schedule.sigmas).view(np.int32) - exact.view(np.int32))
    assert ulps.max() == 1 and ulps.sum() >= 2


def test_the_clean_estimate_is_computed_in_float64() -> None:
    x = torch.tensor([1.0000001, 3.0, -2.5])
    v = torch.tensor([0.3333333, 7.0, 1e-8])
    sigma = FlowSchedule((1000, 750), shift=5.0).sigmas[1]
    want = (x.double() - sigma * v.double()).float()
    assert torch.equal(FlowSchedule.to_x0(x, v, sigma), want)


def test_unwarped_openings_are_even_levels() -> None:
    assert opening_schedule(4).sigmas == (1.0, 0.75, 0.5, 0.25)
