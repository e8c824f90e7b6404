"""Recurrent cores in torch: one nn.LSTM or nn.GRU layer and its truncated-BPTT unroll over
fragments with episode starts inside (the state is reset to zero before such a step).

The state is one tensor (B, S): `[h, c]` for an LSTM, `[h]` for a GRU (soulsai.model.cores).
The tests compare the unroll with the layer run sequence by sequence and step by step.
"""

from __future__ import annotations

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
    before step t (an episode starts there).

    The layer runs over the spans between the steps at which any sequence starts an episode,
    each in one call of its own (fused) forward; between two spans the starting sequences'
    states are zeroed. So a batch of fragments costs a call per distinct start time, not one
    per step."""
    hs = core.hidden_size
    lstm = isinstance(core, nn.LSTM)
    steps = x.shape[0]
    cuts = [0, steps]
    if starts is not None:
        cuts = sorted({0, steps, *torch.nonzero(starts.any(dim=1)).flatten().tolist()})
    h, c = state[:, :hs], state[:, hs:]
    outs = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if starts is not None:
            keep = (~starts[a]).to(x.dtype).unsqueeze(-1)  # (B, 1)
            h, c = h * keep, c * keep
        if lstm:
            out, (h1, c1) = core(x[a:b], (h.unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous()))
            h, c = h1[0], c1[0]
        else:
            out, h1 = core(x[a:b], h.unsqueeze(0).contiguous())
            h = h1[0]
        outs.append(out)
    final = torch.cat([h, c], dim=1) if lstm else h
    return torch.cat(outs) if len(outs) > 1 else outs[0], final
