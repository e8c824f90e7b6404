"""One valid but hostile message must not poison a run: received values are bounded at intake,
non-finite steps and statistics are skipped, and NaN never reaches a publish, a save or a
resume. Also: one client's huge envelopes cannot run up the whole update debt, and a crafted
checkpoint is one clear error, not a traceback."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from soulsai.config import load_config
from soulsai.errors import CheckpointError, ProtocolError
from soulsai.model.nets import ObsNormalizer
from soulsai.model.specs import dqn_experience_spec, ppo_experience_spec
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.algorithms.ppo import PPOLearner
from soulsai.training.checkpoint import (
    MANIFEST,
    TREE,
    _sha256,
    first_nonfinite,
    load_checkpoint,
    save_checkpoint,
)
from soulsai.training.intake import Intake
from soulsai.training.replay import ReplayBatch
from soulsai.training.rollout import RolloutBuffer
from soulsai.training.saves import Saves
from soulsai.training.shares import ClientShares
from soulsai.transport.envelope import encode_experience
from soulsai.transport.episodes import EpisodeRecord, decode_episode, encode_episode
from soulsai.transport.spaces import box_bounds

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
HUGE = 3e38  # finite float32: passes a finiteness check


@pytest.fixture(scope="module")
def cfgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return load_config(d, []), load_config(d, ["algo=ppo"])


def finite_params(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values())


# ---------------------------------------------------------------- learners


def test_dqn_skips_and_counts_a_step_on_a_3e38_batch(cfgs) -> None:
    learner = DQNLearner(cfgs[0].dqn, (4,), 2, seed=0)
    n = 32
    batch = ReplayBatch(
        obs=torch.full((n, 4), HUGE),
        action=torch.zeros(n, dtype=torch.int64),
        reward=torch.full((n,), HUGE),
        next_obs=torch.full((n, 4), HUGE),
        discount=torch.full((n,), 0.97),
    )
    before = {k: v.clone() for k, v in learner.online.state_dict().items()}
    for _ in range(3):
        learner.update(batch)
    assert finite_params(learner.online) and finite_params(learner.target)
    assert learner.nonfinite_updates == 3 and learner.updates == 0
    assert all(torch.equal(before[k], v) for k, v in learner.online.state_dict().items())
    good = ReplayBatch(
        torch.randn(n, 4), torch.zeros(n, dtype=torch.int64), torch.ones(n), torch.randn(n, 4),
        torch.full((n,), 0.97),
    )  # fmt: skip
    learner.update(good)
    assert learner.updates == 1 and finite_params(learner.online)


def test_normalizer_merge_that_would_overflow_is_skipped(cfgs) -> None:
    dqn = cfgs[0].dqn.model_copy(update={"normalize_obs": True})
    learner = DQNLearner(dqn, (4,), 2, seed=0)
    learner.update_normalizer(np.ones((8, 4), np.float32))
    learner.update_normalizer(np.full((8, 4), 1e30, np.float32))  # var 1e60: inf in float32
    assert learner.nonfinite_updates == 1
    norm = learner.online.obs_norm
    assert norm.count.item() == 8 and bool(torch.isfinite(norm.var).all())
    assert torch.equal(learner.target.obs_norm.var, norm.var)


def _ppo_parts(n: int, reward: float = 1.0, obs: float = 0.5) -> list[dict[str, np.ndarray]]:
    last = np.zeros(n, np.uint8)
    last[-1] = 1
    return [
        {
            "obs": np.full((n, 3), obs, np.float32),
            "action": np.arange(n, dtype=np.int64) % 3,
            "reward": np.full(n, reward, np.float32),
            "terminated": np.zeros(n, np.uint8),
            "truncated": np.zeros(n, np.uint8),
            "last": last,
            "logprob": np.full(n, -1.1, np.float32),
            "value": np.zeros(n, np.float32),
            "next_value": np.zeros(n, np.float32),
            "disc_return": np.full(n, reward, np.float32),
        }
    ]


@pytest.mark.parametrize("scale_rewards", [False, True])
def test_ppo_reward_3e38_leaves_the_net_and_statistics_finite(cfgs, scale_rewards) -> None:
    p = cfgs[1].ppo.model_copy(update={"scale_rewards": scale_rewards})
    learner = PPOLearner(p, gym.spaces.Box(-5, 5, (3,)), gym.spaces.Discrete(3), seed=0)
    parts = _ppo_parts(64, reward=HUGE)
    scale = learner.reward_scale(np.concatenate([f["disc_return"] for f in parts]))
    batch = RolloutBuffer(p.gamma, p.gae_lambda).compute_returns_and_advantage(parts, scale)
    learner.update(batch)
    learner.update_normalizer(parts[0]["obs"])
    assert finite_params(learner.net)
    assert bool(torch.isfinite(learner.return_stats.var).all())
    if not scale_rewards:  # inf advantages: every step skipped (scaled rewards are clipped)
        assert learner.nonfinite_updates > 0 and learner.updates == 0


def test_ppo_obs_1e30_does_not_make_the_normalizer_infinite(cfgs) -> None:
    learner = PPOLearner(cfgs[1].ppo, gym.spaces.Box(-5, 5, (3,)), gym.spaces.Discrete(3), 0)
    learner.update_normalizer(np.zeros((16, 3), np.float32))
    learner.update_normalizer(np.full((16, 3), 1e30, np.float32))
    assert bool(torch.isfinite(learner.net.obs_norm.var).all())
    assert learner.net.obs_norm.count.item() == 16 and learner.nonfinite_updates == 1


# ---------------------------------------------------------------- intake bounds

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
SPEC = dqn_experience_spec(OBS_SPACE, gym.spaces.Discrete(2), 3, 4096, 16 << 20)


def envelope(client: str = "c", n: int = 4, obs: float = 0.0, reward: float = 1.0) -> bytes:
    return encode_experience(
        client,
        0,
        {
            "obs": np.full((n, 3), obs, np.float32),
            "action": np.ones(n, np.int64),
            "reward": np.full(n, reward, np.float32),
            "next_obs": np.zeros((n, 3), np.float32),
            "terminated": np.zeros(n, np.uint8),
            "steps": np.full(n, 2, np.uint8),
        },
    )


def make_intake(rows: bool, shares: ClientShares | None = None, spec=SPEC):
    got: list[dict[str, np.ndarray]] = []
    intake = Intake(
        None,  # type: ignore[arg-type]  # handle_many never touches the link
        spec,
        lambda exp: got.append(exp.fields),
        lambda: 0,
        10,
        256,
        threading.Event(),
        accept_rows=(lambda fields, clients: got.append(fields)) if rows else None,
        shares=shares,
    )
    return intake, got


@pytest.mark.parametrize("rows", [True, False], ids=["batched", "one_by_one"])
def test_intake_rejects_and_counts_huge_observations_and_rewards(rows: bool) -> None:
    intake, got = make_intake(rows)
    raws = [
        envelope(obs=0.5),
        envelope(obs=HUGE),  # finite, so only a bound stops it
        envelope(obs=-2e6),
        envelope(reward=HUGE),
        envelope(reward=-1e30),
        envelope(obs=0.5),
    ]
    # equal lengths: the batched path joins them and checks all values in one pass
    assert len({len(r) for r in raws}) == 1
    assert intake.handle_many(raws) == 2
    assert intake.rejected == {"out_of_range": 4}
    accepted = np.concatenate([f["obs"] for f in got])
    assert np.abs(accepted).max() == np.float32(0.5)


def test_observation_bounds_follow_a_finite_box_and_the_magnitude_limit() -> None:
    assert box_bounds(OBS_SPACE, 1e6) == (-1e6, 1e6)
    # finite bounds, widened by the widest interval (envs overstep a little)
    assert box_bounds(gym.spaces.Box(-1, 2, (2,), np.float32), 1e6) == (-4.0, 5.0)
    # float32's max declared as a bound is no bound: the magnitude limit applies
    big = np.finfo(np.float32).max
    assert box_bounds(gym.spaces.Box(-big, big, (2,), np.float32), 1e6) == (-1e6, 1e6)
    assert box_bounds(gym.spaces.Box(0, 255, (2, 2), np.uint8), 1e6) == (None, None)
    spec = dqn_experience_spec(
        gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(2), 3, 64, 1 << 20
    )
    intake, got = make_intake(True, spec=spec)
    assert intake.handle_many([envelope(obs=2.5), envelope(obs=3.5)]) == 1
    assert intake.rejected == {"out_of_range": 1}


def test_ppo_spec_bounds_every_float_field() -> None:
    spec = ppo_experience_spec(
        gym.spaces.Box(-np.inf, np.inf, (3,)), gym.spaces.Box(-1, 1, (2,)), 64, 1 << 20,
        max_abs_obs=1e6, max_abs_reward=1e3, gamma=0.9,
    )  # fmt: skip
    for name, fs in spec.fields.items():
        if fs.dtype.kind == "f":
            assert fs.low is not None and fs.high is not None, name
    assert spec.fields["reward"].high == 1e3
    assert spec.fields["value"].high == pytest.approx(1e4)
    assert spec.fields["disc_return"].high == pytest.approx(1e4)


# ---------------------------------------------------------------- one client's share of the debt


def test_one_clients_huge_envelopes_are_capped_to_its_share() -> None:
    settled = [0.0]
    shares = ClientShares(cap=1000, settled=lambda: settled[0], active=lambda: True)
    intake, got = make_intake(True, shares)
    flood = [envelope("evil", n=4096, obs=i / 100) for i in range(20)]
    honest = [envelope("honest", n=64)]
    assert intake.handle_many(flood + honest) >= 1
    rows = sum(len(f["obs"]) for f in got)
    assert rows == 1000 + 64  # evil: its cap; honest: everything
    assert intake.rejected == {"over_share": 20 * 4096 - 1000}
    # what the learner pays for comes back to each client's share
    settled[0] = 500.0
    got.clear()
    intake.handle_many([envelope("evil", n=4096)])
    assert sum(len(f["obs"]) for f in got) == 500
    # and a client whose share is spent cannot pass by sending small envelopes
    got.clear()
    assert intake.handle_many([envelope("evil", n=8)]) == 0 and not got


def test_client_shares_are_unlimited_before_learning_and_when_off() -> None:
    learning = [False]
    shares = ClientShares(cap=10, settled=lambda: 0.0, active=lambda: learning[0])
    assert shares.admit(["a", "a"], np.array([100, 100])).tolist() == [100, 100]
    learning[0] = True
    assert shares.admit(["a", "a", "b"], np.array([6, 6, 20])).tolist() == [6, 4, 10]
    off = ClientShares(cap=0, settled=lambda: 0.0, active=lambda: True)
    assert off.admit(["a"], np.array([10**6])).tolist() == [10**6]


# ---------------------------------------------------------------- episode records


def _record(**kw) -> bytes:
    base = {"client_id": "c", "model_id": 0, "ret": 10.0, "length": 5, "info": {}, "time": 1.0}
    return encode_episode(EpisodeRecord(**{**base, **kw}))


@pytest.mark.parametrize(
    "kw",
    [{"ret": 1e300}, {"ret": -2e9}, {"length": 10**12}, {"info": {"wins": 1e300}}],
    ids=["return", "negative_return", "length", "info"],
)
def test_episode_values_beyond_the_bound_are_rejected(kw) -> None:
    with pytest.raises(ProtocolError) as e:
        decode_episode(_record(**kw), max_abs=1e9)
    assert e.value.reason == "out_of_range"
    assert decode_episode(_record(ret=-1e9 + 1, length=10**9), max_abs=1e9).ret == -1e9 + 1


# ---------------------------------------------------------------- checkpoints


def test_first_nonfinite_names_the_path() -> None:
    state = {"a": [torch.ones(2), {"b": np.array([1.0, np.nan])}], "c": 1, "d": torch.ones(1)}
    assert first_nonfinite(state) == "a.1.b"
    assert first_nonfinite({"x": torch.arange(3), "y": torch.tensor([-float("inf")])}) == "y"
    assert first_nonfinite({"x": torch.ones(3), "n": np.arange(3)}) is None


class _Node:
    """A Checkpointable whose state the test sets."""

    def __init__(self, policy: torch.Tensor) -> None:
        self.policy = policy
        self.restored: dict | None = None

    def checkpoint_state(self, with_buffer: bool):
        counters = {"env_steps": 10, "model_id": 2, "updates": 3, "episodes": 1, "accepted": 10}
        return {"policy": {"w": self.policy.clone()}, "node": dict(counters)}, counters

    def restore_state(self, state, summary) -> None:
        int(state["node"]["updates"])  # what the real nodes do with their counters
        self.restored = state


def test_a_nan_model_never_replaces_a_good_checkpoint(cfgs, tmp_path) -> None:
    node = _Node(torch.ones(3))
    saves = Saves(cfgs[0], tmp_path, node)
    assert saves.save("periodic").ok
    node.policy = torch.tensor([1.0, float("nan"), 2.0])
    for kind in ("periodic", "best", "manual"):
        result = saves.save(kind)
        assert not result.ok and "policy.w" in result.reason
    assert saves.refused == 3
    state, _ = load_checkpoint(tmp_path / "checkpoint")
    assert torch.equal(state["policy"]["w"], torch.ones(3))
    assert not (tmp_path / "best_model").exists()


def _rewrite(folder: Path, name: str, data: dict) -> None:
    """Change one file of a checkpoint and fix its manifest (a crafted folder, not a damaged
    one: the checksums match)."""
    (folder / name).write_text(json.dumps(data))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = _sha256(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_non_finite_checkpoint_is_refused(tmp_path) -> None:
    save_checkpoint(tmp_path / "ck", {"policy": {"w": torch.tensor([float("nan")])}}, {})
    with pytest.raises(CheckpointError, match="NaN or inf in policy.w"):
        load_checkpoint(tmp_path / "ck")


def test_a_tree_naming_a_missing_tensor_is_one_clear_error(tmp_path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, {"policy": {"w": torch.ones(2)}}, {})
    tree = json.loads((folder / TREE).read_text())
    tree["policy"]["w"] = {"__tensor__": "s.policy.nothing"}
    _rewrite(folder, TREE, tree)
    with pytest.raises(CheckpointError, match="names tensor 's.policy.nothing'") as e:
        load_checkpoint(folder)
    assert "\n" not in str(e.value) and not str(e.value).endswith('"')  # no KeyError repr
    tree["policy"]["w"] = {"__array__": ["not", "a", "name"]}
    _rewrite(folder, TREE, tree)
    with pytest.raises(CheckpointError, match="names array"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    ("key", "value"),
    [("env_steps", "lots"), ("model_id", [1]), ("accepted", -5), ("episodes", 1.5)],
)
def test_counters_of_the_wrong_type_are_one_clear_error(cfgs, tmp_path, key, value) -> None:
    node = _Node(torch.ones(3))
    saves = Saves(cfgs[0], tmp_path, node)
    assert saves.save("periodic").ok
    folder = tmp_path / "checkpoint"
    tree = json.loads((folder / TREE).read_text())
    tree["node"][key] = value
    _rewrite(folder, TREE, tree)
    with pytest.raises(CheckpointError, match=f"counter '{key}'"):
        saves.restore(folder)
    assert node.restored is None


def test_a_wrongly_typed_learner_counter_is_one_clear_error(cfgs, tmp_path) -> None:
    node = _Node(torch.ones(3))
    saves = Saves(cfgs[0], tmp_path, node)
    assert saves.save("periodic").ok
    folder = tmp_path / "checkpoint"
    tree = json.loads((folder / TREE).read_text())
    tree["node"]["updates"] = [1, 2]  # the node's own int() raises TypeError
    _rewrite(folder, TREE, tree)
    with pytest.raises(CheckpointError, match="does not fit"):
        saves.restore(folder)


def test_obs_normalizer_guard_restores_exactly() -> None:
    from soulsai.training.algorithms.guards import guarded_update

    norm = ObsNormalizer((2,))
    norm.update(np.array([[1.0, 2.0], [3.0, 4.0]]))
    before = [t.clone() for t in (norm.mean, norm.var, norm.count)]
    assert not guarded_update(norm, np.array([[1e30, 0.0]]))
    after = (norm.mean, norm.var, norm.count)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
