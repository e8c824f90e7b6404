"""What algo r2d2's clients send: one message row per chunk of up to `r2d2.chunk` env steps of
one env copy's episode (docs/protocol.md "Chunks"). Each step travels once.

Fields of a chunk (L = r2d2.chunk; steps from `length` on are zero padding):
- `obs` / `obs.<leaf>` (L, *leaf): the observation each step acted on;
- `action`, `reward`, `terminated` (L,): what followed (terminated only at the last step);
- `next_obs` / `next_obs.<leaf>`: the observation after the last step (the true final one
  when the episode ended there; the successor's first one otherwise);
- `mask` (L, bytes), `next_mask` (bytes), with env.action_mask: the valid-action bits of each
  step's observation and of `next_obs`;
- `state`: the recurrent state the client had when the chunk started (zero at an episode's
  start); `burn_state`: the state it had `r2d2.burn_in` steps before (the start of the burn-in
  the node unrolls from the predecessor's last steps; zero in an episode's first chunk);
- `stream`: random per env copy and episode; `index`: the chunk's number within the episode;
- `length` (1..L): valid steps; `ended`: the episode ended at the last valid step (terminated,
  or truncated when `terminated` is 0 there). Only the episode's last chunk may be short.

The decoder checks dtypes, shapes and bounds; the node checks the structure (`check_chunks`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from soulsai.config import Config
from soulsai.errors import ConfigError
from soulsai.model.cores import STATE_BOUND, state_size
from soulsai.model.masks import mask_field
from soulsai.model.obs import ObsLayout, env_layout
from soulsai.model.obs_wire import leaf_fields
from soulsai.transport.envelope import ExperienceSpec, FieldSpec
from soulsai.transport.spaces import _magnitude

MAX_INDEX = 1 << 40  # chunk numbers within an episode (far beyond any episode's length)
MAX_STREAM = 1 << 62


def _timed(spec: FieldSpec, steps: int) -> FieldSpec:
    """`spec` with a leading time axis of `steps`."""
    return FieldSpec(spec.dtype, (steps, *spec.shape), low=spec.low, high=spec.high)


def r2d2_experience_spec(
    cfg: Config, obs_space: gym.Space, act_space: gym.Space, layout: ObsLayout | None = None
) -> ExperienceSpec:
    """The chunk rows' spec for `cfg` (see the module docstring); a ConfigError for an action
    space other than Discrete or an image observation."""
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(f"env: algo r2d2 needs a Discrete action space, got {act_space}")
    layout = layout or env_layout(cfg.env, obs_space)
    if layout.images:
        raise ConfigError("env: algo r2d2 does not take image observations")
    t, n = cfg.training, int(act_space.n)
    steps = cfg.r2d2.chunk
    obs = leaf_fields(layout, "obs", t.max_abs_obs)
    flag = FieldSpec(np.uint8, (), low=0, high=1)
    size = state_size(cfg.r2d2.core, cfg.r2d2.core_size)
    fields: dict[str, FieldSpec] = {
        **{name: _timed(spec, steps) for name, spec in obs.items()},
        **leaf_fields(layout, "next_obs", t.max_abs_obs),
        "action": FieldSpec(np.int64, (steps,), low=0, high=n - 1),
        "reward": _magnitude(t.max_abs_reward, np.float32, (steps,)),
        "terminated": FieldSpec(np.uint8, (steps,), low=0, high=1),
        "state": _magnitude(STATE_BOUND, np.float32, (size,)),
        "burn_state": _magnitude(STATE_BOUND, np.float32, (size,)),
        "stream": FieldSpec(np.int64, (), low=0, high=MAX_STREAM),
        "index": FieldSpec(np.int64, (), low=0, high=MAX_INDEX),
        "length": FieldSpec(np.int16, (), low=1, high=steps),
        "ended": flag,
    }
    if cfg.env.action_mask is not None:
        fields["mask"] = _timed(mask_field(n), steps)
        fields["next_mask"] = mask_field(n)
    if len(fields) > 64:
        raise ConfigError(
            f"env.obs_keys: the observation has {len(layout.leaves)} leaves, too many for a "
            "chunk message (64 fields at most): select fewer keys"
        )
    return ExperienceSpec(fields=fields, max_batch=t.max_batch, max_bytes=t.max_message_bytes)
