"""The client's vector of env copies and the preallocated rows its steps are written into."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from soulsai.config.schema import EnvConfig
from soulsai.envs import make_single_env


class StepRows:
    """Time-major record of a vector env's steps, written in place (no object per step).

    Row t holds what every copy did at step t: `obs[t]` is what it acted on, `action[t]`,
    `reward[t]`, `terminated[t]`, `truncated[t]` what followed, and `obs[t + 1]` the next
    observation. A copy that ended its episode at step t has the new episode's first
    observation in `obs[t + 1]` and the true final one in `final_obs[t]`. `t` is the row
    the next step goes to; `keep_last` moves the newest rows to the front after each flush.

    `terminated` and `truncated` are written only where an episode ended: every row from `t`
    on is all False (`keep_last` and `clear` see to it), so a plain step writes neither.

    The `*_rows` and `*_cells` lists hold a view of every row (and of every copy's observation
    in it), made once: per step, indexing a list and writing into a view costs a fraction of
    indexing the array.
    """

    def __init__(
        self, capacity: int, num_envs: int, obs_space: gym.Space, action_space: gym.Space
    ) -> None:
        obs_shape, obs_dtype = tuple(obs_space.shape or ()), obs_space.dtype
        discrete = isinstance(action_space, gym.spaces.Discrete)
        act_shape = () if discrete else tuple(action_space.shape or ())
        self.capacity = capacity
        self.obs = np.zeros((capacity + 1, num_envs, *obs_shape), dtype=obs_dtype)
        self.final_obs = np.zeros((capacity, num_envs, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros(
            (capacity, num_envs, *act_shape), dtype=np.int64 if discrete else np.float32
        )
        self.reward = np.zeros((capacity, num_envs), dtype=np.float64)
        self.terminated = np.zeros((capacity, num_envs), dtype=bool)
        self.truncated = np.zeros((capacity, num_envs), dtype=bool)
        self.t = 0
        self.obs_rows = list(self.obs)
        self.obs_cells = [list(row) for row in self.obs]  # [t][i]: copy i's obs at step t
        self.final_obs_cells = [list(row) for row in self.final_obs]
        self.action_rows = list(self.action)
        self.reward_rows = list(self.reward)
        self.terminated_rows = list(self.terminated)
        self.truncated_rows = list(self.truncated)

    def keep_last(self, rows: int) -> int:
        """Keep only the newest `rows` full rows (and the observation after them) at the
        front; return by how many rows everything moved."""
        shift = max(0, self.t - rows)
        if shift:
            t = self.t
            for a in (self.final_obs, self.action, self.reward, self.terminated, self.truncated):
                a[: t - shift] = a[shift:t]
            self.obs[: t - shift + 1] = self.obs[shift : t + 1]
            self.t = t - shift
        self.terminated[self.t :] = False
        self.truncated[self.t :] = False
        return shift

    def clear(self) -> None:
        """Start empty: the next step goes to row 0."""
        self.t = 0
        self.terminated[:] = False
        self.truncated[:] = False


Ended = list[tuple[int, float, int, dict]]  # (copy, episode return, episode length, last info)
NONE_ENDED: Ended = []  # shared by every step in which no episode ended; never appended to


class LocalVectorEnv:
    """`num_envs` copies stepped one after another in this process, writing straight into a
    StepRows. A copy that ends an episode resets in the same step (the true final observation
    goes to `final_obs[t]`), so n-step targets and GAE bootstrap correctly; the env keeps each
    copy's episode return and length and reports ended episodes from `step`.

    Gymnasium's SyncVectorEnv does the same with space checks, deep copies and info merging
    on every step; for the one-game-per-machine case this is the client's hottest loop.
    """

    def __init__(self, cfg: EnvConfig) -> None:
        self.envs = [make_single_env(cfg) for _ in range(cfg.num_envs)]
        self.num_envs = cfg.num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs
        self._indexed = list(enumerate(self.envs))

    def reset(self, rows: StepRows, seed: int | None = None) -> None:
        """Start new episodes in every copy; their first observations go to `rows.obs[rows.t]`."""
        for i, env in enumerate(self.envs):
            rows.obs_cells[rows.t][i][...] = env.reset(seed=None if seed is None else seed + i)[0]
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs

    def step(self, actions: np.ndarray, rows: StepRows) -> Ended:
        """Step every copy with its action; write row `rows.t` and `rows.obs[rows.t + 1]`."""
        t = rows.t
        rewards = rows.reward_rows[t]
        next_obs = rows.obs_cells[t + 1]
        ended = NONE_ENDED
        returns, lengths = self._returns, self._lengths
        for i, env in self._indexed:
            obs, reward, term, trunc, info = env.step(actions[i])
            rewards[i] = reward
            returns[i] += float(reward)
            lengths[i] += 1
            if term or trunc:
                rows.terminated_rows[t][i] = term
                rows.truncated_rows[t][i] = trunc
                rows.final_obs_cells[t][i][...] = obs
                if ended is NONE_ENDED:
                    ended = []
                ended.append((i, returns[i], lengths[i], info))
                returns[i], lengths[i] = 0.0, 0
                obs, _ = env.reset()
            next_obs[i][...] = obs
        return ended

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(cfg: EnvConfig) -> LocalVectorEnv:
    """The client's env: `env.num_envs` copies of the configured env, batched."""
    return LocalVectorEnv(cfg)
