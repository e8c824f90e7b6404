"""The recurrent Q-network of algo r2d2 without torch: its weight shapes and the clients' numpy
twin (tested equal to `soulsai.model.r2d2_net.RecurrentQNetwork` step by step, resets included).

The network: observation encoder and normalizer (as QNetwork's), an MLP torso (`mlp.<2i>`,
Linear + ReLU per `dqn.hidden` size), one LSTM/GRU `core` of `r2d2.core_size` units
(soulsai.model.cores), and a `head` (soulsai.model.heads.QHead: `out`, or `value` and
`advantage` with dqn.dueling). The state of one env copy is one float32 row (`[h, c]` for an
LSTM, `[h]` for a GRU).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from soulsai.config.schema import DQNConfig, R2D2Config
from soulsai.model.cores import NumpyCore, core_weight_shapes, state_size
from soulsai.model.heads_numpy import NumpyQHead
from soulsai.model.masks import masked_epsilon_greedy
from soulsai.model.numpy_q import NumpyQPolicy
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_encode import encoder_weight_shapes
from soulsai.model.shapes import q_head_shapes

Shapes = dict[str, tuple[int, ...]]


def r2d2_weight_shapes(
    d: DQNConfig,
    r: R2D2Config,
    layout: ObsLayout,
    n_actions: int,
    discrete_obs: str = "onehot",
    embedding_dim: int = 8,
) -> Shapes:
    """The state_dict of a RecurrentQNetwork built from the dqn and r2d2 sections."""
    norm = layout.norm_shape
    shapes: Shapes = {"obs_norm.mean": norm, "obs_norm.var": norm, "obs_norm.count": ()}
    shapes |= encoder_weight_shapes(layout, discrete_obs, embedding_dim)
    sizes = [layout.n_features(discrete_obs, embedding_dim), *d.hidden]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"mlp.{2 * i}.weight"], shapes[f"mlp.{2 * i}.bias"] = (b, a), (b,)
    shapes |= core_weight_shapes(r.core, d.hidden[-1], r.core_size)
    return shapes | q_head_shapes(d, r.core_size, n_actions)


def _arr(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
    return a.astype(np.float32, copy=True)


class NumpyRecurrentQ:
    """One step of a RecurrentQNetwork in numpy: Q-values and the next state per env copy."""

    def __init__(
        self,
        state: Mapping[str, Any],
        d: DQNConfig,
        r: R2D2Config,
        layout: ObsLayout,
        n_actions: int,
        discrete_obs: str = "onehot",
    ) -> None:
        # the encoder and normalizer of NumpyQPolicy (its own MLP reading is not used)
        self.inputs = NumpyQPolicy(state, d.normalize_obs, layout, discrete_obs)
        self.layers = [
            (_arr(state[f"mlp.{2 * i}.weight"]).T, _arr(state[f"mlp.{2 * i}.bias"]))
            for i in range(len(d.hidden))
        ]
        self.core = NumpyCore(r.core, state)
        self.head = NumpyQHead(state, "head.", r.core_size, n_actions, 1, d.dueling)
        self.state_size = state_size(r.core, r.core_size)

    def initial_state(self, n: int) -> np.ndarray:
        return np.zeros((n, self.state_size), dtype=np.float32)

    def step(self, obs: Any, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q-values (B, A), the states after this step (B, S)) for a batch of observations
        (an array for a bare Box, else leaves by name) and the states before it."""
        x = self.inputs.features(obs)
        for w, b in self.layers:
            x = np.maximum(x @ w + b, 0.0)
        h, new_state = self.core.step(x.astype(np.float32, copy=False), state)
        return self.head.q_values(h), new_state

    def act(
        self,
        obs: Any,
        state: np.ndarray,
        epsilon: float,
        rng: np.random.Generator,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(epsilon-greedy actions (int64, among the valid ones of `mask`), next states)."""
        q, new_state = self.step(obs, state)
        if mask is not None:
            return masked_epsilon_greedy(q, mask, epsilon, rng).astype(np.int64), new_state
        actions = q.argmax(axis=1).astype(np.int64)
        if epsilon > 0:
            explore = rng.random(len(actions)) < epsilon
            if explore.any():
                actions[explore] = rng.integers(0, q.shape[1], int(explore.sum()))
        return actions, new_state
