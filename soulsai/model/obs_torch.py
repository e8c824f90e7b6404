"""The observation encoder as a torch module, for the training node's networks.

Computes what `soulsai.model.obs_encode.NumpyObsEncoder` computes (tested): Box leaves
flattened first (the continuous prefix the normalizer applies to), binary leaves as floats,
categorical leaves one-hot or through one `nn.Embedding` per leaf (`embeddings.<i>.weight` in
the state_dict, so the tables travel to the clients with the rest of the model), image leaves
through one CNN each (`cnns.<i>.*`, `soulsai.model.cnn`). A network with actor and critic
(ActorCritic) holds one encoder, so its CNN is one set of weights that both heads train.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from soulsai.model.cnn import make_cnn, to_nchw
from soulsai.model.obs import ObsLayout
from soulsai.model.obs_encode import as_leaves, check_discrete_obs


class ObsEncoder(nn.Module):
    """Leaves (name -> (B, *shape) tensors, any numeric dtype) -> float32 features (B, F)."""

    def __init__(self, layout: ObsLayout, discrete_obs: str = "onehot", embedding_dim: int = 8):
        super().__init__()
        check_discrete_obs(discrete_obs)
        self.layout = layout
        self.discrete_obs = discrete_obs
        self.embedding_dim = embedding_dim if discrete_obs == "embedding" else 0
        cats = [leaf for leaf in layout.leaves if leaf.kind == "categorical"]
        self.embeddings = nn.ModuleList(
            [nn.Embedding(leaf.n, embedding_dim) for leaf in cats]
            if discrete_obs == "embedding"
            else []
        )
        self.cnns = nn.ModuleList([make_cnn(layout.image, *leaf.chw) for leaf in layout.images])
        self.n_features = layout.n_features(discrete_obs, embedding_dim)
        self.n_continuous = layout.n_continuous

    def forward(self, obs: Mapping[str, Any] | torch.Tensor) -> torch.Tensor:
        leaves = as_leaves(self.layout, obs)
        if self.layout.plain:
            x = torch.as_tensor(leaves[self.layout.leaves[0].name])
            return x.flatten(start_dim=1).to(torch.float32)
        parts: list[torch.Tensor] = []
        cat, img = 0, 0
        for leaf in self.layout.leaves:
            x = torch.as_tensor(leaves[leaf.name])
            if leaf.kind == "image":
                parts.append(self.cnns[img](to_nchw(x, leaf.shape, leaf.channels_last)))
                img += 1
                continue
            x = x.reshape(x.shape[0], leaf.size)
            if leaf.kind != "categorical":
                parts.append(x.to(torch.float32))
                continue
            idx = x.to(torch.int64) - leaf.start
            if self.discrete_obs == "onehot":
                parts.append(F.one_hot(idx, leaf.n).to(torch.float32).flatten(start_dim=1))
            else:
                parts.append(self.embeddings[cat](idx).flatten(start_dim=1))
            cat += 1
        return torch.cat(parts, dim=1)
