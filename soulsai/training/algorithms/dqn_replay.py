"""The DQN driver's replay beyond the plain ring: the frame store it builds for stacked frames,
and the bookkeeping of prioritized replay (its sampler, one prioritized update, resuming it).

With image frames (`env.frame_rows`: stacked or bare) the replay is a `FrameReplay` that keeps each
frame once; prioritized replay and the observation normalizer are not available there (ConfigError
for stacked frames; a bare frame falls back to obs + next_obs, soulsai.model.specs.frame_rows).

With `dqn.prioritized` a `PrioritizedSampler` sits beside the replay ring, slot for slot: every
accepted batch enters it with the max priority, the update samples through it and weights its
loss by the importance weights, and the learner's TD errors become the rows' new priorities.
New rows take the max priority rather than an Ape-X client-computed one. The client would need
two more forward passes per transition (online and target net on the next observation) and the
target net's weights on the wire: measured on the 2-core dev machine (LunarLander's [256, 256]
net, numpy), acting costs 89 us per step and those passes 2 x 51 us per transition, so the
client's inference cost would double, to spare the learner nothing (it recomputes the TD error
at the first replay); a row entering at the max is replayed soon, and then has the learner's.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from soulsai.config import Config
from soulsai.errors import CheckpointError, ConfigError
from soulsai.model.specs import dqn_frame_spec
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.frame_replay import FrameReplay
from soulsai.training.prioritized import PrioritizedSampler
from soulsai.training.replay import ReplayBuffer
from soulsai.transport.envelope import ExperienceSpec


def frame_store(
    cfg: Config,
    obs_space: gym.Space,
    act_space: gym.Space,
    frame_space: gym.spaces.Box,
    n_mask: int,
    k: int,
) -> tuple[ExperienceSpec, FrameReplay]:
    """Image frames, `k` per observation (env.frame_rows): the frame rows' spec (what goes on
    the wire) and the frame store that keeps each frame once (soulsai.training.frame_replay)."""
    d = cfg.dqn
    assert isinstance(act_space, gym.spaces.Discrete)
    for key, on in (("dqn.prioritized", d.prioritized), ("dqn.normalize_obs", d.normalize_obs)):
        if on:
            raise ConfigError(
                f"{key}: not available with stacked frames (env.atari) in the frame store; "
                "env.frame_rows: off sends whole stacks instead"
            )
    spec = dqn_frame_spec(
        frame_space,
        act_space,
        d.n_step,
        cfg.training.max_batch,
        cfg.training.max_message_bytes,
        max_abs_reward=cfg.training.max_abs_reward,
        masked=n_mask > 0,
    )
    shape = tuple(frame_space.shape)
    store = FrameReplay(d.buffer_size, shape, k, int(act_space.n), n_mask=n_mask, seed=cfg.seed)
    return spec, store


def prioritized_update(
    per: PrioritizedSampler,
    buffer: ReplayBuffer,
    learner: DQNLearner,
    lock: threading.RLock,
    batch_size: int,
) -> dict[str, float]:
    """One update on a prioritized sample, its loss weighted by the importance weights, then
    the sampled rows' new priorities (but for rows the intake overwrote meanwhile); returns
    the learner's info. `lock` guards the buffer and the sampler against the intake thread."""
    with lock:
        drawn = per.sample(batch_size)
        batch = buffer.batch_at(drawn.indices)
        added = buffer.total_added
    info = learner.update(batch, torch.from_numpy(drawn.weights))
    td_errors = learner.td_errors
    if td_errors is None:  # a skipped (non-finite) step: the priorities stay
        return info
    with lock:
        keep = still_there(drawn.indices, buffer, buffer.total_added - added)
        per.update(drawn.indices[keep], td_errors[keep])
    return info


def per_sampler(cfg: Config) -> PrioritizedSampler:
    """The sampler of `cfg.dqn`'s prioritized replay; beta anneals over `per_beta_steps`
    updates, by default the updates `max_steps` implies (100000 when it is 0: no limit)."""
    d = cfg.dqn
    steps = d.per_beta_steps
    if steps is None:
        steps = int(cfg.max_steps * d.replay_ratio / d.batch_size) if cfg.max_steps else 100_000
    return PrioritizedSampler(
        d.buffer_size, d.per_alpha, d.per_beta_start, steps, d.per_eps, seed=cfg.seed + 1
    )


def still_there(indices: np.ndarray, buffer: ReplayBuffer, added_since: int) -> np.ndarray:
    """Which of the sampled ring `indices` still hold the rows sampled, `added_since` rows
    having been written since (the newest ones end just before `buffer.pos`)."""
    if added_since >= buffer.capacity:
        return np.zeros(len(indices), dtype=bool)
    return (buffer.pos - 1 - indices) % buffer.capacity >= added_since


def restore_priorities(
    per: PrioritizedSampler, buffer: ReplayBuffer, state: dict[str, Any] | None
) -> None:
    """The sampler of a resumed run: the checkpoint's priorities when it saved them with the
    buffer; else the restored rows at the max priority (a checkpoint from before prioritized
    replay, or one without the buffer), keeping any beta clock it saved."""
    if state is not None and "tree.priorities" in state:
        try:
            per.load_state_dict(state)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's replay priorities do not fit: {e}") from None
        if (per.size, per.pos) != (len(buffer), buffer.pos):
            raise CheckpointError(
                f"the checkpoint's replay priorities cover {per.size} rows at {per.pos}, "
                f"its buffer {len(buffer)} at {buffer.pos}"
            )
        return
    if state is not None:
        per.steps = int(state["steps"])
        per.max_priority = float(state["max_priority"])
        per.rng.bit_generator.state = json.loads(bytes(state["rng_state"]).decode())
    per.pos = 0
    per.size = 0
    per.add(len(buffer))  # one priority for all: the slots' order does not matter
    per.pos = buffer.pos
