"""Per-leaf wire fields of an observation layout: one FieldSpec per leaf, each checked against
its own subspace by the experience decoder (dtype and shape exactly; Box values within
`box_bounds`; categorical values within `start .. start + n - 1`; binary values 0 or 1).

A bare space keeps the single field `obs` it always had; a Dict/Tuple's leaves travel as
`obs.<leaf>` (and `next_obs.<leaf>`, ...), so a wrong value in one leaf is a reject with the
leaf's name in its detail.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from soulsai.model.obs import Leaf, ObsLayout
from soulsai.transport.envelope import FieldSpec
from soulsai.transport.spaces import MAX_ABS_OBS, box_bounds


def field_name(prefix: str, leaf: Leaf) -> str:
    """The wire field of `leaf` under `prefix` (`obs`, `next_obs`): `prefix` for a bare space."""
    return f"{prefix}.{leaf.name}" if leaf.name else prefix


def leaf_spec(leaf: Leaf, max_abs: float = MAX_ABS_OBS) -> FieldSpec:
    """What one received value of `leaf` may hold."""
    if leaf.kind in ("box", "image"):
        low, high = box_bounds(leaf.space, max_abs)  # type: ignore[arg-type]
        return FieldSpec(leaf.dtype, leaf.shape, low=low, high=high)
    if leaf.kind == "binary":
        return FieldSpec(leaf.dtype, leaf.shape, low=0, high=1)
    return FieldSpec(leaf.dtype, leaf.shape, low=leaf.start, high=leaf.start + leaf.n - 1)


def leaf_fields(
    layout: ObsLayout, prefix: str = "obs", max_abs: float = MAX_ABS_OBS
) -> dict[str, FieldSpec]:
    """FieldSpecs of every leaf, keyed by wire field name, in layout order."""
    return {field_name(prefix, leaf): leaf_spec(leaf, max_abs) for leaf in layout.leaves}


def to_fields(
    layout: ObsLayout, leaves: Mapping[str, np.ndarray], prefix: str = "obs"
) -> dict[str, np.ndarray]:
    """Leaves (name -> batch) as wire fields (field name -> batch): the client's side."""
    return {field_name(prefix, leaf): leaves[leaf.name] for leaf in layout.leaves}


def from_fields(
    layout: ObsLayout, fields: Mapping[str, np.ndarray], prefix: str = "obs"
) -> dict[str, np.ndarray]:
    """Decoded wire fields back to leaves (name -> batch): the training node's side."""
    return {leaf.name: fields[field_name(prefix, leaf)] for leaf in layout.leaves}
