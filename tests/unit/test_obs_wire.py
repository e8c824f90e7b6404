"""Per-leaf wire fields: an honest batch of Dict observations goes through the client's encoder
and the node's decoders unchanged, and a hostile value in any one leaf is rejected with its
reason by the same validation every experience message gets."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from gymnasium import spaces as S
from gymnasium.vector.utils import concatenate, create_empty_array

from soulsai.errors import ProtocolError
from soulsai.model.obs import build_layout, obs_leaves
from soulsai.model.obs_wire import from_fields, leaf_fields, to_fields
from soulsai.transport.batch import decode_experience_rows
from soulsai.transport.envelope import (
    ExperienceSpec,
    FieldSpec,
    decode_experience,
    encode_experience,
)

SPACE = S.Dict(
    {
        "phase": S.Discrete(2, start=1),
        "player_hp": S.Box(0.0, 1000.0, (1,), np.float32),
        "player_max_hp": S.Discrete(1, start=454),
        "boss_animation": S.Discrete(31, start=-1),
        "pose": S.Box(-np.inf, np.inf, (4,), np.float32),
        "inner": S.Dict(
            {
                "md": S.MultiDiscrete([3, 4], start=[-1, 2]),
                "grid": S.MultiDiscrete([[3, 3], [3, 3]]),
                "mb": S.MultiBinary(3),
            }
        ),
    }
)
LAYOUT = build_layout(SPACE)
SPEC = ExperienceSpec(
    fields={
        **leaf_fields(LAYOUT, "obs"),
        "action": FieldSpec(np.int64, (), low=0, high=19),
        **leaf_fields(LAYOUT, "next_obs"),
    }
)
N = 8


def honest_fields(seed: int = 0) -> dict[str, np.ndarray]:
    SPACE.seed(seed)
    obs = [SPACE.sample() for _ in range(N + 1)]
    batch = concatenate(SPACE, obs, create_empty_array(SPACE, N + 1))
    leaves = obs_leaves(LAYOUT, batch)
    now = {k: v[:N] for k, v in leaves.items()}
    after = {k: v[1:] for k, v in leaves.items()}
    return {
        **to_fields(LAYOUT, now, "obs"),
        "action": np.arange(N, dtype=np.int64),
        **to_fields(LAYOUT, after, "next_obs"),
    }


def test_an_honest_batch_round_trips_leaf_by_leaf() -> None:
    fields = honest_fields()
    assert "obs.player_max_hp" not in fields  # constant: never travels
    exp = decode_experience(encode_experience("c1", 3, fields), SPEC)
    for name, value in fields.items():
        np.testing.assert_array_equal(exp.fields[name], value)
        assert exp.fields[name].dtype == value.dtype
    leaves = from_fields(LAYOUT, exp.fields, "next_obs")
    assert set(leaves) == set(LAYOUT.names)
    rows = decode_experience_rows(
        [encode_experience("c1", 3, honest_fields(s)) for s in range(4)], SPEC
    )
    assert not rows.errors and len(rows.counts) == 4


def setter(name: str, index: tuple, value) -> Callable[[dict], None]:
    def mutate(fields: dict[str, np.ndarray]) -> None:
        a = fields[name].copy()
        a[index] = value
        fields[name] = a

    return mutate


def retype(name: str, dtype) -> Callable[[dict], None]:
    def mutate(fields: dict[str, np.ndarray]) -> None:
        fields[name] = fields[name].astype(dtype)

    return mutate


def reshape(name: str) -> Callable[[dict], None]:
    def mutate(fields: dict[str, np.ndarray]) -> None:
        fields[name] = np.concatenate([fields[name], fields[name]], axis=-1)

    return mutate


HOSTILE: dict[str, tuple[Callable[[dict], None], str, str]] = {
    "discrete above its range": (setter("obs.phase", (2,), 3), "out_of_range", "obs.phase"),
    "discrete below its start": (setter("obs.phase", (0,), 0), "out_of_range", "obs.phase"),
    "animation below -1": (
        setter("next_obs.boss_animation", (1,), -2), "out_of_range", "next_obs.boss_animation",
    ),
    "multi-discrete element outside its own range": (
        setter("obs.inner.md.0", (0,), 2), "out_of_range", "obs.inner.md.0",  # 2 fits element 1
    ),
    "multi-discrete grid cell": (
        setter("obs.inner.grid", (3, 1, 0), 3), "out_of_range", "obs.inner.grid",
    ),
    "multi-binary 2": (setter("obs.inner.mb", (4, 2), 2), "out_of_range", "obs.inner.mb"),
    "multi-binary -1": (setter("next_obs.inner.mb", (0, 0), -1), "out_of_range", "inner.mb"),
    "NaN in a box": (setter("obs.player_hp", (5, 0), np.nan), "non_finite", "obs.player_hp"),
    "inf in an unbounded box": (setter("obs.pose", (1, 3), np.inf), "non_finite", "obs.pose"),
    "huge in an unbounded box": (setter("obs.pose", (1, 3), 3e38), "out_of_range", "obs.pose"),
    "box far beyond its bounds": (
        setter("next_obs.player_hp", (0, 0), 5000.0), "out_of_range", "next_obs.player_hp",
    ),
    "discrete sent as int64": (retype("obs.phase", np.int64), "bad_dtype", "obs.phase"),
    "box sent as float64": (retype("obs.pose", np.float64), "bad_dtype", "obs.pose"),
    "multi-binary sent as bool": (retype("obs.inner.mb", np.bool_), "bad_dtype", "obs.inner.mb"),
    "box of the wrong shape": (reshape("obs.pose"), "bad_shape", "obs.pose"),
    "grid of the wrong shape": (reshape("next_obs.inner.grid"), "bad_shape", "inner.grid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_leaf_is_rejected_with_its_reason(case: str) -> None:
    mutate, reason, leaf = HOSTILE[case]
    fields = honest_fields()
    mutate(fields)
    raw = encode_experience("evil", 3, fields)
    with pytest.raises(ProtocolError) as err:
        decode_experience(raw, SPEC)
    assert err.value.reason == reason and leaf in err.value.detail
    # the intake's batched path: the bad envelope is dropped and counted, the honest ones kept
    honest = [encode_experience("c1", 3, honest_fields(s)) for s in range(3)]
    rows = decode_experience_rows([*honest, raw], SPEC)
    assert [e.reason for e in rows.errors] == [reason] and len(rows.counts) == 3
    assert len(rows.fields["action"]) == 3 * N
