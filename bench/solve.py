"""Time to solve: `soulsai train` (2 clients) against Stable-Baselines3 with RL-Zoo's tuned
hyperparameters, same machine, same run, same stop rule (mean of the last 20 training-episode
returns >= threshold), whole-process wall seconds. Prints the median over seeds and the ratio
ours/SB3. Bench-only dependency: `pip install -e .[bench]`.

    python bench/solve.py                                  # all four cases, 3 seeds each
    python bench/solve.py --case dqn:CartPole-v1 --seeds 1 2 3 --max-seconds 600
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line  # noqa: E402

TARGETS = {"CartPole-v1": 475.0, "LunarLander-v3": 200.0}
CASES = ["dqn:CartPole-v1", "ppo:CartPole-v1", "dqn:LunarLander-v3", "ppo:LunarLander-v3"]


def run_ours(
    algo: str,
    env: str,
    seed: int,
    max_steps: int | None,
    max_seconds: float,
    extra: list[str],
    clients: int = 2,
    target: float | None = None,
) -> dict:
    """Whole-process `soulsai train` until solved (target: TARGETS[env] unless given;
    max_steps None: the config's, from the defaults or the env's preset)."""
    # A child cut off by the timeout may still be writing into tmp while it is removed.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        t0 = time.time()
        cmd = [
            sys.executable,
            "-m",
            "soulsai",
            "train",
            "--algo",
            algo,
            "--env",
            env,
            "--seed",
            str(seed),
            "--clients",
            str(clients),
            "--target-return",
            str(TARGETS[env] if target is None else target),
            *(["--max-steps", str(max_steps)] if max_steps is not None else []),
            "--save-dir",
            tmp,
            "--no-progress",
            "--redis",
            "embedded",
            "--set",
            "training.metrics_port=0",
            "--set",
            "telemetry.http_port=0",
            *extra,
        ]
        # On a timeout the summary still says what was reached; the children die with the parent.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, timeout=max_seconds, cwd=tmp, check=False)
        wall = time.time() - t0
        runs = list(Path(tmp).glob("*/summary.json"))
        s = json.loads(runs[0].read_text()) if runs else {}
    return {
        "peer": "soulsai",
        "solved": bool(s.get("solved")),
        "env_steps": s.get("env_steps"),
        "best_rolling_return": s.get("best_rolling_return"),
        "wall_seconds": round(wall, 2),
    }


def run_sb3(
    algo: str,
    env: str,
    seed: int,
    max_steps: int | None,
    max_seconds: float,
    target: float | None = None,
    delay: float = 0.0,
    n_envs: int | None = None,
) -> dict:
    """Whole-process bench/sb3_run.py until solved (target: TARGETS[env] unless given; a
    real-time `delay` per step; `n_envs` overrides the zoo's env count; max_steps None: its
    default)."""
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "sb3_run.py"),
        "--algo",
        algo,
        "--env",
        env,
        "--target",
        str(TARGETS[env] if target is None else target),
        "--seed",
        str(seed),
        "--max-seconds",
        str(max_seconds),
        "--delay",
        str(delay),
    ]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    if n_envs is not None:
        cmd += ["--n-envs", str(n_envs)]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 120)
    wall = time.time() - t0
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"peer": "sb3", "solved": False, "error": out.stderr[-500:], "wall_seconds": wall}
    res["wall_seconds"] = round(wall, 2)
    return res


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get("solved") and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="*", default=CASES)
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="env steps at most (default: ours, the config's max_steps, as `soulsai train` "
        "uses it; SB3, 1M, over which its zoo schedules are stretched as RL-Zoo does)",
    )
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--ours-only", action="store_true")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra --set for soulsai train"
    )
    args = ap.parse_args()
    print(machine_line(), flush=True)
    extra = [x for s in args.sets for x in ("--set", s)]
    for case in args.case:
        algo, env = case.split(":")
        rows: dict[str, list[dict]] = {"soulsai": [], "sb3": []}
        for seed in args.seeds:
            # Ours runs with the preset shipped for algo + env (config/presets/), if any.
            ours = run_ours(algo, env, seed, args.max_steps, args.max_seconds, extra)
            rows["soulsai"].append(ours)
            print(f"{case} seed {seed} soulsai: {json.dumps(ours)}", flush=True)
            if not args.ours_only:
                peer = run_sb3(algo, env, seed, args.max_steps or 1_000_000, args.max_seconds)
                rows["sb3"].append(peer)
                print(f"{case} seed {seed} sb3:     {json.dumps(peer)}", flush=True)
        line = [f"{case}:"]
        for name, rs in rows.items():
            if not rs:
                continue
            solved = sum(r.get("solved", False) for r in rs)
            line.append(
                f"{name} solved {solved}/{len(rs)}, median wall {_median(rs, 'wall_seconds')}"
                f" s, median steps {_median(rs, 'env_steps')}"
            )
        a, b = _median(rows["soulsai"], "wall_seconds"), _median(rows["sb3"], "wall_seconds")
        if a and b:
            line.append(f"ratio ours/sb3 wall {a / b:.2f}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
