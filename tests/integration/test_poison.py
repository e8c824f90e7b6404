"""Hostile but well-formed messages against a real training node on a real Redis: a forged
envelope of huge finite values is rejected and counted while training goes on with finite
weights (DQN and PPO), one client's huge envelopes cannot run up the whole update debt, and a
crafted or non-finite checkpoint is one line and exit code 1 on resume."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from soulsai.config import load_config
from soulsai.model.shapes import dqn_weight_shapes, ppo_weight_shapes
from soulsai.training.checkpoint import MANIFEST, TENSORS, TREE, _sha256
from soulsai.transport.envelope import encode_experience
from soulsai.transport.weights import decode_weights
from tests.conftest import node_args, read_log, trainer_stats, wait_until

pytestmark = pytest.mark.integration


def rejected(rclient, keys) -> dict[str, int]:
    return json.loads(trainer_stats(rclient, keys).get("rejected_by_reason", "{}"))


def model_id(rclient, keys) -> int:
    return int(rclient.get(keys.model_id) or 0)


def dqn_envelope(mid: int, n: int = 16, client: str = "tester", obs: float | None = None) -> bytes:
    rng = np.random.default_rng(mid)
    o = rng.normal(size=(n, 4)).astype(np.float32)
    if obs is not None:
        o[n // 2, 1] = obs
    fields = {
        "obs": o,
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": np.ones(n, np.float32),
        "next_obs": rng.normal(size=(n, 4)).astype(np.float32),
        "terminated": np.zeros(n, np.uint8),
        "steps": np.ones(n, np.uint8),
    }
    return encode_experience(client, mid, fields)


def ppo_envelope(mid: int, n: int, reward: float = 1.0, obs: float = 0.0) -> bytes:
    rng = np.random.default_rng(mid)
    o = rng.normal(size=(n, 4)).astype(np.float32)
    o[n // 2, 0] += obs
    last = np.zeros(n, np.uint8)
    last[-1] = 1
    r = np.ones(n, np.float32)
    r[n // 2] = reward
    fields = {
        "obs": o,
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": r,
        "terminated": np.zeros(n, np.uint8),
        "truncated": np.zeros(n, np.uint8),
        "last": last,
        "logprob": np.full(n, -0.69, np.float32),
        "value": np.zeros(n, np.float32),
        "next_value": np.zeros(n, np.float32),
        "disc_return": r.copy(),
    }
    return encode_experience("tester", mid, fields)


def published_weights(rclient, keys, shapes) -> dict[str, np.ndarray]:
    """The weights in Redis, decoded as a client does: non-finite ones raise ProtocolError."""
    arrays, _ = decode_weights(rclient.get(keys.weights), shapes, 1 << 30)
    return arrays


def test_forged_3e38_observation_is_counted_and_dqn_training_goes_on_finite(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    sets = {
        "dqn.update_samples": 16,
        "dqn.learning_starts": 16,
        "dqn.batch_size": 16,
        "dqn.normalize_obs": "true",
        "checkpoint.every": 5,
    }
    args = node_args(redis_server, config_dir, prefix, tmp_path, **sets)
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="dqn")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    cfg = load_config(config_dir, ["dqn.normalize_obs=true"])
    shapes = dqn_weight_shapes(cfg.dqn, (4,), 2)
    for i in range(8):  # forged envelopes between honest ones, each at the current model id
        mid = model_id(rclient, keys)
        rclient.lpush(keys.samples, dqn_envelope(mid, obs=3e38 if i % 2 else None))
        if i % 2 == 0:
            wait_until(lambda m=mid: model_id(rclient, keys) > m, 20, f"model > {mid}")
    counted = wait_until(
        lambda: rejected(rclient, keys).get("out_of_range", 0) >= 4, 20, "forged ones counted"
    )
    assert counted
    mid = model_id(rclient, keys)
    rclient.lpush(keys.samples, dqn_envelope(mid))
    wait_until(lambda: model_id(rclient, keys) > mid, 20, f"training to go on\n{read_log(trainer)}")
    weights = published_weights(rclient, keys, shapes)  # finite, or this raises
    assert np.abs(weights["obs_norm.var"]).max() < 1e6
    stats = trainer_stats(rclient, keys)
    assert stats["nonfinite_updates"] == "0" and stats["nonfinite_blocked"] == "0"
    assert trainer.poll() is None, read_log(trainer)


def test_ppo_reward_3e38_and_obs_1e30_neither_crash_nor_poison_the_normalizer(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    n = 64
    sets = {
        "algo": "ppo",
        "ppo.n_steps_total": n,
        "ppo.fragment_length": n,
        "ppo.pause_clients": "false",
    }
    args = node_args(redis_server, config_dir, prefix, tmp_path, **sets)
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="ppo")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    cfg = load_config(config_dir, ["algo=ppo"])
    shapes = ppo_weight_shapes(cfg.ppo, gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2))
    for forged in (ppo_envelope(0, n, reward=3e38), ppo_envelope(0, n, obs=1e30)):
        mid = model_id(rclient, keys)
        rclient.lpush(keys.samples, forged)
        rclient.lpush(keys.samples, ppo_envelope(mid, n) if mid else forged)
        if mid == 0:  # the forged ones carry model 0: the current one before any training
            rclient.lpush(keys.samples, ppo_envelope(0, n))
        wait_until(lambda m=mid: model_id(rclient, keys) > m, 30, f"iteration\n{read_log(trainer)}")
    wait_until(lambda: rejected(rclient, keys).get("out_of_range", 0) >= 1, 20, "counted")
    mid = model_id(rclient, keys)
    rclient.lpush(keys.samples, ppo_envelope(mid, n, reward=3e38))
    rclient.lpush(keys.samples, ppo_envelope(mid, n, obs=1e30))
    rclient.lpush(keys.samples, ppo_envelope(mid, n))
    wait_until(lambda: model_id(rclient, keys) > mid, 30, f"training on\n{read_log(trainer)}")
    wait_until(lambda: rejected(rclient, keys).get("out_of_range", 0) >= 3, 20, "all counted")
    weights = published_weights(rclient, keys, shapes)  # finite, or this raises
    assert np.abs(weights["obs_norm.var"]).max() < 1e6
    assert trainer.poll() is None, read_log(trainer)


def test_one_clients_huge_envelopes_cannot_run_up_the_whole_debt(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    # cap: 64 updates of 32 transitions at replay ratio 32 = 64 transitions of one client
    sets = {
        "dqn.learning_starts": 32,
        "dqn.batch_size": 32,
        "dqn.max_client_debt": 64,
        "dqn.max_model_delay": 1000,
    }
    args = node_args(redis_server, config_dir, prefix, tmp_path, **sets)
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="dqn")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    rclient.lpush(keys.samples, dqn_envelope(0, n=64, client="honest"))
    wait_until(lambda: int(trainer_stats(rclient, keys).get("updates", 0)) > 0, 30, "learning")
    before = int(trainer_stats(rclient, keys)["accepted"])
    flood = [dqn_envelope(0, n=4096, client="evil") for _ in range(20)]
    rclient.lpush(keys.samples, *flood)
    over = wait_until(
        lambda: rejected(rclient, keys).get("over_share", 0), 30, f"over_share\n{read_log(trainer)}"
    )
    rclient.lpush(keys.samples, dqn_envelope(0, n=32, client="honest"))
    wait_until(
        lambda: int(trainer_stats(rclient, keys)["accepted"]) >= before + 32, 30, "honest accepted"
    )
    accepted = int(trainer_stats(rclient, keys)["accepted"]) - before
    # evil got at most its share plus what the learner paid off meanwhile; most was dropped
    assert over >= 20 * 4096 - 8192 and accepted <= 20 * 4096 - over + 32
    assert trainer.poll() is None, read_log(trainer)


# ---------------------------------------------------------------- crafted checkpoints


def _fix_manifest(folder: Path, *names: str) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in names:
        manifest["files"][name] = _sha256(folder / name)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _checkpoint(redis_server, rclient, keys, prefix, config_dir, procs, tmp_path) -> Path:
    """A real DQN checkpoint: a training node started and stopped (its final save)."""
    args = node_args(redis_server, config_dir, prefix, tmp_path)
    trainer = procs.start("node", "training", *args, password=redis_server.password, name="ck")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    trainer.terminate()
    assert trainer.wait(30) == 0, read_log(trainer)
    (ckpt,) = (tmp_path / "saves").glob("*/checkpoint")
    return ckpt


def _missing_tensor(ckpt: Path) -> None:
    tree = json.loads((ckpt / TREE).read_text())
    tree["policy"]["mlp.1.weight"] = {"__tensor__": "s.policy.nothing_here"}
    (ckpt / TREE).write_text(json.dumps(tree))
    _fix_manifest(ckpt, TREE)


def _counter_of_wrong_type(ckpt: Path) -> None:
    tree = json.loads((ckpt / TREE).read_text())
    tree["node"]["env_steps"] = {"not": "a number"}
    (ckpt / TREE).write_text(json.dumps(tree))
    _fix_manifest(ckpt, TREE)


def _nan_weights(ckpt: Path) -> None:
    tensors = load_file(str(ckpt / TENSORS))
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(ckpt / TENSORS))
    _fix_manifest(ckpt, TENSORS)


@pytest.mark.parametrize(
    ("craft", "says"),
    [
        (_missing_tensor, "which the checkpoint lacks"),
        (_counter_of_wrong_type, "counter 'env_steps'"),
        (_nan_weights, "NaN or inf"),
    ],
    ids=["missing_tensor", "counter_type", "nan_weights"],
)
def test_resume_from_a_crafted_checkpoint_is_one_line_and_exit_1(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path, craft, says
):
    ckpt = _checkpoint(redis_server, rclient, keys, prefix, config_dir, procs, tmp_path)
    craft(ckpt)
    args = node_args(redis_server, config_dir, prefix, tmp_path)
    p = procs.start(
        "node", "training", *args, "--resume", str(ckpt), password=redis_server.password
    )
    assert p.wait(120) == 1
    out = read_log(p)
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("soulsai: error:")]
    assert len(errors) == 1 and says in errors[0], out


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_a_non_finite_policy_is_never_published(
    redis_server, rclient, keys, node_config, tmp_path, algo
) -> None:
    """Weights with a NaN stay off Redis: the published model keeps its id and its values,
    and the node counts the blocked publish."""
    import threading

    from soulsai.training.node import TrainingNode

    cfg = node_config(f"algo={algo}")
    node = TrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    try:
        node.publish()  # the first model, as the node publishes it at start
        good = rclient.get(keys.weights)
        assert good and node.blocked == 0
        net = node.learner.online if algo == "dqn" else node.learner.net
        with torch.no_grad():
            next(net.parameters()).view(-1)[0] = float("nan")
        assert node.finite_policy() is None and node.blocked == 1
        node.publish()
        assert rclient.get(keys.weights) == good and node.blocked == 2
    finally:
        node.link.close()
