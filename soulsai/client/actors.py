"""The per-algorithm part of a sampling client: how to act, what to record, what to send.

The env loop (sampler.py) is the same for every algorithm; it asks its actor for actions,
reports each vector-env step back, and ships whatever messages the actor returns. An actor
holds the policy of exactly one model id at a time and never mixes model ids in a message.

- DQNActor: epsilon-greedy, n-step folding per env copy, batches of `client.batch_size`
  (flushed early after `client.flush_interval` seconds or when the model changes).
- PPOActor: samples from the policy, records log-probabilities and values, and sends whole
  rollout fragments of `ppo.fragment_length` steps per env copy. A fragment is on-policy for
  one model only, so a partial fragment is dropped (counted in `discarded`) when a newer model
  arrives: the training node would reject it as stale anyway.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from soulsai.client.nstep import NStepAccumulator, NStepTransition
from soulsai.client.policy import NumpyQPolicy, expected_weight_shapes
from soulsai.client.ppo_policy import NumpyActorCritic
from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.training.algorithms.dqn import epsilon

Message = tuple[int, dict[str, np.ndarray]]  # (model id, per-transition fields)


class Actor(Protocol):
    expected: dict[str, tuple[int, ...]]  # weight names and shapes a valid model must have
    discarded: int  # env steps recorded but never sent (partial fragments of an old model)

    def make_policy(self, state: dict[str, Any]) -> Any: ...

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]: ...

    def act(self, obs: np.ndarray, client_steps: int) -> np.ndarray: ...

    def observe(
        self,
        obs: np.ndarray,
        rewards: np.ndarray,
        terms: np.ndarray,
        truncs: np.ndarray,
        next_obs: np.ndarray,
        final_obs: Any,
    ) -> list[Message]: ...

    def reset(self) -> None: ...

    def finish(self) -> list[Message]: ...


class VectorSpaces(Protocol):
    single_observation_space: gym.Space
    single_action_space: gym.Space


def make_actor(cfg: Config, env: VectorSpaces, index: int, rng: np.random.Generator) -> Actor:
    """The actor for `cfg.algo`, for the spaces of `env` (one copy's spaces)."""
    spaces = (env.single_observation_space, env.single_action_space)
    if cfg.algo == "ppo":
        return PPOActor(cfg, *spaces, index, rng)
    return DQNActor(cfg, *spaces, index, rng)


class DQNActor:
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
        obs_shape = tuple(obs_space.shape or ())
        self.expected = expected_weight_shapes(cfg, obs_shape, int(action_space.n))
        n_envs, d = cfg.env.num_envs, cfg.dqn
        self.accs = [NStepAccumulator(d.n_step, d.gamma) for _ in range(n_envs)]
        self.batch: list[NStepTransition] = []
        self.batch_model = -1
        self.batch_started = time.monotonic()
        self.model_id = -1
        self.policy: NumpyQPolicy | None = None
        self.meta: dict[str, Any] = {}
        self.discarded = 0
        self._actions = np.zeros(n_envs, dtype=np.int64)

    def make_policy(self, state: dict[str, Any]) -> NumpyQPolicy:
        return NumpyQPolicy(state, self.cfg.dqn.normalize_obs)

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]:
        out = self._flush() if self.batch else []  # one model id per message
        self.model_id, self.policy, self.meta = model_id, policy, meta
        return out

    def act(self, obs: np.ndarray, client_steps: int) -> np.ndarray:
        num_clients = max(1, int(self.meta.get("num_clients", 1)))
        eps = epsilon(
            self.cfg.dqn,
            int(self.meta.get("env_steps", 0)) + client_steps,
            self.index % num_clients,  # restarted clients get fresh indices: stay on the ladder
            num_clients,
        )
        assert self.policy is not None
        self._actions = self.policy.act(obs, eps, self.rng)
        return self._actions + self.action_start

    def observe(self, obs, rewards, terms, truncs, next_obs, final_obs) -> list[Message]:
        if not self.batch:
            self.batch_started = time.monotonic()
            self.batch_model = self.model_id
        for i in range(len(obs)):
            done = bool(terms[i] or truncs[i])
            nxt = final_obs[i] if done else next_obs[i]
            self.batch.extend(
                self.accs[i].push(
                    obs[i], self._actions[i], rewards[i], nxt, bool(terms[i]), bool(truncs[i])
                )
            )
        c = self.cfg.client
        if len(self.batch) >= c.batch_size or (
            self.batch and time.monotonic() - self.batch_started > c.flush_interval
        ):
            return self._flush()
        return []

    def reset(self) -> None:
        for acc in self.accs:
            acc.reset()

    def finish(self) -> list[Message]:
        return self._flush() if self.batch else []

    def _flush(self) -> list[Message]:
        batch, self.batch = self.batch, []
        fields = {
            "obs": np.stack([t.obs for t in batch]),
            "action": np.asarray([t.action for t in batch], dtype=np.int64),
            "reward": np.asarray([t.reward for t in batch], dtype=np.float32),
            "next_obs": np.stack([t.next_obs for t in batch]),
            "terminated": np.asarray([t.terminated for t in batch], dtype=np.uint8),
            "steps": np.asarray([t.steps for t in batch], dtype=np.uint8),
        }
        return [(self.batch_model, fields)]


class PPOActor:
    """Rollout fragments: `num_envs` copies step in lockstep, so all fragments fill together.

    Row t of a copy's fragment gets `next_value` = V(s_{t+1}) under the same model: the value
    computed when acting on s_{t+1}, the value of the true final observation on truncation,
    0 on termination, and for the fragment's last row the value of the observation after it.
    """

    def __init__(
        self,
        cfg: Config,
        obs_space: gym.Space,
        action_space: gym.Space,
        index: int,
        rng: np.random.Generator,
    ) -> None:
        from soulsai.training.algorithms.ppo import action_shape, build_actor_critic

        self.cfg = cfg
        self.rng = rng
        self.space = action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        net = build_actor_critic(cfg.ppo, obs_space, action_space)
        self.expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        n, length = cfg.env.num_envs, cfg.ppo.fragment_length
        act_shape = action_shape(action_space)
        act_dtype = np.int64 if self.discrete else np.float32
        self.rows: dict[str, np.ndarray] = {
            "obs": np.zeros((n, length, *(obs_space.shape or ())), dtype=obs_space.dtype),
            "action": np.zeros((n, length, *act_shape), dtype=act_dtype),
            **{
                name: np.zeros((n, length), dtype=np.float32)
                for name in ("reward", "logprob", "value", "next_value", "disc_return")
            },
            **{name: np.zeros((n, length), dtype=np.uint8) for name in ("terminated", "truncated")},
        }
        self.pos = 0
        self.waiting = np.zeros(n, dtype=bool)  # row pos-1 of these copies awaits V(s_{t+1})
        self.disc_return = np.zeros(n, dtype=np.float64)
        self.model_id = -1
        self.policy: NumpyActorCritic | None = None
        self.discarded = 0
        self._step: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def make_policy(self, state: dict[str, Any]) -> NumpyActorCritic:
        p = self.cfg.ppo
        return NumpyActorCritic(state, self.discrete, p.normalize_obs, p.activation)

    def set_model(self, model_id: int, policy: Any, meta: dict[str, Any]) -> list[Message]:
        if self.policy is not None and model_id != self.model_id:
            self._drop()
        self.model_id, self.policy = model_id, policy
        return []

    def act(self, obs: np.ndarray, client_steps: int) -> np.ndarray:
        assert self.policy is not None
        actions, logprob, value = self.policy.act(obs, self.rng)
        if self.pos > 0 and self.waiting.any():
            self.rows["next_value"][self.waiting, self.pos - 1] = value[self.waiting]
        self.waiting[:] = False
        self._step = (actions, logprob, value)
        space = self.space
        if isinstance(space, gym.spaces.Discrete):
            return actions + int(space.start)
        assert isinstance(space, gym.spaces.Box)  # build_actor_critic accepted nothing else
        actions = actions.reshape(len(obs), *space.shape)
        return np.clip(actions, space.low, space.high).astype(space.dtype)

    def observe(self, obs, rewards, terms, truncs, next_obs, final_obs) -> list[Message]:
        assert self._step is not None and self.policy is not None
        actions, logprob, value = self._step
        p, rows = self.pos, self.rows
        self.disc_return = self.disc_return * self.cfg.ppo.gamma + rewards
        rows["obs"][:, p] = obs
        rows["action"][:, p] = actions.reshape(rows["action"][:, p].shape)
        rows["reward"][:, p] = rewards
        rows["terminated"][:, p] = terms
        rows["truncated"][:, p] = truncs
        rows["logprob"][:, p] = logprob
        rows["value"][:, p] = value
        rows["disc_return"][:, p] = self.disc_return
        rows["next_value"][:, p] = 0.0
        cut = np.asarray(truncs, bool) & ~np.asarray(terms, bool)
        if cut.any():  # truncation bootstraps from the true final observation
            final = np.stack([final_obs[i] for i in np.flatnonzero(cut)])
            rows["next_value"][cut, p] = self.policy.value(final)
        done = np.asarray(terms, bool) | np.asarray(truncs, bool)
        self.disc_return[done] = 0.0
        self.waiting = ~done
        self.pos += 1
        if self.pos < self.cfg.ppo.fragment_length:
            return []
        if self.waiting.any():
            rows["next_value"][self.waiting, p] = self.policy.value(next_obs[self.waiting])
        self.waiting[:] = False
        self.pos = 0
        return [(self.model_id, self._fragments())]

    def _fragments(self) -> dict[str, np.ndarray]:
        """The full fragments as one message: copy by copy, each in time order."""
        n, length = self.rows["reward"].shape
        fields = {k: v.reshape(n * length, *v.shape[2:]).copy() for k, v in self.rows.items()}
        last = np.zeros((n, length), dtype=np.uint8)
        last[:, -1] = 1
        fields["last"] = last.reshape(-1)
        return fields

    def _drop(self) -> None:
        self.discarded += self.pos * len(self.waiting)
        self.pos = 0
        self.waiting[:] = False

    def reset(self) -> None:
        self._drop()
        self.disc_return[:] = 0.0

    def finish(self) -> list[Message]:
        self._drop()  # a partial fragment; the node has likely moved on, and we are stopping
        return []
