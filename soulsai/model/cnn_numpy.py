"""Numpy twins of the image encoders (`soulsai.model.cnn`): what a client without torch acts
with, tested equal to the torch forward.

Frames stay channels-last (NHWC) throughout: a convolution gathers each output pixel's
k x k x C window into one row (im2col through a strided view, cast to float32 in the same
copy) and multiplies by the kernel as a (k*k*C, out) matrix; the output is NHWC again, so no
layer transposes. The first layer's kernel absorbs the 1/255 scaling of the uint8 frames, and
the dense layer's columns are permuted once from torch's CxHxW flattening to HxWxC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from soulsai.model.cnn_spec import MINATAR_CONV, NATURE_CONVS, ImageOptions, conv_output


def _arr(t: Any) -> np.ndarray:
    """A live torch tensor is copied (training changes it); a decoded array is used as is."""
    return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)


def to_nhwc(x: np.ndarray, shape: tuple[int, ...], last: bool) -> np.ndarray:
    """(B, *shape) frames -> (B, H, W, C) in the CNN's channel order, still uint8 (the first
    convolution scales); channels-first frames are copied once so that each pixel's channels
    sit together for the window gather (a strided view made it 6x slower)."""
    b = len(x)
    if len(shape) == 2:
        return x[..., None]
    if len(shape) == 3:
        return x if last else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if last:  # (S, H, W, C) -> (H, W, S, C)
        s, h, w, c = shape
        return x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, s * c)
    s, c, h, w = shape  # (S, C, H, W) -> (H, W, S, C)
    return x.transpose(0, 3, 4, 1, 2).reshape(b, h, w, s * c)


class Conv:
    """One convolution (stride, zero padding) over NHWC input, as im2col + matmul."""

    def __init__(
        self, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int, scale: float = 1.0
    ) -> None:
        out, inp, k, _ = weight.shape
        self.k, self.stride, self.pad, self.out = k, stride, pad, out
        # (out, C, k, k) -> rows ordered (ky, kx, c), as the window gather lays them out
        w = weight.astype(np.float32).transpose(2, 3, 1, 0).reshape(k * k * inp, out)
        self.w = np.ascontiguousarray(w * np.float32(scale))
        self.b = bias.astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.pad:
            p = self.pad
            x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        b, h, w, c = x.shape
        k, s = self.k, self.stride
        ho, wo = (h - k) // s + 1, (w - k) // s + 1
        sb, sh, sw, sc = x.strides
        win = as_strided(x, (b, ho, wo, k, k, c), (sb, sh * s, sw * s, sh, sw, sc), writeable=False)
        cols = np.empty((b, ho, wo, k, k, c), np.float32)
        np.copyto(cols, win)  # the gather and the cast in one pass
        y = cols.reshape(b * ho * wo, k * k * c) @ self.w
        y += self.b
        return y.reshape(b, ho, wo, self.out)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def max_pool(x: np.ndarray) -> np.ndarray:
    """Max-pool 3x3, stride 2, padding 1 (padding never wins), NHWC; rows then columns."""
    b, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    p = np.full((b, h + 2, w + 2, c), -np.inf, np.float32)
    p[:, 1:-1, 1:-1] = x
    rows = np.maximum(
        np.maximum(p[:, 0 : 2 * ho : 2], p[:, 1 : 2 * ho + 1 : 2]), p[:, 2 : 2 * ho + 2 : 2]
    )
    return np.maximum(
        np.maximum(rows[:, :, 0 : 2 * wo : 2], rows[:, :, 1 : 2 * wo + 1 : 2]),
        rows[:, :, 2 : 2 * wo + 2 : 2],
    )


class NumpyCNN:
    """The configured CNN of one image leaf from its state_dict entries under `prefix`:
    (B, H, W, C) uint8 frames -> float32 features (B, F), as the torch module computes."""

    def __init__(
        self,
        options: ImageOptions,
        chw: tuple[int, int, int],
        state: Mapping[str, Any],
        prefix: str,
    ) -> None:
        self.options = options
        c, h, w = chw
        scale = 1.0 / 255.0
        get = lambda name: _arr(state[prefix + name])  # noqa: E731
        self.layers: list[Callable[[np.ndarray], np.ndarray]] = []
        if options.encoder == "nature":
            for i, (_, _, s) in enumerate(NATURE_CONVS):
                conv = Conv(get(f"convs.{2 * i}.weight"), get(f"convs.{2 * i}.bias"), s, 0, scale)
                self.layers += [conv, _relu]
                scale = 1.0
        elif options.encoder == "minatar":
            stride = MINATAR_CONV[2]
            self.layers += [Conv(get("conv.weight"), get("conv.bias"), stride, 0, scale), _relu]
        else:
            for i in range(len(options.impala_channels)):
                name = f"stacks.{i}."
                conv = Conv(get(name + "conv.weight"), get(name + "conv.bias"), 1, 1, scale)
                self.layers += [conv, max_pool]
                scale = 1.0
                for j in range(2):
                    block = [
                        Conv(
                            get(f"{name}res.{j}.conv{n}.weight"),
                            get(f"{name}res.{j}.conv{n}.bias"),
                            1,
                            1,
                        )
                        for n in range(2)
                    ]
                    self.layers.append(_residual(*block))
            self.layers.append(_relu)  # the last block's sum is a new array
        co, ho, wo = conv_output(options, c, h, w)
        self.fc: tuple[np.ndarray, np.ndarray] | None = None
        if options.dense:
            fw = get("fc.weight").astype(np.float32)  # (F, C*H*W), torch's flattening
            fw = fw.reshape(-1, co, ho, wo).transpose(0, 2, 3, 1).reshape(len(fw), -1)
            self.fc = (np.ascontiguousarray(fw.T), get("fc.bias").astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, H, W, C) frames (uint8, or float32 already in [0, 255]) -> (B, F) float32."""
        for layer in self.layers:
            x = layer(x)
        b = len(x)
        if self.fc is None:  # torch's order: (C, H, W)
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(b, -1)
        y = x.reshape(b, -1) @ self.fc[0]
        y += self.fc[1]
        return _relu(y)


def _residual(conv0: Conv, conv1: Conv) -> Callable[[np.ndarray], np.ndarray]:
    def block(x: np.ndarray) -> np.ndarray:
        return x + conv1(_relu(conv0(np.maximum(x, 0.0))))

    return block
