"""Slow environments, the reason soulsai exists: the same env with a fixed real-time delay per
step (standing in for a game that runs in real time), N = 1, 2, 4, 8 sampling clients.
Reports env steps/s (scaling against N x one client) and, with --solve, time to solve against
Stable-Baselines3's best single-machine set-up on the same delayed env (DummyVecEnv for DQN,
SubprocVecEnv with N envs for PPO). Bench-only dependency for --solve: `pip install -e .[bench]`.

    python bench/scaling.py                       # steps/s, 5 ms per step, DQN CartPole
    python bench/scaling.py --solve --clients 8   # plus time to solve, ours vs SB3
    python bench/scaling.py --solve --clients 8 --ours-only   # ours only (SB3 takes long)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_line, node_sets, soulsai_proc, stop  # noqa: E402
from bench.solve import run_ours, run_sb3  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402


def steps_per_second(
    algo: str, env_id: str, delay: float, clients: int, seconds: float, sets: list[str]
) -> float:
    """Env steps/s the training node receives from N clients on the delayed env."""
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        prefix = f"sc{clients}{time.time_ns() % 10**6}"
        sets = node_sets(
            server.port,
            prefix,
            Path(tmp),
            f"algo={algo}",
            f"env.id={env_id}",
            f"env.step_delay={delay}",
            *sets,
        )
        node = soulsai_proc(["node", "training", *sets], server.password, Path(tmp) / "n.log")
        procs = [
            soulsai_proc(["client", *sets], server.password, Path(tmp) / f"c{i}.log")
            for i in range(clients)
        ]
        r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        keys = Keys(prefix)

        def snap() -> tuple[float, int]:
            return time.time(), int(r.hget(keys.trainer_stats, "env_steps") or 0)

        deadline = time.time() + 90
        while snap()[1] == 0 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
        t0, s0 = snap()
        time.sleep(seconds)
        t1, s1 = snap()
        for p in procs:
            stop(p)
        stop(node)
        return (s1 - s0) / (t1 - t0)


def solve_ours(
    algo: str,
    env_id: str,
    delay: float,
    clients: int,
    target: float,
    max_seconds: float,
    sets: list[str],
    seed: int,
) -> dict:
    extra = [x for s in [f"env.step_delay={delay}", *sets] for x in ("--set", s)]
    return run_ours(algo, env_id, seed, 0, max_seconds, extra, clients=clients, target=target)


def solve_sb3(
    algo: str,
    env_id: str,
    delay: float,
    clients: int,
    target: float,
    max_seconds: float,
    seed: int,
) -> dict:
    """SB3's best single-machine set-up on the delayed env: DummyVecEnv (one env, the zoo's
    DQN) or SubprocVecEnv with one env per client (PPO)."""
    n_envs = clients if algo == "ppo" else None
    return run_sb3(algo, env_id, seed, None, max_seconds, target, delay, n_envs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--algo", default="dqn", choices=["dqn", "ppo"])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--delay", type=float, default=0.005, help="seconds slept per env step")
    ap.add_argument("--clients", nargs="*", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--solve", action="store_true", help="also time to solve, ours vs SB3")
    ap.add_argument("--target", type=float, default=475.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    ap.add_argument("--seed", type=int, default=101, help="with --solve (101+: never tuned on)")
    ap.add_argument("--ours-only", action="store_true", help="with --solve: skip the SB3 run")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="config override for ours"
    )
    args = ap.parse_args()
    print(machine_line())
    print(f"{args.algo} {args.env}, {args.delay * 1000:.1f} ms per step")
    one = None
    for n in args.clients:
        sps = steps_per_second(args.algo, args.env, args.delay, n, args.seconds, args.sets)
        one = one or sps / n
        print(
            f"clients {n}: {sps:,.0f} env steps/s = {sps / (n * one):.2f} x N x one client's",
            flush=True,
        )
    if args.solve:
        n = max(args.clients)
        ours = solve_ours(
            args.algo, args.env, args.delay, n, args.target, args.max_seconds, args.sets, args.seed
        )
        print(f"soulsai, {n} clients: {json.dumps(ours)}", flush=True)
        if args.ours_only:
            return
        peer = solve_sb3(
            args.algo, args.env, args.delay, n, args.target, args.max_seconds, args.seed
        )
        print(f"sb3 ({peer.get('vec_env')}, {peer.get('n_envs')} envs): {json.dumps(peer)}")
        if ours.get("solved") and peer.get("solved"):
            print(f"time to solve ours/sb3: {ours['wall_seconds'] / peer['wall_seconds']:.2f}")
        elif ours.get("solved"):  # SB3 ran out of time: the ratio is at most this
            print(f"time to solve ours/sb3: < {ours['wall_seconds'] / args.max_seconds:.2f}")


if __name__ == "__main__":
    main()
