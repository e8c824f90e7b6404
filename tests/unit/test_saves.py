"""A training node's saves without Redis: Saves with a small fake node, resume plumbing, evaluate.

The storage format itself (round trips, damage detection, atomic writes) is tested in
test_checkpoint.py; here: what goes where, history, best-model rules, answers, restore checks,
`--resume` resolution and config, and evaluating a saved policy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

from soulsai import evaluate as ev
from soulsai.config import Config, load_config
from soulsai.errors import CheckpointError, ConfigError
from soulsai.training import resume
from soulsai.training import saves as saves_mod
from soulsai.training.algorithms.dqn import DQNLearner
from soulsai.training.checkpoint import load_checkpoint, rng_state, set_rng_state
from soulsai.training.common import run_command
from soulsai.training.policies import build_policy
from soulsai.training.saves import Saves
from soulsai.transport.commands import encode_command

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    shutil.copy(ROOT / "config" / "config_d.yaml", d / "config_d.yaml")
    return d


def small_cfg(cdir: Path, *sets: str) -> Config:
    return load_config(cdir, ["dqn.hidden=[16, 16]", "dqn.normalize_obs=true", *sets])


class FakeNode:
    """The smallest Checkpointable: a DQN learner and counters."""

    def __init__(self, cfg: Config, seed: int = 0) -> None:
        self.learner = DQNLearner(cfg.dqn, (4,), 2, seed=seed)
        self.counters = {"env_steps": 100, "model_id": 3, "episodes": 7, "accepted": 100}
        self.restored: dict[str, Any] | None = None

    def checkpoint_state(self, with_buffer: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        state: dict[str, Any] = {
            "policy": self.learner.policy_state(),
            "learner": self.learner.state_dict(),
            "rng": rng_state(),
            "node": dict(self.counters),
        }
        if with_buffer:
            state["buffer"] = {"obs": np.zeros((10, 4), np.float32)}
        return state, {**self.counters, "updates": self.learner.updates}

    def restore_state(self, state: dict[str, Any], summary: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        self.restored = summary

    @property
    def model_id(self) -> int:
        return int(self.counters["model_id"])


def run_folder(tmp_path: Path, cfg: Config, name: str = "2026-01-01_00-00-00_dqn_x") -> Path:
    run = tmp_path / "saves" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(cfg.model_dump_json())
    return run


# ---------------------------------------------------------------- Saves


def test_periodic_save_writes_counters_config_and_history(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir, "checkpoint.keep_last=2")
    node = FakeNode(cfg)
    saves = Saves(cfg, tmp_path / "run", node)
    for i in range(4):
        node.learner.updates = 100 * (i + 1)
        result = saves.save("periodic", with_buffer=i == 3)
        assert result.ok and result.size > 0
    state, summary = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert summary["updates"] == 400 and summary["env_steps"] == 100 and summary["episodes"] == 7
    assert summary["kind"] == "periodic" and summary["algo"] == "dqn"
    assert summary["env"] == "CartPole-v1" and summary["buffer_saved"] is True
    assert result.buffer_bytes == 10 * 4 * 4
    saved_cfg = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert Config.model_validate(saved_cfg) == cfg
    history = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [h.name[-11:] for h in history] == ["u0000000300", "u0000000400"]
    newest = history[-1] / "tensors.safetensors"
    assert os.path.samefile(newest, tmp_path / "run" / "checkpoint" / "tensors.safetensors")
    assert load_checkpoint(history[0])[1]["updates"] == 300


def test_no_history_by_default(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    Saves(cfg, tmp_path / "run", FakeNode(cfg)).save("periodic")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_best_model_records_metric_and_is_never_replaced_by_a_worse_one(
    tmp_path: Path, cdir: Path
) -> None:
    cfg = small_cfg(cdir)
    node = FakeNode(cfg)
    saves = Saves(cfg, tmp_path / "run", node)
    best = tmp_path / "run" / "best_model"
    cmd = {"cmd": "save_best", "key": "return", "value": 200.5, "episode": 40, "reply": "t-1"}
    answer = saves.on_command(cmd)
    assert answer is not None and answer["ok"] and answer["value"] == 200.5
    assert answer["folder"] == str(best) and answer["model_id"] == 3
    summary = load_checkpoint(best)[1]
    assert (summary["metric"], summary["value"], summary["episode"]) == ("return", 200.5, 40)
    assert summary["model_id"] == 3 and summary["buffer_saved"] is False

    node.counters["model_id"] = 9
    answer = saves.on_command({**cmd, "value": 150.0})  # a restarted telemetry node, say
    assert answer is not None and not answer["ok"] and "does not beat" in answer["reason"]
    assert load_checkpoint(best)[1]["model_id"] == 3
    assert saves.on_command({**cmd, "value": 150.0, "force": True, "reply": None}) is None
    assert load_checkpoint(best)[1]["model_id"] == 9


def test_save_best_for_the_model_already_in_best_model_writes_nothing(
    tmp_path: Path, cdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PPO run plays many episodes per model: the telemetry node's commands for a rising
    average used to rewrite the same weights (41 saves for about 17 models in 90 s)."""
    cfg = small_cfg(cdir)
    node = FakeNode(cfg)
    saves = Saves(cfg, tmp_path / "run", node)
    best = tmp_path / "run" / "best_model"
    rejected: Counter[str] = Counter()

    def command(value: float, model_id: int) -> None:
        raw = encode_command("save_best", key="return", value=value, episode=1, model_id=model_id)
        run_command(raw, None, saves, threading.Event(), rejected)  # type: ignore[arg-type]

    with caplog.at_level(logging.INFO, logger="soulsai.training.saves"):
        command(100.0, 3)
        first = (best / "state.json").stat().st_mtime_ns
        command(120.0, 3)  # better, but the node still has model 3
    assert (best / "state.json").stat().st_mtime_ns == first
    summary = load_checkpoint(best)[1]
    assert (summary["value"], summary["model_id"], summary["measured_model_id"]) == (100.0, 3, 3)
    assert "already holds model 3" in caplog.text and "measured on model 3" in caplog.text
    node.counters["model_id"] = 4
    command(120.0, 4)
    assert load_checkpoint(best)[1]["model_id"] == 4 and not rejected


def test_quicksave_answers_only_well_formed_reply_tokens(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    saves = Saves(cfg, tmp_path / "run", FakeNode(cfg))
    answer = saves.on_command({"cmd": "quicksave", "buffer": True, "reply": "abc_DEF-123"})
    assert answer is not None and answer["ok"] and answer["buffer_saved"] is True
    assert answer["env_steps"] == 100 and answer["bytes"] > 0
    assert saves.on_command({"cmd": "quicksave", "reply": "../../etc"}) is None
    assert saves.on_command({"cmd": "quicksave", "reply": "x" * 65}) is None
    assert load_checkpoint(tmp_path / "run" / "manual_save")[1]["buffer_saved"] is False


def test_a_failed_save_is_reported_and_keeps_the_previous_one(
    tmp_path: Path, cdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_cfg(cdir)
    node = FakeNode(cfg)
    saves = Saves(cfg, tmp_path / "run", node)
    assert saves.save("periodic").ok

    def disk_full(*args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saves_mod, "save_checkpoint", disk_full)
    node.counters["model_id"] = 99
    result = saves.save("periodic")
    assert not result.ok and "No space left" in result.reason
    answer = saves.on_command({"cmd": "quicksave", "reply": "t"})
    assert answer == {
        "ok": False,
        "kind": "manual",
        "folder": str(tmp_path / "run" / "manual_save"),
        "reason": result.reason,
    }
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoint")[1]["model_id"] == 3


def test_restore_gives_identical_outputs_and_checks_env_and_algo(
    tmp_path: Path, cdir: Path
) -> None:
    cfg = small_cfg(cdir)
    node = FakeNode(cfg, seed=1)
    rng = np.random.default_rng(0)
    node.learner.update_normalizer(rng.normal(size=(64, 4)))
    Saves(cfg, tmp_path / "run", node).save("periodic")
    folder = tmp_path / "run" / "checkpoint"

    other = FakeNode(cfg, seed=2)
    summary = Saves(cfg, tmp_path / "run", other).restore(folder)
    assert other.restored == summary and summary["model_id"] == 3
    obs = torch.from_numpy(rng.normal(size=(32, 4)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(other.learner.online(obs), node.learner.online(obs))

    lunar = small_cfg(cdir, "env.id=Acrobot-v1")
    with pytest.raises(ConfigError, match="env=CartPole-v1"):
        Saves(lunar, tmp_path / "run", FakeNode(cfg)).restore(folder)
    wider = small_cfg(cdir, "dqn.hidden=[32]")
    with pytest.raises(CheckpointError, match="does not fit"):
        Saves(wider, tmp_path / "run", FakeNode(wider)).restore(folder)


# ---------------------------------------------------------------- --resume


def test_find_resolves_latest_run_and_checkpoint_folders(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    old = run_folder(tmp_path, cfg, "2026-01-01_00-00-00_dqn_a")
    new = run_folder(tmp_path, cfg, "2026-01-02_00-00-00_dqn_b")
    Saves(cfg, old, FakeNode(cfg)).save("periodic")
    Saves(cfg, new, FakeNode(cfg)).save("manual")
    os.utime(new / "config.json", (1, 1))  # started long ago; `old` checkpointed since
    assert resume.find("latest", tmp_path / "saves") == resume.ResumePoint(old, old / "checkpoint")
    assert resume.find(old, "unused").checkpoint == old / "checkpoint"
    assert resume.find(new / "manual_save", "x") == resume.ResumePoint(new, new / "manual_save")
    with pytest.raises(ConfigError, match="no checkpoint/ yet; it has manual_save"):
        resume.find(new, "x")
    with pytest.raises(ConfigError, match="does not exist"):
        resume.find(tmp_path / "nope", "x")
    with pytest.raises(ConfigError, match="no run folders"):
        resume.find("latest", tmp_path / "empty")

    cfg2 = small_cfg(cdir, "checkpoint.keep_last=1")
    Saves(cfg2, old, FakeNode(cfg2)).save("periodic")
    (copy,) = (old / "checkpoints").iterdir()
    assert resume.find(copy, "x") == resume.ResumePoint(old, copy)


def test_resume_config_continues_the_saved_run(tmp_path: Path, cdir: Path) -> None:
    saved = small_cfg(cdir, "env.id=Acrobot-v1", "dqn.lr=0.0003", "seed=5", "redis_port=1111")
    run = run_folder(tmp_path, saved)
    Saves(saved, run, FakeNode(saved)).save("periodic")
    point = resume.find(run, "x")

    fresh = load_config(cdir, ["redis_port=2222"])  # this machine's Redis, no experiment keys
    cfg, changed = resume.resume_config(fresh, cdir, ["redis_port=2222"], point)
    assert (cfg.env.id, cfg.dqn.lr, cfg.seed, cfg.dqn.hidden) == ("Acrobot-v1", 0.0003, 5, [16, 16])
    assert cfg.redis_port == 2222 and changed == []

    sets = ["dqn.lr=0.001", "max_steps=5"]
    cfg, changed = resume.resume_config(load_config(cdir, sets), cdir, sets, point)
    assert cfg.dqn.lr == 0.001 and cfg.max_steps == 5 and cfg.env.id == "Acrobot-v1"
    assert "dqn.lr: 0.0003 -> 0.001" in changed and any(c.startswith("max_steps") for c in changed)

    (cdir / "config.yaml").write_text("dqn:\n  gamma: 0.95\n")
    cfg, changed = resume.resume_config(load_config(cdir, []), cdir, [], point)
    assert cfg.dqn.gamma == 0.95 and changed == ["dqn.gamma: 0.99 -> 0.95"]

    for sets in (["env.id=CartPole-v1"], ["algo=ppo"]):
        with pytest.raises(ConfigError, match="cannot resume"):
            resume.resume_config(load_config(cdir, sets), cdir, sets, point)


def test_resume_keeps_the_runs_preset_not_this_starts(tmp_path: Path, cdir: Path) -> None:
    saved = small_cfg(cdir, "env.id=LunarLander-v3", "preset=null")  # as a run from before presets
    run = run_folder(tmp_path, saved)
    Saves(saved, run, FakeNode(saved)).save("periodic")
    fresh = load_config(cdir, ["env.id=LunarLander-v3"])
    assert fresh.preset is not None and fresh.dqn.hidden == [256, 256]  # the shipped preset
    cfg, changed = resume.resume_config(fresh, cdir, [], resume.find(run, "x"))
    assert cfg.preset is None and cfg.dqn.hidden == saved.dqn.hidden == [16, 16]
    assert cfg.target_return == saved.target_return and changed == []


# ---------------------------------------------------------------- evaluate


def test_locate_defaults_to_best_then_latest(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    run = run_folder(tmp_path, cfg)
    with pytest.raises(ConfigError, match="no checkpoints"):
        ev.locate(run, None, "x")
    saves = Saves(cfg, run, FakeNode(cfg))
    saves.save("periodic")
    assert ev.locate(run, None, "x") == (
        run / "checkpoint",
        "no best_model/ yet: evaluating checkpoint/",
    )
    with pytest.raises(ConfigError, match="has no manual_save/ .*--model latest"):
        ev.locate(run, "manual", "x")
    saves.save("best")
    assert ev.locate(run, None, "x") == (run / "best_model", None)
    assert ev.locate("latest", "latest", tmp_path / "saves") == (run / "checkpoint", None)
    assert ev.locate(run / "best_model", "manual", "x") == (run / "best_model", None)


def test_evaluate_plays_greedy_episodes_and_writes_gifs(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    run = run_folder(tmp_path, cfg)
    Saves(cfg, run, FakeNode(cfg)).save("best", extra={"value": 1.0})
    folder, _ = ev.locate(run, None, "x")
    loaded = ev.checkpoint_config(folder, ["env.step_delay=0.5"])
    assert loaded.env.step_delay == 0.5  # evaluate itself never sleeps
    seen: list[tuple[int, float, int]] = []
    result = ev.evaluate(
        folder,
        loaded,
        2,
        seed=3,
        video_dir=tmp_path / "video",
        on_episode=lambda *a: seen.append(a),
    )
    assert len(result.returns) == 2 and [s[0] for s in seen] == [0, 1]
    assert result.returns == [float(n) for n in result.lengths]  # CartPole: +1 per step
    again = ev.evaluate(folder, loaded, 2, seed=3)
    assert again.returns == result.returns  # greedy and seeded: the same episodes
    assert result.mean == pytest.approx(np.mean(result.returns))
    assert [p.name for p in result.videos] == ["episode-001.gif", "episode-002.gif"]
    with Image.open(result.videos[0]) as gif:
        assert gif.size == (600, 400) and gif.n_frames > 1


def test_gif_writer_bounds_memory_on_long_episodes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(ev, "GIF_MAX_FRAMES", 8)
    gif = ev.GifWriter(fps=50)
    base = np.zeros((4, 6, 3), dtype=np.uint8)
    base[0, :2] = [[255, 255, 255], [128, 128, 128]]  # every color the frames use
    for i in range(40):
        frame = base.copy()
        frame[1 + i % 3, i % 6] = 255  # a moving dot: no two kept frames in a row are equal
        gif.add(frame)
    assert len(gif.frames) <= 8 and gif.stride == 8
    path = gif.write(tmp_path / "g.gif")
    assert path is not None and gif.frames == []
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.info["duration"] == 160  # 8 frames of 20 ms each
    assert gif.write(tmp_path / "empty.gif") is None


def test_policy_builders(tmp_path: Path, cdir: Path) -> None:
    cfg = small_cfg(cdir)
    node = FakeNode(cfg)
    state, _ = node.checkpoint_state(False)
    obs_space, act_space = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2, start=5)
    policy = build_policy(cfg, state, obs_space, act_space)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with torch.no_grad():
        want = node.learner.online(torch.from_numpy(obs)).argmax(dim=1).numpy() + 5
    np.testing.assert_array_equal(policy(obs), want)
    with pytest.raises(CheckpointError, match="does not match"):
        build_policy(cfg, state, gym.spaces.Box(-1, 1, (3,)), act_space)
    with pytest.raises(CheckpointError, match="no policy builder"):
        build_policy(cfg.model_copy(update={"algo": "sac"}), state, obs_space, act_space)
