"""PPO learner (Schulman et al. 2017) with the well-known implementation details.

Clipped surrogate objective, value loss with optional clipping, entropy bonus, per-minibatch
advantage normalization, several epochs of shuffled minibatches, global gradient-norm clipping,
optional linear learning-rate annealing, Adam eps 1e-5, orthogonal init (in `ActorCritic`).

Design choices:
- The observation normalizer is frozen while an iteration trains and updated afterwards with
  the iteration's observations, so the log-probabilities recomputed here use exactly the
  normalization the clients sampled with (the first epoch's ratio is 1).
- A minibatch step whose loss or gradient norm is NaN or inf is skipped, and so is a merge
  that would leave NaN or inf in the observation or return statistics (`nonfinite_updates`).
- Observations may be Dict/Tuple leaves (the network's encoder takes them as they came off
  the wire); with valid-action masks the log-probabilities and the entropy are those of the
  masked Categorical (MaskablePPO's): the ratio compares like with like, since the clients
  sampled from the same masked distribution, and the entropy bonus counts valid actions only.
- Recurrent policies (`ppo.recurrent`): minibatches are whole fragments (sequences of
  `ppo.fragment_length` rows), shuffled as sequences, never as steps; the core is unrolled over
  each from the initial state its client sent, zeroed at episode starts inside it, and the
  gradient flows through the whole fragment (truncated BPTT, truncated at fragment starts).
  GAE is as for feed-forward PPO: the clients' values came from the same recurrent states.
- Reward scaling (optional) happens on the node: rewards travel raw, and each client sends the
  discounted return of its episode so far; the node keeps their running variance and divides
  rewards by its square root. Clients never need the statistic.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from soulsai.config import Config
from soulsai.config.schema import EnvConfig, PPOConfig
from soulsai.errors import CheckpointError
from soulsai.model.nets import ActorCritic, ObsNormalizer, adam, cpu_state
from soulsai.model.obs import ObsLayout, build_layout, continuous_features, env_layout
from soulsai.model.shapes import action_shape
from soulsai.training.algorithms.guards import finite, guarded_update
from soulsai.training.rollout import RolloutBatch, index_obs, obs_to

if TYPE_CHECKING:  # soulsai.training.policies imports this module for its table
    from soulsai.training.policies import EvalPolicy

ADAM_EPS = 1e-5
REWARD_EPS = 1e-8


def clipped_surrogate(
    newlogprob: torch.Tensor, oldlogprob: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pg_loss, approx_kl, clipfrac): the negated clipped objective L^CLIP, averaged."""
    logratio = newlogprob - oldlogprob
    ratio = logratio.exp()
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()  # the k3 estimator (Schulman's blog)
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return pg_loss, approx_kl, clipfrac


def value_loss(
    newvalue: torch.Tensor,
    oldvalue: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float,
    clip_vloss: bool,
) -> torch.Tensor:
    """0.5 * squared error to the returns; clipped around the sampled value if `clip_vloss`."""
    v_loss_unclipped = (newvalue - returns) ** 2
    if not clip_vloss:
        return 0.5 * v_loss_unclipped.mean()
    v_clipped = oldvalue + torch.clamp(newvalue - oldvalue, -clip_coef, clip_coef)
    v_loss_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()


def ppo_layout(obs_space: gym.Space, env: EnvConfig | None = None) -> ObsLayout:
    """The observation layout of `env`'s settings (all leaves by default)."""
    return env_layout(env, obs_space) if env is not None else build_layout(obs_space)


def build_actor_critic(
    cfg: PPOConfig, obs_space: gym.Space, action_space: gym.Space, env: EnvConfig | None = None
) -> ActorCritic:
    """The network for `cfg`, `env`'s observation settings (obs_keys, drop_constant_obs,
    discrete_obs, embedding_dim; defaults without it) and the env's spaces (clients check the
    weights they receive against the same shapes, `ppo_weight_shapes`)."""
    if isinstance(action_space, gym.spaces.Discrete):
        discrete, action_dim = True, int(action_space.n)
    else:
        discrete, action_dim = False, math.prod(action_shape(action_space))
    return ActorCritic(
        ppo_layout(obs_space, env),
        action_dim,
        discrete,
        cfg.hidden,
        shared=cfg.shared_network,
        activation=cfg.activation,
        normalize_obs=cfg.normalize_obs,
        init_log_std=cfg.init_log_std,
        discrete_obs=env.discrete_obs if env is not None else "onehot",
        embedding_dim=env.embedding_dim if env is not None else 8,
        recurrent=cfg.recurrent,
        recurrent_size=cfg.recurrent_size,
    )


class PPOLearner:
    """The actor-critic, its optimizer, the return statistics and the counters."""

    def __init__(
        self,
        cfg: PPOConfig,
        obs_space: gym.Space,
        action_space: gym.Space,
        seed: int,
        device: str = "cpu",
        env: EnvConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            net = build_actor_critic(cfg, obs_space, action_space, env)
        self.net = net.to(self.device)
        self.layout = net.layout
        self.action_shape = action_shape(action_space)
        self.optimizer = adam(self.net.parameters(), cfg.lr, ADAM_EPS)
        self.return_stats = ObsNormalizer((), enabled=cfg.scale_rewards)
        self.updates = 0
        self.iterations = 0
        self.nonfinite_updates = 0  # minibatch steps and statistics merges skipped: NaN or inf

    def reward_scale(self, disc_returns: np.ndarray) -> float:
        """Merge the discounted returns into their statistics; 1 / their running std (or 1)."""
        if not self.cfg.scale_rewards:
            return 1.0
        if not guarded_update(self.return_stats, disc_returns.astype(np.float64)):
            self.nonfinite_updates += 1
        return float(1.0 / np.sqrt(self.return_stats.var.item() + REWARD_EPS))

    def update(self, batch: RolloutBatch, lr_frac: float = 1.0) -> dict[str, float]:
        """One PPO iteration: `update_epochs` passes of shuffled minibatches over `batch`
        (of shuffled fragments when the batch has recurrent states)."""
        cfg = self.cfg
        lr = cfg.lr * lr_frac
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        b_obs = obs_to(batch.obs, self.device)
        b_actions, b_logprobs, b_advantages, b_returns, b_values = (
            t.to(self.device)
            for t in (batch.actions, batch.logprobs, batch.advantages, batch.returns, batch.values)
        )
        b_masks = None if batch.masks is None else batch.masks.to(self.device)
        b_states = None if batch.states is None else batch.states.to(self.device)
        b_starts = None if batch.starts is None else batch.starts.to(self.device)
        b_actions = b_actions.reshape(-1, *self.action_shape)
        batch_size = len(b_values)
        # the units shuffled into minibatches: rows, or whole fragments of seq_len rows
        n_seq = batch_size if b_states is None else len(b_states)
        seq_len = batch_size // max(1, n_seq)
        if n_seq * seq_len != batch_size:
            raise ValueError(f"{batch_size} rows are not {n_seq} fragments of equal length")
        offsets = torch.arange(seq_len, device=self.device)
        minibatch_size = max(1, math.ceil(n_seq / cfg.num_minibatches))
        clipfracs, approx_kls = [], []
        pg_loss = v_loss = entropy_loss = torch.zeros(())
        for _epoch in range(cfg.update_epochs):
            b_inds = torch.randperm(n_seq, device=self.device)
            for start in range(0, n_seq, minibatch_size):
                mb_seqs = b_inds[start : start + minibatch_size]
                mb_inds = mb_seqs
                if b_states is not None:  # the rows of the fragments, each in time order
                    mb_inds = (mb_seqs[:, None] * seq_len + offsets).reshape(-1)
                _, newlogprob, entropy, newvalue = self.net.get_action_and_value(
                    index_obs(b_obs, mb_inds),
                    b_actions[mb_inds],
                    None if b_masks is None else b_masks[mb_inds],
                    None if b_states is None else b_states[mb_seqs],
                    None if b_starts is None else b_starts[mb_inds],
                )
                mb_advantages = b_advantages[mb_inds]
                if cfg.norm_adv and len(mb_inds) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )
                pg_loss, approx_kl, clipfrac = clipped_surrogate(
                    newlogprob, b_logprobs[mb_inds], mb_advantages, cfg.clip_coef
                )
                v_loss = value_loss(
                    newvalue, b_values[mb_inds], b_returns[mb_inds], cfg.clip_coef, cfg.clip_vloss
                )
                entropy_loss = entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                if not finite(loss, grad_norm):  # skipped: the weights must stay finite
                    self.optimizer.zero_grad(set_to_none=True)
                    self.nonfinite_updates += 1
                    continue
                self.optimizer.step()
                self.updates += 1
                clipfracs.append(clipfrac.item())
                approx_kls.append(approx_kl.item())
            if cfg.target_kl is not None and approx_kls and approx_kls[-1] > cfg.target_kl:
                break
        self.iterations += 1

        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()
        var_y = np.var(y_true)
        explained_var = float("nan") if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)
        return {
            "loss": (pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy_loss).item(),
            "policy_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": entropy_loss.item(),
            "approx_kl": approx_kls[-1] if approx_kls else float("nan"),
            "clipfrac": float(np.mean(clipfracs)) if clipfracs else float("nan"),
            "explained_variance": explained_var,
            "lr": lr,
        }

    def update_normalizer(self, obs: np.ndarray | dict[str, np.ndarray]) -> None:
        """Merge an iteration's observations (a bare Box's array, or leaves by name) into the
        running statistics of the continuous features (no-op if disabled or none)."""
        if not self.cfg.normalize_obs or self.layout.n_continuous == 0:
            return
        if not guarded_update(self.net.obs_norm, continuous_features(self.layout, obs)):
            self.nonfinite_updates += 1

    def policy_state(self) -> dict[str, torch.Tensor]:
        """Detached, contiguous CPU copies of the net's state_dict (for broadcasting)."""
        return cpu_state(self.net)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot for checkpoints: net, optimizer, return statistics and counters."""
        return copy.deepcopy(
            {
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "return_stats": self.return_stats.state_dict(),
                "updates": self.updates,
                "iterations": self.iterations,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.return_stats.load_state_dict(state["return_stats"])
        self.updates = int(state["updates"])
        self.iterations = int(state["iterations"])


def ppo_deterministic(
    cfg: Config, state: dict[str, Any], obs_space: gym.Space, act_space: gym.Space
) -> EvalPolicy:
    """The checkpoint's policy without sampling: the most likely action (Categorical; among the
    valid ones when a mask is given) or the Gaussian mean clipped to the action space (Box).
    It takes a batch of observations in the layout of `cfg.env` (as in training): the array
    of a bare Box, else the leaves by name (`soulsai.model.obs.obs_leaves`). A recurrent
    policy (ppo.recurrent) carries its state from call to call: call its `reset()` when an
    episode starts (`RecurrentEvalPolicy`)."""
    from soulsai.model.masks import masked_greedy
    from soulsai.model.numpy_ac import NumpyActorCritic

    tensors = state.get("policy") or state["learner"]["net"]
    net = build_actor_critic(cfg.ppo, obs_space, act_space, cfg.env)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise CheckpointError(
            "the checkpoint's actor-critic does not match its config (ppo.hidden, "
            "ppo.shared_network, ppo.recurrent, ppo.recurrent_size, env.obs_keys, "
            "env.discrete_obs, env spaces): "
            f"{sorted(set(got.items()) ^ set(want.items()))[:4]}"
        )
    space = act_space
    policy = NumpyActorCritic(
        tensors,
        isinstance(space, gym.spaces.Discrete),
        cfg.ppo.normalize_obs,
        cfg.ppo.activation,
        net.layout,
        cfg.env.discrete_obs,
        cfg.ppo.recurrent,
    )

    def choose(out: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            best = out.argmax(axis=1) if mask is None else masked_greedy(out, mask)
            return best.astype(np.int64) + int(space.start)
        assert isinstance(space, gym.spaces.Box)  # build_actor_critic accepted nothing else
        mean = out.reshape(len(out), *space.shape)
        return np.clip(mean, space.low, space.high).astype(space.dtype)

    if policy.core is not None:
        return RecurrentEvalPolicy(policy, choose)

    def act(obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        return choose(policy.forward(obs)[0], mask)

    return act


class RecurrentEvalPolicy:
    """A recurrent checkpoint's deterministic policy: the state of each env in the batch is
    carried from call to call, zero after `reset()` (an episode starts)."""

    def __init__(self, policy: Any, choose: Any) -> None:
        self.policy = policy
        self.choose = choose
        self.state: np.ndarray | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        n = len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)
        if self.state is None or len(self.state) != n:
            self.state = np.zeros((n, self.policy.state_size), dtype=np.float32)
        out, _, self.state = self.policy.step(obs, self.state)
        return self.choose(out, mask)
