"""Quantile Huber loss: hand computations, per-sample shape, gradients, convergence to quantiles."""

from __future__ import annotations

import pytest
import torch

from soulsai.training.algorithms.losses import (
    quantile_huber_loss,
    quantile_midpoints,
    quantile_td_error,
)


def test_midpoints() -> None:
    torch.testing.assert_close(quantile_midpoints(2), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(quantile_midpoints(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))


@pytest.mark.parametrize(
    ("kappa", "expected"),
    [
        # theta = [0, 1] at tau_hat = [.25, .75]; target = [0.5, 3]; u_ij = T_j - theta_i
        # i=0: u = [0.5, 3], weight .25 both     i=1: u = [-0.5, 2], weights [.25, .75]
        # kappa 1: L = [.125, 2.5] -> mean(.03125, .625) = .328125
        #          L = [.125, 1.5] -> mean(.03125, 1.125) = .578125;     sum .90625
        (1.0, 0.90625),
        # kappa 2: L/2 = [.0625, 2] -> mean(.015625, .5) = .2578125
        #          L/2 = [.0625, 1] -> mean(.015625, .75) = .3828125;    sum .640625
        (2.0, 0.640625),
        # kappa 0: |u| -> mean(.125, .75) = .4375; mean(.125, 1.5) = .8125; sum 1.25
        (0.0, 1.25),
    ],
)
def test_quantile_huber_loss_by_hand(kappa: float, expected: float) -> None:
    theta = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[0.5, 3.0]])
    loss = quantile_huber_loss(theta, target, kappa)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_more_target_than_predicted_quantiles_by_hand() -> None:
    """Sum over predicted quantiles i, mean over target quantiles j (N = 2, N' = 3)."""
    theta = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[0.5, 3.0, -1.0]])
    # i=0 (tau .25): u = [0.5, 3, -1], L = [.125, 2.5, .5], weights [.25, .25, .75]
    #   -> (.03125 + .625 + .375) / 3 = 1.03125 / 3
    # i=1 (tau .75): u = [-0.5, 2, -2], L = [.125, 1.5, 1.5], weights [.25, .75, .25]
    #   -> (.03125 + 1.125 + .375) / 3 = 1.53125 / 3;          sum 2.5625 / 3
    assert quantile_huber_loss(theta, target).item() == pytest.approx(2.5625 / 3, abs=1e-7)


def test_losses_are_per_sample_and_weightable() -> None:
    rng = torch.Generator().manual_seed(0)
    theta = torch.randn(5, 8, generator=rng, requires_grad=True)
    target = torch.randn(5, 8, generator=rng, requires_grad=True)
    per_sample = quantile_huber_loss(theta, target)
    assert per_sample.shape == (5,) and (per_sample >= 0).all()
    for b in range(5):  # each sample's loss depends on its own row only
        alone = quantile_huber_loss(theta[b : b + 1], target[b : b + 1])
        torch.testing.assert_close(alone[0], per_sample[b])
    weights = torch.tensor([1.0, 0.5, 0.0, 0.25, 1.0])
    (weights * per_sample).mean().backward()
    assert target.grad is None  # the target is a constant
    assert theta.grad is not None and torch.all(theta.grad[2] == 0)  # weight 0: no gradient
    assert theta.grad[0].abs().sum() > 0


def test_only_a_point_mass_equal_to_the_prediction_costs_nothing() -> None:
    theta = torch.tensor([[1.0, 2.0, 3.0]])
    assert quantile_huber_loss(theta, theta.clone()).item() > 0  # pairs i != j still differ
    same = torch.full((1, 3), 2.0)
    assert quantile_huber_loss(same, same.clone()).item() == 0.0


def test_minimizing_the_loss_finds_the_quantiles_of_the_target() -> None:
    """With kappa 0, theta_i converges to the tau_hat_i quantile of the targets (U(0, 1))."""
    torch.manual_seed(0)
    target = torch.rand(1, 2000)
    theta = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.01)
    for _ in range(600):
        opt.zero_grad()
        quantile_huber_loss(theta, target, kappa=0.0).sum().backward()
        opt.step()
    torch.testing.assert_close(theta.detach()[0], quantile_midpoints(4), atol=0.03, rtol=0)


def test_td_error_is_the_difference_of_means() -> None:
    theta = torch.tensor([[0.0, 1.0], [2.0, 2.0]], requires_grad=True)
    target = torch.tensor([[0.5, 3.0], [1.0, 0.0]])
    td = quantile_td_error(theta, target)
    torch.testing.assert_close(td, torch.tensor([1.25, -1.5]))
    assert not td.requires_grad


@pytest.mark.parametrize(
    ("shapes", "kappa"),
    [(((4, 2), (3, 2)), 1.0), (((4, 2, 1), (4, 2)), 1.0), (((4, 2), (4, 2)), -1.0)],
)
def test_bad_shapes_and_kappa_are_errors(shapes: tuple, kappa: float) -> None:
    with pytest.raises(ValueError):
        quantile_huber_loss(torch.zeros(shapes[0]), torch.zeros(shapes[1]), kappa)
