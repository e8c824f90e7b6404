"""Networks shared by the clients and the training node.

The whole `QNetwork.state_dict()` (normalizer statistics included) is what the training node
broadcasts to the clients, so every tensor in it is a buffer or parameter of its own: contiguous,
never aliased with another entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from soulsai.model.cores import state_size
from soulsai.model.cores_torch import make_core, unroll
from soulsai.model.heads import NoisyLinear, QHead
from soulsai.model.masks_torch import masked_entropy, masked_log_prob, masked_sample
from soulsai.model.obs import ObsLayout, build_layout
from soulsai.model.obs_encode import as_leaves
from soulsai.model.obs_torch import ObsEncoder
from soulsai.model.shapes import NORM_CLIP, NORM_EPS


class ObsNormalizer(nn.Module):
    """Running mean and variance of observations; `forward` standardizes and clips to [-10, 10].

    Statistics are merged batch by batch with the parallel form of Welford's algorithm
    (Chan et al.), computed in float64 and stored as float32 `mean` / `var` plus a float64 `count`.
    When `enabled` is False, `forward` only casts to float32; the buffers still exist so that the
    state_dict keys are the same either way.
    """

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, obs_shape: tuple[int, ...], enabled: bool = True) -> None:
        super().__init__()
        self.obs_shape = tuple(obs_shape)
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(self.obs_shape, dtype=torch.float32))
        self.register_buffer("var", torch.ones(self.obs_shape, dtype=torch.float32))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: np.ndarray | torch.Tensor) -> None:
        """Merge the moments of `batch` (shape (B, *obs_shape), or one obs) into the statistics."""
        x = torch.as_tensor(batch).to(device=self.mean.device, dtype=torch.float64)
        if x.shape == self.obs_shape:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != self.obs_shape:
            raise ValueError(f"expected obs of shape {self.obs_shape}, got batch {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return
        b_mean = x.mean(dim=0)
        # (x - mean)^2 averaged: torch's var(dim=0) over a tall, thin batch took 20x as long
        b_var = (x - b_mean).square().mean(dim=0)
        count = self.count.item()
        total = count + n
        mean = self.mean.double()
        delta = b_mean - mean
        m2 = self.var.double() * count + b_var * n + delta.square() * (count * n / total)
        self.mean.copy_(mean + delta * (n / total))
        self.var.copy_(m2 / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize `x` with the running statistics (identity cast to float32 if disabled)."""
        x = x.to(torch.float32)
        if not self.enabled:
            return x
        return torch.clamp((x - self.mean) / torch.sqrt(self.var + NORM_EPS), -NORM_CLIP, NORM_CLIP)


class QNetwork(nn.Module):
    """MLP Q-network: observation encoder and normalizer, flatten, Linear+ReLU per hidden size,
    then the output: the last Linear of `mlp` (plain DQN, the tensor names of older checkpoints)
    or, with `dueling`, `noisy` or `n_quantiles` > 1, a `QHead` named `head`. With `noisy`
    every Linear of the MLP is a NoisyLinear, as Fortunato et al. make the whole
    fully-connected part noisy.

    The input is an observation layout (`soulsai.model.obs`; a plain shape stands for a bare Box
    of that shape, normalized and flattened as before layouts): Dict/Tuple leaves go through
    the `ObsEncoder` (one-hot or embedded categorical leaves) with the running normalizer on
    the continuous features only (`normalized_features`).

    The dueling mean is over all actions, masks or not: the replay keeps the next
    observation's mask only, and one aggregation per state keeps a state's values the same as
    online estimate and as target (the mean shifts all actions alike; the argmax is unchanged).
    """

    def __init__(
        self,
        obs: tuple[int, ...] | ObsLayout,
        n_actions: int,
        hidden: list[int],
        normalize_obs: bool,
        discrete_obs: str = "onehot",
        embedding_dim: int = 8,
        dueling: bool = False,
        noisy: bool = False,
        n_quantiles: int = 1,
        noisy_sigma0: float = 0.5,
    ) -> None:
        super().__init__()
        self.layout = obs if isinstance(obs, ObsLayout) else box_layout(tuple(obs))
        self.n_actions = n_actions
        self.n_quantiles = n_quantiles
        self.obs_norm = ObsNormalizer(self.layout.norm_shape, enabled=normalize_obs)
        self.encoder = ObsEncoder(self.layout, discrete_obs, embedding_dim)
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        in_features = self.encoder.n_features
        for size in hidden:
            linear = NoisyLinear(in_features, size, noisy_sigma0) if noisy else None
            layers += [linear or nn.Linear(in_features, size), nn.ReLU()]
            in_features = size
        self.head: QHead | None = None
        if dueling or noisy or n_quantiles > 1:
            self.head = QHead(in_features, n_actions, n_quantiles, dueling, noisy, noisy_sigma0)
        else:
            layers.append(nn.Linear(in_features, n_actions))
        self.mlp = nn.Sequential(*layers)

    def quantiles(self, obs: Obs) -> torch.Tensor:
        """Quantile estimates (B, n_actions, n_quantiles); N = 1 for an expected-value net."""
        h = self.mlp(normalized_features(self.encoder, self.obs_norm, obs))
        return h.unsqueeze(-1) if self.head is None else self.head(h)

    def forward(self, obs: Obs) -> torch.Tensor:
        """Q-values of shape (B, n_actions) for a batch of observations: a tensor (bare Box,
        (B, *shape)) or leaves (name -> (B, *shape)); the quantiles' mean with a quantile head."""
        h = self.mlp(normalized_features(self.encoder, self.obs_norm, obs))
        return h if self.head is None else self.head.q_values(h)

    def reset_noise(self) -> None:
        """New noise for every NoisyLinear from torch's global RNG (nothing without noise)."""
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise()


def greedy_actions(net: QNetwork, obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
    """Argmax-Q actions (int64, shape (B,)) for a batch of observations (an array, or leaves
    name -> (B, *shape)), over the valid actions of `mask` (bool (B, n)) if given."""
    device = next(net.parameters()).device
    leaves = as_leaves(net.layout, obs)
    with torch.no_grad():
        batch = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in leaves.items()}
        q_values = net(batch)
        if mask is not None:
            q_values = q_values.masked_fill(~torch.as_tensor(mask, device=device), -torch.inf)
    return q_values.argmax(dim=1).cpu().numpy().astype(np.int64, copy=False)


Obs = torch.Tensor | Mapping[str, Any]  # a bare Box's batch, or leaves name -> (B, *shape)


def box_layout(obs_shape: tuple[int, ...]) -> ObsLayout:
    """The layout of a bare Box of `obs_shape`: one leaf, the observation flattened."""
    return build_layout(gym.spaces.Box(-np.inf, np.inf, obs_shape, np.float32))


def normalized_features(encoder: ObsEncoder, obs_norm: ObsNormalizer, obs: Obs) -> torch.Tensor:
    """The network input (B, F): a bare Box normalized then flattened (as before layouts);
    otherwise the encoder's features with the running normalizer applied to their continuous
    prefix only (one-hots, binaries and embeddings pass as they are)."""
    if encoder.layout.plain:
        x = next(iter(as_leaves(encoder.layout, obs).values()))
        return obs_norm(torch.as_tensor(x)).flatten(start_dim=1)
    features = encoder(obs)
    n = encoder.n_continuous
    if n == 0:
        return features
    return torch.cat([obs_norm(features[:, :n]), features[:, n:]], dim=1)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with `gain`, zero bias (the PPO implementation detail)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_features: int, hidden: list[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in hidden:
        linear = _orthogonal(nn.Linear(in_features, size), math.sqrt(2))
        layers += [linear, ACTIVATIONS[activation]()]
        in_features = size
    return layers


class ActorCritic(nn.Module):
    """PPO's policy and value function over encoded, normalized observations.

    The input is an observation layout (`soulsai.model.obs`): a bare Box is normalized and
    flattened as always; Dict/Tuple leaves go through the `ObsEncoder` (one-hot or embedded
    categorical leaves) with the running normalizer on the continuous features only
    (`normalized_features`). A plain shape stands for a bare Box of that shape.
    `shared`: one MLP torso feeding an actor head and a critic head; otherwise two separate
    MLPs (`torso` is then empty). The actor outputs Categorical logits (discrete) or the mean of
    a diagonal Gaussian whose log-std is a state-independent parameter (`log_std`). Linear
    layers are orthogonally initialized: gain sqrt(2) hidden, 0.01 actor output, 1 critic output.
    The whole state_dict is what clients receive, normalizer statistics included. With a
    valid-action mask the Categorical is MaskablePPO's: invalid actions get probability zero,
    and the entropy is taken over the valid ones (`soulsai.model.masks_torch`).

    `recurrent` ("lstm" | "gru"; None: feed-forward, the state_dict of older checkpoints): a
    `core` of `recurrent_size` units after the encoder (after the shared torso if `shared`),
    one core for actor and critic: each env copy carries one state, sent once per fragment,
    and the value loss shapes the memory too (as CleanRL's LSTM PPO). Without a shared torso
    the actor and critic MLPs follow the core; with one, only their output layers. The rows of
    a recurrent batch are sequences: B states, rows b*T .. b*T + T - 1 are sequence b.
    """

    def __init__(
        self,
        obs: tuple[int, ...] | ObsLayout,
        action_dim: int,
        discrete: bool,
        hidden: list[int],
        shared: bool = False,
        activation: str = "tanh",
        normalize_obs: bool = True,
        init_log_std: float = 0.0,
        discrete_obs: str = "onehot",
        embedding_dim: int = 8,
        recurrent: str | None = None,
        recurrent_size: int = 64,
    ) -> None:
        super().__init__()
        self.layout = obs if isinstance(obs, ObsLayout) else box_layout(tuple(obs))
        self.discrete = discrete
        self.recurrent = recurrent
        self.state_size = state_size(recurrent, recurrent_size)
        self.obs_norm = ObsNormalizer(self.layout.norm_shape, enabled=normalize_obs)
        self.encoder = ObsEncoder(self.layout, discrete_obs, embedding_dim)
        in_features = self.encoder.n_features
        if shared:
            self.torso = nn.Sequential(*_mlp(in_features, hidden, activation))
            actor_layers: list[nn.Module] = []
            critic_layers: list[nn.Module] = []
        else:
            self.torso = nn.Sequential()
        self.core: nn.LSTM | nn.GRU | None = None
        if recurrent is not None:
            core_in = hidden[-1] if shared else in_features
            self.core = make_core(recurrent, core_in, recurrent_size)
            in_features = recurrent_size
        if not shared:
            actor_layers = _mlp(in_features, hidden, activation)
            critic_layers = _mlp(in_features, hidden, activation)
        last = recurrent_size if shared and recurrent is not None else hidden[-1]
        self.actor = nn.Sequential(*actor_layers, _orthogonal(nn.Linear(last, action_dim), 0.01))
        self.critic = nn.Sequential(*critic_layers, _orthogonal(nn.Linear(last, 1), 1.0))
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(
        self, obs: Obs, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits or Gaussian mean of shape (B, action_dim), values of shape (B,)) for a batch
        of observations: a tensor (bare Box) or leaves (name -> (B, *shape)). With a core:
        sequences from the initial states `state` (B, S), see `unroll`."""
        return self.unroll(obs, state, starts)[:2]

    def unroll(
        self, obs: Obs, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(actor output, values, final states): the rows of `obs` are B = len(state)
        sequences of T steps each (row b*T + t is step t of sequence b); `starts` (B, T) bool
        zeroes a sequence's state before the steps where an episode starts. Without a core the
        rows are independent and the final state is None."""
        h = self.torso(normalized_features(self.encoder, self.obs_norm, obs))
        final = None
        if self.core is not None:
            if state is None:
                raise ValueError("a recurrent ActorCritic needs the initial states")
            n_seq = state.shape[0]
            x = h.reshape(n_seq, -1, h.shape[-1]).transpose(0, 1)  # (T, B, F)
            t_starts = None if starts is None else starts.reshape(n_seq, -1).transpose(0, 1)
            out, final = unroll(self.core, x, state.to(x.dtype), t_starts)
            h = out.transpose(0, 1).reshape(-1, out.shape[-1])
        return self.actor(h), self.critic(h).squeeze(-1), final

    def distribution(self, actor_out: torch.Tensor) -> torch.distributions.Distribution:
        if self.discrete:
            return torch.distributions.Categorical(logits=actor_out)
        return torch.distributions.Normal(actor_out, self.log_std.exp().expand_as(actor_out))

    def get_value(self, obs: Obs, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(obs, state)[1]

    def get_action_and_value(
        self,
        obs: Obs,
        action: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, entropy, value); samples an action when none is given. `mask`
        (bool (B, n), discrete only) restricts the Categorical to the valid actions. With a
        core, `state` and `starts` make the rows sequences (`unroll`)."""
        actor_out, value = self.forward(obs, state, starts)
        if mask is not None:
            if action is None:
                action = masked_sample(actor_out, mask)
            logprob = masked_log_prob(actor_out, mask, action)
            return action, logprob, masked_entropy(actor_out, mask), value
        dist = self.distribution(actor_out)
        if action is None:
            action = dist.sample()
        logprob, entropy = dist.log_prob(action), dist.entropy()
        if not self.discrete:  # independent dimensions: sum over the action vector
            logprob, entropy = logprob.sum(-1), entropy.sum(-1)
        return action, logprob, entropy, value


def adam(params: Any, lr: float, eps: float) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where this torch build supports it (CPU too):
    for the small networks of control tasks the per-tensor update loop costs more than the
    math."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of a module's state_dict: safe to serialize and
    broadcast while training goes on."""
    return {
        name: t.detach().to("cpu", copy=True).contiguous()
        for name, t in module.state_dict().items()
    }
