"""The PPO side of a sampling client (see actor_base.py for the Actor contract).

PPOActor: samples from the policy (among the valid actions when `env.action_mask` is set),
records log-probabilities, values, the observation leaf by leaf and the valid-action mask,
and sends whole rollout fragments of `ppo.fragment_length` steps per env copy. A fragment
is on-policy for one model only, so a partial fragment is dropped (counted in `discarded`)
when a newer model arrives: the training node would reject it as stale anyway. With
`ppo.recurrent` it carries each env copy's recurrent state across steps and fragments.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.client.actor_base import Message
from soulsai.client.envs import StepRows
from soulsai.config import Config
from soulsai.model.cores import STATE_BOUND, spread_state, state_size
from soulsai.model.masks import pack_mask
from soulsai.model.numpy_ac import NumpyActorCritic
from soulsai.model.obs import env_layout
from soulsai.model.obs_wire import field_name
from soulsai.model.shapes import action_shape, ppo_weight_shapes


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
        rows.swap_step()  # the next step acts on row 1: it becomes row 0, without a copy
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
