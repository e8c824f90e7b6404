"""The experience each algorithm's clients send, derived from the config and the env's spaces:
clients encode exactly these fields; the training node validates against the same spec."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.model.cores import STATE_BOUND, state_chunk
from soulsai.model.cores import state_size as core_state_size
from soulsai.model.masks import SETTING as MASK_SETTING
from soulsai.model.masks import mask_field
from soulsai.model.obs import ObsLayout, build_layout, env_layout
from soulsai.model.obs_wire import leaf_fields
from soulsai.model.shapes import action_shape
from soulsai.transport.envelope import ExperienceSpec, FieldSpec
from soulsai.transport.spaces import MAX_ABS_OBS, MAX_ABS_REWARD, _magnitude, box_bounds

# Fields per message at most: the decoder reads maps of at most 64 entries (envelope.unpack).
MAX_FIELDS = 64


def check_field_count(fields: dict[str, FieldSpec], layout: ObsLayout, what: str) -> None:
    """A ConfigError when a message of `fields` would exceed MAX_FIELDS (too many leaves)."""
    if len(fields) > MAX_FIELDS:
        raise ConfigError(
            f"env.obs_keys: the observation has {len(layout.leaves)} leaves, so {what} would "
            f"carry {len(fields)} fields (at most {MAX_FIELDS}): select fewer keys"
        )


def dqn_experience_spec(
    obs_space: gym.Space,
    action_space: gym.Space,
    n_step: int,
    max_batch: int,
    max_bytes: int,
    max_abs_obs: float = MAX_ABS_OBS,
    max_abs_reward: float = MAX_ABS_REWARD,
    layout: ObsLayout | None = None,
    masked: bool = False,
) -> ExperienceSpec:
    """n-step transitions: obs, action, n-step reward, obs k steps later, terminated, k.

    The observations travel leaf by leaf (`obs_wire.leaf_fields` of `layout`, by default the
    whole space's): a bare Box is the one field `obs` (and `next_obs`), as before layouts; a
    Dict's leaves are `obs.<key>` and `next_obs.<key>`, each in its own dtype and range. With
    `masked` (env.action_mask set) a transition also carries `next_mask`: the packed
    valid-action bits of the observation k steps later, which the double-DQN target's argmax
    honours (the node checks them: `bad_mask`).

    Box values lie within `box_bounds(leaf space, max_abs_obs)`; the reward, a discounted sum
    of at most `n_step` rewards, within +-`n_step * max_abs_reward`.
    """
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"env: DQN needs a Discrete action space, got {action_space}")
    layout = layout or build_layout(obs_space)
    mask = {"next_mask": mask_field(int(action_space.n))} if masked else {}
    fields = {
        **leaf_fields(layout, "obs", max_abs_obs),
        "action": FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1),
        "reward": _magnitude(n_step * max_abs_reward),
        **leaf_fields(layout, "next_obs", max_abs_obs),
        "terminated": FieldSpec(np.uint8, (), low=0, high=1),
        "steps": FieldSpec(np.uint8, (), low=1, high=n_step),
        **mask,
    }
    check_field_count(fields, layout, "a DQN transition")
    return ExperienceSpec(fields=fields, max_batch=max_batch, max_bytes=max_bytes)


MAX_SEQ = 1 << 53  # a stream's row numbers stay far from int64's end (seq + steps never wraps)


def stacked_frames(cfg: Config, obs_space: gym.Space) -> gym.spaces.Box | None:
    """One frame's space where the observation is a stack of frames: `env.atari.frame_stack`
    k > 1 and the observation a uint8 Box (k, *frame), the last k frames on its first axis."""
    atari = cfg.env.atari
    k = atari.frame_stack if atari is not None else 1
    shape = tuple(getattr(obs_space, "shape", None) or ())
    if k < 2 or not isinstance(obs_space, gym.spaces.Box) or obs_space.dtype != np.uint8:
        return None
    if len(shape) < 3 or shape[0] != k:
        return None
    return gym.spaces.Box(0, 255, shape[1:], np.uint8)


def bare_frame(cfg: Config, obs_space: gym.Space) -> bool:
    """Whether the observation is one image frame: a bare uint8 Box (no Dict/Tuple) that the
    layout encodes as an image (rank 2 to 4, at least 8x8, env.image_encoder not flatten)."""
    if not isinstance(obs_space, gym.spaces.Box) or obs_space.dtype != np.uint8:
        return False
    leaves = env_layout(cfg.env, obs_space).leaves
    return len(leaves) == 1 and not leaves[0].path and leaves[0].kind == "image"


def frame_rows(cfg: Config, obs_space: gym.Space) -> tuple[gym.spaces.Box, int] | None:
    """(one frame's space, k frames per observation) where DQN sends each frame once (frame
    rows, `dqn_frame_spec`) and the node keeps it once (a frame store); None: transitions
    carry obs and next_obs.

    `env.frame_rows: auto`: stacked frames (`stacked_frames`, k > 1), and a bare frame
    (`bare_frame`, k = 1: the frame is the observation) unless dqn.prioritized or
    dqn.normalize_obs is set, which the frame store does not serve: such a run sends obs and
    next_obs as before (stacked frames with them are a ConfigError instead: 2k frames a
    transition is what the store is for). `off`: never.
    """
    if cfg.env.frame_rows == "off":
        return None
    frame = stacked_frames(cfg, obs_space)
    if frame is not None:
        return frame, int(obs_space.shape[0])  # type: ignore[index]
    if cfg.dqn.prioritized or cfg.dqn.normalize_obs or not bare_frame(cfg, obs_space):
        return None
    assert isinstance(obs_space, gym.spaces.Box)
    return obs_space, 1  # its own bounds: a frame is checked as the obs leaf was


def dqn_frame_spec(
    frame_space: gym.Space,
    action_space: gym.Space,
    n_step: int,
    max_batch: int,
    max_bytes: int,
    max_abs_reward: float = MAX_ABS_REWARD,
    masked: bool = False,
) -> ExperienceSpec:
    """n-step transitions as frame rows (soulsai.client.frames; docs/protocol.md "Frames"):
    each row's newest frame once (`frame`, a uint8 Box within `frame_space`'s bounds as
    `obs_wire.leaf_spec` checks an image leaf; may travel compressed), where it sits in
    its env copy's stream (`stream`, `seq`, `flags`: 1 = episode start, 2 = final frame) and
    the transition it starts (`action`, n-step `reward`, `terminated`, `steps`; 0 on a final
    frame's row), with `next_mask` as for `dqn_experience_spec`."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"env: DQN needs a Discrete action space, got {action_space}")
    if not (isinstance(frame_space, gym.spaces.Box) and frame_space.dtype == np.uint8):
        raise ConfigError(f"env.frame_rows: frames must be a uint8 Box, got {frame_space}")
    mask = {"next_mask": mask_field(int(action_space.n))} if masked else {}
    low, high = box_bounds(frame_space, MAX_ABS_OBS)  # none for 0..255
    fields = {
        "frame": FieldSpec(
            np.uint8, tuple(frame_space.shape), low=low, high=high, compressible=True
        ),
        "flags": FieldSpec(np.uint8, (), low=0, high=3),
        "stream": FieldSpec(np.int64, (), low=0),
        "seq": FieldSpec(np.int64, (), low=0, high=MAX_SEQ),
        "action": FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1),
        "reward": _magnitude(n_step * max_abs_reward),
        "terminated": FieldSpec(np.uint8, (), low=0, high=1),
        "steps": FieldSpec(np.uint8, (), low=0, high=n_step),
        **mask,
    }
    return ExperienceSpec(fields=fields, max_batch=max_batch, max_bytes=max_bytes)


def ppo_experience_spec(
    obs_space: gym.Space,
    action_space: gym.Space,
    max_batch: int,
    max_bytes: int,
    max_abs_obs: float = MAX_ABS_OBS,
    max_abs_reward: float = MAX_ABS_REWARD,
    gamma: float = 0.99,
    layout: ObsLayout | None = None,
    masked: bool = False,
    state_size: int = 0,
    fragment_length: int = 1,
) -> ExperienceSpec:
    """Rollout fragments: per row one env step of one env copy, rows of a copy in time order.

    The observation travels leaf by leaf (`obs_wire.leaf_fields` of `layout`, by default the
    whole space's: a bare Box is the one field `obs`, a Dict's leaves `obs.<key>`). With
    `masked` (env.action_mask set; Discrete actions only) each row carries `mask`: the packed
    valid-action bits of the observation it acted on, which the node checks (`bad_mask`).

    GAE is exact from these fields alone: `next_value` is V(s_{t+1}) under the same model (the
    value of the true final observation on truncation, of the observation after the fragment's
    last step at its end), and a trajectory continues into the next row unless `terminated`,
    `truncated` or `last` is set.

    With a recurrent core (`state_size` floats of state per env copy, ppo.recurrent) each row
    also carries `state`: its share of its fragment's initial state, spread over the fragment's
    `fragment_length` rows (`soulsai.model.cores.spread_state`; the node reassembles it and
    checks the fragments' structure, `gather_state`), each value within +-STATE_BOUND.

    Bounds: observations as for DQN; rewards +-`max_abs_reward`; values and discounted returns
    +-`max_abs_reward / (1 - gamma)` (the largest discounted return; 1 - gamma taken as at
    least 1e-3); log-probabilities and raw Gaussian actions +-`max_abs_obs`.
    """
    if isinstance(action_space, gym.spaces.Discrete):
        action = FieldSpec(np.int64, (), low=0, high=int(action_space.n) - 1)
    else:  # the raw Gaussian sample
        action = _magnitude(max_abs_obs, np.float32, action_shape(action_space))
    flag = FieldSpec(np.uint8, (), low=0, high=1)
    max_return = max_abs_reward / max(1.0 - gamma, 1e-3)
    obs = leaf_fields(layout or build_layout(obs_space), "obs", max_abs_obs)
    extra: dict[str, FieldSpec] = {}
    if masked:
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ConfigError(
                f"{MASK_SETTING}: action masks need a Discrete action space, got {action_space}"
            )
        extra["mask"] = mask_field(int(action_space.n))
    if state_size:
        k = state_chunk(state_size, fragment_length)
        extra["state"] = _magnitude(STATE_BOUND, np.float32, (k,))
    return ExperienceSpec(
        fields={
            **obs,
            **extra,
            "action": action,
            "reward": _magnitude(max_abs_reward),
            "terminated": flag,
            "truncated": flag,
            "last": flag,
            "logprob": _magnitude(max_abs_obs),
            "value": _magnitude(max_return),
            "next_value": _magnitude(max_return),
            "disc_return": _magnitude(max_return),
        },
        max_batch=max_batch,
        max_bytes=max_bytes,
    )


def _dqn_spaces(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> None:
    dqn_experience_spec(
        obs_space,
        act_space,
        cfg.dqn.n_step,
        1,
        1,
        layout=env_layout(cfg.env, obs_space),
        masked=cfg.env.action_mask is not None,
    )


def _ppo_spaces(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> None:
    ppo_experience_spec(
        obs_space,
        act_space,
        1,
        1,
        layout=env_layout(cfg.env, obs_space),
        masked=cfg.env.action_mask is not None,
        state_size=core_state_size(cfg.ppo.recurrent, cfg.ppo.recurrent_size),
        fragment_length=cfg.ppo.fragment_length,
    )


def _r2d2_spaces(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> None:
    from soulsai.model.r2d2_spec import r2d2_experience_spec

    r2d2_experience_spec(cfg, obs_space, act_space)


# cfg.algo -> a check that its clients and node can work with these spaces (a fixed table)
SPACE_CHECKS: dict[str, Callable[[Config, gym.Space, gym.Space], None]] = {
    "dqn": _dqn_spaces,
    "ppo": _ppo_spaces,
    "r2d2": _r2d2_spaces,
}


def check_spaces(cfg: Config, obs_space: gym.Space, act_space: gym.Space) -> None:
    """A ConfigError (exit 2) naming the space and what is supported when the configured
    algorithm cannot train on the env's spaces (observation layout, action space, masks, the
    number of fields a message would carry): what the CLI checks before it starts anything."""
    SPACE_CHECKS[cfg.algo](cfg, obs_space, act_space)
