"""Q-network heads in torch: dueling aggregation, quantile outputs and noisy linear layers.

- Dueling (Wang et al. 2016): Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'), the mean taken over
  the valid actions when a mask is given, so that invalid actions do not shift the valid ones.
- Quantile regression DQN (Dabney et al. 2018): N quantile estimates per action; the action
  value (for acting and double-DQN selection) is their mean.
- Noisy nets (Fortunato et al. 2018), factorized Gaussian: W = mu_W + sigma_W * f(e_out) f(e_in)^T
  and b = mu_b + sigma_b * f(e_out), with f(x) = sign(x) sqrt(|x|) and e ~ N(0, 1). In train()
  mode a layer uses its current noise; in eval() mode its means only (a deterministic greedy
  policy for evaluation). The numpy twins are in `soulsai.model.heads_numpy`.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dueling(
    value: torch.Tensor, advantage: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """V + A - mean(A) over the action axis (dim 1), over valid actions only if `mask` is given.

    value (B, 1[, N]) or (B,); advantage (B, A[, N]); mask (B, A) bool, True where valid. Invalid
    actions still get V + A - mean (finite); the caller masks them out where it takes an argmax.
    A row without a valid action gets mean 0 rather than NaN.
    """
    if value.dim() == advantage.dim() - 1:
        value = value.unsqueeze(1)
    if mask is None:
        return value + advantage - advantage.mean(dim=1, keepdim=True)
    valid = mask.to(torch.bool)
    if advantage.dim() == 3:
        valid = valid.unsqueeze(-1)
    total = torch.where(valid, advantage, torch.zeros_like(advantage)).sum(dim=1, keepdim=True)
    count = valid.sum(dim=1, keepdim=True).clamp_min(1).to(advantage.dtype)
    return value + advantage - total / count


def quantile_mean(quantiles: torch.Tensor) -> torch.Tensor:
    """Action values (B, A) from quantile estimates (B, A, N): their mean."""
    return quantiles.mean(dim=-1)


def noise_transform(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sign(x) sqrt(|x|), the factorized noise's scaling."""
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """Linear layer with factorized Gaussian noise on its weights and biases.

    `eps_in` / `eps_out` are buffers holding f(e) (so checkpoints resume with the same noise);
    `reset_noise` draws new ones. Init as in the paper: mu ~ U(-1/sqrt(in), 1/sqrt(in)),
    sigma = sigma0 / sqrt(in).
    """

    eps_in: torch.Tensor
    eps_out: torch.Tensor

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5) -> None:
        super().__init__()
        self.in_features, self.out_features, self.sigma0 = in_features, out_features, sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight_mu.uniform_(-bound, bound)
            self.bias_mu.uniform_(-bound, bound)
            self.weight_sigma.fill_(self.sigma0 * bound)
            self.bias_sigma.fill_(self.sigma0 * bound)

    @torch.no_grad()
    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        """Draw new factorized noise (from `generator` if given, else torch's global RNG)."""
        device = self.eps_in.device
        e_in = torch.randn(self.in_features, generator=generator, device=device)
        e_out = torch.randn(self.out_features, generator=generator, device=device)
        self.eps_in.copy_(noise_transform(e_in))
        self.eps_out.copy_(noise_transform(e_out))

    @torch.no_grad()
    def set_noise(self, eps_in: torch.Tensor, eps_out: torch.Tensor) -> None:
        """Use the given f(e) vectors as the noise (e.g. to match a numpy twin)."""
        self.eps_in.copy_(torch.as_tensor(eps_in))
        self.eps_out.copy_(torch.as_tensor(eps_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return nn.functional.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sigma0={self.sigma0}"


class QHead(nn.Module):
    """The output head of a Q-network: features (B, F) -> quantiles (B, A, N).

    N = `n_quantiles` (1: a plain expected-value head). `dueling`: a value stream (N outputs)
    and an advantage stream (A * N), aggregated per quantile by `dueling`; otherwise one layer
    `out`. `noisy`: NoisyLinear layers instead of nn.Linear. Layer names (state_dict keys) are
    `value` / `advantage` or `out`, which the numpy twin reads.
    """

    def __init__(
        self,
        in_features: int,
        n_actions: int,
        n_quantiles: int = 1,
        dueling: bool = False,
        noisy: bool = False,
        sigma0: float = 0.5,
    ) -> None:
        super().__init__()
        if n_actions < 1 or n_quantiles < 1:
            raise ValueError(f"need n_actions, n_quantiles >= 1, got {n_actions}, {n_quantiles}")
        self.n_actions, self.n_quantiles = n_actions, n_quantiles
        self.is_dueling, self.noisy = dueling, noisy

        def layer(out_features: int) -> nn.Module:
            if noisy:
                return NoisyLinear(in_features, out_features, sigma0)
            return nn.Linear(in_features, out_features)

        if dueling:
            self.value = layer(n_quantiles)
            self.advantage = layer(n_actions * n_quantiles)
        else:
            self.out = layer(n_actions * n_quantiles)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Quantiles (B, A, N); `mask` (B, A) only matters to the dueling mean."""
        shape = (h.shape[0], self.n_actions, self.n_quantiles)
        if not self.is_dueling:
            return self.out(h).reshape(shape)
        value = self.value(h).reshape(h.shape[0], 1, self.n_quantiles)
        return dueling(value, self.advantage(h).reshape(shape), mask)

    def q_values(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Action values (B, A): the mean over quantiles."""
        return quantile_mean(self.forward(h, mask))

    def reset_noise(self, generator: torch.Generator | None = None) -> None:
        """New noise for every NoisyLinear in the head (nothing without `noisy`)."""
        for module in self.modules():
            if isinstance(module, NoisyLinear):
                module.reset_noise(generator)
