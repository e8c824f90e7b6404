"""The memory checks of soulsai.envs.memory: CartPole without velocities, and Recall."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import soulsai.envs.memory  # noqa: F401  (registers the envs)


def test_cartpole_novel_shows_positions_only_and_plays_cartpole() -> None:
    env = gym.make("soulsai/CartPoleNoVel-v1")
    full = gym.make("CartPole-v1")
    assert env.observation_space.shape == (2,) and env.action_space == full.action_space
    assert env.spec is not None and env.spec.max_episode_steps == 500
    assert env.spec.reward_threshold == 475.0
    obs, _ = env.reset(seed=3)
    ref, _ = full.reset(seed=3)
    np.testing.assert_array_equal(obs, ref[[0, 2]])
    done, steps = False, 0
    while not done:
        a = steps % 2
        obs, r, term, trunc, _ = env.step(a)
        ref, r_ref, term_ref, trunc_ref, _ = full.step(a)
        np.testing.assert_array_equal(obs, ref[[0, 2]])  # the same dynamics, velocities gone
        assert (r, term, trunc) == (r_ref, term_ref, trunc_ref)
        assert obs.dtype == np.float32 and env.observation_space.contains(obs)
        done, steps = term or trunc, steps + 1
    env.close()
    full.close()


@pytest.mark.parametrize(("n_cues", "delay"), [(2, 0), (3, 4)])
def test_recall_rewards_naming_the_first_observations_cue_at_the_query(n_cues, delay) -> None:
    env = gym.make("soulsai/Recall-v0", n_cues=n_cues, delay=delay)
    assert env.observation_space.shape == (n_cues + 1,)
    assert env.action_space == gym.spaces.Discrete(n_cues)
    seen = set()
    for seed in range(20):
        for guess_right in (True, False):
            obs, _ = env.reset(seed=seed)
            cue = int(np.argmax(obs[:n_cues]))
            assert obs.sum() == 1.0 and obs[-1] == 0.0
            seen.add(cue)
            for _ in range(delay):  # blank observations; actions do nothing
                obs, r, term, trunc, _ = env.step(0)
                assert not obs.any() and r == 0.0 and not (term or trunc)
            obs, r, term, trunc, _ = env.step(1)  # the step onto the query
            assert obs[-1] == 1.0 and obs[:n_cues].sum() == 0.0 and r == 0.0 and not term
            answer = cue if guess_right else (cue + 1) % n_cues
            _, r, term, trunc, info = env.step(answer)
            assert term and not trunc and r == float(guess_right) == info["correct"]
    assert seen == set(range(n_cues))  # every cue comes up
    env.close()


def test_recall_refuses_a_task_without_a_choice() -> None:
    with pytest.raises(ValueError):
        gym.make("soulsai/Recall-v0", n_cues=1)
