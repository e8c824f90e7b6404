"""Issue 18's image figures in one run: the three image benchmarks one after the other, each
with its own peer in this invocation, then their headline lines again as a summary.

1. `bench/intake.py --env ALE/Pong-v5 --learning paused`: wire bytes and frame-store bytes per
   Atari transition against the naive stacked obs + next_obs, and accepted transitions/s.
2. `bench/learner_device.py`: DQN learner updates/s with the Nature CNN on 84x84x4 frames, on
   the CPU and, where one is present, on a CUDA device.
3. `bench/solve.py --case dqn:MinAtar-Breakout-v0`: wall seconds and env steps to a rolling-20
   return of 3 on MinAtar Breakout, `soulsai train` against SB3's DQN with soulsai's CNN as its
   features extractor (the MinAtar paper's settings; `--peer-set n_steps=3` for like for like).

    python bench/images.py                                    # seeds 101-103
    python bench/images.py --seeds 113 114 115 --max-seconds 600
    python bench/images.py --peer-set n_steps=3               # MinAtar like for like

Nothing here is timed itself; run it on quiet cores, as its parts say.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, add_peer_set, machine_line  # noqa: E402

# the lines of each part's output that carry its figures (repeated in the summary)
HEADLINES = ("wire:", "replay:", "cpu:", "cuda", "dqn:MinAtar-Breakout-v0:")


def run_part(title: str, argv: list[str], summary: list[str]) -> None:
    """Run one bench script, echo its output as it comes and keep its headline lines (and the
    accepted/s table rows) for the summary."""
    print(f"\n=== {title}: python {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    in_table = False
    for line in proc.stdout:
        print(line, end="", flush=True)
        text = line.strip()
        if text.startswith(HEADLINES):
            summary.append(text)
        if text.startswith("clients"):
            in_table = True
            summary.append(f"intake {text}")
        elif in_table and text[:1].isdigit():
            summary.append(f"intake {text}")
        else:
            in_table = False
    if proc.wait() != 0:
        summary.append(f"{title}: exited with {proc.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", nargs="*", type=int, default=[101, 102, 103])
    ap.add_argument("--max-seconds", type=float, default=600, help="per MinAtar run")
    ap.add_argument("--clients", nargs="*", type=int, default=[1, 2], help="Atari intake")
    ap.add_argument("--seconds", type=float, default=6.0, help="per Atari intake case")
    ap.add_argument("--updates", type=int, default=50, help="learner updates timed per device")
    add_peer_set(ap)  # passed on to bench/solve.py (the MinAtar peer's hyperparameters)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    summary: list[str] = []
    intake = ["--env", "ALE/Pong-v5", "--learning", "paused", "--seconds", str(args.seconds)]
    run_part(
        "Atari frames on the wire and in replay, intake",
        ["bench/intake.py", *intake, "--clients", *map(str, args.clients)],
        summary,
    )
    run_part(
        "learner updates/s", ["bench/learner_device.py", "--updates", str(args.updates)], summary
    )
    solve = ["--case", "dqn:MinAtar-Breakout-v0", "--max-seconds", str(args.max_seconds)]
    solve += ["--seeds", *map(str, args.seeds)]
    solve += [x for s in args.peer_sets for x in ("--peer-set", s)]
    run_part("MinAtar Breakout against SB3's DQN", ["bench/solve.py", *solve], summary)
    print("\n=== summary", flush=True)
    for line in summary:
        print(line, flush=True)


if __name__ == "__main__":
    main()
