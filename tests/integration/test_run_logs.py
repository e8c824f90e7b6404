"""Real short runs: `soulsai.train(...)` from Python returns the run's summary, and the run
folder holds TensorBoard event files (read back with TensorBoard's own reader) and, when
asked, W&B's offline runs, written by the nodes themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import soulsai
from soulsai.scalars import TB_DIR
from tests.conftest import train_run
from tests.unit.test_scalars import read_scalars

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OFF = ["training.metrics_port=0", "telemetry.http_port=0", "target_return=null"]


def episodes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]


def check_episode_scalars(run: Path) -> None:
    """One point per episode at its env steps, as in episodes.jsonl."""
    got = read_scalars(run / TB_DIR / "telemetry")
    assert {"episode/return", "episode/length", "episode/return_avg"} <= set(got), sorted(got)
    records = episodes(run)
    steps, values = zip(*got["episode/return"], strict=True)
    assert list(steps) == [r["env_steps"] for r in records]
    np.testing.assert_allclose(values, [r["return"] for r in records], rtol=1e-6)
    assert [v for _, v in got["episode/length"]] == [float(r["length"]) for r in records]


def test_python_api_trains_and_the_nodes_write_tensorboard_and_wandb_offline(
    tmp_path, config_dir, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    summary = soulsai.train(
        algo="dqn",
        env="CartPole-v1",
        overrides=[*OFF, "wandb.enabled=true", "wandb.project=soulsai-test"],
        max_steps=3000,
        clients=1,
        save_dir=tmp_path / "saves",
        config_dir=config_dir,
        redis="embedded",
        progress=False,
    )
    run = Path(summary.pop("run_dir"))
    assert run.parent == tmp_path / "saves"
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "max_steps" and summary["env_steps"] >= 3000
    assert summary["episodes"] == len(episodes(run)) > 0

    check_episode_scalars(run)
    trainer = read_scalars(run / TB_DIR / "training")
    dqn = {"loss", "q_mean", "epsilon", "updates", "model_id", "buffer"}
    assert {f"trainer/{k}" for k in dqn} <= set(trainer), sorted(trainer)
    steps = [s for s, _ in trainer["trainer/updates"]]
    assert steps == sorted(steps) and trainer["trainer/updates"][-1][1] > 0
    assert "trainer/time" not in trainer and "trainer/env_steps" not in trainer

    # one offline W&B run per node, grouped by the run folder's name
    logs = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2, logs
    data = b"".join(p.read_bytes() for p in logs)
    assert b"episode/return" in data and b"trainer/loss" in data and run.name.encode() in data


def test_ppo_run_writes_its_learner_statistics_to_tensorboard(tmp_path, config_dir):
    sets = ["env.id=CartPole-v1", *OFF]
    run = train_run(tmp_path, config_dir, "ppo", 3000, sets, clients=1, timeout=300)
    check_episode_scalars(run)
    trainer = read_scalars(run / TB_DIR / "training")
    ppo = {"loss", "approx_kl", "clipfrac", "entropy", "explained_variance", "lr", "iterations"}
    assert {f"trainer/{k}" for k in ppo} <= set(trainer), sorted(trainer)
    assert trainer["trainer/iterations"][-1][1] >= 1
    assert not (run / "wandb").exists()  # off by default
