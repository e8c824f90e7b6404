"""Guards that keep a learner's state finite whatever one batch holds.

Received values are bounded at intake, yet a gradient step or a statistics merge can still
overflow; these checks run before the state changes, so a bad step is skipped, not undone.
"""

from __future__ import annotations

import numpy as np
import torch

from soulsai.model.nets import ObsNormalizer


def finite(*values: torch.Tensor) -> bool:
    """True when every (scalar) tensor is finite: one device sync for all of them."""
    return bool(torch.isfinite(torch.stack([v.detach().float() for v in values])).all())


def guarded_update(norm: ObsNormalizer, obs: np.ndarray) -> bool:
    """Merge `obs` into `norm`'s statistics unless that would leave NaN or inf in them;
    False (statistics unchanged) when it would."""
    saved = [t.clone() for t in (norm.mean, norm.var, norm.count)]
    norm.update(obs)
    if finite(norm.mean.abs().max(), norm.var.max(), norm.count):
        return True
    for t, old in zip((norm.mean, norm.var, norm.count), saved, strict=True):
        t.copy_(old)
    return False
