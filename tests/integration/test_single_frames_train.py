"""Single frames through the whole stack: `soulsai train --algo dqn` (2 clients, embedded Redis)
on soulsai/IudexLikeImg-v0 (SoulsGym's image env shape, one 90x160x3 uint8 frame per
observation) sends frame rows, each frame once, into the node's frame store; the learner
updates on them and the checkpoint's replay holds one frame per row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

IMG_YAML = """env:
  id: soulsai/IudexLikeImg-v0
  imports: [soulsai.envs.soulslike]
"""
ARGS = [
    "--no-progress", "--redis", "embedded", "--clients", "2", "--max-steps", "600",
    "--set", "training.metrics_port=0", "--set", "telemetry.http_port=0",
    "--set", "target_return=null", "--set", "dqn.learning_starts=200",
    "--set", "dqn.batch_size=16", "--set", "dqn.replay_ratio=2", "--set", "dqn.hidden=[64]",
    "--set", "dqn.update_samples=64", "--set", "env.image_features=64",
    "--set", "env.image_encoder=impala", "--set", "env.impala_channels=[8]",
    "--set", "checkpoint.save_buffer=true", "--set", "dqn.buffer_size=2000",
]  # fmt: skip


def safetensors_header(path: Path) -> dict:
    """Tensor name -> {dtype, shape} from a safetensors file's JSON header."""
    data = path.read_bytes()
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


def test_train_dqn_on_single_frames_sends_and_stores_each_frame_once(tmp_path, config_dir):
    (config_dir / "config.yaml").write_text(IMG_YAML)
    save = tmp_path / "saves"
    cmd = ["train", "--config-dir", str(config_dir), "--save-dir", str(save), *ARGS]
    out = subprocess.run(
        [sys.executable, "-m", "soulsai", *cmd],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["env_steps"] >= 600 and state["updates"] > 0 and state["model_id"] > 0
    # the replay is a frame store: one 90x160x3 frame per row, no obs/next_obs pairs
    header = safetensors_header(run / "checkpoint" / "arrays.safetensors")
    frames = [v for k, v in header.items() if k.endswith("row.frame")]
    assert len(frames) == 1 and frames[0]["shape"][1:] == [90, 160, 3], sorted(header)
    rows = frames[0]["shape"][0]
    assert rows >= 500  # the transitions the clients sent, and each frame once
    assert not [k for k in header if k.endswith(("obs", "next_obs"))], sorted(header)
    transitions = [v for k, v in header.items() if k.endswith("row.next")]
    assert transitions and transitions[0]["shape"] == [rows]
    assert state["buffer_size"] > 300
