"""Numpy twins of `soulsai.model.heads` for the clients (no torch needed to act).

Given the same state dict and, for noisy layers, the same noise vectors, each function and
class here computes what its torch counterpart does (tested). A client's noisy layers draw
their own noise from a numpy Generator (`reset_noise`), as Fortunato et al.'s actors do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def dueling(value: np.ndarray, advantage: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """V + A - mean(A) over axis 1 (valid actions only if `mask` (B, A) is given); shapes as
    `heads.dueling`: value (B, 1[, N]) or (B,), advantage (B, A[, N])."""
    if value.ndim == advantage.ndim - 1:
        value = value[:, None]
    if mask is None:
        return value + advantage - advantage.mean(axis=1, keepdims=True)
    valid = np.asarray(mask, dtype=bool)
    if advantage.ndim == 3:
        valid = valid[..., None]
    total = np.where(valid, advantage, 0).sum(axis=1, keepdims=True)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1).astype(advantage.dtype)
    return value + advantage - total / count


def quantile_mean(quantiles: np.ndarray) -> np.ndarray:
    """Action values (B, A) from quantile estimates (B, A, N): their mean."""
    return quantiles.mean(axis=-1)


def noise_transform(x: np.ndarray) -> np.ndarray:
    """f(x) = sign(x) sqrt(|x|)."""
    return np.sign(x) * np.sqrt(np.abs(x))


def _arr(t: Any) -> np.ndarray:
    """A float32 copy of a torch tensor or array: training must not change it under us."""
    a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    return a.astype(np.float32, copy=True)


def _get(state: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise ValueError(f"state has no {key!r}")
    a = _arr(state[key])
    if a.shape != shape:
        raise ValueError(f"state {key!r} has shape {a.shape}, expected {shape}")
    return a


class NumpyLinear:
    """y = x W^T + b from `prefix`weight and `prefix`bias."""

    def __init__(
        self, state: Mapping[str, Any], prefix: str, in_features: int, out_features: int
    ) -> None:
        self.weight_t = _get(state, f"{prefix}weight", (out_features, in_features)).T
        self.bias = _get(state, f"{prefix}bias", (out_features,))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight_t + self.bias


class NumpyNoisyLinear:
    """A NoisyLinear from its state (`prefix`weight_mu, weight_sigma, bias_mu, bias_sigma).

    The noise starts as the state's eps_in / eps_out if present (else zero) and is redrawn by
    `reset_noise(rng)`. `use_noise` False: the means only, as torch's eval() mode.
    """

    def __init__(
        self,
        state: Mapping[str, Any],
        prefix: str,
        in_features: int,
        out_features: int,
        use_noise: bool = True,
    ) -> None:
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features)
        self.weight_mu = _get(state, f"{prefix}weight_mu", shape)
        self.weight_sigma = _get(state, f"{prefix}weight_sigma", shape)
        self.bias_mu = _get(state, f"{prefix}bias_mu", (out_features,))
        self.bias_sigma = _get(state, f"{prefix}bias_sigma", (out_features,))
        self.use_noise = use_noise
        self.eps_in = np.zeros(in_features, np.float32)
        self.eps_out = np.zeros(out_features, np.float32)
        if f"{prefix}eps_in" in state and f"{prefix}eps_out" in state:
            self.set_noise(state[f"{prefix}eps_in"], state[f"{prefix}eps_out"])

    def reset_noise(self, rng: np.random.Generator) -> None:
        """Draw new factorized noise f(e_in), f(e_out), e ~ N(0, 1), from `rng`."""
        self.eps_in = noise_transform(rng.standard_normal(self.in_features)).astype(np.float32)
        self.eps_out = noise_transform(rng.standard_normal(self.out_features)).astype(np.float32)

    def set_noise(self, eps_in: Any, eps_out: Any) -> None:
        """Use the given f(e) vectors (e.g. the torch layer's) as the noise."""
        eps_in, eps_out = _arr(eps_in), _arr(eps_out)
        if eps_in.shape != (self.in_features,) or eps_out.shape != (self.out_features,):
            raise ValueError(f"noise shapes {eps_in.shape}, {eps_out.shape} do not fit the layer")
        self.eps_in, self.eps_out = eps_in, eps_out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.use_noise:
            return x @ self.weight_mu.T + self.bias_mu
        weight = self.weight_mu + self.weight_sigma * np.outer(self.eps_out, self.eps_in)
        return x @ weight.T + (self.bias_mu + self.bias_sigma * self.eps_out)


class NumpyQHead:
    """The twin of `heads.QHead`, built from the state dict entries under `prefix`."""

    def __init__(
        self,
        state: Mapping[str, Any],
        prefix: str,
        in_features: int,
        n_actions: int,
        n_quantiles: int = 1,
        dueling: bool = False,
        noisy: bool = False,
        use_noise: bool = True,
    ) -> None:
        self.n_actions, self.n_quantiles, self.is_dueling = n_actions, n_quantiles, dueling

        def layer(name: str, out_features: int) -> NumpyLinear | NumpyNoisyLinear:
            if noisy:
                return NumpyNoisyLinear(
                    state, f"{prefix}{name}.", in_features, out_features, use_noise
                )
            return NumpyLinear(state, f"{prefix}{name}.", in_features, out_features)

        if dueling:
            self.layers = {
                "value": layer("value", n_quantiles),
                "advantage": layer("advantage", n_actions * n_quantiles),
            }
        else:
            self.layers = {"out": layer("out", n_actions * n_quantiles)}

    def __call__(self, h: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Quantiles (B, A, N)."""
        shape = (len(h), self.n_actions, self.n_quantiles)
        if not self.is_dueling:
            return self.layers["out"](h).reshape(shape)
        value = self.layers["value"](h).reshape(len(h), 1, self.n_quantiles)
        return dueling(value, self.layers["advantage"](h).reshape(shape), mask)

    def q_values(self, h: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Action values (B, A): the mean over quantiles."""
        return quantile_mean(self(h, mask))

    def reset_noise(self, rng: np.random.Generator) -> None:
        """New noise for every noisy layer (nothing without `noisy`)."""
        for layer in self.layers.values():
            if isinstance(layer, NumpyNoisyLinear):
                layer.reset_noise(rng)
