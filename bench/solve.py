"""Time to solve: `soulsai train` (2 clients, live page and /metrics on, as a user runs it)
against Stable-Baselines3 with RL-Zoo's tuned hyperparameters (torch's default threads, the
zoo's vectorized set-up), same machine, same invocation, same niceness, same stop rule (mean of
the last 20 training-episode returns >= threshold), whole-process wall seconds. The two run one
after the other per seed, the order alternating from seed to seed.

Per case it prints both sides' solved/total, the medians of wall seconds and env steps over all
seeds (a seed that did not solve counts as "not within" its limit, so a median that falls on
one is printed as "> N s"), and the ratio ours/SB3 of those medians, only when both sides ran
in this invocation. Seeds 101 and up are for reporting: no setting was tuned on them.
Bench-only dependency: `pip install -e .[bench]`.

    python bench/solve.py                                  # all five cases, seeds 101-103
    python bench/solve.py --case dqn:CartPole-v1 --seeds 101 102 103 --max-seconds 600
    python bench/solve.py --case dqn-rainbow:LunarLander-v3 dqn:LunarLander-v3
    python bench/solve.py --case ppo-lstm:CartPoleNoVel-v1  # recurrent PPO vs RecurrentPPO
    python bench/solve.py --ours-only --case r2d2:CartPoleNoVel-v1 dqn:CartPoleNoVel-v1

A case is `<variant>:<env>`. Besides `dqn` and `ppo`, the variants of issue 19's DQN options
(`VARIANTS`) run `soulsai train --algo dqn` with the env's preset plus one option each
(`dqn-dueling`, `dqn-per`, `dqn-noisy`, `qrdqn`: quantile regression), dueling with
prioritized replay (`dqn-dueling-per`) or all of Rainbow-lite
(`dqn-rainbow`: the preset `dqn/<env>-rainbow.yaml` where one ships, else its options); the
peer of `qrdqn`, `dqn-rainbow` and `dqn-dueling-per` is sb3-contrib's QR-DQN with RL-Zoo's
hyperparameters, the others' SB3's DQN. Steps-to-solve against plain DQN: compare the
`dqn:<env>` line's median.
`ppo-lstm:CartPoleNoVel-v1` (issue 20) runs recurrent PPO with its preset
(config/presets/ppo/soulsai/CartPoleNoVel-v1.yaml: an LSTM, whole 32-step fragments) on
soulsai/CartPoleNoVel-v1 against sb3-contrib's RecurrentPPO with RL-Zoo's ppo_lstm settings.
`r2d2:CartPoleNoVel-v1` (issue 20) runs the R2D2-style recurrent DQN with its preset
(config/presets/r2d2/soulsai/CartPoleNoVel-v1.yaml); its comparison is feed-forward DQN on the
same budget, `dqn:CartPoleNoVel-v1`, both with --ours-only.
`dqn:MinAtar-Breakout-v0` (issue 18, not in the default cases; `pip install -e .[bench]` brings
minatar) runs DQN with its preset (config/presets/dqn/soulsai/MinAtar-Breakout-v0.yaml: the
MinAtar paper's DQN with 3-step returns, `env.image_encoder: minatar`) on soulsai's MinAtar
adapter against SB3's DQN on the same adapter with soulsai's own CNN module as its features
extractor and the MinAtar paper's hyperparameters (bench/sb3_run.py; RL-Zoo has none for
MinAtar), to a rolling-20 return of TARGETS["MinAtar-Breakout-v0"]; `--peer-set n_steps=3`
gives SB3 the preset's 3-step returns too, like for like:

    python bench/solve.py --case dqn:MinAtar-Breakout-v0 --seeds 101 102 103 --max-seconds 1800
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, add_peer_set, machine_line  # noqa: E402

TARGETS = {"CartPole-v1": 475.0, "LunarLander-v3": 200.0, "CartPoleNoVel-v1": 475.0}
# MinAtar Breakout (issue 18's CNN check): random play scores about 0.5; with the preset, seed 4
# reached a rolling 3.4 in 222 s (24k steps) and 3.45 in 330 s on 2 cores shared at load 7-10
TARGETS["MinAtar-Breakout-v0"] = 3.0
CASES = ["dqn:CartPole-v1", "ppo:CartPole-v1", "dqn:LunarLander-v3", "ppo:LunarLander-v3"]
CASES.append("ppo-lstm:CartPoleNoVel-v1")  # recurrent PPO against sb3-contrib's RecurrentPPO
# The zoo's env names that soulsai registers under its own namespace: (our env id, --set items)
OUR_ENVS = {
    "CartPoleNoVel-v1": ("soulsai/CartPoleNoVel-v1", ["env.imports=[soulsai.envs.memory]"]),
    "MinAtar-Breakout-v0": ("soulsai/MinAtar-Breakout-v0", []),  # soulsai.envs registers it
}
RAINBOW = ["dqn.dueling=true", "dqn.n_quantiles=32", "dqn.prioritized=true"]
# variant -> (our algo, our --set items, the peer's bench/sb3_run.py --algo)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "dqn": ("dqn", [], "dqn"),
    "ppo": ("ppo", [], "ppo"),
    "dqn-dueling": ("dqn", ["dqn.dueling=true"], "dqn"),
    "dqn-per": ("dqn", ["dqn.prioritized=true"], "dqn"),
    "dqn-noisy": ("dqn", ["dqn.noisy=true"], "dqn"),
    "qrdqn": ("dqn", ["dqn.n_quantiles=32"], "qrdqn"),
    "dqn-rainbow": ("dqn", RAINBOW, "qrdqn"),
    # issue 19's best combination; its wall-time peer is sb3-contrib's QR-DQN, as the issue asks
    "dqn-dueling-per": ("dqn", ["dqn.dueling=true", "dqn.prioritized=true"], "qrdqn"),
    # its preset (ppo/soulsai/CartPoleNoVel-v1.yaml) sets ppo.recurrent; the --set keeps it so
    "ppo-lstm": ("ppo", ["ppo.recurrent=lstm"], "ppo_lstm"),
    # issue 20: R2D2-style recurrent DQN with its preset (r2d2/soulsai/CartPoleNoVel-v1.yaml);
    # compare it with --ours-only against dqn:CartPoleNoVel-v1 (feed-forward, same budget)
    "r2d2": ("r2d2", [], "dqn"),
}


def variant(name: str, env: str) -> tuple[str, list[str], str]:
    """(our algo, our --set arguments, the peer's algo) of a case's variant; dqn-rainbow takes
    the shipped rainbow preset of the env where there is one."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    algo, sets, peer = VARIANTS[name]
    if (
        name == "dqn-rainbow"
        and (ROOT / "config" / "presets" / "dqn" / f"{env}-rainbow.yaml").is_file()
    ):
        sets = [f"preset=dqn/{env}-rainbow.yaml"]
    return algo, [x for s in sets for x in ("--set", s)], peer


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
            *extra,
        ]
        # On a timeout the summary still says what was reached; the children die with the parent.
        err = ""
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max_seconds, cwd=tmp, check=False
            )
            err = done.stderr if done.returncode else ""
        except subprocess.TimeoutExpired:
            pass
        wall = time.time() - t0
        runs = list(Path(tmp).glob("*/summary.json"))
        s = json.loads(runs[0].read_text()) if runs else {}
    row = {
        "peer": "soulsai",
        "solved": bool(s.get("solved")),
        "env_steps": s.get("env_steps"),
        "best_rolling_return": s.get("best_rolling_return"),
        "wall_seconds": round(wall, 2),
    }
    if err:  # a run that failed says why (the last lines of its error output)
        row["error"] = err.strip()[-500:]
    return row


def run_sb3(
    algo: str,
    env: str,
    seed: int,
    max_steps: int | None,
    max_seconds: float,
    target: float | None = None,
    delay: float = 0.0,
    n_envs: int | None = None,
    hp: list[str] | None = None,
) -> dict:
    """Whole-process bench/sb3_run.py until solved (target: TARGETS[env] unless given; a
    real-time `delay` per step; `n_envs` overrides the zoo's env count; `hp` KEY=VALUE items
    override its hyperparameters; max_steps None: its default)."""
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
    cmd += [x for item in hp or [] for x in ("--hp", item)]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max_seconds + 120)
    wall = time.time() - t0
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"peer": "sb3", "solved": False, "error": out.stderr[-500:], "wall_seconds": wall}
    res["wall_seconds"] = round(wall, 2)
    return res


def censored_median(rows: list[dict], key: str, limit: float) -> tuple[float, bool]:
    """Median over all seeds of `key`, an unsolved seed counting as `limit` or more; the flag
    says the median falls on such a seed (it is then only a lower bound)."""
    vals = sorted(
        (float(r[key]), False) if r.get("solved") and r.get(key) is not None else (limit, True)
        for r in rows
    )
    mid = len(vals) // 2
    if len(vals) % 2:
        return vals[mid]
    (a, ca), (b, cb) = vals[mid - 1], vals[mid]
    return (a + b) / 2, ca or cb


def side_line(name: str, rows: list[dict], max_seconds: float, max_steps: float) -> str:
    solved = sum(bool(r.get("solved")) for r in rows)
    wall, wall_c = censored_median(rows, "wall_seconds", max_seconds)
    steps, steps_c = censored_median(rows, "env_steps", max_steps)
    wall_s = f"> {max_seconds:.0f} s" if wall_c else f"{wall:.1f} s"
    steps_s = "not solved" if steps_c else f"{steps / 1000:.1f}k"
    return f"{name} solved {solved}/{len(rows)}, median wall {wall_s}, median steps {steps_s}"


def ratio_line(ours: list[dict], peer: list[dict], max_seconds: float) -> str:
    """ours/SB3 of the censored wall medians: exact when neither falls on an unsolved seed,
    an upper bound when only SB3's does, nothing when ours does."""
    a, a_c = censored_median(ours, "wall_seconds", max_seconds)
    b, b_c = censored_median(peer, "wall_seconds", max_seconds)
    if a_c:
        return "ratio ours/sb3 wall: none (our median did not solve)"
    out = f"ratio ours/sb3 wall {'< ' if b_c else ''}{a / b:.2f}"
    sa, sa_c = censored_median(ours, "env_steps", 0.0)
    sb, sb_c = censored_median(peer, "env_steps", 0.0)
    if not (sa_c or sb_c):  # steps to solve compare only where both medians solved
        out += f", steps {sa / sb:.2f}"
    return out


def unsolved_notes(name: str, rows: list[dict], max_seconds: float) -> list[str]:
    """Why each unsolved seed stopped: its env steps, wall seconds and best rolling return
    (the step budget, the time limit or an error; the row says which was reached)."""
    return [
        f"{name} seed {r['seed']}: not solved, stopped at {r.get('env_steps')} env steps after "
        f"{r.get('wall_seconds', 0):.0f} s (limit {max_seconds:.0f} s), best rolling return "
        f"{r.get('best_rolling_return')}"
        for r in rows
        if not r["solved"]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", nargs="*", default=CASES)
    ap.add_argument("--seeds", nargs="*", type=int, default=[101, 102, 103])
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="env steps at most (default: ours, the config's max_steps, as `soulsai train` "
        "uses it; SB3, 1M, over which its zoo schedules are stretched as RL-Zoo does)",
    )
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--ours-only", action="store_true", help="no SB3 runs, so no ratio")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra --set for soulsai train"
    )
    add_peer_set(ap)
    args = ap.parse_args()
    print(f"{machine_line()} | nice {os.nice(0)} (both sides)", flush=True)
    if args.peer_sets:
        print(f"peer hyperparameters changed: {' '.join(args.peer_sets)}", flush=True)
    extra = [x for s in args.sets for x in ("--set", s)]
    for case in args.case:
        name, env = case.split(":")
        algo, sets, peer = variant(name, env)
        rows: dict[str, list[dict]] = {"soulsai": [], "sb3": []}
        for i, seed in enumerate(args.seeds):
            # interleaved seed by seed, who goes first alternating
            sides = ["soulsai", "sb3"] if i % 2 == 0 else ["sb3", "soulsai"]
            if args.ours_only:
                sides = ["soulsai"]
            for side in sides:
                if side == "soulsai":  # with the preset shipped for algo + env, if any
                    our_env, env_sets = OUR_ENVS.get(env, (env, []))
                    more = [x for s in env_sets for x in ("--set", s)] + sets + extra
                    r = run_ours(
                        algo,
                        our_env,
                        seed,
                        args.max_steps,
                        args.max_seconds,
                        more,
                        target=TARGETS[env],
                    )
                else:
                    r = run_sb3(
                        peer,
                        env,
                        seed,
                        args.max_steps or 1_000_000,
                        args.max_seconds,
                        hp=args.peer_sets,
                    )
                rows[side].append({**r, "seed": seed})
                print(f"{case} seed {seed} {side}: {json.dumps(r)}", flush=True)
        max_steps = float(args.max_steps or 1_000_000)
        line = [f"{case}:"]
        line += [side_line(n, rs, args.max_seconds, max_steps) for n, rs in rows.items() if rs]
        if rows["sb3"]:  # both sides ran in this invocation, seed by seed
            line.append(ratio_line(rows["soulsai"], rows["sb3"], args.max_seconds))
        print(" | ".join(line), flush=True)
        for name, rs in rows.items():
            for note in unsolved_notes(name, rs, args.max_seconds):
                print(f"  {note}", flush=True)


if __name__ == "__main__":
    main()
