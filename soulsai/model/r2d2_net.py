"""The recurrent Q-network of algo r2d2 in torch, and R2D2's value rescaling.

`RecurrentQNetwork`: encoder and running normalizer (as QNetwork's), an MLP torso (Linear +
ReLU per `dqn.hidden` size, `mlp.<2i>`), one LSTM/GRU `core` (soulsai.model.cores_torch) and a
`QHead` (`out`, or dueling `value`/`advantage`). It unrolls batches of sequences (B, T, ...)
from initial states (B, S). Its numpy twin for the clients is soulsai.model.numpy_r2d2.

Value rescaling (Pohlen et al. 2018, used by R2D2): the network learns h(Q) with
    h(x)      = sign(x) (sqrt(|x| + 1) - 1) + eps x
    h^-1(x)   = sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1)
and the n-step target is h(sum_i gamma^i r_i + gamma^k h^-1(Q_target)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from soulsai.model.cores import state_size
from soulsai.model.cores_torch import make_core, unroll
from soulsai.model.heads import QHead
from soulsai.model.nets import ObsNormalizer, normalized_features
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_torch import ObsEncoder


def rescale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x."""
    return x.sign() * ((x.abs() + 1).sqrt() - 1) + eps * x


def unrescale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """h^-1(x), the inverse of `rescale` (for eps = 0: sign(x) ((|x| + 1)^2 - 1))."""
    if eps == 0:
        return x.sign() * ((x.abs() + 1).square() - 1)
    root = (1 + 4 * eps * (x.abs() + 1 + eps)).sqrt()
    return x.sign() * (((root - 1) / (2 * eps)).square() - 1)


class RecurrentQNetwork(nn.Module):
    """Encoder, MLP torso, LSTM/GRU core and Q head; see the module docstring."""

    def __init__(
        self,
        layout: ObsLayout,
        n_actions: int,
        hidden: list[int],
        core: str,
        core_size: int,
        normalize_obs: bool = False,
        discrete_obs: str = "onehot",
        embedding_dim: int = 8,
        dueling: bool = False,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.n_actions = n_actions
        self.state_size = state_size(core, core_size)
        self.obs_norm = ObsNormalizer(layout.norm_shape, enabled=normalize_obs)
        self.encoder = ObsEncoder(layout, discrete_obs, embedding_dim)
        layers: list[nn.Module] = []
        n_in = self.encoder.n_features
        for size in hidden:
            layers += [nn.Linear(n_in, size), nn.ReLU()]
            n_in = size
        self.mlp = nn.Sequential(*layers)
        self.core = make_core(core, n_in, core_size)
        self.head = QHead(core_size, n_actions, 1, dueling)

    def unroll(self, obs: Any, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q-values (B, T, A), final states (B, S)) of B sequences of T observations each
        (a tensor (B, T, *shape) for a bare Box, else leaves name -> (B, T, *shape)) from the
        initial states `state` (B, S)."""
        if isinstance(obs, dict):
            first = next(iter(obs.values()))
            flat: Any = {k: v.reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        else:
            first, flat = obs, obs.reshape(-1, *obs.shape[2:])
        n_seq, steps = first.shape[0], first.shape[1]
        x = self.mlp(normalized_features(self.encoder, self.obs_norm, flat))
        x = x.reshape(n_seq, steps, -1).transpose(0, 1)  # (T, B, F)
        out, final = unroll(self.core, x, state.to(x.dtype))
        q = self.head.q_values(out.reshape(steps * n_seq, -1))
        return q.reshape(steps, n_seq, -1).transpose(0, 1), final
