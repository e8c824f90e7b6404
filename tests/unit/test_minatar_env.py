"""The MinAtar adapter (soulsai/envs/minatar.py): ids registered by soulsai.envs without
importing minatar, uint8 0/255 frames, all 6 actions, the env's seed drives the game, rendering,
and a clear error naming the extra when minatar is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import soulsai.envs  # noqa: F401  # registers soulsai/MinAtar-*
from soulsai.config import load_config
from soulsai.envs import make_single_env
from soulsai.envs.minatar import GAMES
from soulsai.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = "soulsai/MinAtar-Breakout-v0"


def test_every_game_is_registered_without_importing_minatar() -> None:
    for name in GAMES:
        assert f"soulsai/MinAtar-{name}-v0" in gym.registry
    spec = gym.spec("soulsai/MinAtar-Breakout-v0")
    assert spec.max_episode_steps == 10_000


def test_breakout_frames_actions_seeding_and_render() -> None:
    pytest.importorskip("minatar")
    env = gym.make("soulsai/MinAtar-Breakout-v0", render_mode="rgb_array")
    assert env.observation_space == gym.spaces.Box(0, 255, (10, 10, 4), np.uint8)
    assert env.action_space == gym.spaces.Discrete(6)

    def play(seed: int) -> tuple[list[np.ndarray], float, int]:
        obs, _ = env.reset(seed=seed)
        frames, total, episodes = [obs], 0.0, 0
        for t in range(300):
            obs, reward, terminated, truncated, _ = env.step(t % 6)
            frames.append(obs)
            total += reward
            if terminated or truncated:
                episodes += 1
                frames.append(env.reset()[0])
        return frames, total, episodes

    a, b = play(7), play(7)
    assert all((x == y).all() for x, y in zip(a[0], b[0], strict=True)) and a[1:] == b[1:]
    assert a[2] > 0  # Breakout episodes end
    values = np.unique(np.concatenate([f.ravel() for f in a[0]]))
    assert set(values.tolist()) == {0, 255}
    img = env.render()
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8 and img.any()
    assert gym.make("soulsai/MinAtar-Breakout-v0", minimal_actions=True).action_space.n == 3


def test_making_one_loads_only_the_game_not_minatars_gui_packages() -> None:
    """minatar's package `__init__` imports matplotlib and seaborn (seconds per process)."""
    pytest.importorskip("minatar")
    code = (
        "import sys, gymnasium as gym, soulsai.envs\n"
        "env = gym.make('soulsai/MinAtar-Seaquest-v0')\n"
        "obs, _ = env.reset(seed=1)\n"
        "assert obs.shape == (10, 10, 10), obs.shape\n"
        "print(sorted(m for m in ('minatar', 'matplotlib', 'seaborn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_without_minatar_making_one_is_a_config_error_naming_the_extra(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "minatar" or m.startswith("minatar.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "minatar", None)  # import minatar fails
    with pytest.raises(ConfigError, match=r"soulsai\[bench\]") as e:
        make_single_env(load_config(ROOT / "config", [f"env.id={ENV}"]).env)
    assert "\n" not in str(e.value)


def test_the_dqn_preset_is_minatars_network_and_schedule() -> None:
    cfg = load_config(ROOT / "config", ["algo=dqn", f"env.id={ENV}"])
    assert cfg.env.image_encoder == "minatar" and cfg.dqn.hidden == [128]
    d = cfg.dqn
    assert (d.batch_size, d.replay_ratio, d.n_step, d.target_update) == (32, 32.0, 3, "hard")
    assert (d.target_update_interval, d.learning_starts, d.eps_end) == (1000, 5000, 0.1)
    assert not d.double  # as the MinAtar paper's (and SB3's) DQN
