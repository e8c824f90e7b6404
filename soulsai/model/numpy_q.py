"""The client's acting policy: weights in, actions out, never blocking the env loop.

Inference runs in numpy: for the small MLPs of control tasks one call costs a few microseconds,
where a torch forward costs tens. The result equals QNetwork's forward (tested), for a bare Box
and for Dict/Tuple observations (the `NumpyObsEncoder`, with the running normalizer on the
continuous features only). With a valid-action mask, exploration and the greedy choice take
valid actions only (`soulsai.model.masks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from soulsai.config.schema import DQNConfig
from soulsai.model.heads_numpy import NumpyNoisyLinear, NumpyQHead
from soulsai.model.masks import masked_epsilon_greedy
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_encode import NumpyObsEncoder
from soulsai.model.shapes import NORM_CLIP, NORM_EPS


def _arr(t: Any) -> np.ndarray:
    # A live torch module's tensors are copied (training would change them under us);
    # freshly decoded numpy arrays are owned by nobody else and are used as they are.
    return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)


class NumpyQPolicy:
    """Epsilon-greedy over a QNetwork state dict (obs_norm.*, encoder.*, mlp.<i>.weight/bias,
    and head.* with dueling, noisy or quantile heads: `NumpyQHead`).

    `layout` None stands for a bare Box (the observation flattened, as before layouts). With a
    head the actions are greedy on the quantiles' mean; a noisy head uses its current noise
    (`reset_noise` draws new noise from the client's Generator) unless `use_noise` is False,
    which takes the means only (torch's eval mode: evaluation).
    """

    def __init__(
        self,
        state: Mapping[str, Any],
        normalize_obs: bool,
        layout: ObsLayout | None = None,
        discrete_obs: str = "onehot",
        n_actions: int | None = None,
        dueling: bool = False,
        noisy: bool = False,
        n_quantiles: int = 1,
        use_noise: bool = True,
    ) -> None:
        self.normalize = normalize_obs
        self.encoder = (
            None
            if layout is None or layout.plain
            else NumpyObsEncoder.from_state(layout, state, discrete_obs, prefix="encoder.")
        )
        self.n_continuous = layout.n_continuous if layout is not None else 0
        self.mean = _arr(state["obs_norm.mean"]).astype(np.float32).ravel()
        self.std = np.sqrt(_arr(state["obs_norm.var"]).astype(np.float32).ravel() + NORM_EPS)
        self.inv_std = (1.0 / self.std).astype(np.float32)
        idx = sorted({int(k.split(".")[1]) for k in state if k.startswith("mlp.")})
        # noisy: every Linear of the MLP is a NoisyLinear (mlp.<i>.weight_mu, ...)
        self.noisy_layers: dict[str, NumpyNoisyLinear] = {}
        for i in idx if noisy else ():
            out_features, in_features = np.shape(state[f"mlp.{i}.weight_mu"])
            self.noisy_layers[f"mlp.{i}"] = NumpyNoisyLinear(
                state, f"mlp.{i}.", in_features, out_features, use_noise
            )
        # (in, out) views of the (out, in) weights: matmul reads them transposed, no copy.
        self.layers = [
            (
                _arr(state[f"mlp.{i}.weight"]).astype(np.float32, copy=False).T,
                _arr(state[f"mlp.{i}.bias"]).astype(np.float32, copy=False),
            )
            for i in (() if noisy else idx)
        ]
        self.head: NumpyQHead | None = None
        if dueling or noisy or n_quantiles > 1:
            if n_actions is None:
                raise ValueError("a dueling, noisy or quantile head needs n_actions")
            last = list(self.noisy_layers.values())[-1] if noisy else None
            in_features = last.out_features if last is not None else len(self.layers[-1][1])
            self.head = NumpyQHead(
                state, "head.", in_features, n_actions, n_quantiles, dueling, noisy, use_noise
            )

    def reset_noise(self, rng: np.random.Generator) -> None:
        """New noise for every noisy layer (MLP, then head), drawn from `rng` (nothing
        without noise)."""
        for layer in self.noisy_layers.values():
            layer.reset_noise(rng)
        if self.head is not None:
            self.head.reset_noise(rng)

    def features(self, obs: Any) -> np.ndarray:
        """The network input (B, F) of a batch: an array (bare Box) or leaves name -> batch."""
        if self.encoder is None:
            x = np.asarray(obs)
            x = x.reshape(len(x), -1).astype(np.float32, copy=False)
            if self.normalize:  # ufuncs in place: np.clip's wrapper costs more than the math
                x = (x - self.mean) * self.inv_std
                np.minimum(x, NORM_CLIP, out=x)
                np.maximum(x, -NORM_CLIP, out=x)
            return x
        x = self.encoder(obs)
        n = self.n_continuous
        if self.normalize and n:
            c = (x[:, :n] - self.mean) * self.inv_std
            np.clip(c, -NORM_CLIP, NORM_CLIP, out=x[:, :n])
        return x

    def q_values(self, obs: Any) -> np.ndarray:
        x = self.features(obs)
        for layer in self.noisy_layers.values():
            x = np.maximum(layer(x), 0.0)
        last = len(self.layers) - 1 if self.head is None else len(self.layers)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w
            x += b
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x if self.head is None else self.head.q_values(x)

    def act(
        self,
        obs: Any,
        epsilon: float,
        rng: np.random.Generator,
        out: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """Greedy actions, each replaced by a uniform one with probability `epsilon`; written
        into `out` (an intp array: where the caller records them) if given. With `mask`
        (bool (B, n), every row with a valid action), both draw among valid actions only."""
        q = self.q_values(obs)
        if mask is not None:
            actions = masked_epsilon_greedy(q, mask, epsilon, rng)
            if out is not None:
                out[...] = actions
            return actions
        actions = q.argmax(axis=1, out=out)
        if epsilon > 0:
            explore = rng.random(len(actions)) < epsilon
            if explore.any():
                actions[explore] = rng.integers(0, q.shape[1], int(explore.sum()))
        return actions if actions.dtype == np.int64 else actions.astype(np.int64)


def dqn_policy(
    state: Mapping[str, Any],
    cfg: DQNConfig,
    layout: ObsLayout | None,
    n_actions: int,
    discrete_obs: str = "onehot",
    use_noise: bool = True,
) -> NumpyQPolicy:
    """The `NumpyQPolicy` of a QNetwork built with the options of `cfg` (the dqn section)."""
    return NumpyQPolicy(
        state,
        cfg.normalize_obs,
        layout,
        discrete_obs,
        n_actions,
        cfg.dueling,
        cfg.noisy,
        cfg.n_quantiles,
        use_noise,
    )
