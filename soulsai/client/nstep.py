"""n-step return folding on the client, vectorized over a block of recorded env steps.

A transition that starts at step t and spans k steps carries
reward = sum_{i<k} gamma**i * r_{t+i} and next_obs = s_{t+k}; the learner bootstraps with
gamma**k * Q(s_{t+k}) unless `terminated` is set. Truncated episodes bootstrap from their final
observation, so only a real termination sets `terminated`.

The env loop only writes rows (see envs.StepRows); folding runs once per flush over all of
them (a flush may then be cut into several messages), so no Python object is made per
transition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NStepFold(NamedTuple):
    """The transitions that are complete in a block, one entry each, in time-major order."""

    row: np.ndarray  # int: the row t the transition starts at
    copy: np.ndarray  # int: the env copy i
    steps: np.ndarray  # int: k, 1..n
    reward: np.ndarray  # float64: the discounted sum of the k rewards
    ended: np.ndarray  # bool: the episode ended at row t + k - 1 (next obs is its final obs)
    next_start: np.ndarray  # int, per copy: the first row not folded yet


def fold_nstep(
    reward: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    start: np.ndarray,
    n: int,
    gamma: float,
) -> NStepFold:
    """Fold the rows of a (T, copies) block into n-step transitions.

    Copy i's rows before `start[i]` were folded before and are skipped. A row is complete
    when n steps follow it inside the block, or its episode ends inside the block; then its
    transition spans min(n, steps to the episode's end) steps. Complete rows of a copy form
    a prefix of its unfolded rows, so the rest wait for more rows.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    T, copies = reward.shape
    t = np.arange(T)[:, None]
    # the first row at or after t where the copy's episode ended (T: none in this block)
    end = np.where(terminated | truncated, t, T)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    within = end < T
    k = np.minimum(end - t + 1, n)
    complete = ((t + n <= T) | within) & (t >= start[None, :])
    # Horner's scheme backwards from the last step, as a per-step accumulator would add up
    padded = np.concatenate([reward, np.zeros((n, copies))])
    ret = np.zeros((T, copies))
    for j in range(n - 1, -1, -1):
        ret = np.where(j < k, padded[j : j + T] + gamma * ret, ret)
    rows, cols = np.nonzero(complete)
    return NStepFold(
        row=rows,
        copy=cols,
        steps=k[rows, cols],
        reward=ret[rows, cols],
        ended=(within & (end - t < n))[rows, cols],
        next_start=start + complete.sum(axis=0),
    )
