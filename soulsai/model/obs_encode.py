"""The observation encoder in numpy (the client acts with it, no torch) and the weight shapes
of its torch twin, `soulsai.model.obs_torch.ObsEncoder`.

Leaves -> float32 features (B, F), in layout order: Box leaves flattened (the continuous
features the running normalizer applies to, a prefix of width `layout.n_continuous`), binary
leaves as 0.0/1.0, categorical leaves one-hot of `x - start` per element, or (`embedding`) a
learned `embedding_dim`-vector per element from one table per leaf, then image leaves through
their CNN (`soulsai.model.cnn_numpy`). The tables are the torch encoder's
`embeddings.<i>.weight` (i: the categorical leaf's index among the categorical leaves), the
CNNs its `cnns.<i>.*` (i: the image leaf's index among the image leaves), so they travel with
the model's state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from soulsai.errors import ConfigError
from soulsai.model.cnn_numpy import NumpyCNN, to_nhwc
from soulsai.model.cnn_spec import cnn_weight_shapes
from soulsai.model.obs import ObsLayout

DiscreteObs = Literal["onehot", "embedding"]
Shapes = dict[str, tuple[int, ...]]


def check_discrete_obs(discrete_obs: str) -> None:
    if discrete_obs not in ("onehot", "embedding"):
        raise ConfigError(f"env.discrete_obs: {discrete_obs!r} is not one of onehot, embedding")


def embedding_names(layout: ObsLayout, prefix: str = "") -> list[str]:
    """State-dict names of the embedding tables, one per categorical leaf, in layout order."""
    n_cat = sum(leaf.kind == "categorical" for leaf in layout.leaves)
    return [f"{prefix}embeddings.{i}.weight" for i in range(n_cat)]


def encoder_weight_shapes(
    layout: ObsLayout, discrete_obs: str, embedding_dim: int, prefix: str = "encoder."
) -> Shapes:
    """Tensors the torch encoder adds to a network's state_dict: embedding tables (none for
    one-hot) and the image leaves' CNNs."""
    check_discrete_obs(discrete_obs)
    shapes: Shapes = {}
    if discrete_obs == "embedding":
        cats = [leaf for leaf in layout.leaves if leaf.kind == "categorical"]
        names = embedding_names(layout, prefix)
        shapes |= {name: (leaf.n, embedding_dim) for name, leaf in zip(names, cats, strict=True)}
    for i, leaf in enumerate(layout.images):
        shapes |= cnn_weight_shapes(layout.image, *leaf.chw, prefix=f"{prefix}cnns.{i}.")
    return shapes


def as_leaves(layout: ObsLayout, obs: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    """A mapping name -> batch; a bare array stands for the one leaf of a one-leaf layout."""
    if isinstance(obs, Mapping):
        return obs
    if len(layout.leaves) != 1:
        raise ValueError(f"observation layout has leaves {layout.names}: pass a mapping")
    return {layout.leaves[0].name: obs}


class NumpyObsEncoder:
    """Encodes a batch of leaves as the torch encoder does (tested equal)."""

    def __init__(
        self,
        layout: ObsLayout,
        discrete_obs: str = "onehot",
        embeddings: list[np.ndarray] | None = None,
        cnns: list[NumpyCNN] | None = None,
    ) -> None:
        check_discrete_obs(discrete_obs)
        self.layout = layout
        self.cnns = list(cnns or [])
        if len(self.cnns) != len(layout.images):
            raise ValueError(f"the layout's {len(layout.images)} image leaves need as many CNNs")
        self.discrete_obs = discrete_obs
        cats = [leaf for leaf in layout.leaves if leaf.kind == "categorical"]
        if discrete_obs == "embedding":
            if embeddings is None or len(embeddings) != len(cats):
                raise ValueError(f"embedding encoder needs {len(cats)} tables")
            self.tables = [np.asarray(t, np.float32) for t in embeddings]
            self.dim = self.tables[0].shape[1] if self.tables else 0
        else:
            self.tables = []
            self.dim = 0
        self.n_features = layout.n_features(discrete_obs, self.dim)

    @classmethod
    def from_state(
        cls, layout: ObsLayout, state: Mapping[str, Any], discrete_obs: str, prefix: str = ""
    ) -> NumpyObsEncoder:
        """The encoder of a network state_dict whose encoder sits under `prefix`."""
        tables = None
        if discrete_obs == "embedding":
            tables = [_arr(state[name]) for name in embedding_names(layout, prefix)]
        cnns = [
            NumpyCNN(layout.image, leaf.chw, state, f"{prefix}cnns.{i}.")
            for i, leaf in enumerate(layout.images)
        ]
        return cls(layout, discrete_obs, tables, cnns)

    def __call__(self, obs: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """float32 features (B, F) of a batch of leaves (name -> (B, *shape))."""
        leaves = as_leaves(self.layout, obs)
        if self.layout.plain:
            x = np.asarray(leaves[self.layout.leaves[0].name])
            return x.reshape(len(x), -1).astype(np.float32, copy=False)
        first = np.asarray(leaves[self.layout.leaves[0].name])
        batch = len(first)
        out = np.zeros((batch, self.n_features), np.float32)
        col, cat, img = 0, 0, 0
        for leaf in self.layout.leaves:
            if leaf.kind == "image":
                frames = to_nhwc(np.asarray(leaves[leaf.name]), leaf.shape, leaf.channels_last)
                features = self.cnns[img](frames)
                out[:, col : col + features.shape[1]] = features
                col += features.shape[1]
                img += 1
                continue
            x = np.asarray(leaves[leaf.name]).reshape(batch, leaf.size)
            if leaf.kind != "categorical":
                out[:, col : col + leaf.size] = x
                col += leaf.size
                continue
            idx = x.astype(np.intp) - leaf.start  # (B, k): 0 .. n-1 per element
            if self.discrete_obs == "onehot":
                cols = col + np.arange(leaf.size) * leaf.n + idx
                out[np.arange(batch)[:, None], cols] = 1.0
                col += leaf.size * leaf.n
            else:
                width = leaf.size * self.dim
                out[:, col : col + width] = self.tables[cat][idx].reshape(batch, width)
                col += width
            cat += 1
        return out


def _arr(t: Any) -> np.ndarray:
    """A live torch tensor is copied (training changes it); a decoded array is used as is."""
    return t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)
