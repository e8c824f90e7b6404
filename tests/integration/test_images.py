"""Image observations end to end, with a real Redis and real processes: `soulsai train` (2
clients, embedded Redis) on soulsai/IudexLikeImg-v0, SoulsGym's image env shape (90x160x3 uint8
frames), trains DQN through the Nature CNN: the clients check and act with the CNN weights the
node broadcasts (numpy twin), the node learns on uint8 frames from its replay, and `soulsai
evaluate` plays the saved model."""

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
]  # fmt: skip


def soulsai(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def safetensors_header(path: Path) -> dict:
    """Tensor name -> {dtype, shape} from a safetensors file's JSON header (no torch)."""
    data = path.read_bytes()
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


@pytest.mark.parametrize("encoder", ["nature", "impala"])
def test_train_dqn_on_iudexlike_frames_through_a_cnn(tmp_path, config_dir, encoder):
    (config_dir / "config.yaml").write_text(IMG_YAML)
    save = tmp_path / "saves"
    cmd = ["train", "--config-dir", str(config_dir), "--save-dir", str(save), *ARGS]
    cmd += ["--set", f"env.image_encoder={encoder}", "--set", "env.impala_channels=[8, 16]"]
    out = soulsai(*cmd, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["env_steps"] >= 600 and state["updates"] > 0 and state["model_id"] > 0
    header = safetensors_header(run / "checkpoint" / "tensors.safetensors")
    first = "convs.0.weight" if encoder == "nature" else "stacks.0.conv.weight"
    cnn = [k for k in header if k.endswith(f"encoder.cnns.0.{first}")]
    assert cnn and header[cnn[0]]["dtype"] == "F32"
    assert header[cnn[0]]["shape"][1] == 3  # the frames' RGB channels, found at the end
    assert (run / "episodes.jsonl").read_text().strip()
    for log in (run / "logs").glob("client-*.log"):  # each client checked and took the weights
        text = log.read_text()
        assert "with model 0 (dqn)" in text and "rejected weights" not in text
    ev = soulsai(
        "evaluate",
        str(run),
        "--config-dir",
        str(config_dir),
        "--model",
        "latest",
        "--episodes",
        "1",
        cwd=tmp_path,
    )  # whole episodes with the numpy CNN twin
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
