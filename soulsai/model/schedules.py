"""Exploration schedules: what clients and the training node both compute, without torch."""

from __future__ import annotations

from soulsai.config.schema import DQNConfig


def epsilon(cfg: DQNConfig, env_steps: int, client_index: int, num_clients: int) -> float:
    """Exploration rate of one client.

    "schedule": linear from eps_start to eps_end over eps_decay_steps global env steps.
    "ladder": Ape-X, ladder_eps ** (1 + ladder_alpha * i / (N - 1)); ladder_eps when N == 1.
    """
    if cfg.exploration == "schedule":
        frac = min(max(env_steps, 0) / cfg.eps_decay_steps, 1.0)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)
    if not 0 <= client_index < num_clients:
        raise ValueError(f"client_index {client_index} not in [0, {num_clients})")
    if num_clients == 1:
        return cfg.ladder_eps
    return cfg.ladder_eps ** (1 + cfg.ladder_alpha * client_index / (num_clients - 1))


def per_beta(beta_start: float, step: int, anneal_steps: int) -> float:
    """Prioritized replay's importance-sampling exponent (Schaul et al. 2016): linear from
    `beta_start` at step 0 to 1 at `anneal_steps` (learner updates), then 1; 1 throughout
    when `anneal_steps` is 0. At 1 the weights fully correct the non-uniform sampling."""
    if anneal_steps <= 0:
        return 1.0
    frac = min(max(step, 0) / anneal_steps, 1.0)
    return beta_start + frac * (1.0 - beta_start)
