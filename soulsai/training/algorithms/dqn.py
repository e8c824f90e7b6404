"""Double DQN learner on n-step transitions (van Hasselt et al. 2016; Ape-X exploration ladder).

Design choices:
- The target network uses the online network's observation-normalizer statistics. The normalizer
  buffers are copied into the target whenever `update_normalizer` runs and at every target
  update; Polyak averaging touches parameters only, never the normalizer buffers.
- Adam uses eps=1.5e-4 (as in Rainbow/Dopamine) instead of torch's 1e-8, which keeps steps
  bounded when the second-moment estimate is tiny.
- With valid-action masks the target's argmax takes only the next observation's valid actions
  (`masks_torch.masked_double_dqn_target`, the mask stored with the transition).
- Options (dqn config, combinable): a dueling and/or noisy head, quantile regression (QR-DQN:
  the quantile Huber loss against r + gamma^k theta_j(s', a*), a* the double-DQN argmax of the
  online net's quantile mean, masked) and prioritized replay (the per-sample loss times the
  importance weights; new priorities from `td_errors`). Noisy nets draw new noise for the
  online and the target net before every step.
- Priorities: |TD error| for expected-value DQN; for QR-DQN the per-sample quantile Huber loss,
  the loss being minimized (as Rainbow prioritizes by its distributional loss): a transition
  whose mean is right but whose distribution is not is still replayed, which |mean TD error|
  (`quantile_td_error`) would not do.
- A step whose loss or gradient norm is NaN or inf is skipped (counted in `nonfinite_updates`),
  and so is a normalizer merge that would leave NaN or inf statistics: no batch can poison the
  weights that clients get.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from soulsai.config.schema import DQNConfig
from soulsai.model.masks_torch import masked_argmax, masked_double_dqn_target
from soulsai.model.nets import QNetwork, adam, cpu_state
from soulsai.model.obs import ObsLayout
from soulsai.training.algorithms.guards import finite, guarded_update
from soulsai.training.algorithms.losses import quantile_huber_loss
from soulsai.training.device import to_device
from soulsai.training.replay import Obs, ReplayBatch

ADAM_EPS = 1.5e-4


class OnlineTargetLearner:
    """What a learner with an online and a target network shares (DQN, r2d2): the target's copy
    of the normalizer, the broadcast policy and the checkpoint state."""

    online: Any  # the subclass's network (a QNetwork, a RecurrentQNetwork)
    target: Any
    optimizer: torch.optim.Optimizer
    updates: int
    nonfinite_updates: int

    def _sync_target_normalizer(self) -> None:
        self.target.obs_norm.load_state_dict(self.online.obs_norm.state_dict())

    def _clip_and_step(self, loss: torch.Tensor, clip: float) -> torch.Tensor | None:
        """Backward, global-norm clip and the optimizer step; None (nothing changed, counted in
        `nonfinite_updates`) where the loss or the gradient norm is NaN or inf. The parameter
        lists are taken once: `parameters()` walks the module tree, which for the small
        networks of control tasks costs a noticeable share of a step."""
        if not hasattr(self, "_online_params"):
            self._online_params = list(self.online.parameters())
            self._target_params = list(self.target.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self._online_params, clip)
        if not finite(loss, grad_norm):  # one bad batch must not turn the weights into NaN
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_updates += 1
            return None
        self.optimizer.step()
        self.updates += 1
        return grad_norm

    def _update_target(self, mode: str, tau: float, interval: int) -> None:
        """After a step: Polyak averaging of the parameters (one fused call; the target's
        normalizer buffers are copied where the online net's change, `update_normalizer`) or,
        every `interval` updates, a hard copy of the whole state."""
        if mode == "polyak":
            with torch.no_grad():
                torch._foreach_lerp_(self._target_params, self._online_params, tau)
        elif self.updates % interval == 0:
            self.target.load_state_dict(self.online.state_dict())

    def policy_state(self) -> dict[str, torch.Tensor]:
        """Detached, contiguous CPU copies of the online net's state_dict (for broadcasting)."""
        return cpu_state(self.online)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot for checkpoints: both nets, the optimizer and the update counter."""
        return copy.deepcopy(
            {
                "online": self.online.state_dict(),
                "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "updates": self.updates,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()`; the next update is the same as the saved learner's."""
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


class DQNLearner(OnlineTargetLearner):
    """Online and target Q-networks, the optimizer and the update counter.

    `obs` is the observation layout (`soulsai.model.obs`) or a bare Box's shape."""

    def __init__(
        self,
        cfg: DQNConfig,
        obs: tuple[int, ...] | ObsLayout,
        n_actions: int,
        seed: int,
        device: str = "cpu",
        discrete_obs: str = "onehot",
        embedding_dim: int = 8,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
            torch.manual_seed(seed)
            online = QNetwork(
                obs if isinstance(obs, ObsLayout) else tuple(obs),
                n_actions,
                cfg.hidden,
                cfg.normalize_obs,
                discrete_obs,
                embedding_dim,
                dueling=cfg.dueling,
                noisy=cfg.noisy,
                n_quantiles=cfg.n_quantiles,
                noisy_sigma0=cfg.noisy_sigma0,
            )
        self.online = online.to(self.device)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.optimizer = adam(self.online.parameters(), cfg.lr, ADAM_EPS)
        self.updates = 0
        self.nonfinite_updates = 0  # steps and normalizer merges skipped: NaN or inf
        # per-sample priorities' source of the last step (None after a skipped one)
        self.td_errors: np.ndarray | None = None

    def update(self, batch: ReplayBatch, weights: torch.Tensor | None = None) -> dict[str, float]:
        """One double-DQN gradient step on `batch` (its per-sample losses weighted by the
        importance `weights` (B,) if given), then the target-network update. `td_errors` holds
        the new priorities' source afterwards."""
        self.td_errors = None
        if self.cfg.noisy:
            self.online.reset_noise()
            self.target.reset_noise()
        if self.cfg.n_quantiles > 1:
            per_sample, q = self._quantile_loss(batch)
            td_errors = per_sample
        else:
            per_sample, q, td_errors = self._td_loss(batch)
        if weights is None:
            loss = per_sample.mean()
        else:
            loss = (weights.to(self.device) * per_sample).mean()

        grad_norm = self._clip_and_step(loss, self.cfg.grad_clip)
        if grad_norm is None:
            return {"loss": float("nan"), "q_mean": float("nan"), "grad_norm": float("nan")}
        self.td_errors = td_errors.detach().abs().cpu().numpy()
        self._update_target(self.cfg.target_update, self.cfg.tau, self.cfg.target_update_interval)
        return {
            "loss": loss.item(),
            "q_mean": q.detach().mean().item(),
            "grad_norm": grad_norm.item(),
        }

    def _td_loss(self, batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expected-value (double) DQN: per-sample Huber losses (B,), Q(s, a) and TD errors."""
        obs, next_obs = self._to_device(batch.obs), self._to_device(batch.next_obs)
        action, reward, discount = (
            t.to(self.device) for t in (batch.action, batch.reward, batch.discount)
        )
        with torch.no_grad():
            q_target_next = self.target(next_obs)
            # double DQN: the online network picks a', the target network values it;
            # dqn.double false: the target network does both (one forward pass fewer)
            q_pick = self.online(next_obs) if self.cfg.double else q_target_next
            if batch.next_mask is None:
                next_actions = q_pick.argmax(dim=1, keepdim=True)
                next_q = q_target_next.gather(1, next_actions).squeeze(1)
                td_target = reward + discount * next_q
            else:  # discount is gamma**k * (1 - terminated): done=0, gamma_k=discount
                td_target = masked_double_dqn_target(
                    q_pick,
                    q_target_next,
                    batch.next_mask.to(self.device),
                    reward,
                    torch.zeros_like(discount),
                    discount,
                )
        q = self.online(obs).gather(1, action.long().view(-1, 1)).squeeze(1)
        per_sample = nn.functional.huber_loss(
            q, td_target, reduction="none", delta=self.cfg.huber_delta
        )
        return per_sample, q, td_target - q.detach()

    def _quantile_loss(self, batch: ReplayBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """QR-DQN (Dabney et al. 2018) with double-DQN action selection on the quantile mean
        (the target network's mean with dqn.double false):
            a* = argmax_{a valid in s'} mean_j theta_j^online(s', a)
            T theta_j = r + gamma^k (1 - terminated) theta_j^target(s', a*)
        and the quantile Huber loss of theta_i(s, a) against T theta_j: per-sample losses (B,)
        and Q(s, a), the mean of theta_i(s, a)."""
        obs, next_obs = self._to_device(batch.obs), self._to_device(batch.next_obs)
        action, reward, discount = (
            t.to(self.device) for t in (batch.action, batch.reward, batch.discount)
        )
        with torch.no_grad():
            next_quantiles = self.target.quantiles(next_obs)
            q_pick = self.online(next_obs) if self.cfg.double else next_quantiles.mean(dim=2)
            if batch.next_mask is None:
                next_action = q_pick.argmax(dim=1)
            else:  # a row without a valid action is terminal: action 0, zeroed by discount
                next_action = masked_argmax(q_pick, batch.next_mask.to(self.device))
            index = next_action.view(-1, 1, 1).expand(-1, 1, next_quantiles.shape[2])
            next_theta = next_quantiles.gather(1, index).squeeze(1)  # (B, N)
            target_theta = reward.unsqueeze(1) + discount.unsqueeze(1) * next_theta
        quantiles = self.online.quantiles(obs)
        index = action.long().view(-1, 1, 1).expand(-1, 1, quantiles.shape[2])
        theta = quantiles.gather(1, index).squeeze(1)  # (B, N)
        per_sample = quantile_huber_loss(theta, target_theta, self.cfg.quantile_kappa)
        return per_sample, theta.mean(dim=1)

    def _to_device(self, obs: Obs) -> Obs:
        return to_device(obs, self.device)  # pinned and asynchronous on a CUDA device

    def update_normalizer(self, obs: np.ndarray) -> None:
        """Merge a batch of continuous features (`obs.continuous_features`; a bare Box's
        observations) into the running statistics (no-op if disabled or there are none)."""
        if not self.cfg.normalize_obs or self.online.obs_norm.mean.numel() == 0:
            return
        if not guarded_update(self.online.obs_norm, obs):
            self.nonfinite_updates += 1
        self._sync_target_normalizer()
