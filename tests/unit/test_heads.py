"""Dueling, quantile and noisy heads: hand computations, noise statistics, numpy twins = torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soulsai.model import heads, heads_numpy
from soulsai.model.heads import NoisyLinear, QHead
from soulsai.model.heads_numpy import NumpyNoisyLinear, NumpyQHead

E_ABS = math.sqrt(2 / math.pi)  # E|e| = E[f(e)^2] for e ~ N(0, 1)


def _both(fn: str, *arrays: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`heads.<fn>` on torch tensors and `heads_numpy.<fn>` on the arrays."""
    t_args = [None if a is None else torch.as_tensor(a) for a in arrays]
    return getattr(heads, fn)(*t_args).numpy(), getattr(heads_numpy, fn)(*arrays)


def test_dueling_by_hand_unmasked_and_masked() -> None:
    value = np.array([[1.0], [0.0]], np.float32)
    advantage = np.array([[1.0, 2.0, 6.0], [3.0, -3.0, 0.0]], np.float32)
    # row 0: mean A = 3 -> 1 + A - 3; row 1: mean A = 0 -> A
    for got in _both("dueling", value, advantage):
        np.testing.assert_allclose(got, [[-1.0, 0.0, 4.0], [3.0, -3.0, 0.0]])
    mask = np.array([[True, True, False], [False, True, True]])
    # row 0: mean over the valid {1, 2} = 1.5; row 1: mean over {-3, 0} = -1.5
    for got in _both("dueling", value, advantage, mask):
        np.testing.assert_allclose(got, [[0.5, 1.5, 5.5], [4.5, -1.5, 1.5]])
    # value given as (B,) is the same as (B, 1)
    for got in _both("dueling", value[:, 0], advantage, mask):
        np.testing.assert_allclose(got, [[0.5, 1.5, 5.5], [4.5, -1.5, 1.5]])


def test_dueling_per_quantile_and_the_valid_advantages_average_to_zero() -> None:
    rng = np.random.default_rng(0)
    value = rng.normal(size=(4, 1, 5)).astype(np.float32)
    advantage = rng.normal(size=(4, 3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 0, 1]], bool)
    t, n = _both("dueling", value, advantage, mask)
    np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-6)
    centered = n - value  # A - mean_valid(A): zero mean over the valid actions, per quantile
    means = (centered * mask[..., None]).sum(axis=1) / mask.sum(axis=1)[:, None]
    np.testing.assert_allclose(means, 0.0, atol=1e-6)
    # quantile 2 alone is the unquantiled dueling of that slice
    np.testing.assert_allclose(
        n[..., 2], heads_numpy.dueling(value[..., 2], advantage[..., 2], mask)
    )


def test_quantile_mean_is_the_action_value() -> None:
    quantiles = np.array([[[1.0, 2.0, 3.0, 6.0], [-1.0, 1.0, 0.0, 4.0]]], np.float32)
    for got in _both("quantile_mean", quantiles):
        np.testing.assert_allclose(got, [[3.0, 1.0]])


def test_noisy_linear_init_follows_the_paper() -> None:
    torch.manual_seed(0)
    layer = NoisyLinear(64, 32)
    bound = 1 / math.sqrt(64)
    for mu in (layer.weight_mu, layer.bias_mu):
        assert mu.abs().max() <= bound and mu.abs().max() > 0.9 * bound
    assert torch.all(layer.weight_sigma == 0.5 * bound)
    assert torch.all(layer.bias_sigma == 0.5 * bound)
    names = {n for n, _ in layer.named_buffers()}
    assert names == {"eps_in", "eps_out"}


def test_noise_is_factorized_and_has_the_expected_statistics() -> None:
    layer = NoisyLinear(16, 8)
    gen = torch.Generator().manual_seed(1)
    samples_in, samples_out = [], []
    for _ in range(4000):
        layer.reset_noise(gen)
        samples_in.append(layer.eps_in.clone())
        samples_out.append(layer.eps_out.clone())
    eps = torch.cat([torch.stack(samples_in).flatten(), torch.stack(samples_out).flatten()])
    # f(e) = sign(e) sqrt|e|: mean 0, E[f(e)^2] = E|e| = sqrt(2 / pi)
    assert abs(eps.mean().item()) < 0.01
    assert eps.square().mean().item() == pytest.approx(E_ABS, rel=0.01)
    # the weight noise is one outer product: rank 1, in+out random numbers, not in*out
    x = torch.eye(16)
    layer.train()
    with torch.no_grad():
        noisy_w = layer(x) - layer.bias_mu - layer.bias_sigma * layer.eps_out  # rows: W x_i
        noise = (noisy_w.T - layer.weight_mu) / layer.weight_sigma
    torch.testing.assert_close(noise, torch.outer(layer.eps_out, layer.eps_in))
    assert torch.linalg.matrix_rank(noise).item() == 1


def test_output_variance_over_noise_draws_matches_the_formula() -> None:
    """y_j = mu_j x + b_j + sigma_W f(eo_j) (f(ei) . x) + sigma_b f(eo_j):
    E[y_j] = mu_j x + b_j and Var[y_j] = E|e| (sigma_W^2 E|e| |x|^2 + sigma_b^2)."""
    torch.manual_seed(2)
    layer = NoisyLinear(10, 4)
    x = torch.randn(1, 10)
    gen = torch.Generator().manual_seed(3)
    outs = []
    with torch.no_grad():
        for _ in range(20000):
            layer.reset_noise(gen)
            outs.append(layer(x)[0])
        ys = torch.stack(outs).double()
        mean_y = (x @ layer.weight_mu.T + layer.bias_mu)[0].double()
    sigma = 0.5 / math.sqrt(10)
    var_y = E_ABS * (sigma**2 * E_ABS * x.square().sum().item() + sigma**2)
    np.testing.assert_allclose(
        ys.mean(0).numpy(), mean_y.numpy(), atol=4 * math.sqrt(var_y / 20000)
    )
    np.testing.assert_allclose(ys.var(0).numpy(), var_y, rtol=0.1)


def test_eval_mode_uses_the_means_only() -> None:
    layer = NoisyLinear(5, 3)
    x = torch.randn(7, 5)
    with torch.no_grad():
        noisy = layer(x)
        layer.eval()
        clean = layer(x)
    torch.testing.assert_close(clean, x @ layer.weight_mu.T + layer.bias_mu)
    assert not torch.allclose(noisy, clean)


def test_reset_noise_with_a_generator_is_reproducible_and_sigma_gets_gradients() -> None:
    a, b = NoisyLinear(6, 2), NoisyLinear(6, 2)
    a.reset_noise(torch.Generator().manual_seed(9))
    b.reset_noise(torch.Generator().manual_seed(9))
    assert torch.equal(a.eps_in, b.eps_in) and torch.equal(a.eps_out, b.eps_out)
    a(torch.randn(3, 6)).sum().backward()
    assert a.weight_sigma.grad is not None and a.weight_sigma.grad.abs().sum() > 0
    assert a.bias_sigma.grad is not None and a.bias_sigma.grad.abs().sum() > 0


def test_numpy_noisy_layer_equals_torch_given_the_same_noise() -> None:
    torch.manual_seed(4)
    layer = NoisyLinear(12, 5)
    x = np.random.default_rng(0).normal(size=(9, 12)).astype(np.float32)
    twin = NumpyNoisyLinear(layer.state_dict(), "", 12, 5)  # starts with the torch noise
    with torch.no_grad():
        np.testing.assert_allclose(
            twin(x), layer(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6
        )
        twin.reset_noise(np.random.default_rng(5))  # the client's own draw, shared back
        layer.set_noise(torch.from_numpy(twin.eps_in), torch.from_numpy(twin.eps_out))
        np.testing.assert_allclose(
            twin(x), layer(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6
        )
        layer.eval()
        twin.use_noise = False
        np.testing.assert_allclose(
            twin(x), layer(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6
        )


def test_numpy_noise_draws_have_the_same_statistics_and_are_seeded() -> None:
    state = NoisyLinear(16, 8).state_dict()
    twin = NumpyNoisyLinear(state, "", 16, 8)
    rng = np.random.default_rng(6)
    draws = []
    for _ in range(4000):
        twin.reset_noise(rng)
        draws += [twin.eps_in, twin.eps_out]
    eps = np.concatenate(draws)
    assert eps.dtype == np.float32
    assert abs(eps.mean()) < 0.01
    assert np.square(eps.astype(np.float64)).mean() == pytest.approx(E_ABS, rel=0.01)
    a, b = NumpyNoisyLinear(state, "", 16, 8), NumpyNoisyLinear(state, "", 16, 8)
    a.reset_noise(np.random.default_rng(1))
    b.reset_noise(np.random.default_rng(1))
    assert np.array_equal(a.eps_in, b.eps_in) and np.array_equal(a.eps_out, b.eps_out)


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("n_quantiles", [1, 8])
def test_numpy_q_head_equals_torch(dueling: bool, noisy: bool, n_quantiles: int) -> None:
    torch.manual_seed(5)
    head = QHead(20, 4, n_quantiles=n_quantiles, dueling=dueling, noisy=noisy)
    state = {f"head.{k}": v for k, v in head.state_dict().items()}
    twin = NumpyQHead(state, "head.", 20, 4, n_quantiles=n_quantiles, dueling=dueling, noisy=noisy)
    rng = np.random.default_rng(1)
    h = rng.normal(size=(6, 20)).astype(np.float32)
    mask = rng.random((6, 4)) < 0.6
    mask[:, 0] = True
    with torch.no_grad():
        for m in (None, mask):
            t_mask = None if m is None else torch.from_numpy(m)
            quantiles = head(torch.from_numpy(h), t_mask).numpy()
            assert quantiles.shape == (6, 4, n_quantiles)
            np.testing.assert_allclose(twin(h, m), quantiles, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(
                twin.q_values(h, m), head.q_values(torch.from_numpy(h), t_mask).numpy(), atol=1e-5
            )
            np.testing.assert_allclose(
                head.q_values(torch.from_numpy(h), t_mask).numpy(), quantiles.mean(-1), atol=1e-6
            )
    if noisy:  # new noise on both sides, shared layer by layer: still equal
        twin.reset_noise(np.random.default_rng(2))
        for name, layer in twin.layers.items():
            assert isinstance(layer, NumpyNoisyLinear)
            getattr(head, name).set_noise(
                torch.from_numpy(layer.eps_in), torch.from_numpy(layer.eps_out)
            )
        with torch.no_grad():
            np.testing.assert_allclose(
                twin(h, mask),
                head(torch.from_numpy(h), torch.from_numpy(mask)).numpy(),
                rtol=1e-5,
                atol=1e-5,
            )


def test_a_state_of_the_wrong_shape_is_rejected() -> None:
    state = QHead(20, 4, dueling=True).state_dict()
    with pytest.raises(ValueError, match="advantage.weight"):
        NumpyQHead(state, "", 20, 5, dueling=True)
    with pytest.raises(ValueError, match="out.weight"):
        NumpyQHead(state, "", 20, 4)
