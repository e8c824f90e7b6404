"""Losses of the DQN family that return one value per sample, for prioritized replay.

The learner weights the per-sample losses with the importance weights and takes new
priorities from the per-sample TD errors; `mean()` of the result is the unweighted loss.

Quantile regression DQN (Dabney et al. 2018, eq. 9-10): predicted quantiles theta_i at the
midpoints tau_hat_i = (2i - 1) / 2N, target quantiles T theta_j = r + gamma theta_j(s', a*),
pairwise errors u_ij = T theta_j - theta_i, and

    rho_tau^kappa(u) = |tau - 1{u < 0}| * L_kappa(u) / kappa
    L_kappa(u)       = u^2 / 2 if |u| <= kappa, else kappa (|u| - kappa / 2)
    loss             = sum_i mean_j rho_{tau_hat_i}^kappa(u_ij)

kappa = 0 is the plain quantile (pinball) loss |tau - 1{u < 0}| |u|, the limit of the above.
"""

from __future__ import annotations

import torch


def quantile_midpoints(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """tau_hat_i = (2i - 1) / 2N for i = 1..N (float32, shape (N,)): the quantile levels that
    minimize the 1-Wasserstein distance to the target distribution (Dabney et al., Lemma 2)."""
    return (torch.arange(n, dtype=torch.float32, device=device) * 2 + 1) / (2 * n)


def quantile_huber_loss(
    quantiles: torch.Tensor, target: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Per-sample quantile Huber loss (B,) of predicted `quantiles` (B, N) against `target`
    quantiles (B, N'); no gradient flows into `target`."""
    if quantiles.dim() != 2 or target.dim() != 2 or len(quantiles) != len(target):
        raise ValueError(
            f"expected quantiles (B, N) and target (B, N'), got {tuple(quantiles.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not kappa >= 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    tau_hat = quantile_midpoints(quantiles.shape[1], quantiles.device).view(1, -1, 1)
    u = target.detach().unsqueeze(1) - quantiles.unsqueeze(2)  # (B, N, N'): u_ij
    abs_u = u.abs()
    if kappa == 0:
        huber = abs_u
    else:
        huber = torch.where(abs_u <= kappa, 0.5 * u.square(), kappa * (abs_u - 0.5 * kappa))
        huber = huber / kappa
    rho = (tau_hat - (u.detach() < 0).to(u.dtype)).abs() * huber
    return rho.mean(dim=2).sum(dim=1)


def quantile_td_error(quantiles: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The expected-value TD error per sample (B,): mean target minus mean prediction, a
    priority for replay on the same scale as plain DQN's (detached)."""
    return (target.mean(dim=1) - quantiles.mean(dim=1)).detach()
