"""Masks on the SoulsGym interface: `soulsai train` on soulsai/IudexLike-v0 (SoulsGym's Dict
observations and 20 actions, a boss with wind-ups to dodge and recoveries to hit; see
soulsai/envs/soulslike.py) with the action mask on and off, same seeds, same invocation.

Per algorithm and seed the two runs go one after the other, the order alternating from seed to
seed; each is a whole `soulsai train` (2 clients through an embedded Redis, the algorithm's
SoulsGymIudex preset applied to the shaped env) for `--max-steps` env steps. From each run's
episodes.jsonl it prints the rolling mean of the last 20 returns at every `--every` env steps
(the curve), the env steps at which that mean first reached `--target` (the stop rule is not
used: every run goes the whole budget, so the curves compare), and per algorithm the median
steps-to-target of both settings and their ratio masked/unmasked (an unreached target counts as
the budget, and a median that falls on one is printed as "> budget").

For reference, on this env (200 episodes each, `soulsai.envs.soulslike_play.run_episodes`): random
actions return -1.05 and never win; a scripted dodge-then-hit policy returns +0.74 and wins 94 %.
Seeds 101 and up are for reporting: no setting was tuned on them.

    python bench/soulslike.py                                   # dqn and ppo, seeds 101-103
    python bench/soulslike.py --algo dqn --seeds 101 --max-steps 60000 --target 0.0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line  # noqa: E402

ENV = "soulsai/IudexLike-v0"
WINDOW = 20  # episodes in the rolling mean, as `soulsai train --target-return` uses


def run(
    algo: str, seed: int, masked: bool, max_steps: int, max_seconds: float, extra: list[str]
) -> dict:
    """One whole `soulsai train` for `max_steps` env steps with the algorithm's SoulsGymIudex
    preset (and `extra` arguments); its episodes (env_steps, return)."""
    mask = "action_mask" if masked else "null"
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "soulsai",
            "train",
            "--algo",
            algo,
            "--env",
            ENV,
            "--seed",
            str(seed),
            "--clients",
            "2",
            "--max-steps",
            str(max_steps),
            "--save-dir",
            tmp,
            "--no-progress",
            "--redis",
            "embedded",
            "--set",
            "env.imports=[soulsai.envs.soulslike]",
            "--set",
            f"preset={algo}/SoulsGymIudex-v0.yaml",
            "--set",
            f"env.action_mask={mask}",
            *extra,
        ]
        t0 = time.time()
        out = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max_seconds, cwd=tmp, check=False
            )
        wall = time.time() - t0
        episodes = []
        for path in Path(tmp).glob("*/episodes.jsonl"):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if "env_steps" in rec and "return" in rec:
                        episodes.append((int(rec["env_steps"]), float(rec["return"])))
    episodes.sort()
    err = "" if out is None or out.returncode == 0 else out.stderr.strip()[-300:]
    return {"episodes": episodes, "wall_seconds": round(wall, 1), "error": err}


def rolling(episodes: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """(env steps, mean of the last WINDOW returns) after each episode from the WINDOW-th on."""
    out = []
    for i in range(WINDOW - 1, len(episodes)):
        window = episodes[i - WINDOW + 1 : i + 1]
        out.append((episodes[i][0], statistics.fmean(r for _, r in window)))
    return out


def curve(roll: list[tuple[int, float]], every: int, max_steps: int) -> list[float | None]:
    """The rolling mean as it stood at every `every` env steps (None before WINDOW episodes)."""
    points, j, last = [], 0, None
    for step in range(every, max_steps + 1, every):
        while j < len(roll) and roll[j][0] <= step:
            last = roll[j][1]
            j += 1
        points.append(last)
    return points


def steps_to(roll: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, m in roll if m >= target), None)


def censored_median(values: list[int | None], budget: int) -> tuple[float, bool]:
    vals = sorted((float(v), False) if v is not None else (float(budget), True) for v in values)
    mid = len(vals) // 2
    if len(vals) % 2:
        return vals[mid]
    (a, ca), (b, cb) = vals[mid - 1], vals[mid]
    return (a + b) / 2, ca or cb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--algo", nargs="*", default=["dqn", "ppo"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[101, 102, 103])
    ap.add_argument("--max-steps", type=int, default=150_000)
    ap.add_argument("--target", type=float, default=0.0, help="rolling-20 mean return")
    ap.add_argument("--every", type=int, default=10_000, help="curve resolution in env steps")
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra --set for soulsai train"
    )
    args = ap.parse_args()
    extra = [x for s in args.sets for x in ("--set", s)]
    print(f"{machine_line()} | nice {os.nice(0)} | {ENV}, target {args.target}", flush=True)
    for algo in args.algo:
        reached: dict[bool, list[int | None]] = {True: [], False: []}
        for i, seed in enumerate(args.seeds):
            for masked in (True, False) if i % 2 == 0 else (False, True):
                r = run(algo, seed, masked, args.max_steps, args.max_seconds, extra)
                roll = rolling(r["episodes"])
                hit = steps_to(roll, args.target)
                reached[masked].append(hit)
                pts = curve(roll, args.every, args.max_steps)
                shown = " ".join("-" if p is None else f"{p:+.2f}" for p in pts)
                name = "masked" if masked else "unmasked"
                print(
                    f"{algo} seed {seed} {name}: {len(r['episodes'])} episodes, "
                    f"{r['wall_seconds']} s, target at {hit if hit is not None else 'never'}; "
                    f"rolling return per {args.every // 1000}k steps: {shown}"
                    + (f" | error: {r['error']}" if r["error"] else ""),
                    flush=True,
                )
        line = [f"{algo}:"]
        med = {}
        for masked in (True, False):
            m, cens = censored_median(reached[masked], args.max_steps)
            med[masked] = (m, cens)
            got = sum(v is not None for v in reached[masked])
            shown = f"> {args.max_steps / 1000:.0f}k" if cens else f"{m / 1000:.1f}k"
            line.append(
                f"{'masked' if masked else 'unmasked'} reached {got}/{len(args.seeds)}, "
                f"median steps {shown}"
            )
        (a, ca), (b, cb) = med[True], med[False]
        if not ca:
            line.append(f"ratio masked/unmasked steps {'< ' if cb else ''}{a / b:.2f}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
