"""`soulsai compare`: several run folders in one figure, through the real command line; a run
folder is untrusted input (bounded reads, plain-text labels) and a bad one is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from soulsai.compare import moving_average, read_run
from soulsai.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(save: Path, name: str, algo: str, returns: list[float], t0: float = 1.7e9) -> Path:
    """A run folder as the nodes leave it: config.json and episodes.jsonl records with the
    telemetry node's fields."""
    run = save / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"algo": algo, "env": {"id": "CartPole-v1"}}))
    steps, lines = 0, []
    for i, ret in enumerate(returns, start=1):
        steps += int(ret)
        rec = {
            "episode": i,
            "return": ret,
            "length": int(ret),
            "env_steps": steps,
            "model_id": i // 3,
            "client_id": "c0",
            "client_episode": i,
            "time": t0 + i,
            "wall_time": 0.5 * i,
            "stream_id": f"{int((t0 + i) * 1000)}-0",
        }
        lines.append(json.dumps(rec) + "\n")
    (run / "episodes.jsonl").write_text("".join(lines))
    return run


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soulsai", "compare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compare_draws_two_runs_into_one_figure(tmp_path):
    a = make_run(tmp_path / "saves", "2025-01-01_10-00-00_dqn_CartPole-v1", "dqn", [10.0] * 30)
    b = make_run(tmp_path / "saves", "renamed", "ppo", [float(i) for i in range(10, 50)])
    out = cli(str(a), str(b), "-o", "cmp.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cmp.png").read_bytes().startswith(PNG)
    assert f"{a.name}: 30 episodes, 300 env steps" in out.stdout
    # a folder whose name lacks them gets algo and env from its config.json
    assert "renamed (ppo, CartPole-v1): 40 episodes" in out.stdout
    assert out.stdout.strip().endswith("wrote cmp.png")

    svg = cli(str(a), "-o", "one.svg", "--window", "5", cwd=tmp_path)
    assert svg.returncode == 0 and b"<svg" in (tmp_path / "one.svg").read_bytes()


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        ("missing", "not a run folder"),
        ("no_file", "no episodes.jsonl"),
        ("empty", "holds no episode"),
        ("garbage", "holds no episode"),
    ],
)
def test_a_bad_run_folder_is_one_line_and_exit_2(tmp_path, setup, says):
    good = make_run(tmp_path, "good", "dqn", [1.0, 2.0])
    bad = tmp_path / "bad"
    if setup != "missing":
        bad.mkdir()
    if setup == "empty":
        (bad / "episodes.jsonl").write_text("")
    if setup == "garbage":
        (bad / "episodes.jsonl").write_text('[1]\n{"return": "x", "env_steps": 1}\nnot json\n')
    out = cli(str(good), str(bad), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and says in out.stderr and str(bad) in out.stderr
    assert not (tmp_path / "compare.png").exists(), "nothing drawn when a run is bad"


def test_an_unknown_figure_format_is_exit_2(tmp_path):
    good = make_run(tmp_path, "good", "dqn", [1.0, 2.0])
    out = cli(str(good), "-o", "figure.exe", cwd=tmp_path)
    assert out.returncode == 2 and "must end in .png, .pdf, .svg" in out.stderr


def test_hostile_records_are_skipped_and_labels_are_plain_text(tmp_path):
    run = make_run(tmp_path, "_$\\frac{1}{0}$_dqn", "dqn", [5.0, 6.0])
    hostile = [
        '{"return": NaN, "env_steps": 1}',
        '{"return": 1e300, "env_steps": 2}',
        '{"return": true, "env_steps": 3}',
        '{"return": 1.0, "env_steps": -Infinity}',
        "[" * 50_000 + "]" * 50_000,  # deep nesting: RecursionError, skipped
        "x" * (1 << 17),  # beyond MAX_LINE
        '{"return": 7.0, "env_steps": 20, "time": 100.0}',  # no wall_time: from time
    ]
    with open(run / "episodes.jsonl", "a") as f:
        f.write("\n".join(hostile) + "\n")
    curve = read_run(run, str(run))
    assert curve.returns.tolist() == [5.0, 6.0, 7.0]
    assert curve.env_steps.tolist() == [5.0, 11.0, 20.0]
    assert curve.label.startswith(" _") and "\\$" in curve.label and "\\frac" not in curve.label


def test_moving_average_is_the_mean_of_the_last_window_values():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(moving_average(y, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(moving_average(y, 10), [1.0, 1.5, 2.0, 2.5, 3.0])


def test_read_run_of_a_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a run folder"):
        read_run(tmp_path / "nope", "nope")
