"""The client's acting policy: weights in, actions out, never blocking the env loop.

Inference runs in numpy: for the small MLPs of control tasks one call costs a few microseconds,
where a torch forward costs tens. The result equals QNetwork's forward (tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyQPolicy:
    """Epsilon-greedy over a QNetwork state dict (obs_norm.* and mlp.<i>.weight/bias)."""

    def __init__(self, state: dict[str, Any], normalize_obs: bool) -> None:
        def arr(t: Any) -> np.ndarray:
            # A live torch module's tensors are copied (training would change them under us);
            # freshly decoded numpy arrays are owned by nobody else and are used as they are.
            return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)

        self.normalize = normalize_obs
        self.mean = arr(state["obs_norm.mean"]).astype(np.float32).ravel()
        self.std = np.sqrt(arr(state["obs_norm.var"]).astype(np.float32).ravel() + 1e-8)
        self.inv_std = (1.0 / self.std).astype(np.float32)
        idx = sorted({int(k.split(".")[1]) for k in state if k.startswith("mlp.")})
        # (in, out) views of the (out, in) weights: matmul reads them transposed, no copy.
        self.layers = [
            (
                arr(state[f"mlp.{i}.weight"]).astype(np.float32, copy=False).T,
                arr(state[f"mlp.{i}.bias"]).astype(np.float32, copy=False),
            )
            for i in idx
        ]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = obs.reshape(len(obs), -1).astype(np.float32, copy=False)
        if self.normalize:  # ufuncs in place: np.clip's wrapper costs more than the math here
            x = (x - self.mean) * self.inv_std
            np.minimum(x, 10.0, out=x)
            np.maximum(x, -10.0, out=x)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = x @ w
            x += b
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x

    def act(
        self,
        obs: np.ndarray,
        epsilon: float,
        rng: np.random.Generator,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Greedy actions, each replaced by a uniform one with probability `epsilon`; written
        into `out` (an intp array: where the caller records them) if given."""
        q = self.q_values(obs)
        actions = q.argmax(axis=1, out=out)
        if epsilon > 0:
            explore = rng.random(len(actions)) < epsilon
            if explore.any():
                actions[explore] = rng.integers(0, q.shape[1], int(explore.sum()))
        return actions if actions.dtype == np.int64 else actions.astype(np.int64)
