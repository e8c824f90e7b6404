"""Atari end to end, as a user runs it (real Redis, real processes): a short `soulsai train
--algo dqn --env ALE/Breakout-v5` with its preset. While it runs, the live page's data endpoint
(/api/live) shows the Atari episodes as whole games; at the end the run has its telemetry.png;
`soulsai evaluate --video` then writes a GIF of the raw RGB screen (210x160, what a user wants
to watch, not the 84x84 grayscale frames the network sees), played in real time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import wait_until
from tests.integration.test_telemetry import free_port, http

pytestmark = pytest.mark.integration
pytest.importorskip("ale_py")
Image = pytest.importorskip("PIL.Image")

ENV = "ALE/Breakout-v5"
SETS = [  # the preset, made small: a few updates of a narrow head after 200 transitions;
    # epsilon stays near 1 (the preset's decay over 1M steps): random play ends Breakout games
    # in a few hundred steps, where an untrained greedy policy can keep one going for the whole
    # budget (two games on the live page are then a matter of luck)
    "target_return=null", "dqn.learning_starts=200", "dqn.batch_size=8", "dqn.replay_ratio=1",
    "dqn.buffer_size=2000", "dqn.hidden=[16]", "dqn.update_samples=64",
    "training.metrics_port=0", "telemetry.figure_interval=0",
]  # fmt: skip
# evaluation plays whole games; an untrained policy can keep a serve in play for long, so the
# game is cut at 2,000 ALE frames (500 agent steps) through gym.make's limit
EVAL_KWARGS = "env.kwargs={frameskip: 1, repeat_action_probability: 0.25, max_episode_steps: 2000}"


def live(port: int) -> dict | None:
    try:
        return json.loads(http(port, "/api/live?points=50"))
    except OSError:
        return None


def test_breakout_dqn_run_live_page_figure_and_evaluate_video(tmp_path, config_dir) -> None:
    port = free_port()
    save = tmp_path / "saves"
    cmd = [sys.executable, "-m", "soulsai", "train", "--algo", "dqn", "--env", ENV]
    cmd += ["--config-dir", str(config_dir), "--save-dir", str(save), "--max-steps", "1200"]
    cmd += ["--clients", "2", "--redis", "embedded", "--no-progress"]
    cmd += [x for s in [*SETS, f"telemetry.http_port={port}"] for x in ("--set", s)]
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the live endpoint shows the Atari episodes while the run goes on
        def games() -> dict | None:
            if proc.poll() is not None:
                return {"ended": proc.returncode}
            page = live(port)
            if not page or page["summary"].get("episodes", 0) < 2:
                return None
            # the env steps come from the training node's stats, a beat behind the episodes
            return page if page["summary"].get("env_steps", 0) > 0 else None

        page = wait_until(games, 240, "two Breakout games and env steps on the live page")
        assert "ended" not in page, (tmp_path / "train.log").read_text()[-3000:]
        (ret,) = [p for p in page["panels"] if p["name"] == "return"]
        assert len(ret["x"]) >= 2 and all(r is not None and r >= 0 for r in ret["raw"])
        assert page["summary"]["env_steps"] > 0
        assert proc.wait(240) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    (run,) = [p for p in save.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    # whole games (5 lives), not the learner's life-long episodes: longer than one life's
    assert records and all(r["length"] >= 20 for r in records)
    with Image.open(run / "telemetry.png") as fig:
        assert fig.format == "PNG" and fig.size[0] > 200 and fig.size[1] > 200

    ev = subprocess.run(
        [sys.executable, "-m", "soulsai", "evaluate", str(run), "--config-dir", str(config_dir),
         "--model", "latest", "--episodes", "1", "--video", "video", "--set", EVAL_KWARGS],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    (gif,) = (tmp_path / "video").glob("episode-*.gif")
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames > 1
        assert img.size == (160, 210)  # the ALE screen (width x height), not 84x84
        assert img.info["duration"] == 70  # real time: 60 Hz / frame skip 4 = 15 fps
        img.seek(img.n_frames // 2)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is not None and len(colours) > 2  # a colour picture, not a blank
