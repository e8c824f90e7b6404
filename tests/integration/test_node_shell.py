"""The training-node shell around each algorithm's driver, on a real Redis: the stats keys, the
checkpoint parts and counters (what an older run folder's checkpoint holds), the progress line
and the periodic-checkpoint rule are the same for every algorithm that the registry names."""

from __future__ import annotations

import logging
import threading

import pytest

from soulsai.training.checkpoint import read_summary
from soulsai.training.node import TrainingNode
from soulsai.training.registry import DRIVERS
from tests.conftest import cartpole_envelope

pytestmark = pytest.mark.integration

COMMON_STATS = {
    "env_steps", "accepted", "updates", "model_id", "buffer", "clients", "throttled",
    "rejected", "rejected_by_reason", "nonfinite_updates", "nonfinite_blocked", "loss", "time",
}  # fmt: skip
# what the DQN and PPO nodes published before the shell (and so what dashboards read)
STATS = {
    "dqn": COMMON_STATS | {"pauses", "forgiven", "debt", "q_mean", "epsilon"},
    "ppo": COMMON_STATS
    | {"iterations", "collected", "waiting", "approx_kl", "clipfrac", "entropy"}
    | {"explained_variance", "lr", "iteration_seconds"},
    "r2d2": COMMON_STATS | {"pauses", "forgiven", "debt", "q_mean", "epsilon"},
}
# the checkpoint's counters (state.json and the `node` part) that resume reads back
COUNTERS = {
    "dqn": {"env_steps", "model_id", "updates", "accepted", "episodes", "buffer_size"}
    | {"exploration"},
    "ppo": {"env_steps", "model_id", "updates", "accepted", "episodes", "iterations"},
    "r2d2": {"env_steps", "model_id", "updates", "accepted", "episodes", "buffer_size"}
    | {"exploration"},
}
PARTS = {
    "dqn": {"policy", "learner", "rng", "buffer", "node"},
    "ppo": {"policy", "learner", "rng", "node"},
    "r2d2": {"policy", "learner", "rng", "buffer", "node"},
}
# the progress lines of the nodes before the shell, to the letter
OLD_LINES = {
    "dqn": "env_steps=%d accepted=%d updates=%d model=%d buffer=%d clients=%d "
    "samples/s=%s updates/s=%s loss=%s rejected=%s client_dropped=%s",
    "ppo": "env_steps=%d iteration=%d model=%d collected=%d/%d clients=%d samples/s=%s "
    "approx_kl=%s clipfrac=%s entropy=%s explained_var=%s rejected=%s",
    "r2d2": "env_steps=%d accepted=%d updates=%d model=%d chunks=%d clients=%d "
    "samples/s=%s updates/s=%s loss=%s rejected=%s",  # new with the shell: no old line
}


@pytest.fixture(params=sorted(DRIVERS))
def node(request, redis_server, node_config, tmp_path):
    cfg = node_config(f"algo={request.param}", "dqn.hidden=[16]", "checkpoint.every=3")
    n = TrainingNode(cfg, redis_server.target, tmp_path / "run", threading.Event())
    yield n
    n.link.close()


def test_every_algorithm_has_a_driver_and_its_stats_keep_their_names(node):
    assert set(node.stats()) == STATS[node.cfg.algo]


def test_checkpoint_parts_and_counters_keep_their_names(node):
    state, counters = node.checkpoint_state(with_buffer=True)
    assert set(state) == PARTS[node.cfg.algo]
    assert set(counters) == COUNTERS[node.cfg.algo] == set(state["node"])
    assert {"torch", "numpy", "python"} <= set(state["rng"])


def test_a_periodic_checkpoint_is_written_when_updates_cross_checkpoint_every(node):
    folder = node.run_dir / "checkpoint"
    for updates, saved in [(2, None), (3, 3), (4, 3), (5, 3), (7, 7)]:
        node.learner.updates = updates
        node.learned()
        summary = read_summary(folder) if folder.exists() else None
        assert (summary or {}).get("updates") == saved, updates


def test_the_progress_line_is_the_one_each_node_always_logged(node, caplog):
    node.intake.handle(cartpole_envelope(0, 8))  # DQN: 8 accepted; PPO: the wrong fields
    node._tick(1.0, _Rates())
    with caplog.at_level(logging.INFO, logger="soulsai.training.node"):
        node._log_progress()
    line = caplog.records[-1].getMessage()
    s = node._last_stats
    rejected = dict(node.intake.rejected)
    if node.cfg.algo == "dqn":
        want = OLD_LINES["dqn"] % (
            s["env_steps"], s["accepted"], s["updates"], s["model_id"], s["buffer"],
            s["clients"], s.get("samples_per_s"), s.get("updates_per_s"), s["loss"], rejected,
            s.get("client_dropped", 0),
        )  # fmt: skip
    elif node.cfg.algo == "r2d2":  # a DQN envelope has the wrong fields for chunks
        want = OLD_LINES["r2d2"] % (
            s["env_steps"], s["accepted"], s["updates"], s["model_id"], s["buffer"],
            s["clients"], s.get("samples_per_s"), s.get("updates_per_s"), s["loss"], rejected,
        )  # fmt: skip
    else:
        want = OLD_LINES["ppo"] % (
            s["env_steps"], s["iterations"], s["model_id"], s["collected"],
            node.cfg.ppo.n_steps_total, s["clients"], s.get("samples_per_s"), s["approx_kl"],
            s["clipfrac"], s["entropy"], s["explained_variance"], rejected,
        )  # fmt: skip
    assert line == want
    assert line.startswith("env_steps=8 accepted=8 " if node.cfg.algo == "dqn" else "env_steps=0 ")


class _Rates:
    def update(self, now: float, **counters: float) -> dict[str, float]:
        return {f"{k}_per_s": 1.5 for k in counters}
