"""Observation layout: a Gymnasium observation space as a flat list of named leaves.

Dict and Tuple spaces (nested) are walked into leaves named by their dotted path (`player_hp`,
`a.b`, `pair.0`); each leaf is a Box (continuous features), a binary leaf (MultiBinary or a bool
Box) or a categorical leaf (Discrete, MultiDiscrete: integers `start .. start + n - 1` that the
encoders one-hot or embed) or an image leaf (a uint8 Box of frames, at least 8x8: HxW, HxWxC,
CxHxW or stacked SxHxWxC / SxCxHxW) that a CNN encodes (`soulsai.model.cnn_spec`; config
`env.image_encoder`, `flatten` keeps frames as Box features). Each leaf travels in its own
compact wire dtype: a Box keeps its dtype, integers take the smallest integer dtype holding
their range. A bare Box is one leaf named "" whose features are the flattened observation,
exactly as before layouts existed; a bare Box of frames is one image leaf named "".

Numpy and gymnasium only: the client imports this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from soulsai.config.schema import EnvConfig
from soulsai.errors import ConfigError, SoulsaiError
from soulsai.model.cnn_spec import (
    ImageOptions,
    channels_last,
    check_frame,
    chw,
    cnn_features,
    is_frame,
)

Kind = Literal["box", "binary", "categorical", "image"]
SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict/Tuple of these"
# Smallest first: a categorical leaf travels in the first one that holds its whole range.
_INT_DTYPES = [np.dtype(t) for t in ("i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8")]


@dataclass(frozen=True)
class Leaf:
    """One array of the observation: where it sits, what it holds, how it travels."""

    name: str  # dotted path; "" for a bare (non-Dict/Tuple) space
    path: tuple[str | int, ...]  # Dict keys / Tuple indices from the observation's root
    kind: Kind
    shape: tuple[int, ...]  # per-observation shape on the wire
    dtype: np.dtype  # wire dtype
    space: gym.Space
    start: int = 0  # categorical: the lowest value ...
    n: int = 0  # ... and how many values (every element shares them)
    element: int | None = None  # one element (flat index) of a MultiDiscrete split per element
    channels_last: bool = True  # image: HxWxC (SxHxWxC) rather than CxHxW (SxCxHxW)

    @property
    def size(self) -> int:
        """Elements per observation."""
        return math.prod(self.shape)

    @property
    def chw(self) -> tuple[int, int, int]:
        """Image: the (channels, height, width) its CNN sees."""
        return chw(self.shape, self.channels_last)


@dataclass(frozen=True)
class ObsLayout:
    """The leaves in a fixed order: Box leaves first, then binary, categorical and image, so
    the continuous features (the ones the running normalizer sees) are a prefix of the
    encoding. Images are scaled inside their CNN, never by the normalizer."""

    leaves: tuple[Leaf, ...]
    plain: bool  # a bare Box: the encoding is the flattened observation, nothing else
    image: ImageOptions = ImageOptions()  # how image leaves are encoded

    @property
    def images(self) -> list[Leaf]:
        """The image leaves, in layout order (their CNNs are `encoder.cnns.<i>`)."""
        return [leaf for leaf in self.leaves if leaf.kind == "image"]

    @property
    def names(self) -> list[str]:
        return [leaf.name for leaf in self.leaves]

    @property
    def n_continuous(self) -> int:
        """Features the observation normalizer applies to (the Box leaves, flattened)."""
        return sum(leaf.size for leaf in self.leaves if leaf.kind == "box")

    @property
    def norm_shape(self) -> tuple[int, ...]:
        """Shape of the normalizer's statistics: a bare Box's own shape (as before layouts),
        otherwise the continuous features as one vector."""
        if self.plain:
            return tuple(self.leaves[0].shape)
        return (self.n_continuous,)

    def n_features(self, discrete_obs: str = "onehot", embedding_dim: int = 8) -> int:
        """Width of the encoding: Box and binary leaves flattened, categorical leaves one-hot
        (`n` per element) or embedded (`embedding_dim` per element), images through their CNN."""
        total = 0
        for leaf in self.leaves:
            if leaf.kind == "image":
                total += cnn_features(self.image, *leaf.chw)
            elif leaf.kind != "categorical":
                total += leaf.size
            else:
                total += leaf.size * (leaf.n if discrete_obs == "onehot" else embedding_dim)
        return total


def int_dtype(low: int, high: int) -> np.dtype:
    """The smallest integer dtype holding every value of `low .. high`."""
    for dt in _INT_DTYPES:
        info = np.iinfo(dt)
        if info.min <= low and high <= info.max:
            return dt
    raise ConfigError(f"env: integer observation range {low}..{high} does not fit in int64")


def _unsupported(name: str, space: Any) -> ConfigError:
    where = f"observation key '{name}'" if name else "observation space"
    return ConfigError(f"env: {where} {type(space).__name__} is not supported ({SUPPORTED})")


def _leaves(space: gym.Space, path: tuple[str | int, ...]) -> list[Leaf]:
    """Every leaf of `space` (nested Dict/Tuple walked depth first, in their own order)."""
    name = ".".join(str(p) for p in path)
    if isinstance(space, gym.spaces.Dict):
        return [leaf for key, sub in space.spaces.items() for leaf in _leaves(sub, (*path, key))]
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for i, sub in enumerate(space.spaces) for leaf in _leaves(sub, (*path, i))]
    if isinstance(space, gym.spaces.Box):
        shape = tuple(space.shape)
        if space.dtype == np.bool_:  # travels as int8 0/1, like a MultiBinary
            return [Leaf(name, path, "binary", shape, np.dtype("i1"), space)]
        return [Leaf(name, path, "box", shape, np.dtype(space.dtype), space)]
    if isinstance(space, gym.spaces.MultiBinary):
        return [Leaf(name, path, "binary", tuple(space.shape), np.dtype("i1"), space)]
    if isinstance(space, gym.spaces.Discrete):
        start, n = int(space.start), int(space.n)
        return [
            Leaf(name, path, "categorical", (), int_dtype(start, start + n - 1), space, start, n)
        ]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return _multi_discrete(space, name, path)
    raise _unsupported(name, space)


def _multi_discrete(space: gym.spaces.MultiDiscrete, name: str, path: tuple) -> list[Leaf]:
    """One leaf when every element shares its range (the wire checks one range per field),
    else one leaf per element, named `<name>.<flat index>`."""
    nvec = np.asarray(space.nvec, np.int64)
    starts = np.broadcast_to(np.asarray(space.start, np.int64), nvec.shape)
    lo, hi = starts, starts + nvec - 1
    if nvec.size and (nvec == nvec.flat[0]).all() and (starts == starts.flat[0]).all():
        s, n = int(starts.flat[0]), int(nvec.flat[0])
        dt = int_dtype(s, s + n - 1)
        return [Leaf(name, path, "categorical", tuple(nvec.shape), dt, space, s, n)]
    dt = int_dtype(int(lo.min()), int(hi.max())) if nvec.size else np.dtype("i1")
    out = []
    for i, (s, n) in enumerate(zip(starts.ravel().tolist(), nvec.ravel().tolist(), strict=True)):
        label = f"{name}.{i}" if name else str(i)
        out.append(Leaf(label, path, "categorical", (), dt, space, s, n, element=i))
    return out


def _constant(leaf: Leaf) -> bool:
    """Constant by its space: one value per element (Discrete(1)), a Box with low == high,
    or no elements at all."""
    if leaf.size == 0:
        return True
    if leaf.kind == "categorical":
        return leaf.n == 1
    if isinstance(leaf.space, gym.spaces.Box):
        low = np.asarray(leaf.space.low, np.float64)
        high = np.asarray(leaf.space.high, np.float64)
        return bool(np.isfinite(low).all() and (low == high).all())
    return False


def _matches(name: str, key: str) -> bool:
    """`key` names this leaf or a Dict/Tuple above it."""
    return name == key or name.startswith(key + ".")


def parse_obs_keys(obs_keys: Sequence[str] | None) -> tuple[list[str] | None, list[str]]:
    """Split `env.obs_keys` into (keep, drop): plain names are kept (None: keep all when only
    `-name` entries are given), names with a leading `-` are dropped."""
    if obs_keys is None:
        return None, []
    keep = [k for k in obs_keys if not k.startswith("-")]
    drop = [k[1:] for k in obs_keys if k.startswith("-")]
    return (keep or None), drop


def build_layout(
    space: gym.Space,
    keep: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    drop_constant: bool = True,
    where: str = "env.obs_keys",
    image: ImageOptions | None = None,
) -> ObsLayout:
    """The layout of `space`: leaves under a `keep` name (None: all), minus those under a
    `drop` name, minus leaves constant by their space (`drop_constant`; a bare space is never
    dropped). A name matches a leaf or any Dict/Tuple above it (`player` selects `player.hp`).
    Unsupported spaces and names that match nothing are a ConfigError naming `where`.
    uint8 frames become image leaves unless `image.encoder` is `flatten`."""
    image = image or ImageOptions()
    leaves = [_as_image(leaf, image) for leaf in _leaves(space, ())]
    plain = (
        isinstance(space, gym.spaces.Box) and space.dtype != np.bool_ and leaves[0].kind == "box"
    )
    names = [leaf.name for leaf in leaves]
    if len(set(names)) != len(names):
        raise ConfigError(f"env: observation keys {names} are not unique as dotted paths")
    if (keep is not None or drop) and leaves[0].path == ():
        raise ConfigError(f"{where}: the observation space {type(space).__name__} has no keys")
    for key in [*(keep or []), *drop]:
        if not any(_matches(n, key) for n in names):
            raise ConfigError(f"{where}: '{key}' names no observation key (have: {names})")
    chosen = [
        leaf
        for leaf in leaves
        if (keep is None or any(_matches(leaf.name, k) for k in keep))
        and not any(_matches(leaf.name, k) for k in drop)
        and not (drop_constant and leaf.path and _constant(leaf))
    ]
    if not chosen:
        raise ConfigError(f"{where}: no observation key is left to train on (have: {names})")
    order = {"box": 0, "binary": 1, "categorical": 2, "image": 3}
    chosen.sort(key=lambda leaf: order[leaf.kind])  # stable: space order within a kind
    return ObsLayout(tuple(chosen), plain, image)


def _as_image(leaf: Leaf, image: ImageOptions) -> Leaf:
    """A uint8 Box of frames as an image leaf (its channel order found, its size checked)."""
    if leaf.kind != "box" or image.encoder == "flatten" or not is_frame(leaf.shape, leaf.dtype):
        return leaf
    last = channels_last(leaf.shape, image.channels, leaf.name)
    out = replace(leaf, kind="image", channels_last=last)
    check_frame(image, *out.chw, leaf.name)
    return out


def _value_at(obs: Any, leaf: Leaf) -> Any:
    for key in leaf.path:
        obs = obs[key]
    return obs


def obs_leaves(layout: ObsLayout, obs: Any, batched: bool = True) -> dict[str, np.ndarray]:
    """The layout's leaves of an env observation (a vector env's batch, or one observation
    with `batched=False`), each as (B, *shape) in its wire dtype.

    Integer leaves are range-checked before the cast (a cast would wrap an out-of-range value
    into a valid-looking one): an env that breaks its own space is a SoulsaiError naming the
    leaf, not silently wrong data.
    """
    out: dict[str, np.ndarray] = {}
    for leaf in layout.leaves:
        a = np.asarray(_value_at(obs, leaf))
        if not batched:
            a = a[None]
        if leaf.element is not None:
            a = a.reshape(len(a), -1)[:, leaf.element]
        a = a.reshape(len(a), *leaf.shape)
        if leaf.kind == "categorical":
            lo, hi = leaf.start, leaf.start + leaf.n - 1
        elif leaf.kind == "binary":
            lo, hi = 0, 1
        else:
            out[leaf.name] = a.astype(leaf.dtype, copy=False)
            continue
        if a.size and (a.min() < lo or a.max() > hi):
            raise SoulsaiError(
                f"env: observation key '{leaf.name}' holds a value outside {lo}..{hi} "
                f"({leaf.space}): the env breaks its own observation space"
            )
        out[leaf.name] = a.astype(leaf.dtype, copy=False)
    return out


def env_layout(env: EnvConfig, space: gym.Space) -> ObsLayout:
    """The layout the config asks for: `env.obs_keys` (keep / -drop) and `env.drop_constant_obs`
    applied to the env's observation space. Clients and the training node build the same."""
    keep, drop = parse_obs_keys(env.obs_keys)
    return build_layout(space, keep, drop, env.drop_constant_obs, image=image_options(env))


def image_options(env: EnvConfig) -> ImageOptions:
    """The image encoder settings of `env` (env.image_encoder, image_channels, ...)."""
    return ImageOptions(
        env.image_encoder, env.image_channels, env.image_features, tuple(env.impala_channels)
    )


def continuous_features(layout: ObsLayout, leaves: Mapping[str, Any] | Any) -> np.ndarray:
    """What the running normalizer sees of a batch: a bare Box's observations as they are,
    otherwise the Box leaves flattened side by side (B, layout.n_continuous), as float64."""
    if not isinstance(leaves, Mapping):
        if len(layout.leaves) != 1:
            raise ValueError(f"observation layout has leaves {layout.names}: pass a mapping")
        leaves = {layout.leaves[0].name: leaves}
    if layout.plain:
        return np.asarray(leaves[layout.leaves[0].name], np.float64)
    boxes = [leaf for leaf in layout.leaves if leaf.kind == "box"]
    batch = len(np.asarray(leaves[layout.leaves[0].name]))
    if not boxes:
        return np.zeros((batch, 0), np.float64)
    return np.concatenate(
        [np.asarray(leaves[leaf.name], np.float64).reshape(batch, leaf.size) for leaf in boxes],
        axis=1,
    )
