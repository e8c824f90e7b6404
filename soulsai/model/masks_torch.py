"""Valid-action masks in torch: the masked greedy action, the masked double-DQN target and
PPO's masked categorical (log-prob and entropy over valid actions only, as sb3-contrib's
MaskablePPO). Masks are bool tensors (B, n_actions), True where valid; the numpy twins the
client acts with are in `soulsai.model.masks`.

Invalid logits become the dtype's lowest finite value, not -inf: softmax gives them exactly
zero probability (exp underflows), the valid actions' log-probs are exact, and no inf - inf or
0 * inf can make a NaN, in the values or in the gradients.
"""

from __future__ import annotations

import torch


def masked_argmax(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax of each row of `q` (B, n) over its valid actions only (int64, (B,))."""
    return q.masked_fill(~mask, -torch.inf).argmax(dim=1)


def masked_double_dqn_target(
    q_online_next: torch.Tensor,
    q_target_next: torch.Tensor,
    next_mask: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    gamma_k: torch.Tensor | float,
) -> torch.Tensor:
    """Double DQN with masks (van Hasselt et al. 2016):
        a' = argmax_{a valid in s'} Q_online(s', a)
        td_target = r + gamma^k * (1 - done) * Q_target(s', a')
    `reward` is the n-step return, `gamma_k` gamma to the power of the steps it spans and
    `done` the termination flag (B,). A row with no valid action (a terminal s') takes action 0,
    a finite value that (1 - done) zeroes."""
    next_action = masked_argmax(q_online_next, next_mask)
    q_next = q_target_next.gather(1, next_action[:, None]).squeeze(1)
    return reward + gamma_k * (1.0 - done.to(q_next.dtype)) * q_next


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`logits` with invalid actions at the lowest finite value (zero probability)."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, n) of the categorical over valid actions."""
    return torch.log_softmax(masked_logits(logits, mask), dim=-1)


def masked_log_prob(
    logits: torch.Tensor, mask: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """Log-probability (B,) of `actions` under the masked categorical."""
    return masked_log_probs(logits, mask).gather(1, actions.long()[:, None]).squeeze(1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy (B,) over valid actions only: invalid actions contribute exactly nothing."""
    logp = masked_log_probs(logits, mask)
    return -torch.where(mask, logp.exp() * logp, torch.zeros_like(logp)).sum(dim=1)


def masked_sample(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Actions (B,) drawn from the masked categorical (never an invalid one)."""
    return torch.distributions.Categorical(logits=masked_logits(logits, mask)).sample()
