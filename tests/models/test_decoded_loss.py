"""The loss on the DiT's x0 through the frozen decoder (models.toyworld.decoded_loss)."""

from __future__ import annotations

import pytest
import torch

from framestream.models.toyworld.decoded_loss import DecodedLoss
from framestream.models.vae import tiny_wan_vae

ROWS, CHUNK = 4, 3


def _case(sigma: list[float]):
    """Data latents, the noisy rows at ``sigma`` and the data's velocity ``noise - x0``."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn((ROWS, 16, CHUNK, 2, 2), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    s = torch.tensor(sigma)
    x_t = (1 - s[:, None, None, None, None]) * x0 + s[:, None, None, None, None] * noise
    return x0, x_t, noise - x0, s


def _loss(sigma_max: float = 0.5, frames: int = ROWS * CHUNK) -> DecodedLoss:
    return DecodedLoss(tiny_wan_vae(seed=3), frames, sigma_max, foreground_weight=4.0)


def test_the_datas_own_velocity_costs_nothing():
    x0, x_t, velocity, sigma = _case([0.1, 0.3, 0.5, 0.9])
    loss = _loss()(x_t, x0, velocity, sigma, torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_only_frames_at_or_below_sigma_max_are_trained():
    x0, x_t, velocity, sigma = _case([0.1, 0.3, 0.7, 0.9])
    velocity = velocity.clone().requires_grad_(True)
    wrong = velocity + torch.randn(velocity.shape, generator=torch.Generator().manual_seed(2))
    loss = _loss()(x_t, x0, wrong, sigma, torch.Generator().manual_seed(1))
    loss.backward()
    assert loss.item() > 0
    reached = velocity.grad.flatten(1).abs().sum(1)
    assert (reached[:2] > 0).all()  # the two rows at 0.1 and 0.3
    assert (reached[2:] == 0).all()  # the two above 0.5


def test_a_batch_with_no_frame_low_enough_costs_nothing_and_stays_finite():
    x0, x_t, velocity, sigma = _case([0.7, 0.8, 0.9, 1.0])
    wrong = velocity + 1.0
    loss = _loss()(x_t, x0, wrong, sigma, torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and loss.item() == 0.0


def test_the_decoder_stays_frozen():
    decoded = _loss(frames=4)
    x0, x_t, velocity, sigma = _case([0.1, 0.2, 0.3, 0.4])
    wrong = (velocity + 0.5).requires_grad_(True)
    decoded(x_t, x0, wrong, sigma, torch.Generator().manual_seed(1)).backward()
    assert wrong.grad is not None
    assert all(p.grad is None for p in decoded.codec.vae.parameters())


@pytest.mark.parametrize("bad", [{"frames": 0}, {"sigma_max": 0.0}, {"sigma_max": 1.5}])
def test_bad_settings_are_refused(bad):
    settings = {"frames": 4, "sigma_max": 0.5} | bad
    with pytest.raises(ValueError):
        DecodedLoss(tiny_wan_vae(), foreground_weight=4.0, **settings)
