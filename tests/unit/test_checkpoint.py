"""Checkpoints: exact round trips of nested state, learner and replay buffer; damage is detected.

Loading must never unpickle: checkpoints are safetensors plus JSON.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from soulsai.config.schema import DQNConfig
from soulsai.errors import CheckpointError
from soulsai.training import checkpoint as ckpt
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.checkpoint import load_checkpoint, save_checkpoint
from soulsai.training.replay import ReplayBatch, ReplayBuffer

torch.set_num_threads(1)

DEFAULTS = Path(__file__).resolve().parents[2] / "config" / "config_d.yaml"
SUMMARY = {"env_steps": 1234, "model_id": 7, "updates": 56, "episodes": 9}


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Structural equality that is exact for tensors and arrays (dtype, shape and bits)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.detach().cpu(), b), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: keys {list(a)} {list(b)}"
        for k in a:
            assert type(k) is type(next(kb for kb in b if kb == k)), f"{where}.{k}: key type"
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} != {b!r}"


def nested_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    weight = torch.randn(4, 6, generator=g)
    return {
        "weights": {"mlp.1.weight": weight, "mlp.1.bias": torch.zeros(4)},
        "transposed": weight.t(),  # non-contiguous, and sharing memory with another entry
        "optimizer": {
            "state": {
                0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 6, generator=g)},
                1: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, generator=g)},
                -1: {},
            },
            "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "params": [0, 1]}],
        },
        "dtypes": {
            "f16": torch.randn(3, generator=g).half(),
            "bf16": torch.randn(3, generator=g).bfloat16(),
            "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
            "i64": torch.arange(5),
            "u8": torch.arange(5, dtype=torch.uint8),
            "bool": torch.tensor([True, False]),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
        },
        "arrays": {
            "obs": rng.normal(size=(5, 4)).astype(np.float32),
            "actions": np.arange(5, dtype=np.int64),
            "flags": np.array([True, False, True]),
            "pos": np.array(3, dtype=np.int64),
            "u8": np.frombuffer(b'{"state": 1}', dtype=np.uint8).copy(),
            "empty": np.zeros((0, 4), dtype=np.float32),
            "fortran": np.asfortranarray(rng.normal(size=(3, 2))),
        },
        "counters": {"updates": 56, "env_steps": 10**12, "lr": 0.0005, "neg": -3},
        "flags": [True, False, None],
        "text": "hello ünïcode",
        "floats": [float("inf"), -float("inf"), float("nan"), -0.0, 1e-310],
        "deep": [[{"a": [1, [2, [3]]]}], []],
        "empty_dict": {},
    }


# ---------------------------------------------------------------- round trips


def test_nested_state_round_trips_exactly(tmp_path: Path) -> None:
    state = nested_state()
    size = save_checkpoint(tmp_path / "ckpt", state, SUMMARY)
    assert size > 0
    loaded, summary = load_checkpoint(tmp_path / "ckpt")
    assert summary == SUMMARY
    assert_same(state, loaded)
    assert list(loaded["optimizer"]["state"]) == [0, 1, -1]  # int keys stay ints


def test_numpy_scalars_and_tuples_become_plain_values(tmp_path: Path) -> None:
    state = {"f": np.float32(1.5), "i": np.int64(7), "b": np.bool_(True), "t": (1, 2)}
    save_checkpoint(tmp_path / "c", state, {})
    loaded, _ = load_checkpoint(tmp_path / "c")
    assert loaded == {"f": 1.5, "i": 7, "b": True, "t": [1, 2]}
    assert type(loaded["i"]) is int and type(loaded["b"]) is bool


def test_loaded_tensors_are_independent_of_the_saved_ones(tmp_path: Path) -> None:
    t = torch.ones(3, requires_grad=True)
    save_checkpoint(tmp_path / "c", {"t": t}, {})
    with torch.no_grad():
        t.add_(1.0)
    loaded, _ = load_checkpoint(tmp_path / "c")
    assert torch.equal(loaded["t"], torch.ones(3)) and not loaded["t"].requires_grad


def test_state_json_is_readable(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", {"x": torch.zeros(1)}, SUMMARY)
    state_json = json.loads((tmp_path / "c" / "state.json").read_text())
    assert state_json == SUMMARY
    for key in ("env_steps", "model_id", "updates", "episodes"):
        assert key in state_json
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"tensors.safetensors", "state.json"}


def small_dqn_config(**overrides: Any) -> DQNConfig:
    base = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))["dqn"]
    return DQNConfig(**{**base, "hidden": [32, 32], "normalize_obs": True, **overrides})


def make_batch(seed: int, n: int = 16) -> ReplayBatch:
    g = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randn(n, 4, generator=g),
        action=torch.randint(0, 2, (n,), generator=g),
        reward=torch.randn(n, generator=g),
        next_obs=torch.randn(n, 4, generator=g),
        discount=torch.full((n,), 0.99**3) * torch.randint(0, 2, (n,), generator=g),
    )


@pytest.mark.parametrize("target_update", ["polyak", "hard"])
def test_dqn_learner_round_trip_gives_identical_outputs_and_next_update(
    tmp_path: Path, target_update: str
) -> None:
    cfg = small_dqn_config(target_update=target_update, target_update_interval=3)
    learner = DQNLearner(cfg, (4,), 2, seed=1)
    rng = np.random.default_rng(0)
    for i in range(5):
        learner.update_normalizer(rng.normal(2.0, 3.0, size=(32, 4)))
        learner.update(make_batch(i))
    save_checkpoint(tmp_path / "c", {"learner": learner.state_dict()}, SUMMARY)
    state, _ = load_checkpoint(tmp_path / "c")
    assert_same(learner.state_dict()["online"], state["learner"]["online"])
    assert_same(learner.state_dict()["optimizer"]["state"], state["learner"]["optimizer"]["state"])

    restored = DQNLearner(cfg, (4,), 2, seed=99)  # different init, overwritten by the load
    restored.load_state_dict(state["learner"])
    assert restored.updates == learner.updates == 5
    obs = torch.from_numpy(rng.normal(2.0, 3.0, size=(64, 4)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(restored.online(obs), learner.online(obs))
        assert torch.equal(restored.target(obs), learner.target(obs))

    for i in range(5, 8):  # the next updates are bit-identical, target updates included
        batch = make_batch(i)
        assert restored.update(batch) == learner.update(batch)
    for a, b in zip(learner.online.parameters(), restored.online.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(
        learner.target.state_dict().values(), restored.target.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_replay_buffer_round_trip(tmp_path: Path) -> None:
    buf = ReplayBuffer(10, obs_shape=(4,), seed=3)
    rng = np.random.default_rng(1)
    for n in (4, 5, 4):  # 13 rows into 10: wrapped around
        buf.add_batch(
            rng.normal(size=(n, 4)).astype(np.float32),
            rng.integers(0, 2, n),
            rng.normal(size=n).astype(np.float32),
            rng.normal(size=(n, 4)).astype(np.float32),
            np.full(n, 0.97, np.float32),
        )
    buf.sample(5)  # advance the sampler's RNG
    save_checkpoint(tmp_path / "c", {"buffer": buf.state_dict()}, SUMMARY)
    state, _ = load_checkpoint(tmp_path / "c")
    assert_same(buf.state_dict(), state["buffer"])

    restored = ReplayBuffer(10, obs_shape=(4,), seed=12345)
    restored.load_state_dict(state["buffer"])
    assert (restored.pos, restored.size, restored.total_added) == (buf.pos, buf.size, 13)
    for name in ("obs", "action", "reward", "next_obs", "discount"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(buf, name))
    for _ in range(3):  # same RNG state: the same samples
        for a, b in zip(restored.sample(8), buf.sample(8), strict=True):
            assert (a is None and b is None) or torch.equal(a, b)  # next_mask: None, no masks


def test_empty_replay_buffer_round_trip(tmp_path: Path) -> None:
    buf = ReplayBuffer(8, obs_shape=(4,), seed=0)
    save_checkpoint(tmp_path / "c", {"buffer": buf.state_dict()}, {})
    state, _ = load_checkpoint(tmp_path / "c")
    restored = ReplayBuffer(8, obs_shape=(4,), seed=1)
    restored.load_state_dict(state["buffer"])
    assert len(restored) == 0 and restored.total_added == 0


# ---------------------------------------------------------------- damage


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, nested_state(), SUMMARY)
    return folder


def _error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    return str(info.value)


@pytest.mark.parametrize(
    "name", ["tensors.safetensors", "arrays.safetensors", "tree.json", "state.json"]
)
@pytest.mark.parametrize("where", [0, 0.5, -1])
def test_a_corrupted_byte_is_detected(saved: Path, name: str, where: float) -> None:
    path = saved / name
    data = bytearray(path.read_bytes())
    i = int(where * len(data)) if where >= 0 else len(data) - 1
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    msg = _error(saved)
    assert name in msg and str(saved) in msg and "corrupt" in msg, msg


@pytest.mark.parametrize(
    "name", ["tensors.safetensors", "arrays.safetensors", "tree.json", "state.json"]
)
def test_a_truncated_file_is_detected(saved: Path, name: str) -> None:
    path = saved / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    msg = _error(saved)
    assert name in msg and str(saved) in msg, msg


@pytest.mark.parametrize("name", ["tensors.safetensors", "tree.json"])
def test_a_deleted_file_is_detected(saved: Path, name: str) -> None:
    (saved / name).unlink()
    msg = _error(saved)
    assert name in msg and "missing" in msg, msg


def test_a_deleted_manifest_is_detected(saved: Path) -> None:
    (saved / "manifest.json").unlink()
    msg = _error(saved)
    assert "manifest.json" in msg and str(saved) in msg, msg


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"files": []}',
        b'{"files": {}}',
        b'{"files": {"tree.json": 5}}',
        b'{"other": {}}',
        b"\xff\xfe",
    ],
)
def test_a_damaged_manifest_is_detected(saved: Path, content: bytes) -> None:
    (saved / "manifest.json").write_bytes(content)
    msg = _error(saved)
    assert str(saved) in msg and "manifest.json" in msg, msg


def test_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    msg = _error(tmp_path / "never_written")
    assert "never_written" in msg


# ---------------------------------------------------------------- atomic writes


def _entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_second_save_replaces_the_first_atomically(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"v": torch.tensor([1.0]), "only_first": 1}, {"model_id": 1})
    save_checkpoint(folder, {"v": torch.tensor([2.0])}, {"model_id": 2})
    state, summary = load_checkpoint(folder)
    assert summary == {"model_id": 2}
    assert torch.equal(state["v"], torch.tensor([2.0])) and "only_first" not in state
    assert _entries(tmp_path) == ["checkpoint"], "no temporary or old folders left behind"


def test_a_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"v": torch.tensor([1.0])}, {"model_id": 1})

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_np", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(folder, {"v": torch.tensor([2.0])}, {"model_id": 2})
    monkeypatch.undo()
    state, summary = load_checkpoint(folder)
    assert summary == {"model_id": 1} and torch.equal(state["v"], torch.tensor([1.0]))
    assert _entries(tmp_path) == ["checkpoint"]


def test_crash_between_renames_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, {"v": torch.tensor([1.0])}, {"model_id": 1})
    folder.rename(tmp_path / ".checkpoint.old")  # what a crash after the first rename leaves
    state, summary = load_checkpoint(folder)
    assert summary == {"model_id": 1}
    save_checkpoint(folder, {"v": torch.tensor([2.0])}, {"model_id": 2})
    assert load_checkpoint(folder)[1] == {"model_id": 2}
    assert _entries(tmp_path) == ["checkpoint"]


def test_many_saves_leave_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "checkpoint"  # parents are created
    for i in range(5):
        save_checkpoint(folder, {"i": torch.tensor(i)}, {"model_id": i})
    assert load_checkpoint(folder)[1] == {"model_id": 4}
    assert _entries(folder.parent) == ["checkpoint"]


# ---------------------------------------------------------------- no pickle


def _tripwire(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a checkpoint was unpickled")


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mod, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (np, "load"),
    ]:
        monkeypatch.setattr(mod, name, _tripwire)
    state, summary = load_checkpoint(saved)
    assert summary == SUMMARY
    assert_same(nested_state(), state)


def test_files_on_disk_are_safetensors_and_json(saved: Path) -> None:
    for path in saved.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), f"{path.name} looks like a pickle"
        assert not data.startswith(b"PK"), f"{path.name} looks like a torch.save zip"
        if path.suffix == ".json":
            json.loads(data)
        else:
            (header_len,) = np.frombuffer(data[:8], dtype="<u8")
            json.loads(data[8 : 8 + int(header_len)])
