"""The per-algorithm part of a sampling client: how to act, what to record, what to send.

The env loop (sampler.py) is the same for every algorithm: the env writes each vector-env
step into the actor's `rows` (envs.StepRows), the actor is told with `observe()`, and the loop
ships whatever messages it returns. An actor holds the policy of exactly one model id at a
time and never mixes model ids in a message.

- DQNActor: epsilon-greedy; rows pile up until FOLD_AT_LEAST (or `client.batch_size`)
  transitions are due, then n-step folding runs over all of them at once and they leave in
  messages of about `client.batch_size` (flushed early after `client.flush_interval` seconds
  or when the model changes). With stacked frames (`env.atari.frame_stack`) each transition
  goes out as a frame row instead (soulsai.client.frames): its newest frame once, with what
  the node needs to rebuild obs and next_obs stacks.
- PPOActor: samples from the policy (among the valid actions when `env.action_mask` is set),
  records log-probabilities, values, the observation leaf by leaf and the valid-action mask,
  and sends whole rollout fragments of `ppo.fragment_length` steps per env copy. A fragment
  is on-policy for one model only, so a partial fragment is dropped (counted in `discarded`)
  when a newer model arrives: the training node would reject it as stale anyway. With
  `ppo.recurrent` it carries each env copy's recurrent state across steps and fragments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.client.envs import StepRows
from soulsai.client.frames import FrameRows, new_streams
from soulsai.client.nstep import NStepFold, fold_nstep
from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.model.cores import STATE_BOUND, spread_state, state_size
from soulsai.model.masks import pack_mask
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.numpy_q import NumpyQPolicy, dqn_policy
from soulsai.model.obs import env_layout
from soulsai.model.obs_wire import field_name
from soulsai.model.schedules import epsilon
from soulsai.model.shapes import action_shape, dqn_weight_shapes, ppo_weight_shapes
from soulsai.model.specs import stacked_frames

Message = tuple[int, dict[str, np.ndarray]]  # (model id, per-transition fields)
NO_MESSAGES: list[Message] = []  # what most steps return; never appended to


class Actor(Protocol):
    expected: dict[str, tuple[int, ...]]  # weight names and shapes a valid model must have
    discarded: int  # env steps recorded but never sent (partial fragments of an old model)
    rows: StepRows  # the env writes each step here; row `rows.t` is the step in progress
    share_sent: bool  # PPO: this client has sent its share of the current model's iteration
    eager: bool  # send each message at once (a whole PPO fragment), not in timed batches

    def make_policy(self, state: dict[str, Any]) -> Any: ...

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]: ...

    def act(self, obs: np.ndarray, client_steps: int) -> np.ndarray: ...

    def observe(self) -> list[Message]:
        """Row `rows.t` is complete: take it in, return what is ready to send."""
        ...

    def reset(self) -> list[Message]:
        """Before the env restarts all episodes: send what is complete, drop the rest and
        start `rows` empty (the env then writes the first observations to `rows.obs[0]`)."""
        ...

    def finish(self) -> list[Message]: ...

    def share_waited(self) -> None:
        """The wait for the next model after `share_sent` timed out: sample on."""
        ...


class VectorSpaces(Protocol):
    single_observation_space: gym.Space
    single_action_space: gym.Space


def make_actor(cfg: Config, env: VectorSpaces, index: int, rng: np.random.Generator) -> Actor:
    """The actor for `cfg.algo` (a key of ACTORS), for the spaces of `env` (one copy's)."""
    return ACTORS[cfg.algo](cfg, env.single_observation_space, env.single_action_space, index, rng)


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
        # stacked frames (env.atari.frame_stack): each frame goes out once, as frame rows
        frames = stacked_frames(cfg, obs_space) is not None
        self.frame_rows = FrameRows(new_streams(n_envs)) if frames else None
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
        """`_flush` for stacked frames: each transition as a frame row (soulsai.client.frames)."""
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
            fields = frame_rows.rows_from_stacks(
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


class PPOActor:
    """Rollout fragments: `num_envs` copies step in lockstep, so all fragments fill together.

    Row t of a copy's fragment gets `next_value` = V(s_{t+1}) under the same model: the value
    computed when acting on s_{t+1}, the value of the true final observation on truncation,
    0 on termination, and for the fragment's last row the value of the observation after it.
    The observation is kept per leaf of the `env.obs_keys` layout (wire fields `obs` or
    `obs.<leaf>`); with masks on, the mask each action was drawn under goes out as `mask` bits.

    Recurrent (`ppo.recurrent`): each copy's state is carried from step to step and from one
    fragment to the next, zeroed when an episode starts (and on `reset`), clipped to
    +-STATE_BOUND; each fragment goes out with the state it started from (wire field `state`,
    `soulsai.model.cores.spread_state`). V(final observation) on truncation and V(s) after the
    fragment use the state after the last step. When new weights arrive mid-episode the copy
    KEEPS its state (the partial fragment is dropped, the next fragment starts from the state as
    it is): the new model then acts on a memory the old one wrote, for the rest of that episode
    only, and the node trains on exactly that (the fragment's initial state is what the client
    used); zeroing it instead would hide from the new model what the episode showed so far.
    """

    eager = True

    def __init__(
        self,
        cfg: Config,
        obs_space: gym.Space,
        action_space: gym.Space,
        index: int,
        rng: np.random.Generator,
    ) -> None:
        self.cfg = cfg
        self.rng = rng
        self.space = action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.expected = ppo_weight_shapes(cfg.ppo, obs_space, action_space, cfg.env)
        self.layout = env_layout(cfg.env, obs_space)
        masked = cfg.env.action_mask is not None
        n_mask = (
            int(action_space.n) if masked and isinstance(action_space, gym.spaces.Discrete) else 0
        )
        n, length = cfg.env.num_envs, cfg.ppo.fragment_length
        act_shape = action_shape(action_space)
        act_dtype = np.int64 if self.discrete else np.float32
        self.obs_fields = {leaf.name: field_name("obs", leaf) for leaf in self.layout.leaves}
        self.fragment: dict[str, np.ndarray] = {
            **{
                field_name("obs", leaf): np.zeros((n, length, *leaf.shape), dtype=leaf.dtype)
                for leaf in self.layout.leaves
            },
            "action": np.zeros((n, length, *act_shape), dtype=act_dtype),
            **{
                name: np.zeros((n, length), dtype=np.float32)
                for name in ("reward", "logprob", "value", "next_value", "disc_return")
            },
            **{name: np.zeros((n, length), dtype=np.uint8) for name in ("terminated", "truncated")},
        }
        if n_mask:  # the mask each action was drawn under, packed into bits when sent
            self.fragment["mask"] = np.zeros((n, length, n_mask), dtype=bool)
        # one step, taken in by observe()
        self.rows = StepRows(1, n, obs_space, action_space, self.layout, n_mask)
        self.recurrent = cfg.ppo.recurrent
        size = state_size(self.recurrent, cfg.ppo.recurrent_size)
        self.state = np.zeros((n, size), dtype=np.float32)  # each copy's state before its step
        self.initial_state = np.zeros((n, size), dtype=np.float32)  # the fragment's first
        self._next_state: np.ndarray | None = None  # after the step in progress
        self.pos = 0
        self.waiting = np.zeros(n, dtype=bool)  # row pos-1 of these copies awaits V(s_{t+1})
        self.disc_return = np.zeros(n, dtype=np.float64)
        self.model_id = -1
        self.policy: NumpyActorCritic | None = None
        self.discarded = 0
        self._step: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._mask: np.ndarray | None = None  # the mask of the step in progress
        # Each connected client's share of an iteration, in whole messages (rows). A client
        # that has sent it waits (ppo.share_wait) for the next model instead of sampling rows
        # the node would reject as stale once the iteration closed.
        self.share = math.inf
        self.sent = 0
        self.share_sent = False

    def make_policy(self, state: dict[str, Any]) -> NumpyActorCritic:
        p = self.cfg.ppo
        return NumpyActorCritic(
            state,
            self.discrete,
            p.normalize_obs,
            p.activation,
            self.layout,
            self.cfg.env.discrete_obs,
            p.recurrent,
        )

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]:
        """Use the policy of `model_id` from the next step on; a partial fragment of the old
        model is dropped, the recurrent states are kept (see the class docstring)."""
        if self.policy is not None and model_id != self.model_id:
            self._drop()
        if model_id != self.model_id:
            p = self.cfg.ppo
            per_message = p.fragment_length * self.cfg.env.num_envs
            clients = max(1, int(meta.get("num_clients", 1)))
            messages = math.ceil(p.n_steps_total / clients / per_message)
            self.share = messages * per_message if p.share_wait > 0 else math.inf
            self.sent, self.share_sent = 0, False
        self.model_id, self.policy = model_id, policy
        return []

    def share_waited(self) -> None:
        """The next model did not come within ppo.share_wait (a client may have left, so the
        iteration needs more than the shares): sample on with this model without waiting."""
        self.share, self.share_sent = math.inf, False

    def act(self, obs: Any, client_steps: int) -> np.ndarray:
        """Sample for `obs` (the rows' observation: an array, or leaves by name); with masks on,
        among the valid actions of `rows.mask[0]` (the mask of that observation)."""
        assert self.policy is not None
        mask = self.rows.mask[0].copy() if self.rows.n_mask else None
        self._mask = mask
        if self.recurrent is not None:
            if self.pos == 0:
                self.initial_state[:] = self.state
            actions, logprob, value, self._next_state = self.policy.act_step(
                obs, self.rng, mask, self.state
            )
        elif mask is None:
            actions, logprob, value = self.policy.act(obs, self.rng)
        else:
            actions, logprob, value = self.policy.act(obs, self.rng, mask)
        if self.pos > 0 and self.waiting.any():
            self.fragment["next_value"][self.waiting, self.pos - 1] = value[self.waiting]
        self.waiting[:] = False
        self._step = (actions, logprob, value)
        space = self.space
        if isinstance(space, gym.spaces.Discrete):
            return actions + int(space.start)
        assert isinstance(space, gym.spaces.Box)  # build_actor_critic accepted nothing else
        actions = actions.reshape(len(obs), *space.shape)
        return np.clip(actions, space.low, space.high).astype(space.dtype)

    def observe(self) -> list[Message]:
        rows = self.rows
        out = self.record(
            rows.obs_rows[0],
            rows.reward[0],
            rows.terminated[0],
            rows.truncated[0],
            rows.obs_rows[1],
            rows.final_obs[0] if rows.final_obs is not None else rows.obs_at(0, slice(None), True),
            self._mask,
        )
        for a in rows.leaves.values():
            a[0] = a[1]  # the next step acts on it
        rows.mask[0] = rows.mask[1]
        rows.terminated[0] = rows.truncated[0] = False  # as StepRows promises for rows from t on
        return out

    def record(
        self,
        obs: Any,
        rewards: np.ndarray,
        terms: np.ndarray,
        truncs: np.ndarray,
        next_obs: Any,
        final_obs: Any,
        mask: np.ndarray | None = None,
    ) -> list[Message]:
        """Take in one vector-env step (final_obs[i] matters only where copy i ended).
        Observations are arrays (a bare Box) or leaves by name, each (num_envs, ...); `mask`
        is the valid-action mask the actions were drawn under (masks on)."""
        assert self._step is not None and self.policy is not None
        actions, logprob, value = self._step
        p, rows = self.pos, self.fragment
        self.disc_return = self.disc_return * self.cfg.ppo.gamma + rewards
        if isinstance(obs, dict):
            for name, field in self.obs_fields.items():
                rows[field][:, p] = obs[name]
        else:
            rows["obs"][:, p] = obs
        if mask is not None:
            rows["mask"][:, p] = mask
        rows["action"][:, p] = actions.reshape(rows["action"][:, p].shape)
        rows["reward"][:, p] = rewards
        rows["terminated"][:, p] = terms
        rows["truncated"][:, p] = truncs
        rows["logprob"][:, p] = logprob
        rows["value"][:, p] = value
        rows["disc_return"][:, p] = self.disc_return
        rows["next_value"][:, p] = 0.0
        cut = np.asarray(truncs, bool) & ~np.asarray(terms, bool)
        after = self._carry()  # the states after this step, before any reset
        if cut.any():  # truncation bootstraps from the true final observation
            if isinstance(final_obs, dict):
                final: Any = {name: leaf[cut] for name, leaf in final_obs.items()}
            else:
                final = np.stack([final_obs[i] for i in np.flatnonzero(cut)])
            if after is None:
                rows["next_value"][cut, p] = self.policy.value(final)
            else:
                rows["next_value"][cut, p] = self.policy.value(final, after[cut])
        done = np.asarray(terms, bool) | np.asarray(truncs, bool)
        self.disc_return[done] = 0.0
        if after is not None:
            self.state[:] = after
            self.state[done] = 0.0  # a new episode starts with a blank memory
        self.waiting = ~done
        self.pos += 1
        if self.pos < self.cfg.ppo.fragment_length:
            return []
        if self.waiting.any():
            w = self.waiting
            nxt = {k: v[w] for k, v in next_obs.items()} if isinstance(next_obs, dict) else None
            nxt_obs = next_obs[w] if nxt is None else nxt
            if self.recurrent is None:
                rows["next_value"][w, p] = self.policy.value(nxt_obs)
            else:
                rows["next_value"][w, p] = self.policy.value(nxt_obs, self.state[w])
        self.waiting[:] = False
        self.pos = 0
        self.sent += self.fragment["reward"].size
        self.share_sent = self.sent >= self.share
        return [(self.model_id, self._fragments())]

    def _carry(self) -> np.ndarray | None:
        """The recurrent states after the step in progress, clipped to the wire's bound
        (None: feed-forward)."""
        if self.recurrent is None:
            return None
        assert self._next_state is not None
        return np.clip(self._next_state, -STATE_BOUND, STATE_BOUND)

    def _fragments(self) -> dict[str, np.ndarray]:
        """The full fragments as one message: copy by copy, each in time order."""
        n, length = self.fragment["reward"].shape
        fields = {k: v.reshape(n * length, *v.shape[2:]).copy() for k, v in self.fragment.items()}
        if "mask" in fields:
            fields["mask"] = pack_mask(fields["mask"])
        if self.recurrent is not None:
            fields["state"] = spread_state(self.initial_state, length)
        last = np.zeros((n, length), dtype=np.uint8)
        last[:, -1] = 1
        fields["last"] = last.reshape(-1)
        return fields

    def _drop(self) -> None:
        self.discarded += self.pos * len(self.waiting)
        self.pos = 0
        self.waiting[:] = False

    def reset(self) -> list[Message]:
        self._drop()
        self.disc_return[:] = 0.0
        self.state[:] = 0.0  # every episode starts again
        self.rows.clear()
        return []

    def finish(self) -> list[Message]:
        self._drop()  # a partial fragment; the node has likely moved on, and we are stopping
        return []


# cfg.algo -> the client side of that algorithm (a fixed table: one entry per algorithm)
ACTORS: dict[str, Callable[[Config, gym.Space, gym.Space, int, np.random.Generator], Actor]] = {
    "dqn": DQNActor,
    "ppo": PPOActor,
}
