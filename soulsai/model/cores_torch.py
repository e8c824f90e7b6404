"""Recurrent cores in torch: one nn.LSTM or nn.GRU layer and its truncated-BPTT unroll over
fragments with episode starts inside (the state is reset to zero before such a step).

The state is one tensor (B, S): `[h, c]` for an LSTM, `[h]` for a GRU (soulsai.model.cores).
The unroll computes the input projection of all steps at once and the recurrence step by step
with the layer's own parameters, gates in torch's order; the tests compare it with the
layer's own forward, run segment by segment.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from soulsai.model.cores import KINDS

Core = nn.LSTM | nn.GRU


def make_core(kind: str, n_in: int, size: int) -> Core:
    """A one-layer LSTM/GRU (time-major), orthogonal weights (gain 1) and zero biases (as
    CleanRL's recurrent PPO)."""
    if kind not in KINDS:
        raise ValueError(f"unknown recurrent core {kind!r}")
    core: Core = nn.LSTM(n_in, size) if kind == "lstm" else nn.GRU(n_in, size)
    for name, p in core.named_parameters():
        if name.startswith("weight"):
            nn.init.orthogonal_(p, 1.0)
        else:
            nn.init.zeros_(p)
    return core


def unroll(
    core: Core, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs (T, B, H), final state (B, S)) of `core` over inputs x (T, B, F) from the
    initial states `state` (B, S); where `starts[t, b]` is set, sequence b's state is zeroed
    before step t (an episode starts there)."""
    hs = core.hidden_size
    lstm = isinstance(core, nn.LSTM)
    w_ih, b_ih, w_hh, b_hh = (
        cast(torch.Tensor, p)
        for p in (core.weight_ih_l0, core.bias_ih_l0, core.weight_hh_l0, core.bias_hh_l0)
    )
    gi_all = torch.nn.functional.linear(x, w_ih, b_ih)  # (T, B, G*H)
    h = state[:, :hs]
    c = state[:, hs:] if lstm else None
    keep = None if starts is None else (~starts).to(x.dtype).unsqueeze(-1)  # (T, B, 1)
    outs = []
    for t in range(x.shape[0]):
        if keep is not None:
            h = h * keep[t]
            if c is not None:
                c = c * keep[t]
        gi = gi_all[t]
        gh = torch.nn.functional.linear(h, w_hh, b_hh)
        if c is not None:
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            i_r, i_z, i_n = gi.chunk(3, dim=1)
            h_r, h_z, h_n = gh.chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
        outs.append(h)
    final = torch.cat([h, c], dim=1) if c is not None else h
    return torch.stack(outs), final
