"""A real `soulsai train` run, watched the way Prometheus and a person do: both /metrics pass
`promtool check metrics`, counts are counters, the run is named, every reject reason is there
before the first reject, and the smoothed env-steps rate never reads 0 while steps flow."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from soulsai.metrics import EPISODE_REJECTS, TRAINER_REJECTS
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def summary(port: int) -> dict:
    return json.loads(get(f"http://127.0.0.1:{port}/api/summary"))


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool missing (Debian: apt-get install prometheus; scripts/setup.sh)")
    return found


def test_a_real_run_serves_clean_metrics_and_a_rate_that_never_reads_zero(
    tmp_path: Path, promtool: str
) -> None:
    mport, hport = free_port(), free_port()
    log = tmp_path / "train.log"
    args = [
        sys.executable, "-m", "soulsai", "train", "--algo", "ppo", "--env", "CartPole-v1",
        "--save-dir", str(tmp_path / "saves"), "--clients", "2", "--max-steps", "0",
        "--target-return", "1e9", "--no-progress", "--redis", "embedded",
        "--set", f"training.metrics_port={mport}", "--set", f"telemetry.http_port={hport}",
        "--set", "env.step_delay=0.001",  # a few hundred steps/s per client: a light run
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:

        def flowing() -> float | None:
            try:
                rate = summary(hport).get("env_steps_per_second")
            except OSError:
                return None
            return rate if rate else None  # the first positive reading

        wait_until(flowing, 120, "a positive env_steps_per_second in /api/summary")
        seen = []
        for _ in range(12):  # 6 s, several of the telemetry node's 1-s samples
            s = summary(hport)
            seen.append((s["env_steps"], s["env_steps_per_second"], s["steps_per_s"]))
            time.sleep(0.5)
        assert seen[-1][0] > seen[0][0], seen  # steps flowed all along
        assert all(rate > 0 and old == rate for _, rate, old in seen), seen

        trainer = get(f"http://127.0.0.1:{mport}/metrics")
        telemetry = get(f"http://127.0.0.1:{hport}/metrics")
        for name, text in (("training", trainer), ("telemetry", telemetry)):
            checked = subprocess.run(
                [promtool, "check", "metrics"], input=text, capture_output=True, text=True
            )
            print(f"promtool check metrics ({name} node): exit {checked.returncode}")
            print(checked.stdout + checked.stderr)
            assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip()
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: an orderly stop
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    got, tel = samples(trainer), samples(telemetry)
    (run,) = (tmp_path / "saves").iterdir()
    info = dict(algo="ppo", env="CartPole-v1", preset="", run=run.name)
    for node, values in (("trainer", got), ("telemetry", tel)):
        assert values[("soulsai_run_info", tuple(sorted(info.items())))] == 1.0, node
    assert got[("soulsai_trainer_env_steps_total", ())] > 0
    assert ("soulsai_trainer_accepted_total", ()) in got
    assert ("soulsai_trainer_updates_total", ()) in got
    assert tel[("soulsai_telemetry_episodes_total", ())] > 0
    assert tel[("soulsai_telemetry_env_steps_per_second", ())] > 0
    for reason in TRAINER_REJECTS:
        assert ("soulsai_trainer_rejected_total", (("reason", reason),)) in got, reason
    for reason in EPISODE_REJECTS:
        assert ("soulsai_telemetry_rejected_total", (("reason", reason),)) in tel, reason
    assert not [k for k in (*got, *tel) if "_per_s" in k[0] and "per_second" not in k[0]]
    assert f"ppo on CartPole-v1, run folder: {run}\n" in log.read_text()  # printed at start
