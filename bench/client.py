"""Client overhead: env steps/s of a real `soulsai client` on CartPole (policy, n-step, batching,
sending, heartbeats, weight watching) against a bare Gymnasium loop with the same policy network
(the client's published weights, its epsilon) in one process, both on the same core. The ratio
is the cost of being distributed.

Both arms also report steps per CPU-second of their process (all threads): on a machine shared
with other work that figure moves less than steps/s, since time the core spends on others is
not counted. On a busy machine, the best round of each arm (the least disturbed) is the
fairest pair. Steps per episode are printed to show both arms step the same episodes.

    python bench/client.py [--seconds 10] [--rounds 1] [--env CartPole-v1] [--set key=value]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line, node_sets, soulsai_proc, stop  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.model.numpy_q import NumpyQPolicy  # noqa: E402
from soulsai.model.shapes import dqn_weight_shapes  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402
from soulsai.transport.weights import decode_weights  # noqa: E402

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
CLIENT_CPU = set(CPUS[:1])
OTHER_CPUS = set(CPUS[1:]) or CLIENT_CPU
WARM_UP = 2.0
BOOST = -10  # niceness of both measured loops


class Arm:
    """One measurement: steps/s, steps per CPU-second, steps per episode."""

    def __init__(self, steps: int, episodes: int, wall: float, cpu: float) -> None:
        self.rate = steps / wall
        self.cpu_rate = steps / cpu if cpu > 0 else float("nan")
        self.ep_len = steps / max(episodes, 1)


def _pin(pid: int, cpus: set[int]) -> None:
    """Linux: keep the measured loop on one core and everything else off it."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cpus)


def _boost(pid: int, niceness: int) -> None:
    """Linux, as root: on a machine shared with other work, a measured loop that outranks it
    comes closer to having its core to itself. Threads inherit it from the thread that starts
    them. Without the right to raise priority, nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, pid, niceness)


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_loop(env_id: str, seconds: float, state: dict, normalize: bool, eps: float) -> Arm:
    """The same epsilon-greedy numpy policy, stepping a plain env, nothing else."""
    _pin(0, CLIENT_CPU)
    env = gym.make(env_id)
    policy = NumpyQPolicy(state, normalize)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps = episodes = 0
    t0 = time.perf_counter()
    c0 = s0 = e0 = None
    while (now := time.perf_counter()) - t0 < seconds + WARM_UP:
        if c0 is None and now - t0 >= WARM_UP:
            t0, c0, s0, e0 = now - WARM_UP, time.process_time(), steps, episodes
        action = policy.act(obs[None], eps, rng)[0]
        obs, _, term, trunc, _ = env.step(action)
        steps += 1
        if term or trunc:
            obs, _ = env.reset()
            episodes += 1
    assert c0 is not None and s0 is not None and e0 is not None
    return Arm(steps - s0, episodes - e0, now - t0 - WARM_UP, time.process_time() - c0)


def distributed(
    env_id: str, seconds: float, rounds: int, sets: list[str]
) -> tuple[list[Arm], list[Arm]]:
    """One real client process; its heartbeat reports the steps it took. Between client
    measurements, the bare loop runs on the same core with the client's weights (the client
    is stopped meanwhile: SIGSTOP, Linux)."""
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        prefix = f"cb{time.time_ns() % 10**6}"
        extra = [
            f"env.id={env_id}",
            "dqn.learning_starts=1000000000",
            "dqn.throttle=false",
            "dqn.eps_decay_steps=1",
            *sets,
        ]  # epsilon = eps_end from the start, in both arms
        sets = node_sets(server.port, prefix, Path(tmp), *extra)
        cfg = load_config(ROOT / "config", extra)
        node = soulsai_proc(["node", "training", *sets], server.password, Path(tmp) / "n.log")
        client = soulsai_proc(
            ["client", *sets, "--client-id", "bench"], server.password, Path(tmp) / "c.log"
        )
        _pin(client.pid, CLIENT_CPU)  # the client gets a core to itself, as on its own machine
        _boost(client.pid, BOOST)  # before it starts its threads (it is still importing)
        _pin(node.pid, OTHER_CPUS)
        if server.proc is not None:
            _pin(server.proc.pid, OTHER_CPUS)
        r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        keys = Keys(prefix)

        def beat() -> dict:
            raw = r.get(keys.heartbeat("bench"))
            return json.loads(raw) if raw else {}

        def status() -> tuple[float, int, int, float]:
            """At a fresh heartbeat: its time, steps and episodes, and the client's CPU time."""
            last = beat().get("time")
            while (b := beat()).get("time") == last:
                time.sleep(0.002)
            return b["time"], b["steps"], b["episodes"], _cpu_seconds(client.pid)

        deadline = time.time() + 60
        while beat().get("steps", 0) == 0 and time.time() < deadline:
            time.sleep(0.2)
        env = gym.make(env_id)
        shapes = dqn_weight_shapes(cfg.dqn, env.observation_space.shape, int(env.action_space.n))
        state, _ = decode_weights(r.get(keys.weights), shapes, 1 << 30)
        ours, bare = [], []
        for _ in range(rounds):
            time.sleep(WARM_UP)
            t0, s0, e0, c0 = status()
            time.sleep(seconds)
            t1, s1, e1, c1 = status()
            ours.append(Arm(s1 - s0, e1 - e0, t1 - t0, c1 - c0))
            client.send_signal(19)  # SIGSTOP: the core is the bare loop's alone
            _pin(0, CLIENT_CPU)
            _boost(0, BOOST)
            bare.append(bare_loop(env_id, seconds, state, cfg.dqn.normalize_obs, cfg.dqn.eps_end))
            _boost(0, 0)
            _pin(0, OTHER_CPUS)
            client.send_signal(18)  # SIGCONT
        stop(client)
        stop(node)
        return ours, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=1, help="client/bare pairs, median reported")
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="config override for both arms, e.g. --set 'dqn.hidden=[256, 256]'",
    )
    args = ap.parse_args()
    print(machine_line())
    ours, bare = distributed(args.env, args.seconds, args.rounds, args.sets)
    for o, b in zip(ours, bare, strict=True):
        print(
            f"  round: bare {b.rate:,.0f}/s {b.cpu_rate:,.0f}/cpu-s | client {o.rate:,.0f}/s "
            f"{o.cpu_rate:,.0f}/cpu-s | steps/episode bare {b.ep_len:.1f} client {o.ep_len:.1f}"
        )
    ratio = statistics.median(o.rate / b.rate for o, b in zip(ours, bare, strict=True))
    cpu_ratio = statistics.median(o.cpu_rate / b.cpu_rate for o, b in zip(ours, bare, strict=True))
    rate, bare_rate = (statistics.median(a.rate for a in arm) for arm in (ours, bare))
    best = max(o.rate for o in ours) / max(b.rate for b in bare)
    best_cpu = max(o.cpu_rate for o in ours) / max(b.cpu_rate for b in bare)
    print(
        f"{args.env}: bare loop {bare_rate:,.0f} steps/s | soulsai client {rate:,.0f} steps/s | "
        f"client/bare {ratio:.2f} (overhead {100 * (1 - ratio):.0f}%) | "
        f"per CPU-second {cpu_ratio:.2f} | best round against best round {best:.2f}, "
        f"per CPU-second {best_cpu:.2f}"
    )


if __name__ == "__main__":
    main()
