"""The PPO client's policy: an ActorCritic state dict evaluated in numpy.

Computes what `soulsai.model.nets.ActorCritic` computes (tested): encode the observation's
leaves (`NumpyObsEncoder`; a bare Box is flattened), normalize the continuous features, an
optional shared torso, then actor and critic MLPs. Sampling uses the client's own numpy
generator; with a valid-action mask it draws among the valid actions only
(`soulsai.model.masks.masked_sample`), as the node's loss assumes. With a recurrent core
(ppo.recurrent) the caller carries the state: `step` and `act_step` take the states (B, S) and
return the new ones (`soulsai.model.cores.NumpyCore`, tested equal to torch step by step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.model.cores import NumpyCore
from soulsai.model.masks import masked_log_softmax, masked_sample
from soulsai.model.obs import ObsLayout, build_layout
from soulsai.model.obs_encode import NumpyObsEncoder
from soulsai.model.shapes import NORM_CLIP, NORM_EPS

Obs = np.ndarray | Mapping[str, np.ndarray]  # a bare Box's batch, or leaves name -> (B, *shape)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _arr(t: Any) -> np.ndarray:
    """A live torch module's tensors are copied (training would change them under us);
    freshly decoded numpy arrays belong to nobody else and are used as they are."""
    return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _layers(state: dict[str, Any], prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W^T, b) of every Linear in the nn.Sequential named `prefix`, in order; W^T is a view."""
    idx = sorted({int(k.split(".")[1]) for k in state if k.startswith(prefix + ".")})
    return [
        (
            _arr(state[f"{prefix}.{i}.weight"]).astype(np.float32, copy=False).T,
            _arr(state[f"{prefix}.{i}.bias"]).astype(np.float32, copy=False),
        )
        for i in idx
    ]


class NumpyActorCritic:
    """Acts for PPO: actions, their log-probabilities and the values of the observations."""

    def __init__(
        self,
        state: dict[str, Any],
        discrete: bool,
        normalize_obs: bool,
        activation: str,
        layout: ObsLayout | None = None,
        discrete_obs: str = "onehot",
        recurrent: str | None = None,
    ) -> None:
        self.discrete = discrete
        self.normalize = normalize_obs
        self.activation = activation
        if layout is None:  # a bare Box of the normalizer's shape
            shape = tuple(np.shape(_arr(state["obs_norm.mean"])))
            layout = build_layout(gym.spaces.Box(-np.inf, np.inf, shape, np.float32))
        self.layout = layout
        self.encoder = NumpyObsEncoder.from_state(layout, state, discrete_obs, prefix="encoder.")
        self.n_continuous = layout.n_continuous
        self.mean = _arr(state["obs_norm.mean"]).astype(np.float32).ravel()
        self.std = np.sqrt(_arr(state["obs_norm.var"]).astype(np.float32).ravel() + NORM_EPS)
        self.torso = _layers(state, "torso")
        self.core = None if recurrent is None else NumpyCore(recurrent, state, "core")
        self.state_size = 0 if self.core is None else self.core.state_size
        self.actor = _layers(state, "actor")
        self.critic = _layers(state, "critic")
        self.log_std = None if discrete else _arr(state["log_std"]).astype(np.float32)

    def _act_fn(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x) if self.activation == "tanh" else np.maximum(x, 0.0)

    def _mlp(self, x: np.ndarray, layers: list, last_linear: bool) -> np.ndarray:
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if not (last_linear and i == len(layers) - 1):
                x = self._act_fn(x)
        return x

    def features(self, obs: Obs) -> np.ndarray:
        """The network input (B, F): encoded, the continuous features normalized."""
        x = self.encoder(obs)
        if self.normalize and self.n_continuous:
            n = self.n_continuous
            if n == x.shape[1]:
                x = np.clip((x - self.mean) / self.std, -NORM_CLIP, NORM_CLIP)
            else:  # the encoder's output is new memory: normalize its prefix in place
                x[:, :n] = np.clip((x[:, :n] - self.mean) / self.std, -NORM_CLIP, NORM_CLIP)
        return x

    def forward(self, obs: Obs) -> tuple[np.ndarray, np.ndarray]:
        """(logits or Gaussian mean, values) for a batch of observations (feed-forward)."""
        out, values, _ = self.step(obs)
        return out, values

    def step(
        self, obs: Obs, state: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(logits or Gaussian mean, values, new states): one step from the states (B, S)
        (a recurrent core needs them; None without one)."""
        x = self.features(obs)
        h = self._mlp(x, self.torso, last_linear=False)
        new_state = None
        if self.core is not None:
            if state is None:
                raise ValueError("a recurrent policy needs the states")
            h, new_state = self.core.step(h, state)
        return self._mlp(h, self.actor, True), self._mlp(h, self.critic, True)[:, 0], new_state

    def value(self, obs: Obs, state: np.ndarray | None = None) -> np.ndarray:
        return self.step(obs, state)[1]

    def act(
        self, obs: Obs, rng: np.random.Generator, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled actions (int64 indices, or raw float32 Gaussian samples), log-probs, values;
        with `mask` (bool (B, n), discrete only) among the valid actions only."""
        return self.act_step(obs, rng, mask)[:3]

    def act_step(
        self,
        obs: Obs,
        rng: np.random.Generator,
        mask: np.ndarray | None = None,
        state: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """`act` from the states (B, S) of a recurrent core; also returns the new states."""
        out, values, new_state = self.step(obs, state)
        if mask is not None:
            actions, logprob = masked_sample(out, mask, rng)
            return actions, logprob, values.astype(np.float32), new_state
        if self.discrete:
            logp_all = _log_softmax(out)
            u = rng.random((len(out), 1))
            cdf = np.cumsum(np.exp(logp_all), axis=1)
            actions = np.minimum((u > cdf).sum(axis=1), out.shape[1] - 1).astype(np.int64)
            logprob = logp_all[np.arange(len(out)), actions]
        else:
            assert self.log_std is not None
            std = np.exp(self.log_std)
            noise = rng.standard_normal(out.shape).astype(np.float32)
            actions = (out + std * noise).astype(np.float32)
            logprob = (-0.5 * noise**2 - self.log_std - LOG_SQRT_2PI).sum(axis=1)
        return actions, logprob.astype(np.float32), values.astype(np.float32), new_state

    def log_prob(
        self,
        obs: Obs,
        actions: np.ndarray,
        mask: np.ndarray | None = None,
        state: np.ndarray | None = None,
    ) -> np.ndarray:
        """Log-probabilities of given actions (for tests and diagnostics)."""
        out = self.step(obs, state)[0]
        if mask is not None:
            return masked_log_softmax(out, mask)[np.arange(len(out)), actions.astype(np.int64)]
        if self.discrete:
            return _log_softmax(out)[np.arange(len(out)), actions.astype(np.int64)]
        assert self.log_std is not None
        noise = (actions - out) / np.exp(self.log_std)
        return (-0.5 * noise**2 - self.log_std - LOG_SQRT_2PI).sum(axis=1)
