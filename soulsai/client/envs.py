"""The client's vector of env copies and the preallocated rows its steps are written into."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.config.schema import EnvConfig
from soulsai.envs import make_single_env
from soulsai.envs.atari import GAME_LENGTH, GAME_OVER, GAME_RETURN
from soulsai.errors import ConfigError
from soulsai.model.masks import METHOD, mask_from_env, mask_from_info
from soulsai.model.obs import ObsLayout, build_layout, obs_leaves

MASK_METHOD = METHOD  # env.action_mask's value that asks the env's method
BARE_KINDS = ("box", "image")  # leaf kinds whose bare observation needs no range check


class StepRows:
    """Time-major record of a vector env's steps, written in place (no object per step).

    Row t holds what every copy did at step t: `obs[t]` is what it acted on, `action[t]`,
    `reward[t]`, `terminated[t]`, `truncated[t]` what followed, and `obs[t + 1]` the next
    observation. A copy that ended its episode at step t has the new episode's first
    observation in `obs[t + 1]` and the true final one in `final_obs[t]`. `t` is the row
    the next step goes to; `keep_last` moves the newest rows to the front after each flush,
    and one-row rows (PPO) make the observation after the step the next one with `swap_step`.

    Observations are stored per leaf of the `layout` (soulsai.model.obs), each in its wire
    dtype: `leaves[name]` is (capacity + 1, num_envs, *leaf.shape), `final_leaves[name]` the
    final observations. A bare Box (`plain`) has one leaf named "", which is `obs` (and
    `final_obs`) itself, as before layouts existed; for other layouts `obs` and `final_obs` are
    None and `obs_rows[t]` is a dict leaf name -> row view.

    With masks on (`n_mask` actions, else 0), `mask[t]` is the valid-action mask of `obs[t]`
    and `final_mask[t]` that of `final_obs[t]` (bool).

    `terminated` and `truncated` are written only where an episode ended: every row from `t`
    on is all False (`keep_last` and `clear` see to it), so a plain step writes neither.

    The `*_rows` and `*_cells` lists hold a view of every row (and of every copy's observation
    in it), made once: per step, indexing a list and writing into a view costs a fraction of
    indexing the array.
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_space: gym.Space,
        action_space: gym.Space,
        layout: ObsLayout | None = None,
        n_mask: int = 0,
    ) -> None:
        self.layout = layout if layout is not None else build_layout(obs_space)
        # a bare Box (frames too): its one leaf is the observation, written as it comes
        bare = self.layout.leaves[0]
        self.plain = len(self.layout.leaves) == 1 and not bare.path and bare.kind in BARE_KINDS
        discrete = isinstance(action_space, gym.spaces.Discrete)
        act_shape = () if discrete else tuple(action_space.shape or ())
        self.capacity = capacity
        self.leaves = {
            leaf.name: np.zeros((capacity + 1, num_envs, *leaf.shape), dtype=leaf.dtype)
            for leaf in self.layout.leaves
        }
        self.final_leaves = {
            name: np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            for name, a in self.leaves.items()
        }
        self.obs: np.ndarray | None = self.leaves[""] if self.plain else None
        self.final_obs: np.ndarray | None = self.final_leaves[""] if self.plain else None
        self.n_mask = n_mask
        self.mask = np.ones((capacity + 1, num_envs, n_mask), dtype=bool)
        self.final_mask = np.ones((capacity, num_envs, n_mask), dtype=bool)
        self.action = np.zeros(
            (capacity, num_envs, *act_shape), dtype=np.int64 if discrete else np.float32
        )
        self.reward = np.zeros((capacity, num_envs), dtype=np.float64)
        self.terminated = np.zeros((capacity, num_envs), dtype=bool)
        self.truncated = np.zeros((capacity, num_envs), dtype=bool)
        self.t = 0
        if self.obs is not None and self.final_obs is not None:
            self.obs_rows: list[Any] = list(self.obs)
            self.obs_cells = [list(row) for row in self.obs]  # [t][i]: copy i's obs at step t
            self.final_obs_cells = [list(row) for row in self.final_obs]
        else:
            self.obs_rows = [
                {name: a[t] for name, a in self.leaves.items()} for t in range(capacity + 1)
            ]
            self.obs_cells, self.final_obs_cells = [], []
        self.mask_rows = list(self.mask)
        # swap_step's two orientations of the rows: (leaves, obs, mask) as made, and reversed
        self._swapped = False
        reversed_leaves = {name: a[::-1] for name, a in self.leaves.items()}
        self._orientations = (
            (self.leaves, self.obs, self.mask),
            (reversed_leaves, reversed_leaves[""] if self.plain else None, self.mask[::-1]),
        )
        self.action_rows = list(self.action)
        self.reward_rows = list(self.reward)
        self.terminated_rows = list(self.terminated)
        self.truncated_rows = list(self.truncated)

    def swap_step(self) -> None:
        """One-row rows (capacity 1): the observation after the step (row 1, with its mask)
        becomes row 0, the one the next step acts on, and row 0's memory becomes row 1, which
        the next step overwrites: the two rows trade places (views with the row order
        reversed), nothing is copied. The row lists change in place (a caller may hold them);
        `leaves`, `obs` and `mask` are the swapped views (look them up after this)."""
        if self.capacity != 1:
            raise ValueError(f"swap_step needs rows of capacity 1, not {self.capacity}")
        self._swapped = not self._swapped
        self.leaves, self.obs, self.mask = self._orientations[self._swapped]
        for rows in (self.obs_rows, self.obs_cells, self.mask_rows):
            if rows:
                rows[0], rows[1] = rows[1], rows[0]

    def put_obs(self, t: int, i: int, obs: Any, final: bool = False) -> None:
        """Write copy i's observation (any layout) into row t (of `final_leaves` if `final`);
        an env that breaks its own space is a SoulsaiError naming the leaf."""
        target = self.final_leaves if final else self.leaves
        for name, value in obs_leaves(self.layout, obs, batched=False).items():
            target[name][t, i] = value[0]

    def obs_at(self, t: Any, i: Any, final: bool = False) -> dict[str, np.ndarray]:
        """Leaf name -> the observations at rows `t` of copies `i` (fancy indexing: copies)."""
        source = self.final_leaves if final else self.leaves
        return {name: a[t, i] for name, a in source.items()}

    def keep_last(self, rows: int) -> int:
        """Keep only the newest `rows` full rows (and the observation after them) at the
        front; return by how many rows everything moved."""
        shift = max(0, self.t - rows)
        if shift:
            t = self.t
            per_row = [*self.final_leaves.values(), self.final_mask, self.action, self.reward]
            for a in (*per_row, self.terminated, self.truncated):
                a[: t - shift] = a[shift:t]
            for a in (*self.leaves.values(), self.mask):
                a[: t - shift + 1] = a[shift : t + 1]
            self.t = t - shift
        self.terminated[self.t :] = False
        self.truncated[self.t :] = False
        return shift

    def clear(self) -> None:
        """Start empty: the next step goes to row 0 (`swap_step`'s orientation is kept)."""
        self.t = 0
        self.terminated[:] = False
        self.truncated[:] = False


class MaskReader:
    """Reads one env copy's valid-action mask per step, as `env.action_mask` says: an info
    key (SoulsGym: `action_mask`) or MASK_METHOD (sb3-contrib's `action_masks()`). A bad mask
    (wrong shape, values other than 0/1, no valid action) is a ConfigError naming the setting:
    the client stops rather than act on it."""

    def __init__(self, setting: str, n_actions: int) -> None:
        self.setting = setting
        self.n_actions = n_actions

    def __call__(self, env: Any, info: Any, final: bool = False) -> np.ndarray:
        """The mask (n_actions,) after a step or reset; `final`: the observation ends its
        episode by termination, and may allow no action (no target uses its mask)."""
        allow = np.array([final])
        if self.setting == MASK_METHOD:
            m = mask_from_env(env, self.n_actions, 1, allow_empty=allow)
        else:
            m = mask_from_info(info or {}, self.setting, self.n_actions, 1, allow_empty=allow)
        return m[0]


def mask_reader(cfg: EnvConfig, action_space: gym.Space) -> MaskReader | None:
    """The reader `env.action_mask` asks for (None: masks off)."""
    if cfg.action_mask is None:
        return None
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(
            f"env.action_mask: masks need a Discrete action space, not {action_space}"
        )
    return MaskReader(cfg.action_mask, int(action_space.n))


Ended = list[tuple[int, float, int, dict]]  # (copy, episode return, episode length, last info)
NONE_ENDED: Ended = []  # shared by every step in which no episode ended; never appended to


class LocalVectorEnv:
    """`num_envs` copies stepped one after another in this process, writing straight into a
    StepRows. A copy that ends an episode resets in the same step (the true final observation
    goes to `final_obs[t]`), so n-step targets and GAE bootstrap correctly; the env keeps each
    copy's episode return and length and reports ended episodes from `step`.

    Observations of a layout other than a bare Box go leaf by leaf (`StepRows.put_obs`); with
    `env.action_mask` set, each observation's mask is read once (`MaskReader`) into the rows.

    Gymnasium's SyncVectorEnv does the same with space checks, deep copies and info merging
    on every step; for the one-game-per-machine case this is the client's hottest loop.
    """

    def __init__(self, cfg: EnvConfig) -> None:
        self.envs = [make_single_env(cfg) for _ in range(cfg.num_envs)]
        self.num_envs = cfg.num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.read_mask = mask_reader(cfg, self.single_action_space)
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs
        self._indexed = list(enumerate(self.envs))

    def _check_rows(self, rows: StepRows) -> None:
        if (self.read_mask is None) != (rows.n_mask == 0):
            raise ConfigError("env.action_mask: the rows and the env disagree on masks")

    def reset(self, rows: StepRows, seed: int | None = None) -> None:
        """Start new episodes in every copy; their first observations go to `rows.obs[rows.t]`."""
        self._check_rows(rows)
        t = rows.t
        for i, env in enumerate(self.envs):
            obs, info = env.reset(seed=None if seed is None else seed + i)
            if rows.plain:
                rows.obs_cells[t][i][...] = obs
            else:
                rows.put_obs(t, i, obs)
            if self.read_mask is not None:
                rows.mask[t, i] = self.read_mask(env, info)
        self._returns = [0.0] * self.num_envs
        self._lengths = [0] * self.num_envs

    def step(self, actions: np.ndarray, rows: StepRows) -> Ended:
        """Step every copy with its action; write row `rows.t` and `rows.obs[rows.t + 1]`."""
        t = rows.t
        rewards = rows.reward_rows[t]
        plain, read_mask = rows.plain, self.read_mask
        next_obs = rows.obs_cells[t + 1] if plain else None
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
                if plain:
                    rows.final_obs_cells[t][i][...] = obs
                else:
                    rows.put_obs(t, i, obs, final=True)
                if read_mask is not None:
                    rows.final_mask[t, i] = read_mask(env, info, final=bool(term))
                game_over = info.get(GAME_OVER)  # env.atari: a lost life ends no record
                if game_over is not False:
                    if ended is NONE_ENDED:
                        ended = []
                    if game_over:  # the whole game's raw score, not the learner's episode
                        ended.append((i, info[GAME_RETURN], info[GAME_LENGTH], info))
                    else:
                        ended.append((i, returns[i], lengths[i], info))
                returns[i], lengths[i] = 0.0, 0
                obs, info = env.reset()
            if next_obs is not None:
                next_obs[i][...] = obs
            else:
                rows.put_obs(t + 1, i, obs)
            if read_mask is not None:
                rows.mask_rows[t + 1][i] = read_mask(env, info)
        return ended

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(cfg: EnvConfig) -> LocalVectorEnv:
    """The client's env: `env.num_envs` copies of the configured env, batched."""
    return LocalVectorEnv(cfg)
