"""R2D2-style recurrent DQN learner (Kapturowski et al. 2019) on sequences of chunks.

One update on B sampled sequences (soulsai.training.sequence_replay):
- burn-in: online and target net each unroll the predecessor's last `r2d2.burn_in` steps from
  the stored burn-in state under torch.no_grad, so no gradient reaches the burn-in (tested);
  sequences without a predecessor start from their chunk's stored state;
- both nets unroll the T = chunk + n_step positions of the sequence from there;
- targets: double DQN (the online net's argmax among the valid actions, the target net's value)
  and n-step returns over the sequence, k = min(n, avail - t) steps, stopped at a termination
  (no bootstrap) and bootstrapping from the true final observation after a truncation; with
  `r2d2.value_rescale` y = h(G + gamma^k h^-1(Q_target)) (soulsai.model.r2d2_net.rescale);
- the Huber loss (dqn.huber_delta) over each chunk's valid steps, averaged per sequence and
  weighted by the importance weights (prioritized replay);
- priorities: eta max_t |td| + (1 - eta) mean_t |td| over the chunk's valid steps.
Target-net updates (hard or Polyak), Adam's eps, gradient clipping and the skip of non-finite
steps are DQN's (soulsai.training.algorithms.dqn).
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from soulsai.config import Config
from soulsai.errors import CheckpointError
from soulsai.model.masks_torch import masked_argmax
from soulsai.model.nets import adam
from soulsai.model.obs import ObsLayout, continuous_features
from soulsai.model.r2d2_net import RecurrentQNetwork, rescale, unrescale
from soulsai.training.algorithms.dqn import ADAM_EPS, OnlineTargetLearner
from soulsai.training.algorithms.guards import guarded_update
from soulsai.training.sequence_replay import SequenceBatch


def build_network(cfg: Config, layout: ObsLayout, n_actions: int) -> RecurrentQNetwork:
    d, r = cfg.dqn, cfg.r2d2
    return RecurrentQNetwork(
        layout,
        n_actions,
        d.hidden,
        r.core,
        r.core_size,
        d.normalize_obs,
        cfg.env.discrete_obs,
        cfg.env.embedding_dim,
        d.dueling,
    )


def nstep_returns(
    reward: torch.Tensor,
    terminated: torch.Tensor,
    avail: torch.Tensor,
    chunk: int,
    n: int,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each chunk step t < `chunk` of B sequences: (discounted reward sum over its k steps,
    the bootstrap factor gamma^k (0 after a termination), the bootstrap position t + k), with
    k = min(n, avail - t); reward and terminated are (B, T - 1), avail (B,)."""
    t = torch.arange(chunk, device=reward.device).unsqueeze(0)  # (1, L)
    k = (avail.unsqueeze(1) - t).clamp(0, n)  # (B, L)
    ret = torch.zeros(k.shape, dtype=reward.dtype, device=reward.device)
    alive = torch.ones(k.shape, dtype=torch.bool, device=reward.device)
    for i in range(n):
        use = alive & (k > i)
        pos = (t + i).expand_as(k)
        ret = ret + torch.where(use, gamma**i * reward.gather(1, pos), 0.0)
        alive = alive & ~(use & terminated.gather(1, pos))
    disc = torch.where(alive, torch.pow(torch.full_like(ret, gamma), k.to(ret.dtype)), 0.0)
    return ret, disc, t + k


def _leaves(obs: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(v, device=device) for name, v in obs.items()}


class R2D2Learner(OnlineTargetLearner):
    """Online and target recurrent Q-networks, the optimizer and the update counter."""

    def __init__(
        self, cfg: Config, layout: ObsLayout, n_actions: int, seed: int, device: str = "cpu"
    ) -> None:
        self.cfg, self.d, self.r = cfg, cfg.dqn, cfg.r2d2
        self.layout = layout
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            online = build_network(cfg, layout, n_actions)
        self.online = online.to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = adam(self.online.parameters(), self.d.lr, ADAM_EPS)
        self.updates = 0
        self.nonfinite_updates = 0
        self.td_errors: np.ndarray | None = None  # the last step's sequence priorities

    def initial_states(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(online, target) states where the chunks start: after the burn-in (no gradient)
        where a sequence has one, else the chunk's stored state."""
        dev = self.device
        state = torch.as_tensor(batch.state, device=dev)
        if batch.burn_obs is None or not batch.has_burn.any():
            return state, state
        burn_obs = _leaves(batch.burn_obs, dev)
        start = torch.as_tensor(batch.burn_state, device=dev)
        has = torch.as_tensor(batch.has_burn, device=dev).unsqueeze(1)
        with torch.no_grad():
            _, online = self.online.unroll(burn_obs, start)
            _, target = self.target.unroll(burn_obs, start)
        return torch.where(has, online, state), torch.where(has, target, state)

    def loss(
        self, batch: SequenceBatch, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, per-sequence losses (B,), Q(s_t, a_t) (B, L), |td| (B, L) with zeros on
        padding) of a batch; see the module docstring."""
        d, r, dev = self.d, self.r, self.device
        L = batch.action.shape[1]
        h_online, h_target = self.initial_states(batch)
        obs = _leaves(batch.obs, dev)
        q_all, _ = self.online.unroll(obs, h_online)  # (B, T, A)
        reward = torch.as_tensor(batch.reward, device=dev)
        term = torch.as_tensor(batch.terminated, device=dev)
        avail = torch.as_tensor(batch.avail, device=dev)
        with torch.no_grad():
            q_target, _ = self.target.unroll(obs, h_target)
            online = q_all.detach()
            if batch.mask is None:
                best = online.argmax(dim=2)
            else:
                mask = torch.as_tensor(batch.mask, device=dev)
                flat = masked_argmax(online.flatten(0, 1), mask.flatten(0, 1))
                best = flat.view(online.shape[0], online.shape[1])
            values = q_target.gather(2, best.unsqueeze(2)).squeeze(2)  # (B, T)
            ret, disc, pos = nstep_returns(reward, term, avail, L, d.n_step, d.gamma)
            boot = values.gather(1, pos)
            if r.value_rescale:
                target = rescale(ret + disc * unrescale(boot, r.rescale_eps), r.rescale_eps)
            else:
                target = ret + disc * boot
        action = torch.as_tensor(batch.action, device=dev)
        q = q_all[:, :L].gather(2, action.unsqueeze(2)).squeeze(2)  # (B, L)
        length = torch.as_tensor(batch.length, device=dev)
        valid = torch.arange(L, device=dev).unsqueeze(0) < length.unsqueeze(1)
        huber = nn.functional.huber_loss(q, target, reduction="none", delta=d.huber_delta)
        per_seq = (huber * valid).sum(dim=1) / length.to(huber.dtype)
        loss = per_seq.mean() if weights is None else (weights.to(dev) * per_seq).mean()
        td = ((target - q.detach()).abs() * valid).detach()
        return loss, per_seq, q, td

    def priorities(self, td: torch.Tensor, length: np.ndarray) -> np.ndarray:
        """eta max|td| + (1 - eta) mean|td| over each chunk's valid steps (td 0 on padding)."""
        eta = self.r.priority_eta
        td_max = td.max(dim=1).values
        td_mean = td.sum(dim=1) / torch.as_tensor(length, device=td.device).to(td.dtype)
        return (eta * td_max + (1 - eta) * td_mean).cpu().numpy().astype(np.float64)

    def update(self, batch: SequenceBatch, weights: torch.Tensor | None = None) -> dict[str, float]:
        """One gradient step on `batch`, then the target-network update; `td_errors` holds the
        sequences' new priorities afterwards (None after a skipped, non-finite step)."""
        self.td_errors = None
        loss, _, q, td = self.loss(batch, weights)
        grad_norm = self._clip_and_step(loss, self.d.grad_clip)
        if grad_norm is None:
            return {"loss": float("nan"), "q_mean": float("nan"), "grad_norm": float("nan")}
        self.td_errors = self.priorities(td, batch.length)
        self._update_target(self.d.target_update, self.d.tau, self.d.target_update_interval)
        valid = np.arange(q.shape[1])[None] < batch.length[:, None]
        return {
            "loss": loss.item(),
            "q_mean": float(q.detach().cpu().numpy()[valid].mean()),
            "grad_norm": grad_norm.item(),
        }

    def update_normalizer(self, obs: dict[str, np.ndarray]) -> None:
        """Merge observations (leaves, (N, ...)) into the running statistics (if enabled)."""
        if not self.d.normalize_obs or self.online.obs_norm.mean.numel() == 0:
            return
        x = next(iter(obs.values())) if self.layout.plain else continuous_features(self.layout, obs)
        if not guarded_update(self.online.obs_norm, x):
            self.nonfinite_updates += 1
        self._sync_target_normalizer()


class R2D2EvalPolicy:
    """The greedy recurrent policy of a checkpoint: each env's state is carried from call to
    call and zeroed by `reset()` (an episode starts)."""

    def __init__(self, policy: Any, start: int) -> None:
        self.policy = policy
        self.start = start
        self.state: np.ndarray | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        from soulsai.model.masks import masked_greedy

        n = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        if self.state is None or len(self.state) != n:
            self.state = self.policy.initial_state(n)
        q, self.state = self.policy.step(obs, self.state)
        best = q.argmax(axis=1) if mask is None else masked_greedy(q, mask)
        return best.astype(np.int64) + self.start


def r2d2_greedy(
    cfg: Config, state: dict[str, Any], obs_space: gym.Space, act_space: gym.Space
) -> R2D2EvalPolicy:
    """`soulsai evaluate`'s policy of an r2d2 checkpoint: greedy on the online net's Q-values,
    carrying the recurrent state (the caller calls `reset()` when an episode starts)."""
    from soulsai.model.numpy_r2d2 import NumpyRecurrentQ, r2d2_weight_shapes
    from soulsai.model.obs import env_layout

    if not isinstance(act_space, gym.spaces.Discrete):
        raise CheckpointError(f"r2d2 acts in a discrete action space, not {act_space}")
    tensors = state.get("policy") or state["learner"]["online"]
    layout = env_layout(cfg.env, obs_space)
    n = int(act_space.n)
    want = r2d2_weight_shapes(
        cfg.dqn, cfg.r2d2, layout, n, cfg.env.discrete_obs, cfg.env.embedding_dim
    )
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise CheckpointError(
            "the checkpoint's recurrent Q-network does not match its config (dqn.hidden, "
            "dqn.dueling, r2d2.core, r2d2.core_size, env.obs_keys, env spaces): "
            f"{sorted(set(got.items()) ^ set(want.items()))[:4]}"
        )
    policy = NumpyRecurrentQ(tensors, cfg.dqn, cfg.r2d2, layout, n, cfg.env.discrete_obs)
    return R2D2EvalPolicy(policy, int(act_space.start))
