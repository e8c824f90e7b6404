"""The image encoders as torch modules: the Nature-DQN CNN, the IMPALA ResNet-CNN and MinAtar's
one-convolution network, laid out
as `soulsai.model.cnn_spec` describes (layer names and shapes are what clients check), with
their numpy twins in `soulsai.model.cnn_numpy` (tested equal).

Input: a batch of uint8 frames in the leaf's own layout; `to_nchw` scales them to [0, 1] and
puts channels first (stacked frames' channels merged), on whatever device the frames are, so
that a learner on a GPU moves the frames as uint8 (a quarter of the bytes of float32).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from soulsai.model.cnn_spec import MINATAR_CONV, NATURE_CONVS, ImageOptions, conv_output


def to_nchw(x: torch.Tensor, shape: tuple[int, ...], last: bool) -> torch.Tensor:
    """(B, *shape) frames -> float32 (B, C, H, W) in [0, 1]."""
    b = x.shape[0]
    if len(shape) == 2:
        x = x.unsqueeze(1)
    elif len(shape) == 3 and last:
        x = x.permute(0, 3, 1, 2)
    elif len(shape) == 4:  # stacked: (S, H, W, C) or (S, C, H, W) -> S * C channels
        if last:
            x = x.permute(0, 1, 4, 2, 3)
        x = x.reshape(b, shape[0] * x.shape[2], x.shape[3], x.shape[4])
    return x.to(torch.float32) * (1.0 / 255.0)


def _init(module: nn.Module) -> nn.Module:
    """Orthogonal weights with gain sqrt(2) and zero biases (CleanRL's Atari networks)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, math.sqrt(2))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class NatureCNN(nn.Module):
    """Mnih et al. (2015): three ReLU convolutions, then an optional dense ReLU layer."""

    def __init__(self, c: int, h: int, w: int, options: ImageOptions) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        inp = c
        for out, k, s in NATURE_CONVS:
            layers += [nn.Conv2d(inp, out, k, s), nn.ReLU()]
            inp = out
        self.convs = nn.Sequential(*layers)
        flat = math.prod(conv_output(options, c, h, w))
        self.fc = nn.Linear(flat, options.dense) if options.dense else None
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(start_dim=1)
        return torch.relu(self.fc(x)) if self.fc is not None else x


class ResidualBlock(nn.Module):
    """x + conv1(relu(conv0(relu(x)))), 3x3 convolutions that keep the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaStack(nn.Module):
    """One IMPALA stage: conv 3x3, max-pool 3x3 stride 2 (pad 1), two residual blocks."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, out, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res = nn.ModuleList([ResidualBlock(out), ResidualBlock(out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x))
        for block in self.res:
            x = block(x)
        return x


class ImpalaCNN(nn.Module):
    """Espeholt et al. (2018): the stages, ReLU, flatten, an optional dense ReLU layer."""

    def __init__(self, c: int, h: int, w: int, options: ImageOptions) -> None:
        super().__init__()
        stacks = []
        inp = c
        for out in options.impala_channels:
            stacks.append(ImpalaStack(inp, out))
            inp = out
        self.stacks = nn.ModuleList(stacks)
        flat = math.prod(conv_output(options, c, h, w))
        self.fc = nn.Linear(flat, options.dense) if options.dense else None
        if self.fc is not None:  # convolutions keep torch's init, as CleanRL's IMPALA network
            _init(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stack in self.stacks:
            x = stack(x)
        x = torch.relu(x).flatten(start_dim=1)
        return torch.relu(self.fc(x)) if self.fc is not None else x


class MinAtarCNN(nn.Module):
    """Young & Tian (2019)'s DQN network before its hidden layer: conv 16x3x3 stride 1, ReLU,
    flatten (1,024 features for 10x10 frames); an optional dense ReLU layer. Torch's default
    initialization, as MinAtar's own."""

    def __init__(self, c: int, h: int, w: int, options: ImageOptions) -> None:
        super().__init__()
        out, k, s = MINATAR_CONV
        self.conv = nn.Conv2d(c, out, k, s)
        flat = math.prod(conv_output(options, c, h, w))
        self.fc = nn.Linear(flat, options.dense) if options.dense else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(start_dim=1)
        return torch.relu(self.fc(x)) if self.fc is not None else x


def make_cnn(options: ImageOptions, c: int, h: int, w: int) -> nn.Module:
    """The configured CNN for (c, h, w) inputs."""
    if options.encoder == "impala":
        return ImpalaCNN(c, h, w, options)
    if options.encoder == "minatar":
        return MinAtarCNN(c, h, w, options)
    return NatureCNN(c, h, w, options)
