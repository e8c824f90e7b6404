"""The DQN side of a sampling client (see actor_base.py for the Actor contract).

DQNActor: epsilon-greedy; rows pile up until FOLD_AT_LEAST (or `client.batch_size`)
transitions are due, then n-step folding runs over all of them at once and they leave in
messages of about `client.batch_size` (flushed early after `client.flush_interval` seconds
or when the model changes). Where the observation is an image frame or a stack of them
(`soulsai.model.specs.frame_rows`: a bare uint8 image Box, `env.atari.frame_stack`) each
transition goes out as a frame row instead (soulsai.client.frames): its (newest) frame once,
with what the node needs to rebuild obs and next_obs.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.client.actor_base import NO_MESSAGES, Message
from soulsai.client.envs import StepRows
from soulsai.client.frames import FrameRows, new_streams
from soulsai.client.nstep import NStepFold, fold_nstep
from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.model.masks import pack_mask
from soulsai.model.numpy_q import NumpyQPolicy, dqn_policy
from soulsai.model.obs import env_layout
from soulsai.model.obs_wire import field_name
from soulsai.model.schedules import epsilon
from soulsai.model.shapes import dqn_weight_shapes
from soulsai.model.specs import frame_rows


class DQNActor:
    """Records actions into its rows; folds once FOLD_AT_LEAST transitions are due (a fold
    costs about the same for 64 rows as for 1024) and sends them in messages of about
    `client.batch_size`. Epsilon follows the schedule in steps of EPSILON_EVERY env steps.

    The clock (for `client.flush_interval`) is read every `check_every` rows: about
    CLOCK_CHECKS times per interval at the step rate of the last block, every row where steps
    are slow (a few hundred per second or fewer), where it matters.
    """

    EPSILON_EVERY = 64
    FOLD_AT_LEAST = 1024
    CLOCK_CHECKS = 64
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
        self.cfg = cfg
        self.index = index
        self.rng = rng
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError(f"env: DQN needs a Discrete action space, got {action_space}")
        self.action_start = int(action_space.start)
        n_actions = self.n_actions = int(action_space.n)
        self.layout = env_layout(cfg.env, obs_space)
        self.n_mask = n_actions if cfg.env.action_mask is not None else 0
        self.expected = dqn_weight_shapes(
            cfg.dqn, self.layout, n_actions, cfg.env.discrete_obs, cfg.env.embedding_dim
        )
        n_envs, self.n_step = cfg.env.num_envs, cfg.dqn.n_step
        # A full block holds the n-1 rows still open from the last one plus enough new rows
        # for FOLD_AT_LEAST transitions (or a batch, if larger).
        new_rows = -(-max(cfg.client.batch_size, self.FOLD_AT_LEAST) // n_envs)
        self.rows = StepRows(
            new_rows + self.n_step - 1, n_envs, obs_space, action_space, self.layout, self.n_mask
        )
        self.action_rows = self.rows.action_rows
        self._argmax_into_rows = self.rows.action.dtype == np.intp  # argmax writes intp only
        self.start = np.zeros(n_envs, dtype=np.int64)  # per copy: first row not folded yet
        # image frames (env.frame_rows): each frame goes out once, as frame rows; k frames
        # per observation (1: the frame is the observation, no stack to check)
        frames = frame_rows(cfg, obs_space)
        self.frame_rows = FrameRows(new_streams(n_envs)) if frames is not None else None
        self.frame_k = frames[1] if frames is not None else 0
        self.flushed = time.monotonic()  # when, and at which row, the last flush was
        self.flushed_row = 0
        self.deadline = self.flushed + cfg.client.flush_interval
        self.check_every = 1  # rows between two looks at the clock
        self.check_at = 1  # the row count at which observe() looks next
        self.model_id = -1
        self.policy: NumpyQPolicy | None = None
        self.meta: dict[str, Any] = {}
        self.discarded = 0
        self.epsilon = 1.0
        self._epsilon_due = 0  # client steps at which epsilon is recomputed
        self._steps_at_model: int | None = None  # client steps when the model arrived

    def make_policy(self, state: dict[str, Any]) -> NumpyQPolicy:
        return dqn_policy(
            state, self.cfg.dqn, self.layout, self.n_actions, self.cfg.env.discrete_obs
        )

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]:
        out = self._flush()  # one model id per message
        self.model_id, self.policy, self.meta = model_id, policy, meta
        self._epsilon_due = 0
        self._steps_at_model = None  # set by the first act() with this model
        return out

    def global_steps(self, client_steps: int) -> int:
        """The run's env steps as this client knows them: the node's count when it published
        the model (which already holds this client's earlier steps) plus the steps this client
        took since the model arrived."""
        if self._steps_at_model is None:
            self._steps_at_model = client_steps
        return int(self.meta.get("env_steps", 0)) + client_steps - self._steps_at_model

    def act(self, obs: Any, client_steps: int) -> np.ndarray:
        """Epsilon-greedy actions for the observations of row `rows.t` (among the valid
        actions of its masks when masks are on). With dqn.noisy: greedy (epsilon 0) on noise
        this client draws anew for every step from its own Generator."""
        assert self.policy is not None
        if self.cfg.dqn.noisy:
            self.epsilon = 0.0
            self.policy.reset_noise(self.rng)
        elif client_steps >= self._epsilon_due:
            num_clients = max(1, int(self.meta.get("num_clients", 1)))
            self.epsilon = epsilon(
                self.cfg.dqn,
                self.global_steps(client_steps),
                self.index % num_clients,  # restarted clients get fresh indices: stay on the ladder
                num_clients,
            )
            self._epsilon_due = client_steps + self.EPSILON_EVERY
        mask = self.rows.mask_rows[self.rows.t] if self.n_mask else None
        if self._argmax_into_rows:  # the policy writes the actions where they are recorded
            out = self.action_rows[self.rows.t]
            actions = self.policy.act(obs, self.epsilon, self.rng, out, mask)
        else:
            actions = self.policy.act(obs, self.epsilon, self.rng, mask=mask)
            self.action_rows[self.rows.t][...] = actions
        return actions + self.action_start if self.action_start else actions

    def observe(self) -> list[Message]:
        rows = self.rows
        rows.t += 1
        if rows.t < self.check_at:
            return NO_MESSAGES
        if rows.t < rows.capacity and time.monotonic() < self.deadline:
            self.check_at = min(rows.t + self.check_every, rows.capacity)
            return NO_MESSAGES
        return self._flush()

    def reset(self) -> list[Message]:
        out = self._flush()
        self.rows.clear()
        self.start[:] = 0
        if self.frame_rows is not None:  # new episodes in new streams
            self.frame_rows.restart(new_streams(len(self.start)))
        self._rearm()
        return out

    def finish(self) -> list[Message]:
        return self._flush()

    def _flush(self) -> list[Message]:
        """Fold all rows; send the complete transitions, keep the last n-1 rows for the rest."""
        rows, T = self.rows, self.rows.t
        now, interval = time.monotonic(), self.cfg.client.flush_interval
        rows_per_s = (T - self.flushed_row) / max(now - self.flushed, 1e-6)
        self.check_every = max(1, int(rows_per_s * interval / self.CLOCK_CHECKS))
        self.flushed, self.deadline = now, now + interval
        if T == 0:
            self._rearm()
            return NO_MESSAGES
        f = fold_nstep(
            rows.reward[:T],
            rows.terminated[:T],
            rows.truncated[:T],
            self.start,
            self.n_step,
            self.cfg.dqn.gamma,
        )
        out = NO_MESSAGES
        if self.frame_rows is not None:
            return self._flush_frames(f, T)
        if len(f.row):
            t, i, k = f.row, f.copy, f.steps
            last = t + k - 1  # the row of the transition's last step
            ended, e_row, e_copy = f.ended, last[f.ended], i[f.ended]
            fields = {}
            for leaf in self.layout.leaves:
                fields[field_name("obs", leaf)] = rows.leaves[leaf.name][t, i]
            fields["action"] = rows.action[t, i]
            fields["reward"] = f.reward.astype(np.float32)
            for leaf in self.layout.leaves:
                # fancy indexing copies: safe from keep_last below
                next_obs = rows.leaves[leaf.name][t + k, i]
                next_obs[ended] = rows.final_leaves[leaf.name][e_row, e_copy]
                fields[field_name("next_obs", leaf)] = next_obs
            fields["terminated"] = (ended & rows.terminated[last, i]).astype(np.uint8)
            fields["steps"] = k.astype(np.uint8)
            if self.n_mask:  # the valid actions of the observation k steps later, as bits
                next_mask = rows.mask[t + k, i]
                next_mask[ended] = rows.final_mask[e_row, e_copy]
                fields["next_mask"] = pack_mask(next_mask)
            out = self._messages(fields, len(t))
        self.start = f.next_start - rows.keep_last(self.n_step - 1)
        self._rearm()
        return out

    def _flush_frames(self, f: NStepFold, T: int) -> list[Message]:
        """`_flush` for frames: each transition as a frame row (soulsai.client.frames)."""
        rows, frame_rows = self.rows, self.frame_rows
        assert frame_rows is not None and rows.obs is not None and rows.final_obs is not None
        done = rows.terminated[:T] | rows.truncated[:T]
        out = NO_MESSAGES
        if len(f.row):
            next_mask = None
            if self.n_mask:  # the valid actions of the observation k steps later
                t, i, k = f.row, f.copy, f.steps
                e_row, e_copy = (t + k - 1)[f.ended], i[f.ended]
                next_mask = rows.mask[t + k, i]
                next_mask[f.ended] = rows.final_mask[e_row, e_copy]
            rows_of = frame_rows.rows_from_stacks if self.frame_k > 1 else frame_rows.rows
            fields = rows_of(
                f, rows.obs, rows.final_obs, done, rows.action, rows.terminated, next_mask
            )
            out = self._messages(fields, len(fields["seq"]))
        shift = rows.keep_last(self.n_step - 1)
        self.start = f.next_start - shift
        frame_rows.moved(shift, done)
        self._rearm()
        return out

    def _rearm(self) -> None:
        """Count rows from here: the next look at the clock is check_every rows on."""
        self.flushed_row = self.rows.t
        self.check_at = min(self.rows.t + self.check_every, self.rows.capacity)

    def _messages(self, fields: dict[str, np.ndarray], n: int) -> list[Message]:
        """Cut n transitions into messages of batch_size to 2 * batch_size - 1 (fewer if
        that is all there is), never more than training.max_batch."""
        c = self.cfg
        parts = max(1, n // c.client.batch_size, -(-n // c.training.max_batch))
        if parts == 1:
            return [(self.model_id, fields)]
        cuts = [n * j // parts for j in range(parts + 1)]
        return [
            (self.model_id, {k: v[a:b] for k, v in fields.items()})
            for a, b in zip(cuts[:-1], cuts[1:], strict=True)
        ]
