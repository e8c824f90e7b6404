"""Client overhead: env steps/s of a real `soulsai client` on CartPole (policy, n-step, batching,
sending, heartbeats, weight watching) against a bare Gymnasium loop with the same policy network
in one process. The ratio is the cost of being distributed.

    python bench/client.py [--seconds 10] [--env CartPole-v1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line, node_sets, soulsai_proc, stop  # noqa: E402
from soulsai.client.policy import NumpyQPolicy  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.nets import QNetwork  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
CLIENT_CPU = set(CPUS[:1])
OTHER_CPUS = set(CPUS[1:]) or CLIENT_CPU


def _pin(pid: int, cpus: set[int]) -> None:
    """Linux: keep the measured loop on one core and everything else off it."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cpus)


def bare_loop(env_id: str, seconds: float) -> float:
    """The same epsilon-greedy numpy policy, stepping a plain env, nothing else."""
    _pin(0, CLIENT_CPU)
    cfg = load_config(Path(__file__).resolve().parents[1] / "config")
    env = gym.make(env_id)
    net = QNetwork(env.observation_space.shape, int(env.action_space.n), cfg.dqn.hidden, True)
    policy = NumpyQPolicy(net.state_dict(), True)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        action = policy.act(obs[None], 0.05, rng)[0]
        obs, _, term, trunc, _ = env.step(action)
        steps += 1
        if term or trunc:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - t0)


def distributed(env_id: str, seconds: float) -> float:
    """One real client process; its heartbeat reports the steps it took."""
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        prefix = f"cb{time.time_ns() % 10**6}"
        sets = node_sets(server.port, prefix, Path(tmp), f"env.id={env_id}",
                         "dqn.learning_starts=1000000000", "dqn.throttle=false")
        node = soulsai_proc(["node", "training", *sets], server.password, Path(tmp) / "n.log")
        client = soulsai_proc(["client", *sets, "--client-id", "bench"], server.password,
                              Path(tmp) / "c.log")
        _pin(client.pid, CLIENT_CPU)  # the client gets a core to itself, as on its own machine
        _pin(node.pid, OTHER_CPUS)
        if server.proc is not None:
            _pin(server.proc.pid, OTHER_CPUS)
        r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        key = Keys(prefix).heartbeat("bench")

        def steps() -> tuple[float, int]:
            raw = r.get(key)
            return time.time(), int(json.loads(raw)["steps"]) if raw else 0

        deadline = time.time() + 60
        while steps()[1] == 0 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # warm up
        t0, s0 = steps()
        time.sleep(seconds)
        t1, s1 = steps()
        stop(client)
        stop(node)
        return (s1 - s0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--env", default="CartPole-v1")
    args = ap.parse_args()
    print(machine_line())
    ours = distributed(args.env, args.seconds)
    bare = bare_loop(args.env, args.seconds)
    print(f"{args.env}: bare loop {bare:,.0f} steps/s | soulsai client {ours:,.0f} steps/s | "
          f"client/bare {ours / bare:.2f} (overhead {100 * (1 - ours / bare):.0f}%)")


if __name__ == "__main__":
    main()
