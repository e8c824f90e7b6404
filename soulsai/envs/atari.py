"""Atari preprocessing set from the config (`env.atari`), by soulsai's own code: presets are
data and cannot name wrappers.

`make_atari` stacks, outermost last: Gymnasium's `AtariPreprocessing` (no-op starts, frame
skipping with the last two frames max-pooled, resizing, grayscale), `AtariGame` (FIRE after a
reset where the game has it; while training, episodic life and reward clipping) and frame
stacking (`stack_frames`, a separate step so that soulsai's frame store can take it over).

Evaluation conventions (Machado et al. 2018): the v5 envs' sticky actions (0.25) stay on;
episodic life and clipped rewards are training signals only. `AtariGame` marks each learner
episode end in its info: `game_over` False when only a life was lost (the game goes on), True
at the game's end with `game_return` (the raw score) and `game_length` (agent steps) of the
whole game, which the client's episode records take (soulsai.client.envs).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from soulsai.config.schema import AtariConfig, EnvConfig
from soulsai.errors import ConfigError

GAME_OVER = "game_over"  # info key: False where a learner episode ends but the game goes on
GAME_RETURN = "game_return"  # info keys at a game's end: its raw score and agent steps
GAME_LENGTH = "game_length"
NOOP, FIRE = 0, 1


def register_ale(cfg: EnvConfig) -> None:
    """Register the ALE/... ids (ale-py ships the ROMs); missing ale-py is a ConfigError."""
    try:
        import ale_py
    except ImportError:
        raise ConfigError(
            f"config error: env.atari is set for {cfg.id!r} but ale-py is not installed "
            "(pip install 'soulsai[atari]')"
        ) from None
    gym.register_envs(ale_py)
    try:
        entry = str(gym.spec(cfg.id).entry_point)
    except gym.error.Error:
        return  # gymnasium.make names the unknown id
    if not entry.startswith("ale_py"):
        raise ConfigError(f"config error: env.atari is set but {cfg.id!r} is not an ALE env")


class AtariGame(gym.Wrapper):
    """Whole-game accounting, FIRE on reset and (training) episodic life and reward clipping.

    With `episodic_life`, losing a life ends the learner's episode (terminated) while the game
    goes on: the next `reset` continues it with a no-op step instead of restarting it (the
    classic EpisodicLifeEnv), then FIRE where the game has it. Without it (evaluation), FIRE
    follows a lost life inside `step`, so the game resumes as it does in training. With
    `clip_reward`, rewards are their sign.
    """

    def __init__(
        self, env: gym.Env, episodic_life: bool, clip_reward: bool, fire_reset: bool
    ) -> None:
        super().__init__(env)
        self.ale = env.unwrapped.ale  # type: ignore[attr-defined]
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        self.fire = fire_reset and len(meanings) > FIRE and meanings[FIRE] == "FIRE"
        self.episodic_life, self.clip_reward = episodic_life, clip_reward
        self.lives = 0
        self.game_return, self.game_length = 0.0, 0
        self.continues = False  # the last learner episode ended on a lost life, not game over

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs: Any = None
        info: dict[str, Any] = {}
        if self.continues:  # a life was lost: go on playing the same game
            self.continues = False
            obs, reward, term, trunc, info = self.env.step(NOOP)
            self._count(reward)
            if term or trunc:
                obs = None
        if obs is None:
            obs, info = self.env.reset(**kwargs)
            self.game_return, self.game_length = 0.0, 0
        if self.fire:
            obs, reward, term, trunc, info = self.env.step(FIRE)
            self._count(reward)
            if term or trunc:
                obs, info = self.env.reset(**kwargs)
                self.game_return, self.game_length = 0.0, 0
        self.lives = self.ale.lives()
        return obs, info

    def _count(self, reward: Any) -> None:
        self.game_return += float(reward)
        self.game_length += 1

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, term, trunc, info = self.env.step(action)
        self._count(reward)
        lives = self.ale.lives()
        if term or trunc:
            info = {**info, GAME_OVER: True, GAME_RETURN: self.game_return}
            info[GAME_LENGTH] = self.game_length
        elif self.episodic_life and 0 < lives < self.lives:
            term, self.continues = True, True
            info = {**info, GAME_OVER: False}
        elif self.fire and 0 < lives < self.lives:
            # The game goes on without a reset (evaluation, or no episodic life): press FIRE as
            # the reset would, or a policy that learned with FIRE-on-reset never serves the ball.
            obs, more, term, trunc, info = self.env.step(FIRE)
            self._count(more)
            reward = float(reward) + float(more)
            lives = self.ale.lives()
            if term or trunc:
                info = {**info, GAME_OVER: True, GAME_RETURN: self.game_return}
                info[GAME_LENGTH] = self.game_length
        self.lives = lives
        if self.clip_reward:
            reward = float(np.sign(float(reward)))
        return obs, reward, term, trunc, info


def stack_frames(env: gym.Env, n: int) -> gym.Env:
    """The last `n` observations stacked on a new first axis (uint8 (n, H, W))."""
    return gym.wrappers.FrameStackObservation(env, n)


def make_atari(env: gym.Env, cfg: AtariConfig, training: bool) -> gym.Env:
    """`env` (an ALE env with frameskip 1) preprocessed as `cfg` says; `training` switches on
    episodic life and reward clipping where `cfg` asks for them."""
    env = gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=cfg.screen_size,
        terminal_on_life_loss=False,  # AtariGame's: the game goes on after a lost life
        grayscale_obs=cfg.grayscale,
        scale_obs=False,  # uint8 frames: the CNN scales them
    )
    env = AtariGame(
        env,
        episodic_life=training and cfg.terminal_on_life_loss,
        clip_reward=training and cfg.clip_reward,
        fire_reset=cfg.fire_reset,
    )
    return stack_frames(env, cfg.frame_stack) if cfg.frame_stack > 1 else env
