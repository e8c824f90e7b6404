"""The image encoders' architecture, worked out without torch: which leaves are images, their
channel order, the layers of the Nature-DQN CNN and the IMPALA ResNet-CNN, their output sizes
and state_dict shapes. The torch modules (`soulsai.model.cnn`), their numpy twins
(`soulsai.model.cnn_numpy`) and the weight-shape checks (`soulsai.model.shapes`) all read it.

- Nature (Mnih et al. 2015): conv 32x8x8/4, conv 64x4x4/2, conv 64x3x3/1, ReLU after each,
  flatten, then Linear(`features`) + ReLU. Needs frames of at least 36x36.
- IMPALA (Espeholt et al. 2018): per channel count c: conv cx3x3 (pad 1), max-pool 3x3/2
  (pad 1), two residual blocks x + conv(relu(conv(relu(x)))); then ReLU, flatten,
  Linear(`features`) + ReLU. Any frame size.
- MinAtar (Young & Tian 2019, the network of its DQN): conv 16x3x3/1, ReLU, flatten (then
  Linear(`features`) + ReLU only if `features` is set: by default the network's hidden layers
  follow, 128 units in MinAtar's DQN). For 10x10 frames, where Nature's 8x8/4 does not fit.

`features` 0 leaves the dense layer out: the flattened conv output is the encoding (then the
network's own first hidden layer is the dense one, e.g. Nature DQN with `dqn.hidden: [512]`).
Frames are uint8 and scaled to [0, 1] inside the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from soulsai.errors import ConfigError

Shapes = dict[str, tuple[int, ...]]
ImageEncoder = Literal["nature", "impala", "minatar", "flatten"]
Channels = Literal["auto", "last", "first"]

MIN_SIDE = 8  # a uint8 Box smaller than this in height or width is a vector, not a frame
NATURE_MIN_SIDE = 36  # the smallest side the Nature CNN's three valid convolutions accept
NATURE_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (out channels, kernel, stride)
MINATAR_CONV = (16, 3, 1)  # (out channels, kernel, stride), no padding
DEFAULT_FEATURES = {"nature": 512, "impala": 256, "minatar": 0}


@dataclass(frozen=True)
class ImageOptions:
    """How image leaves are encoded (config `env.image_encoder`, `env.image_channels`,
    `env.image_features`, `env.impala_channels`). `flatten`: images are plain Box features."""

    encoder: ImageEncoder = "nature"
    channels: Channels = "auto"
    features: int | None = None  # None: 512 (nature), 256 (impala), 0 (minatar); 0: no dense
    impala_channels: tuple[int, ...] = (16, 32, 32)

    @property
    def dense(self) -> int:
        """Width of the encoder's dense layer (0: none)."""
        if self.features is None:
            return DEFAULT_FEATURES.get(self.encoder, 0)
        return self.features


def is_frame(shape: tuple[int, ...], dtype: object) -> bool:
    """A uint8 array of rank 2 (grayscale), 3 (one channel axis) or 4 (stacked frames with a
    channel axis) whose two spatial sides are at least MIN_SIDE."""
    if str(dtype) != "uint8" or not 2 <= len(shape) <= 4:
        return False
    sides = {spatial(shape, True), spatial(shape, False)}  # either channel order will do
    return any(h >= MIN_SIDE and w >= MIN_SIDE for h, w in sides)


def channels_last(shape: tuple[int, ...], channels: Channels, name: str) -> bool:
    """Whether a frame's channel axis is its last (HxWxC; rank 4: SxHxWxC) or comes before
    height and width (CxHxW; rank 4: SxCxHxW). `auto`: the shorter of the two candidate axes is
    the channel axis; a tie is a ConfigError asking for env.image_channels."""
    if len(shape) == 2 or channels == "last":
        return True
    if channels == "first":
        return False
    first, last = shape[-3], shape[-1]
    if first == last:
        where = f"observation key '{name}'" if name else "the observation"
        raise ConfigError(
            f"env.image_channels: cannot tell the channel axis of {where} {shape}: set "
            "env.image_channels to last (HxWxC) or first (CxHxW)"
        )
    return last < first


def spatial(shape: tuple[int, ...], last: bool) -> tuple[int, int]:
    """(height, width) of a frame of this shape and channel order."""
    if len(shape) == 2:
        return shape[0], shape[1]
    return (shape[-3], shape[-2]) if last else (shape[-2], shape[-1])


def chw(shape: tuple[int, ...], last: bool) -> tuple[int, int, int]:
    """The (channels, height, width) the CNN sees: stacked frames' channels are merged
    (stack-major: channel s * C + c)."""
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    h, w = spatial(shape, last)
    return math.prod(shape) // (h * w), h, w


def conv_out(n: int, k: int, s: int, pad: int = 0) -> int:
    return (n + 2 * pad - k) // s + 1


def conv_output(options: ImageOptions, c: int, h: int, w: int) -> tuple[int, int, int]:
    """(channels, height, width) of the last conv stage for an input of (c, h, w)."""
    if options.encoder == "nature":
        for out, k, s in NATURE_CONVS:
            c, h, w = out, conv_out(h, k, s), conv_out(w, k, s)
        return c, h, w
    if options.encoder == "minatar":
        out, k, s = MINATAR_CONV
        return out, conv_out(h, k, s), conv_out(w, k, s)
    for out in options.impala_channels:
        c, h, w = out, conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    return c, h, w


def check_frame(options: ImageOptions, c: int, h: int, w: int, name: str) -> None:
    """A frame too small for the Nature CNN is a ConfigError naming the setting."""
    if options.encoder == "nature" and min(h, w) < NATURE_MIN_SIDE:
        where = f"observation key '{name}'" if name else "the observation"
        raise ConfigError(
            f"env.image_encoder: nature needs frames of at least {NATURE_MIN_SIDE}x"
            f"{NATURE_MIN_SIDE}; {where} is {h}x{w}: use impala or minatar"
        )


def cnn_features(options: ImageOptions, c: int, h: int, w: int) -> int:
    """Width of one frame's encoding."""
    if options.dense:
        return options.dense
    return math.prod(conv_output(options, c, h, w))


def _conv(name: str, out: int, inp: int, k: int) -> Shapes:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def cnn_weight_shapes(options: ImageOptions, c: int, h: int, w: int, prefix: str) -> Shapes:
    """The state_dict shapes of one frame's CNN (soulsai.model.cnn), names under `prefix`."""
    shapes: Shapes = {}
    if options.encoder == "nature":
        inp = c
        for i, (out, k, _) in enumerate(NATURE_CONVS):
            shapes |= _conv(f"{prefix}convs.{2 * i}", out, inp, k)
            inp = out
    elif options.encoder == "minatar":
        shapes |= _conv(f"{prefix}conv", MINATAR_CONV[0], c, MINATAR_CONV[1])
    else:
        inp = c
        for i, out in enumerate(options.impala_channels):
            shapes |= _conv(f"{prefix}stacks.{i}.conv", out, inp, 3)
            for j in range(2):
                for n in range(2):
                    shapes |= _conv(f"{prefix}stacks.{i}.res.{j}.conv{n}", out, out, 3)
            inp = out
    if options.dense:
        flat = math.prod(conv_output(options, c, h, w))
        shapes[f"{prefix}fc.weight"] = (options.dense, flat)
        shapes[f"{prefix}fc.bias"] = (options.dense,)
    return shapes
