"""Atari from the config's `env.atari` section, on real ALE envs (ale-py ships the ROMs): the
preprocessed spaces, episodic life in training only, and the client's episode records summing
whole games while the learner's episodes end at each lost life."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces as S

from soulsai.client.envs import LocalVectorEnv, StepRows
from soulsai.config import load_config
from soulsai.envs import make_single_env
from soulsai.envs.atari import GAME_OVER, GAME_RETURN
from soulsai.errors import ConfigError
from soulsai.model.obs import env_layout

pytest.importorskip("ale_py")
ROOT = Path(__file__).resolve().parents[2]
BREAKOUT = ["env.id=ALE/Breakout-v5", "env.atari={}"]


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def test_atari_section_gives_stacked_84x84_frames_for_the_nature_cnn(cfg_dir) -> None:
    cfg = load_config(cfg_dir, BREAKOUT)
    env = make_single_env(cfg.env)
    try:
        assert env.observation_space == S.Box(0, 255, (4, 84, 84), np.uint8)
        assert env.action_space == S.Discrete(4)
        assert env.unwrapped._frameskip == 1  # AtariPreprocessing skips frames
        assert env.spec.kwargs["repeat_action_probability"] == 0.25  # v5's sticky actions
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    finally:
        env.close()
    (leaf,) = env_layout(cfg.env, env.observation_space).leaves
    assert leaf.kind == "image" and not leaf.channels_last and leaf.chw == (4, 84, 84)
    rgb = load_config(cfg_dir, [*BREAKOUT[:1], "env.atari={grayscale: false, frame_stack: 2}"])
    env = make_single_env(rgb.env)
    assert env.observation_space.shape == (2, 84, 84, 3)
    env.close()


def play(env, steps: int, seed: int) -> list[tuple[bool, dict]]:
    """Random play: (terminated, info) at every learner episode end."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    ends = []
    for _ in range(steps):
        _, _, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            ends.append((term, info))
            if info[GAME_OVER]:
                break
            env.reset()
    return ends


def test_episodic_life_ends_learner_episodes_in_training_only(cfg_dir) -> None:
    cfg = load_config(cfg_dir, BREAKOUT)
    train, evaluate = make_single_env(cfg.env), make_single_env(cfg.env, training=False)
    ends = play(train, 3000, seed=1)
    assert [info[GAME_OVER] for _, info in ends] == [False] * 4 + [True]  # 5 lives, one game
    assert [info["lives"] for _, info in ends] == [4, 3, 2, 1, 0]
    ends = play(evaluate, 3000, seed=1)
    assert len(ends) == 1 and ends[0][1][GAME_OVER] and ends[0][1]["lives"] == 0
    train.close()
    evaluate.close()


def test_evaluation_presses_fire_after_a_lost_life_as_training_resets_do(cfg_dir) -> None:
    """A policy that never presses FIRE (training pressed it at every reset for it) still plays
    a whole game in evaluation: without FIRE after a lost life, Breakout waits for a serve until
    the v5 limit of 27k steps."""
    cfg = load_config(cfg_dir, BREAKOUT)
    env = make_single_env(cfg.env, training=False)
    env.reset(seed=3)
    for _ in range(5000):
        _, _, term, trunc, info = env.step(0)  # NOOP only
        if term or trunc:
            break
    env.close()
    assert term and not trunc and info[GAME_OVER] and info["lives"] == 0


def test_client_episode_records_sum_the_whole_game(cfg_dir) -> None:
    cfg = load_config(cfg_dir, [*BREAKOUT, "env.atari={clip_reward: false}"])
    venv = LocalVectorEnv(cfg.env)
    space, actions = venv.single_observation_space, venv.single_action_space
    rows = StepRows(4000, 1, space, actions, layout=env_layout(cfg.env, space))
    assert rows.plain and rows.obs is not None  # bare frames as they come (the frame store's)
    venv.reset(rows, seed=2)
    rng = np.random.default_rng(2)
    records, learner_ends, game_reward = [], 0, 0.0
    for t in range(4000):
        rows.t = t
        ended = venv.step(rng.integers(actions.n, size=1), rows)
        game_reward += rows.reward[t, 0]
        learner_ends += int(rows.terminated[t, 0] or rows.truncated[t, 0])
        if ended:
            records += ended
            break
    assert learner_ends == 5 and len(records) == 1  # 4 lost lives, then the game's end
    _, ret, length, info = records[0]
    assert ret == info[GAME_RETURN] and ret >= game_reward > 0  # + rewards of reset steps
    assert length >= t + 1


def test_atari_section_on_a_non_atari_env_is_a_config_error(cfg_dir) -> None:
    cfg = load_config(cfg_dir, ["env.id=CartPole-v1", "env.atari={}"])
    with pytest.raises(ConfigError, match="env.atari"):
        make_single_env(cfg.env)
