"""MinAtar games (Young & Tian 2019) as Gymnasium envs: 10x10 Atari-like frames that learn in
minutes on a CPU, the learning check for the CNN encoders.

Importing the module (soulsai.envs does) registers `soulsai/MinAtar-<Game>-v0` for Asterix,
Breakout, Freeway, Seaquest and SpaceInvaders. The `minatar` package (pip, pure numpy; in the
`bench` extra) is read only when such an env is made, and then only the game's own file.
Conventions, MinAtar's own:
- observation: the game's 10x10xC boolean channels as `Box(0, 255, (10, 10, C), uint8)`,
  0 or 255, so the CNN's scaling by 1/255 gives MinAtar's 0/1 inputs;
- actions: all 6 of MinAtar's (no-op, left, up, right, down, fire), as the MinAtar paper's
  agents use them (`minimal_actions=True` gives the game's minimal set instead);
- sticky actions with probability 0.1 (MinAtar's default), difficulty ramping on;
- episodes truncated at 10,000 steps (MinAtar has no limit; a good Breakout agent never ends).
`render()` (`render_mode="rgb_array"`) draws each channel in its own colour, 16x upscaled.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

GAMES = {  # registered name -> minatar's module
    "Asterix": "asterix",
    "Breakout": "breakout",
    "Freeway": "freeway",
    "Seaquest": "seaquest",
    "SpaceInvaders": "space_invaders",
}
MAX_EPISODE_STEPS = 10_000
STICKY = 0.1  # MinAtar's default sticky-action probability
SCALE = 16  # render: pixels per cell
PALETTE = np.array(  # render: a colour per channel (cycled), black background
    [[240, 240, 240], [230, 80, 60], [60, 160, 230], [240, 200, 40], [120, 200, 90],
     [200, 110, 220], [250, 140, 40], [90, 220, 200], [170, 170, 170], [255, 100, 160]],
    np.uint8,
)  # fmt: skip


def _game_module(name: str) -> Any:
    """minatar's module for `name` (one of GAMES' values), or an ImportError naming the extra.

    The game's file is loaded by itself (it needs only numpy): importing it as
    `minatar.environments.<name>` would first run the package's `__init__`, which imports
    matplotlib and seaborn for minatar's own GUI, seconds of start-up in every client and node
    (and a logged warning where seaborn is missing)."""
    spec = importlib.util.find_spec("minatar")  # finds the package without running it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f) / "environments" / f"{name}.py" for f in folders), None)
    if path is None or not path.is_file():
        raise ImportError(
            "soulsai/MinAtar-* envs need the minatar package: pip install 'soulsai[bench]'"
        )
    game = importlib.util.spec_from_file_location(f"{__name__}._game_{name}", path)
    assert game is not None and game.loader is not None
    module = importlib.util.module_from_spec(game)
    game.loader.exec_module(module)
    return module


class MinAtarEnv(gym.Env):
    """One MinAtar game (see the module docstring for the conventions)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        game: str,
        sticky_action_prob: float = STICKY,
        difficulty_ramping: bool = True,
        minimal_actions: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if game not in GAMES.values():
            raise ValueError(f"unknown MinAtar game {game!r}; known: {sorted(GAMES.values())}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.game = _game_module(game).Env(ramping=difficulty_ramping)
        self.sticky = float(sticky_action_prob)
        self.render_mode = render_mode
        n = 6
        self.actions = list(self.game.minimal_action_set()) if minimal_actions else list(range(n))
        self.action_space = gym.spaces.Discrete(len(self.actions))
        shape = tuple(int(s) for s in self.game.state_shape())
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.last_action = 0

    def _obs(self) -> np.ndarray:
        return self.game.state().astype(np.uint8) * np.uint8(255)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # the game's own randomness (spawns, ball start) follows the env's seed
        self.game.random = np.random.RandomState(int(self.np_random.integers(2**31)))
        self.game.reset()
        self.last_action = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = self.actions[int(action)]
        if self.np_random.random() < self.sticky:
            a = self.last_action
        self.last_action = a
        reward, terminal = self.game.act(a)
        return self._obs(), float(reward), bool(terminal), False, {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        state = self.game.state()
        colours = PALETTE[np.arange(state.shape[-1]) % len(PALETTE)]
        # the highest channel set in a cell wins (as MinAtar's own display)
        top = np.where(state.any(-1), state.shape[-1] - 1 - np.argmax(state[..., ::-1], -1), -1)
        rgb = np.where(top[..., None] >= 0, colours[np.maximum(top, 0)], 0).astype(np.uint8)
        return np.repeat(np.repeat(rgb, SCALE, axis=0), SCALE, axis=1)


def _register() -> None:
    for name, module in GAMES.items():
        env_id = f"soulsai/MinAtar-{name}-v0"
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="soulsai.envs.minatar:MinAtarEnv",
                kwargs={"game": module},
                max_episode_steps=MAX_EPISODE_STEPS,
            )


_register()
