"""Cost of prioritized replay's bookkeeping next to one DQN learner update (issue 19: <= 15 %).

Per learner step, prioritized replay adds one `PrioritizedSampler.sample(batch)` (stratified
sum-tree descent plus importance weights) and one `update(indices, td_errors)` (the batch's new
priorities written up the tree), with the TD errors taken off a torch tensor as the learner
would. That is timed against `DQNLearner.update` (double DQN, the default config's network,
batch 128, LunarLander's 8-dim observations and 4 actions) on the same thread count as the
training node. The buffer is full, so every sample walks the whole depth of the tree. Rounds
of the two alternate so that load from other processes hits both alike; medians are reported.

    python bench/per_cost.py                          # capacity = dqn.buffer_size (100,000)
    python bench/per_cost.py --capacity 1000000 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.training.algorithms.dqn import DQNLearner  # noqa: E402
from soulsai.training.prioritized import PrioritizedSampler  # noqa: E402
from soulsai.training.replay import ReplayBuffer  # noqa: E402

OBS_SHAPE, N_ACTIONS = (8,), 4  # LunarLander-v3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=None, help="default: dqn.buffer_size")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200, help="steps per round")
    args = parser.parse_args()

    cfg = load_config(ROOT / "config")
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    capacity = args.capacity or cfg.dqn.buffer_size
    rng = np.random.default_rng(0)

    buffer = ReplayBuffer(capacity, obs_shape=OBS_SHAPE, seed=0)
    n_rows = min(capacity, 20_000)  # the learner's cost does not depend on the fill
    buffer.add_batch(
        rng.normal(size=(n_rows, *OBS_SHAPE)).astype(np.float32),
        rng.integers(0, N_ACTIONS, n_rows),
        rng.normal(size=n_rows).astype(np.float32),
        rng.normal(size=(n_rows, *OBS_SHAPE)).astype(np.float32),
        np.full(n_rows, 0.97, np.float32),
    )
    batches = [buffer.sample(args.batch) for _ in range(32)]
    learner = DQNLearner(cfg.dqn, OBS_SHAPE, N_ACTIONS, seed=0)

    per = PrioritizedSampler(capacity, alpha=0.6, beta_start=0.4, beta_anneal_steps=10**6, seed=0)
    per.add(capacity, td_errors=rng.exponential(size=capacity))  # full, spread-out priorities
    td_errors = [torch.randn(args.batch) for _ in range(32)]

    def learner_round() -> float:
        start = time.perf_counter()
        for i in range(args.steps):
            learner.update(batches[i % len(batches)])
        return (time.perf_counter() - start) / args.steps

    def per_round() -> float:
        start = time.perf_counter()
        for i in range(args.steps):
            sample = per.sample(args.batch)
            per.update(sample.indices, td_errors[i % len(td_errors)].numpy())
        return (time.perf_counter() - start) / args.steps

    learner_round(), per_round()  # warm-up: allocator, lazy torch init, caches
    learner_times, per_times = [], []
    for _ in range(args.rounds):
        learner_times.append(learner_round())
        per_times.append(per_round())
    t_learn, t_per = statistics.median(learner_times), statistics.median(per_times)

    print(machine_line())
    print(
        f"torch threads {torch.get_num_threads()} | capacity {capacity:,} "
        f"(tree depth {per.tree.depth}) | batch {args.batch} | hidden {cfg.dqn.hidden} | "
        f"{args.rounds} rounds x {args.steps} steps"
    )
    print(f"learner update (double DQN):      {t_learn * 1e6:8.1f} us  (median per step)")
    print(f"PER sample + priority update:     {t_per * 1e6:8.1f} us")
    print(f"ratio PER / learner update:       {100 * t_per / t_learn:8.1f} %   (target <= 15 %)")


if __name__ == "__main__":
    main()
