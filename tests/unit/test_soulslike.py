"""The SoulsGym-shaped test env (soulsai/envs/soulslike.py): SoulsGym's Iudex spaces, the mask,
invalid actions as no-ops, truncation, determinism, the injected crash, and a fight that a
scripted dodge-and-punish policy wins and random play loses."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import FlattenObservation

from soulsai.envs import make_single_env
from soulsai.envs.soulslike import GameCrash, IudexLikeEnv
from soulsai.envs.soulslike_play import random_action, run_episodes, scripted_action
from soulsai.envs.soulslike_rules import LIGHT, NOOP, ROLL

ENV_ID = "soulsai/IudexLike-v0"
ROLL_ANIMATION, IDLE_ANIMATION = 21, 17  # SoulsGym's RollingMedium and Idle ids


def _iudex_spec() -> dict[str, spaces.Space]:
    """SoulsGym's IudexEnv observation space, written out by hand from its source."""
    pose_low = np.array([110.0, 540.0, -73.0, -3.1416], np.float32)
    pose_high = np.array([190.0, 640.0, -55.0, 3.1416], np.float32)
    cam_low = np.array([110.0, 540.0, -73.0, -1, -1, -1], np.float32)
    cam_high = np.array([190.0, 640.0, -55.0, 1, 1, 1], np.float32)
    return {
        "phase": spaces.Discrete(2, start=1),
        "player_hp": spaces.Box(0, 454, (1,), np.float32),
        "player_max_hp": spaces.Discrete(1, start=454),
        "player_sp": spaces.Box(0, 95, (1,), np.float32),
        "player_max_sp": spaces.Discrete(1, start=95),
        "boss_hp": spaces.Box(0, 1037, (1,), np.float32),
        "boss_max_hp": spaces.Discrete(1, start=1037),
        "player_pose": spaces.Box(pose_low, pose_high, dtype=np.float32),
        "boss_pose": spaces.Box(pose_low, pose_high, dtype=np.float32),
        "camera_pose": spaces.Box(cam_low, cam_high, dtype=np.float32),
        "player_animation": spaces.Discrete(51, start=-1),
        "player_animation_duration": spaces.Box(0.0, 10.0, (1,), np.float32),
        "boss_animation": spaces.Discrete(33, start=-1),
        "boss_animation_duration": spaces.Box(0.0, 10.0, (1,), np.float32),
        "lock_on": spaces.Discrete(2),
    }


def _equal_obs(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_spaces_equal_the_iudex_spec_key_by_key() -> None:
    env = gym.make(ENV_ID)
    space = env.observation_space
    expected = _iudex_spec()
    assert isinstance(space, spaces.Dict)
    assert set(space.keys()) == set(expected)
    for key, want in expected.items():
        got = space[key]
        assert type(got) is type(want), key
        if isinstance(want, spaces.Discrete):
            assert (got.n, got.start, got.dtype) == (want.n, want.start, want.dtype), key
        else:
            assert got.shape == want.shape and got.dtype == want.dtype, key
            assert np.array_equal(got.low, want.low) and np.array_equal(got.high, want.high), key
    assert env.action_space == spaces.Discrete(20)
    assert gym.spec(ENV_ID).max_episode_steps == 3000
    img = gym.make("soulsai/IudexLikeImg-v0")
    assert img.observation_space == spaces.Box(0, 255, (90, 160, 3), np.uint8)
    env.close()
    img.close()


def test_observations_stay_in_the_space_over_many_random_steps() -> None:
    rng = np.random.default_rng(0)
    for kwargs in ({}, {"phase": 2, "random_player_pose": True}):
        env = gym.make(ENV_ID, **kwargs)
        obs, info = env.reset(seed=1)
        for _ in range(6000):
            assert env.observation_space.contains(obs)
            assert info["action_mask"].dtype == bool and info["action_mask"].shape == (20,)
            obs, _, terminated, truncated, info = env.step(random_action(obs, info, rng))
            if terminated or truncated:
                obs, info = env.reset()
        env.close()


def test_the_mask_follows_the_player_animation() -> None:
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    assert obs["player_animation"] == IDLE_ANIMATION and info["action_mask"].all()
    obs, _, _, _, info = env.step(ROLL)
    assert obs["player_animation"] == ROLL_ANIMATION
    assert info["action_mask"].tolist() == [False] * 19 + [True]  # only the no-op while rolling
    assert np.array_equal(env.unwrapped.action_masks(), info["action_mask"])
    masks = []
    while obs["player_animation"] == ROLL_ANIMATION:
        obs, _, _, _, info = env.step(NOOP)
        masks.append(info["action_mask"].copy())
    assert masks[-1].all() and not masks[0][:19].any()  # the roll's end frees everything
    env.close()


def test_an_invalid_action_is_a_noop_that_still_costs_a_step() -> None:
    a, b = gym.make(ENV_ID), gym.make(ENV_ID)
    for env in (a, b):
        env.reset(seed=5)
        obs, _, _, _, info = env.step(ROLL)
    assert not info["action_mask"][LIGHT]
    obs_a, r_a, *_ = a.step(LIGHT)  # invalid while rolling
    obs_b, r_b, *_ = b.step(NOOP)
    assert _equal_obs(obs_a, obs_b) and r_a == r_b
    assert obs_a["player_sp"][0] == obs["player_sp"][0]  # the attack's SP was not spent
    assert obs_a["player_animation_duration"][0] == pytest.approx(
        obs["player_animation_duration"][0] + 0.1
    )
    a.close()
    b.close()


def test_episodes_are_truncated_at_3000_steps() -> None:
    def dodge_only(obs, info, rng):  # never attacks, so the boss never dies
        action = scripted_action(obs, info, rng)
        return NOOP if action == LIGHT else action

    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=2)
    rng = np.random.default_rng(0)
    for step in range(1, 3001):
        obs, _, terminated, truncated, info = env.step(dodge_only(obs, info, rng))
        assert not terminated, f"the dodging player died at step {step}"
        assert truncated == (step == 3000)
    env.close()


def test_reset_with_a_seed_reproduces_the_episode() -> None:
    def trajectory(seed: int) -> list:
        env = gym.make(ENV_ID)
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(7)
        out = [obs]
        for _ in range(400):
            obs, reward, terminated, truncated, info = env.step(random_action(obs, info, rng))
            out.append((obs, reward))
            if terminated or truncated:
                obs, info = env.reset()
        env.close()
        return out

    first, again, other = trajectory(3), trajectory(3), trajectory(4)
    assert all(
        _equal_obs(x[0], y[0]) and x[1] == y[1] for x, y in zip(first[1:], again[1:], strict=True)
    )
    assert not all(_equal_obs(x[0], y[0]) for x, y in zip(first[1:], other[1:], strict=True))


def test_the_injected_crash_raises_and_the_env_stays_dead() -> None:
    env = gym.make(ENV_ID, crash_after=5)
    env.reset(seed=0)
    for _ in range(4):
        env.step(NOOP)
    with pytest.raises(GameCrash, match="injected crash"):
        env.step(NOOP)
    with pytest.raises(GameCrash):
        env.reset()
    env.close()
    sure = gym.make(ENV_ID, crash_prob=1.0)
    sure.reset(seed=0)
    with pytest.raises(GameCrash):
        sure.step(NOOP)
    sure.close()


def test_crash_prob_does_not_change_the_fight_and_is_reproducible() -> None:
    def crash_step(seed: int) -> tuple[int, list]:
        env = gym.make(ENV_ID, crash_prob=0.01)
        env.reset(seed=seed)
        rewards = []
        try:
            for _ in range(3000):
                rewards.append(env.step(NOOP)[1])
        except GameCrash:
            return len(rewards), rewards
        return -1, rewards

    n, rewards = crash_step(11)
    assert n >= 0 and crash_step(11)[0] == n
    plain = gym.make(ENV_ID)
    plain.reset(seed=11)
    assert [plain.step(NOOP)[1] for _ in range(n)] == rewards
    plain.close()


def test_step_delay_sleeps_after_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    slept = []
    monkeypatch.setattr("soulsai.envs.soulslike.time.sleep", slept.append)
    env = gym.make(ENV_ID, step_delay=0.05)
    env.reset(seed=0)
    env.step(NOOP)
    env.step(NOOP)
    assert slept == [0.05, 0.05]
    env.close()


def test_the_scripted_policy_wins_where_random_play_loses() -> None:
    scripted = run_episodes(scripted_action, 40, seed=100)
    random = run_episodes(random_action, 40, seed=100)
    assert scripted.win_rate >= 0.75 and random.win_rate <= 0.1
    assert scripted.mean_return > random.mean_return + 1.0
    assert 100 < scripted.mean_length < 1000  # a few hundred steps, not the 3000 cap


@pytest.mark.parametrize("obs", ["vector", "image"])
def test_gymnasium_check_env_passes(obs: str) -> None:
    env_id = "soulsai/IudexLikeImg-v0" if obs == "image" else ENV_ID
    env = gym.make(env_id, render_mode="rgb_array").unwrapped
    assert isinstance(env, IudexLikeEnv)
    check_env(env, skip_render_check=False)


def test_image_mode_frames_and_the_cheap_render() -> None:
    env = gym.make("soulsai/IudexLikeImg-v0", render_mode="rgb_array")
    frame, info = env.reset(seed=0)
    assert frame.shape == (90, 160, 3) and frame.dtype == np.uint8
    assert info["boss_hp"] == 1037 and info["action_mask"].shape == (20,)
    for _ in range(30):
        later, *_ = env.step(0)  # walk towards the boss: the picture changes
    assert not np.array_equal(frame, later)
    assert np.array_equal(env.render(), later)
    env.close()


def test_flatten_observation_turns_it_into_a_box() -> None:
    env = FlattenObservation(gym.make(ENV_ID))
    obs, _ = env.reset(seed=0)
    assert isinstance(env.observation_space, spaces.Box) and env.observation_space.contains(obs)
    obs, *_ = env.step(NOOP)
    assert env.observation_space.contains(obs)
    env.close()


def test_env_imports_and_env_id_select_it() -> None:
    from soulsai.config.schema import EnvConfig

    cfg = EnvConfig(
        id=ENV_ID,
        imports=["soulsai.envs.soulslike"],
        kwargs={"phase": 2},
        wrappers=[],
        num_envs=1,
        step_delay=0.0,
    )
    env = make_single_env(cfg)
    obs, _ = env.reset(seed=0)
    assert obs["phase"] == 2 and env.observation_space.contains(obs)
    env.close()


def test_importing_it_pulls_in_no_torch() -> None:
    code = "import sys, soulsai.envs.soulslike; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
