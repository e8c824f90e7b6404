"""`soulsai evaluate`: run a saved agent's deterministic policy locally, without Redis.

Loads a checkpoint of a run folder (best_model/, checkpoint/ or manual_save/), builds the policy
the algorithm registered (`soulsai.training.policies`), plays N episodes and reports the mean
and standard deviation of the return. With `video_dir`, each episode is also written as a GIF
(Pillow; rendered with `render_mode="rgb_array"`). For Atari (`env.atari`) that is the raw RGB
screen (210x160), not the 84x84 grayscale frames the network sees, one screen per agent step,
played in real time (60 Hz / frame skip).

A run folder is data: the keys that name code (env.imports, env.wrappers, a `module:Env-v0`
id) come from this machine's config, and what the folder asked for is shown, never imported
(soulsai/config/trust.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from soulsai import run as runfolder
from soulsai.config import Config
from soulsai.config.loader import parse_set
from soulsai.config.trust import check_env_id, local_source, take_local_code
from soulsai.envs import make_single_env
from soulsai.errors import ConfigError
from soulsai.model.masks import METHOD as MASK_METHOD
from soulsai.model.masks import mask_from_env, mask_from_info
from soulsai.model.obs import ObsLayout, env_layout, obs_leaves
from soulsai.training.checkpoint import MANIFEST, load_checkpoint, read_config
from soulsai.training.policies import build_policy
from soulsai.training.resume import LATEST, latest_run

MODELS = {
    "best": runfolder.BEST_DIR,
    "latest": runfolder.CHECKPOINT_DIR,
    "manual": runfolder.MANUAL_DIR,
}
GIF_MAX_FRAMES = 1500  # longer episodes keep every k-th frame, so memory stays bounded
ATARI_HZ = 60.0  # the Atari 2600's frame rate: a GIF of agent steps plays at ATARI_HZ / frame_skip


@dataclass
class Evaluation:
    folder: Path
    summary: dict[str, Any]
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def locate(run: str | Path, model: str | None, save_dir: str | Path) -> tuple[Path, str | None]:
    """(checkpoint folder, a note when a default was substituted) for RUN_DIR and --model."""
    path = latest_run(save_dir) if str(run) == LATEST else Path(run)
    if (path / MANIFEST).is_file():
        return path, None  # a checkpoint folder itself
    if not path.is_dir():
        raise ConfigError(f"evaluate: {path} is not a run folder")
    have = [name for name, sub in MODELS.items() if (path / sub / MANIFEST).is_file()]
    if model is None:
        if "best" in have:
            return path / MODELS["best"], None
        if "latest" in have:
            return path / MODELS["latest"], "no best_model/ yet: evaluating checkpoint/"
        model = "best"
    if model not in have:
        found = f"it has --model {', '.join(have)}" if have else "it has no checkpoints"
        raise ConfigError(f"evaluate: {path} has no {MODELS[model]}/ ({found})")
    return path / MODELS[model], None


def checkpoint_config(
    folder: Path,
    sets: list[str] | tuple[str, ...] = (),
    local: Config | None = None,
    notes: list[str] | None = None,
) -> Config:
    """The config a checkpoint was trained with (beside it, else its run's), plus `sets`,
    with the code-bearing keys of `local` (this machine's config; none without it). What the
    saved config asked for in code goes to `notes`, to be shown; it is never imported."""
    data = read_config(folder)
    if data is None:
        try:
            data = json.loads((folder.parent / runfolder.CONFIG_FILE).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"evaluate: no config.json in {folder} or its run folder") from None
    if not isinstance(data, dict):
        raise ConfigError(f"evaluate: the config.json of {folder} is not a mapping")
    asked = take_local_code(data, local)
    for item in sets:
        keys, value = parse_set(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config error in {folder}: key '{key}': {err['msg']}") from None
    if local is not None:
        cfg.env._sources = dict(local.env.sources)
    check_env_id(
        cfg.env.id,
        local.env.id if local is not None else None,
        f"the config of {folder}",
        "pass --set env.id=<the same id> to allow it",
    )
    if notes is not None and asked:
        mine = local_source(local, "wrappers") if local is not None else "the local config"
        notes.append(
            f"{folder} was trained with {', '.join(asked)}: not imported (code-bearing keys "
            f"come from this machine's config: {mine})"
        )
    return cfg


class GifWriter:
    """Collects one episode's frames (mapped onto the first frame's palette) and writes a GIF.

    An episode longer than GIF_MAX_FRAMES keeps every 2nd (4th, ...) frame, played slower, so
    memory stays bounded.
    """

    def __init__(self, fps: float) -> None:
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._reset()

    def _reset(self) -> None:
        self.frames: list[Any] = []
        self.palette: Any = None
        self.seen = 0
        self.stride = 1

    def add(self, frame: Any) -> None:
        from PIL import Image

        if frame is None:
            return
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        if len(self.frames) >= GIF_MAX_FRAMES:
            self.frames = self.frames[::2]
            self.stride *= 2
            if (self.seen - 1) % self.stride:
                return
        image = Image.fromarray(np.ascontiguousarray(np.asarray(frame)[..., :3], dtype=np.uint8))
        if self.palette is None:
            self.palette = image.quantize(colors=255)
        self.frames.append(image.quantize(palette=self.palette, dither=Image.Dither.NONE))

    def write(self, path: Path) -> Path | None:
        """Write the collected frames to `path` and start over; None when there were none."""
        frames, stride = self.frames, self.stride
        self._reset()
        if not frames:
            return None
        duration = max(20, round(100 * stride / self.fps) * 10)  # GIF delays count in 10 ms
        path.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration, loop=0)
        return path


def _policy_input(layout: ObsLayout, obs: Any) -> Any:
    """One observation as the policy's batch of one: a bare Box's array, else the leaves."""
    return np.asarray(obs)[None] if layout.plain else obs_leaves(layout, obs, batched=False)


def _mask(cfg: Config, env: Any, info: Any) -> np.ndarray | None:
    """The valid actions (1, n) that env.action_mask names, or None when masks are off."""
    setting = cfg.env.action_mask
    if setting is None:
        return None
    n = int(env.action_space.n)
    if setting == MASK_METHOD:
        return mask_from_env(env, n, 1)
    return mask_from_info(info or {}, setting, n, 1)


def evaluate(
    folder: Path,
    cfg: Config,
    episodes: int,
    seed: int,
    render: str | None = None,
    video_dir: Path | None = None,
    on_episode: Callable[[int, float, int], None] | None = None,
) -> Evaluation:
    """Play `episodes` episodes with the checkpoint's deterministic policy."""
    state, summary = load_checkpoint(folder)
    kwargs = dict(cfg.env.kwargs)
    if render or video_dir is not None:
        kwargs["render_mode"] = render or "rgb_array"
    if kwargs.get("render_mode") == "rgb_array":
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # off-screen: pygame needs no display
    env_cfg = cfg.env.model_copy(update={"kwargs": kwargs, "step_delay": 0.0})
    env = make_single_env(env_cfg, training=False)  # whole games, raw scores (env.atari)
    result = Evaluation(folder, summary)
    try:
        policy = build_policy(cfg, state, env.observation_space, env.action_space)
        layout = env_layout(cfg.env, env.observation_space)
        fps = env.metadata.get("render_fps", 30)
        if cfg.env.atari is not None:  # one screen per agent step of frame_skip frames
            fps = ATARI_HZ / cfg.env.atari.frame_skip
        gif = GifWriter(fps) if video_dir is not None else None
        new_episode = getattr(policy, "reset", None)  # a recurrent policy forgets its state
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            if new_episode is not None:
                new_episode()
            if gif is not None:
                gif.add(env.render())
            ret, length, done = 0.0, 0, False
            while not done:
                action = policy(_policy_input(layout, obs), _mask(cfg, env, info))[0]
                obs, reward, terminated, truncated, info = env.step(action)
                ret += float(reward)
                length += 1
                done = bool(terminated or truncated)
                if gif is not None:
                    gif.add(env.render())
            result.returns.append(ret)
            result.lengths.append(length)
            if gif is not None and video_dir is not None:
                written = gif.write(Path(video_dir) / f"episode-{i + 1:03d}.gif")
                if written is not None:
                    result.videos.append(written)
            if on_episode is not None:
                on_episode(i, ret, length)
    finally:
        env.close()
    return result
