"""Checkpoints, resume, quicksave and evaluate with a real Redis and real processes.

- a training node restored from its checkpoint is the same node (learner, optimizer, buffer,
  counters), and its next update is bit-identical;
- `soulsai train` killed with SIGKILL (every process at once) and resumed with `--resume
  latest` continues its counters, episode file and learning; `soulsai quicksave --buffer` from
  another process saves during the run; `soulsai evaluate` plays the result;
- quicksave and save_best against a server node through Redis, and `node training --resume`;
- damaged or mismatched checkpoints are refused with one line, before anything starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from soulsai.config import load_config
from soulsai.training.node import TrainingNode
from soulsai.training.saves import Saves
from tests.conftest import cartpole_envelope, node_args, read_log, wait_until
from tests.unit.test_saves import FakeNode

pytestmark = pytest.mark.integration

PORTS_OFF = ["--set", "training.metrics_port=0", "--set", "telemetry.http_port=0"]


def soulsai(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "soulsai", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def stack_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_stack(marker: str) -> None:
    """SIGKILL `soulsai train` and every child it started in its own session: children first,
    so that none sees its parent die and shuts down cleanly (writing a final checkpoint)."""
    pids = stack_pids(marker)
    parents = [p for p in pids if " train " in _cmdline(p)]
    for pid in [p for p in pids if p not in parents] + parents:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def state_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- the node itself


def test_restored_training_node_is_the_same_node(redis_server, node_config, tmp_path):
    cfg = node_config(
        "dqn.hidden=[32, 32]",
        "dqn.buffer_size=100",  # 160 transitions in: the ring buffer has wrapped
        "dqn.normalize_obs=true",  # its statistics are restored too
        "checkpoint.save_buffer=true",
    )
    target = redis_server.target
    run = tmp_path / "run"
    node = TrainingNode(cfg, target, run, threading.Event())
    for i in range(5):
        assert node.intake.handle(cartpole_envelope(node.model_id, seed=i))
        node.model_id += 1
    node.driver.merge_normalizer()
    for _ in range(12):
        node.learner.update(node.driver.buffer.sample(16))
    assert node.saves.save("periodic").ok

    back = TrainingNode(cfg, target, run, threading.Event(), resume=run / "checkpoint")
    assert (back.env_steps, back.accepted) == (node.env_steps, node.accepted) == (160, 160)
    assert back.model_id == node.model_id + 1  # the id sequence continues, never repeats
    assert back.learner.updates == 12 and len(back.driver.buffer) == 100
    for name in ("obs", "action", "reward", "next_obs", "discount"):
        np.testing.assert_array_equal(
            getattr(back.driver.buffer, name), getattr(node.driver.buffer, name)
        )
    assert (back.driver.buffer.pos, back.driver.buffer.total_added) == (node.driver.buffer.pos, 160)
    obs = torch.from_numpy(np.random.default_rng(9).normal(size=(64, 4)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(back.learner.online(obs), node.learner.online(obs))
        assert torch.equal(back.learner.target(obs), node.learner.target(obs))
    for a, b in zip(
        node.learner.optimizer.state_dict()["state"].values(),
        back.learner.optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for _ in range(3):  # same replay RNG, same optimizer state: the same next updates
        assert back.learner.update(back.driver.buffer.sample(16)) == node.learner.update(
            node.driver.buffer.sample(16)
        )
    node.link.close()
    back.link.close()


# ---------------------------------------------------------------- the whole stack


@pytest.mark.slow
def test_train_killed_resumed_quicksaved_and_evaluated(tmp_path):
    save = tmp_path / "saves"
    common = ["--save-dir", str(save), "--no-progress", "--redis", "embedded", "--clients", "1"]
    common += [*PORTS_OFF, "--set", "target_return=null"]  # run to --max-steps, never "solved"
    first = soulsai(
        "train",
        *common,
        "--max-steps",
        "200000",
        "--set",
        "checkpoint.every=100",
        "--set",
        "checkpoint.save_buffer=true",
        "--set",
        "dqn.eps_decay_steps=2000",
        "--set",
        "dqn.learning_starts=500",
        cwd=tmp_path,
        log=tmp_path / "first.log",
    )
    try:
        wait_until(
            lambda: (
                len(list(save.glob("*/checkpoint/state.json"))) == 1
                and state_json(next(save.glob("*/checkpoint"))).get("env_steps", 0) >= 4000
            ),
            120,
            f"a checkpoint after 4000 env steps\n{(tmp_path / 'first.log').read_text()}",
        )
    finally:
        kill_stack(str(save))
    first.wait(20)
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    wait_until(lambda: not stack_pids(str(save)), 10, "every process of the stack to be gone")
    killed = state_json(run / "checkpoint")
    assert killed["buffer_saved"] and killed["updates"] > 0 and killed["model_id"] > 0
    episodes_before = len((run / "episodes.jsonl").read_text().splitlines())
    assert episodes_before > 10

    target = killed["env_steps"] + 20000  # long enough to still run when quicksave asks
    second = soulsai(
        "train",
        *common,
        "--resume",
        "latest",
        "--max-steps",
        str(target),
        cwd=tmp_path,
        log=tmp_path / "second.log",
    )
    try:
        wait_until(
            lambda: state_json(run / "checkpoint").get("updates", 0) > killed["updates"],
            90,
            f"a checkpoint of the resumed run\n{(tmp_path / 'second.log').read_text()}",
        )
        q = run_cli("quicksave", "--save-dir", "saves", "--buffer", cwd=tmp_path)
        assert q.returncode == 0, q.stdout + q.stderr
        assert "with the replay buffer" in q.stdout and "manual_save" in q.stdout
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()
    finally:
        kill_stack(str(save))
    assert not (save / ".soulsai-local.json").exists()

    manual = state_json(run / "manual_save")
    assert manual["buffer_saved"] and manual["env_steps"] >= killed["env_steps"]
    assert manual["buffer_size"] > killed["buffer_size"]
    log = (run / "logs" / "training.log").read_text()
    assert f"env_steps={killed['env_steps']} model_id={killed['model_id']}" in log
    assert f"replay buffer restored with {killed['buffer_size']} transitions" in log
    final = state_json(run / "checkpoint")
    assert final["env_steps"] >= target and final["model_id"] > killed["model_id"]
    assert final["updates"] > killed["updates"] and final["episodes"] > episodes_before
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] >= target and summary["stopped_by"] == "max_steps"

    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records] == list(range(1, len(records) + 1))
    steps = [r["env_steps"] for r in records]
    assert steps == sorted(steps), "one unbroken curve"
    resumed = records[episodes_before:]  # the file was final when the stack was killed
    assert resumed and min(r["env_steps"] for r in resumed) >= killed["env_steps"]
    assert min(r["model_id"] for r in resumed) > max(r["model_id"] for r in records[:10])
    early = np.mean([r["return"] for r in records[:10]])
    late = np.mean([r["return"] for r in resumed[-20:]])
    assert late > early + 20, f"not learning on: first 10 {early:.1f}, last 20 {late:.1f}"

    out = run_cli(
        "evaluate",
        str(run),
        "--model",
        "latest",
        "--episodes",
        "3",
        "--video",
        "video",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"mean return [\d.]+ \+/- [\d.]+ over 3 episodes", out.stdout), out.stdout
    assert len(list((tmp_path / "video").glob("episode-*.gif"))) == 3


# ---------------------------------------------------------------- a server through Redis


def test_quicksave_save_best_and_resume_against_a_server(
    redis_server, rclient, keys, prefix, config_dir, procs, tmp_path
):
    (config_dir / "redis.secret").write_text(f"requirepass {redis_server.password}\n")
    where = node_args(
        redis_server, config_dir, prefix, tmp_path, f"save_dir={tmp_path / 'server-saves'}"
    )
    args = [*where, "--set", "dqn.update_samples=32", "--set", "dqn.batch_size=16"]
    args += ["--set", "dqn.learning_starts=32", "--set", "dqn.hidden=[32]"]
    trainer = procs.start("node", "training", *args, name="trainer")
    wait_until(lambda: rclient.get(keys.model_id) is not None, 60, "first weights")
    for i in range(6):
        mid = int(rclient.get(keys.model_id))
        rclient.lpush(keys.samples, cartpole_envelope(mid, seed=i))
        wait_until(lambda m=mid: int(rclient.get(keys.model_id)) > m, 20, "the next model")
    run = Path(rclient.hget(keys.run, "run_dir").decode())

    # quicksave from another process, with the same secret; no `soulsai train` here
    q = procs.start("quicksave", *where, "--buffer", "--timeout", "60", name="quicksave")
    assert q.wait(90) == 0, read_log(q)
    assert "with the replay buffer" in read_log(q)
    manual = state_json(run / "manual_save")
    assert manual["buffer_saved"] and manual["env_steps"] == 6 * 32

    # save_best by hand, asking for an answer
    def best(value: float, token: str) -> dict:
        cmd = {"cmd": "save_best", "key": "return", "value": value, "episode": 5, "reply": token}
        rclient.lpush(keys.trainer_commands, json.dumps(cmd))
        got = rclient.blpop([keys.reply(token)], timeout=20)
        assert got is not None, read_log(trainer)
        return json.loads(got[1])

    answer = best(42.5, "first")
    assert answer["ok"] and answer["folder"] == str(run / "best_model")
    saved = state_json(run / "best_model")
    assert (saved["metric"], saved["value"], saved["episode"]) == ("return", 42.5, 5)
    assert saved["model_id"] == int(rclient.get(keys.model_id))
    assert not best(10.0, "second")["ok"] and state_json(run / "best_model")["value"] == 42.5

    trainer.send_signal(signal.SIGTERM)  # a clean stop writes a final checkpoint
    assert trainer.wait(30) == 0, read_log(trainer)
    stopped = state_json(run / "checkpoint")
    assert stopped["kind"] == "final" and stopped["env_steps"] == 6 * 32
    script = Path(__file__).resolve().parents[2] / "scripts" / "quicksave.py"
    out = subprocess.run(
        [sys.executable, str(script), *where], capture_output=True, text=True, timeout=60
    )  # the script users of the original know, with the same secret
    assert out.returncode == 1 and "is not running" in out.stderr, out.stderr

    again = procs.start("node", "training", *args, "--resume", str(run), name="trainer2")
    wait_until(
        lambda: (
            rclient.hget(keys.trainer_stats, "model_id") == str(stopped["model_id"] + 1).encode()
        ),
        60,
        f"the resumed node's first model\n{read_log(again)}",
    )
    assert int(rclient.hget(keys.trainer_stats, "env_steps")) == stopped["env_steps"]
    assert json.loads((run / "config.json").read_text())["dqn"]["hidden"] == [32]
    assert "resumed from" in read_log(again)


# ---------------------------------------------------------------- refusals


def test_resume_refuses_damaged_and_mismatched_checkpoints(config_dir, tmp_path):
    cfg = load_config(config_dir, ["dqn.hidden=[16, 16]"])
    run = tmp_path / "saves" / "2026-01-01_00-00-00_dqn_CartPole-v1"
    run.mkdir(parents=True)
    (run / "config.json").write_text(cfg.model_dump_json())
    Saves(cfg, run, FakeNode(cfg)).save("periodic")
    base = ["--config-dir", str(config_dir), "--save-dir", str(tmp_path / "saves"), "--no-progress"]

    out = run_cli("train", *base, "--resume", "latest", "--env", "Acrobot-v1", cwd=tmp_path)
    assert out.returncode == 2 and "cannot resume" in out.stderr and "env.id" in out.stderr
    assert "Traceback" not in out.stderr

    tensors = run / "checkpoint" / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    for cmd in (["train", *base], ["node", "training", *base[:-1]]):
        out = run_cli(*cmd, "--resume", str(run), cwd=tmp_path)
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert "damaged checkpoint" in lines[-1] and "tensors.safetensors" in lines[-1]
        assert "Traceback" not in out.stderr
    assert not (run / "logs").exists(), "nothing was started"

    out = run_cli("train", "--save-dir", str(tmp_path / "none"), "--resume", "latest", cwd=tmp_path)
    assert out.returncode == 2 and "no run folders" in out.stderr
