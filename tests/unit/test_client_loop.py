"""The client's env loop pieces: the vector env writing StepRows, the episode envelope."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from soulsai.client.envs import NONE_ENDED, LocalVectorEnv, StepRows
from soulsai.client.sampler import EpisodeEncoder
from soulsai.config.schema import EnvConfig
from soulsai.transport.episodes import EpisodeRecord, decode_episode, encode_episode


def _env_cfg(num_envs: int) -> EnvConfig:
    return EnvConfig(
        id="CartPole-v1", imports=[], kwargs={}, wrappers=[], num_envs=num_envs, step_delay=0.0
    )


def test_vector_env_writes_rows_like_separate_envs() -> None:
    """Row t and obs t+1 per copy; at an episode end the true final observation, the new
    episode's first one, and the episode's return and length."""
    n = 2
    venv = LocalVectorEnv(_env_cfg(n))
    refs = [gym.make("CartPole-v1") for _ in range(n)]
    rows = StepRows(400, n, venv.single_observation_space, venv.single_action_space)
    venv.reset(rows, seed=3)
    ref_obs = [ref.reset(seed=3 + i)[0] for i, ref in enumerate(refs)]
    np.testing.assert_array_equal(rows.obs[0], ref_obs)
    rng = np.random.default_rng(0)
    returns, lengths, ends = [0.0] * n, [0] * n, 0
    for t in range(300):
        rows.t = t
        actions = rng.integers(0, 2, n)
        ended = venv.step(actions, rows)
        expected_ended = []
        for i, ref in enumerate(refs):
            obs, reward, term, trunc, _ = ref.step(actions[i])
            returns[i] += reward
            lengths[i] += 1
            assert rows.reward[t, i] == reward
            assert (rows.terminated[t, i], rows.truncated[t, i]) == (term, trunc)
            if term or trunc:
                np.testing.assert_array_equal(rows.final_obs[t, i], obs)
                expected_ended.append((i, returns[i], lengths[i]))
                returns[i], lengths[i] = 0.0, 0
                obs, _ = ref.reset()
            np.testing.assert_array_equal(rows.obs[t + 1, i], obs)
        assert [(i, r, k) for i, r, k, _ in ended] == expected_ended
        ends += len(ended)
        if not ended:
            assert ended is NONE_ENDED and not NONE_ENDED
    assert ends > 10


def test_keep_last_moves_the_newest_rows_to_the_front() -> None:
    rows = StepRows(6, 1, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Discrete(2))
    rows.obs[:, 0, 0] = np.arange(7)
    rows.reward[:, 0] = np.arange(6)
    rows.t = 5
    assert rows.keep_last(2) == 3
    assert rows.t == 2
    assert list(rows.reward[:2, 0]) == [3, 4]
    assert list(rows.obs[:3, 0, 0]) == [3, 4, 5]
    assert rows.obs_rows[0][0, 0] == 3  # the cached row views see the moved data


@pytest.mark.parametrize("dict_obs", [False, True])
def test_swap_step_makes_row_one_row_zero_without_a_copy(dict_obs: bool) -> None:
    """Row 1 (observation and mask) becomes row 0 in the arrays and in every cached row list,
    the memory of row 0 becomes row 1 (where the env writes next); twice is where it started."""
    box = gym.spaces.Box(-10, 10, (3,))
    space = gym.spaces.Dict({"a": box, "b": gym.spaces.Discrete(4)}) if dict_obs else box
    rows = StepRows(1, 2, space, gym.spaces.Discrete(3), n_mask=3)
    sample = {"a": np.full(3, 7.0, np.float32), "b": 2} if dict_obs else np.full(3, 7.0, np.float32)
    cached = rows.obs_rows  # the sampler holds this list
    for i in range(2):
        rows.put_obs(1, i, sample)
    rows.mask_rows[1][:] = [[True, False, True], [False, True, True]]
    memory_of_row_zero = {name: a[0] for name, a in rows.leaves.items()}
    rows.swap_step()
    assert rows.obs_rows is cached
    for name, a in rows.leaves.items():
        assert np.shares_memory(a[1], memory_of_row_zero[name])  # moved, not copied
        row0 = cached[0][name] if dict_obs else cached[0]
        np.testing.assert_array_equal(row0, a[0])
        np.testing.assert_array_equal(a[0][0], sample[name] if dict_obs else sample)
    np.testing.assert_array_equal(rows.mask[0], [[True, False, True], [False, True, True]])
    assert rows.mask_rows[0] is not None and np.shares_memory(rows.mask_rows[0], rows.mask[0])
    np.testing.assert_array_equal(rows.mask_rows[0], rows.mask[0])
    if not dict_obs:
        assert rows.obs is rows.leaves[""] and np.shares_memory(rows.obs_cells[1][0], rows.obs[1])
        rows.obs_cells[1][0][...] = 5.0  # where LocalVectorEnv writes the next observation
        assert rows.obs[1, 0, 0] == 5.0
    rows.put_obs(1, 0, sample)  # the next step's observation goes to the new row 1
    rows.swap_step()  # back to the rows as made
    assert all(a.strides[0] > 0 for a in rows.leaves.values()) and rows.mask.strides[0] > 0
    with pytest.raises(ValueError):
        StepRows(2, 1, box, gym.spaces.Discrete(2)).swap_step()


def test_episode_encoder_writes_what_encode_episode_writes() -> None:
    info = {"boss_hp": 0.25, "phase": 2.0}
    ours = decode_episode(EpisodeEncoder("host-1-abc").encode(7, 12.5, 13, info, 4))
    theirs = decode_episode(
        encode_episode(EpisodeRecord("host-1-abc", 7, 12.5, 13, info, ours.time, 4))
    )
    assert ours == theirs


class _RandomPPOPolicy:
    """Random CartPole actions; V(s) = s[0]."""

    def value(self, obs: np.ndarray) -> np.ndarray:
        return obs[:, 0].astype(np.float32)

    def act(self, obs, rng):
        actions = rng.integers(0, 2, len(obs))
        return actions, np.zeros(len(obs), np.float32), self.value(obs)


def test_ppo_actor_through_the_vector_env_rows() -> None:
    """The PPO actor fed by the env's rows: end flags only where episodes ended (none left
    over from an earlier step), each row's observation the one acted on, next_value of a
    truncation from the true final observation."""
    from pathlib import Path

    from soulsai.client.ppo_actor import PPOActor
    from soulsai.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "config", ["algo=ppo"])
    cfg.env.num_envs, cfg.ppo.fragment_length = 2, 50
    cfg.env.kwargs = {"max_episode_steps": 15}  # truncations as well as terminations
    venv = LocalVectorEnv(cfg.env)
    spaces = (venv.single_observation_space, venv.single_action_space)
    actor = PPOActor(cfg, *spaces, 0, np.random.default_rng(0))
    actor.set_model(1, _RandomPPOPolicy(), {})
    rows = actor.rows
    venv.reset(rows, seed=0)
    ends: list[tuple[int, int, bool, bool, float]] = []  # copy, step, term, trunc, final s[0]
    acted: list[np.ndarray] = []
    out = []
    for t in range(100):
        acted.append(rows.obs[0].copy())
        actor.act(rows.obs[0], t)
        for i, _, _, _ in venv.step(actor._step[0], rows):
            ends.append(
                (
                    i,
                    t,
                    bool(rows.terminated[0, i]),
                    bool(rows.truncated[0, i]),
                    rows.final_obs[0, i, 0],
                )
            )
        out += actor.observe()
    assert len(out) == 2 and len(ends) > 5
    for k, (_, f) in enumerate(out):
        term = f["terminated"].reshape(2, 50)
        trunc = f["truncated"].reshape(2, 50)
        obs = f["obs"].reshape(2, 50, -1)
        next_value = f["next_value"].reshape(2, 50)
        expected_term = np.zeros((2, 50), bool)
        expected_trunc = np.zeros((2, 50), bool)
        for i, step, te, tr, final0 in ends:
            if 50 * k <= step < 50 * (k + 1):
                expected_term[i, step - 50 * k], expected_trunc[i, step - 50 * k] = te, tr
                if tr and not te:
                    assert next_value[i, step - 50 * k] == np.float32(final0)
        np.testing.assert_array_equal(term, expected_term)
        np.testing.assert_array_equal(trunc, expected_trunc)
        np.testing.assert_array_equal(obs, np.stack(acted[50 * k : 50 * (k + 1)], axis=1))
