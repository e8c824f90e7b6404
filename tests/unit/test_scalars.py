"""The nodes' scalar logs (soulsai/scalars.py): TensorBoard event files read back with
TensorBoard's own reader, the W&B sink offline, and what is kept out of both."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from soulsai.errors import ConfigError
from soulsai.scalars import MAX_TAGS, TB_DIR, ScalarLog, WandbOptions, open_scalars


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under `logdir` as (step, value) pairs per tag, read by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Broken:
    def write(self, values: object, step: int, wall_time: float) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("disk full")


def test_tensorboard_scalars_read_back_and_only_finite_bounded_numbers_are_written(tmp_path):
    log = open_scalars(tmp_path, "training", tensorboard=True, prefix="trainer")
    log.write({"loss": 0.5, "updates": 3, "nan": float("nan"), "inf": float("inf")}, step=10)
    log.write({"loss": 0.25, "flag": True, "name": "x", "huge": 1e300}, step=20, wall_time=5.0)
    log.close()
    got = read_scalars(tmp_path / TB_DIR / "training")
    assert got == {"trainer/loss": [(10, 0.5), (20, 0.25)], "trainer/updates": [(10, 3.0)]}


def test_a_failing_sink_never_stops_the_node_and_tags_are_bounded(tmp_path, caplog):
    log = ScalarLog([Broken()], prefix="episode")
    log.write({f"info.k{i}": 1.0 for i in range(MAX_TAGS + 50)}, step=1)
    assert len(log.tags) == MAX_TAGS
    assert "Broken failed to write" in caplog.text
    log.close()  # logged, not raised
    assert not log and "failed to close" in caplog.text


def test_missing_wandb_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"wandb.enabled.*soulsai\[wandb\]"):
        open_scalars(tmp_path, "telemetry", tensorboard=False, wandb=WandbOptions("p", "offline"))


def test_wandb_offline_run_in_the_run_folder_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # the test extra installs it; CI does not skip
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "2025-01-01_00-00-00_dqn_CartPole-v1"
    run_dir.mkdir()
    log = open_scalars(
        run_dir,
        "telemetry",
        tensorboard=False,
        wandb=WandbOptions("soulsai-test", "offline"),
        config={"algo": "dqn"},
        prefix="episode",
    )
    log.write({"return": 10.0, "length": 10}, step=10)
    log.write({"return": 30.0, "length": 30}, step=40)
    (sink,) = log.sinks
    summary = dict(sink.run.summary)
    assert summary["episode/return"] == 30.0 and summary["env_steps"] == 40
    assert sink.run.group == run_dir.name and sink.run.job_type == "telemetry"
    log.close()
    # the offline log that `wandb sync` uploads (protobuf records: the keys are plain bytes)
    (offline,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = offline.read_bytes()
    assert (
        data.count(b"episode/return") >= 2
        and b"env_steps" in data
        and run_dir.name.encode() in data
    )
