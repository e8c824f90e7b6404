"""The r2d2 side of a sampling client (see actor_base.py for the Actor contract).

R2D2Actor acts epsilon-greedily (dqn's schedule or Ape-X ladder; among the valid actions with
masks) with the recurrent Q-network's numpy twin (soulsai.model.numpy_r2d2), carrying each env
copy's recurrent state from step to step: zero when an episode starts, clipped to
+-STATE_BOUND, and KEPT when new weights arrive mid-episode (as recurrent PPO does: a reset
would throw away what the episode has shown so far; the node's burn-in refreshes the state
under the newest weights anyway).

Each copy's steps are cut into chunks of `r2d2.chunk` steps that never cross an episode's
end (the last chunk of an episode is shorter); each chunk is sent once as one message row
(soulsai.model.r2d2_spec) with the state it started from, the state `r2d2.burn_in` steps
before (the burn-in's start), a stream id drawn per copy and episode (from the OS's entropy,
not the seeded rng: unpredictable) and its number within the episode. Finished chunks leave
in messages of about `client.batch_size` steps (never more than training.max_batch chunks), or
after `client.flush_interval` seconds, or when the model changes. On `reset` or `finish` each
copy's partial chunk goes out as the end of its episode, truncated: the node bootstraps from
the observation after it.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.client.actor_base import NO_MESSAGES, Message
from soulsai.client.envs import StepRows
from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.model.cores import STATE_BOUND, state_size
from soulsai.model.masks import pack_mask
from soulsai.model.numpy_r2d2 import NumpyRecurrentQ, r2d2_weight_shapes
from soulsai.model.obs import env_layout
from soulsai.model.obs_wire import field_name
from soulsai.model.r2d2_spec import MAX_STREAM
from soulsai.model.schedules import epsilon


class R2D2Actor:
    EPSILON_EVERY = 64
    share_sent = False  # asynchronous: no iterations to wait for
    eager = False

    def share_waited(self) -> None:
        pass

    def __init__(
        self,
        cfg: Config,
        obs_space: gym.Space,
        action_space: gym.Space,
        index: int,
        rng: np.random.Generator,
    ) -> None:
        self.cfg, self.index, self.rng = cfg, index, rng
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError(f"env: algo r2d2 needs a Discrete action space, got {action_space}")
        self.action_start = int(action_space.start)
        self.n_actions = int(action_space.n)
        self.layout = env_layout(cfg.env, obs_space)
        self.n_mask = self.n_actions if cfg.env.action_mask is not None else 0
        d, r = cfg.dqn, cfg.r2d2
        self.expected = r2d2_weight_shapes(
            d, r, self.layout, self.n_actions, cfg.env.discrete_obs, cfg.env.embedding_dim
        )
        n, L = cfg.env.num_envs, r.chunk
        self.chunk, self.burn_in = L, r.burn_in
        self.rows = StepRows(1, n, obs_space, action_space, self.layout, self.n_mask)
        self.buf: dict[str, np.ndarray] = {
            leaf.name: np.zeros((n, L, *leaf.shape), leaf.dtype) for leaf in self.layout.leaves
        }
        self.action = np.zeros((n, L), np.int64)
        self.reward = np.zeros((n, L), np.float32)
        self.terminated = np.zeros((n, L), np.uint8)
        self.mask = np.ones((n, L, self.n_mask), bool)
        size = state_size(r.core, r.core_size)
        self.state = np.zeros((n, size), np.float32)  # each copy's state before its next step
        self.history = np.zeros((n, L, size), np.float32)  # the state before each chunk step
        self.chunk_state = np.zeros((n, size), np.float32)
        self.burn_state = np.zeros((n, size), np.float32)
        self.pos = np.zeros(n, np.int64)
        self._stream_rng = np.random.default_rng()  # unseeded: see _streams
        self.stream = self._streams(n)
        self.number = np.zeros(n, np.int64)  # the chunk's number within the episode
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_steps = 0
        self.deadline = time.monotonic() + cfg.client.flush_interval
        self.model_id = -1
        self.policy: NumpyRecurrentQ | None = None
        self.meta: dict[str, Any] = {}
        self.discarded = 0
        self.epsilon = 1.0
        self._epsilon_due = 0
        self._steps_at_model: int | None = None
        self._next_state: np.ndarray | None = None

    def _streams(self, n: int) -> np.ndarray:
        """Fresh stream ids from the OS's entropy, not from the seeded `rng`: the seed is in
        the run's config and the client's index is known, so seeded ids could be predicted
        by another client that wants to splice chunks into this one's episodes."""
        return self._stream_rng.integers(0, MAX_STREAM, n, dtype=np.int64)

    def make_policy(self, state: dict[str, Any]) -> NumpyRecurrentQ:
        c = self.cfg
        return NumpyRecurrentQ(
            state, c.dqn, c.r2d2, self.layout, self.n_actions, c.env.discrete_obs
        )

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]:
        """Send what is finished under the old model id; the states are kept."""
        out = self._flush()
        self.model_id, self.policy, self.meta = model_id, policy, meta
        self._epsilon_due = 0
        self._steps_at_model = None
        return out

    def global_steps(self, client_steps: int) -> int:
        """The run's env steps as this client knows them (see DQNActor.global_steps)."""
        if self._steps_at_model is None:
            self._steps_at_model = client_steps
        return int(self.meta.get("env_steps", 0)) + client_steps - self._steps_at_model

    def act(self, obs: Any, client_steps: int) -> np.ndarray:
        assert self.policy is not None
        if client_steps >= self._epsilon_due:
            num_clients = max(1, int(self.meta.get("num_clients", 1)))
            self.epsilon = epsilon(
                self.cfg.dqn, self.global_steps(client_steps), self.index % num_clients, num_clients
            )
            self._epsilon_due = client_steps + self.EPSILON_EVERY
        mask = self.rows.mask[0].copy() if self.n_mask else None
        actions, self._next_state = self.policy.act(obs, self.state, self.epsilon, self.rng, mask)
        self.rows.action[0] = actions
        return actions + self.action_start if self.action_start else actions

    def observe(self) -> list[Message]:
        rows, n = self.rows, len(self.pos)
        copies, p = np.arange(n), self.pos
        for name, a in rows.leaves.items():
            self.buf[name][copies, p] = a[0]
        self.action[copies, p] = rows.action[0]
        self.reward[copies, p] = rows.reward[0]
        self.terminated[copies, p] = rows.terminated[0]
        if self.n_mask:
            self.mask[copies, p] = rows.mask[0]
        self.history[copies, p] = self.state
        assert self._next_state is not None
        self.state = np.clip(self._next_state, -STATE_BOUND, STATE_BOUND).astype(np.float32)
        done = rows.terminated[0] | rows.truncated[0]
        self.pos += 1
        for i in np.flatnonzero(done | (self.pos >= self.chunk)).tolist():
            self._cut(i, bool(done[i]), final=bool(done[i]))
        self.state[done] = 0.0  # a new episode starts with a blank memory
        rows.swap_step()  # the next step acts on row 1: it becomes row 0, without a copy
        rows.terminated[0] = rows.truncated[0] = False
        if self.pending_steps >= self.cfg.client.batch_size or time.monotonic() >= self.deadline:
            return self._flush()
        return NO_MESSAGES

    def _cut(self, i: int, ended: bool, final: bool, after_row: int = 1) -> None:
        """Copy i's chunk so far (pos[i] > 0 steps) goes to `pending`; the next one starts
        (a new episode's first, in a new stream, when `ended`). The observation after it is
        the true final one (`final`) or row `after_row` of the rows."""
        rows, length = self.rows, int(self.pos[i])
        row: dict[str, np.ndarray] = {}
        for leaf in self.layout.leaves:
            row[field_name("obs", leaf)] = self.buf[leaf.name][i].copy()
            source = rows.final_leaves if final else rows.leaves
            at = 0 if final else after_row
            row[field_name("next_obs", leaf)] = source[leaf.name][at, i].copy()
        steps = np.arange(self.chunk) < length
        row["action"] = np.where(steps, self.action[i], 0)
        row["reward"] = np.where(steps, self.reward[i], 0).astype(np.float32)
        row["terminated"] = np.where(steps, self.terminated[i], 0).astype(np.uint8)
        row["state"] = self.chunk_state[i].copy()
        row["burn_state"] = self.burn_state[i].copy()
        row["stream"] = np.int64(self.stream[i])
        row["index"] = np.int64(self.number[i])
        row["length"] = np.int16(length)
        row["ended"] = np.uint8(ended)
        if self.n_mask:
            row["mask"] = pack_mask(self.mask[i] | ~steps[:, None])
            after = rows.final_mask[0, i] if final else rows.mask[after_row, i]
            row["next_mask"] = pack_mask(after[None])[0]
        self.pending.append(row)
        self.pending_steps += length
        if ended:
            self.stream[i] = self._streams(1)[0]
            self.number[i] = 0
            self.chunk_state[i] = 0.0
            self.burn_state[i] = 0.0
        else:
            self.number[i] += 1
            b = self.burn_in
            self.burn_state[i] = self.history[i, self.chunk - b] if b else self.state[i]
            self.chunk_state[i] = self.state[i]
        self.pos[i] = 0

    def _flush(self) -> list[Message]:
        """The finished chunks as messages of at most training.max_batch rows."""
        self.deadline = time.monotonic() + self.cfg.client.flush_interval
        if not self.pending:
            return NO_MESSAGES
        rows, self.pending, self.pending_steps = self.pending, [], 0
        size = self.cfg.training.max_batch
        out = []
        for a in range(0, len(rows), size):
            part = rows[a : a + size]
            out.append((self.model_id, {k: np.stack([r[k] for r in part]) for k in part[0]}))
        return out

    def _end_all(self) -> None:
        """Every partial chunk goes out as its episode's truncated end (the observation
        after it is the one the next step would act on, row 0); all start anew."""
        for i in np.flatnonzero(self.pos > 0).tolist():
            self._cut(i, True, final=False, after_row=0)
        self.stream = self._streams(len(self.pos))
        self.number[:] = 0
        self.state[:] = 0.0
        self.chunk_state[:] = 0.0
        self.burn_state[:] = 0.0

    def reset(self) -> list[Message]:
        self._end_all()
        self.rows.clear()
        return self._flush()

    def finish(self) -> list[Message]:
        self._end_all()
        return self._flush()
