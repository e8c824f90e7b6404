"""The client's per-step acting cost on an Atari observation: the numpy twin of the Nature-DQN
Q-network against the same network in torch, as a client with torch installed would run it
(torch.set_num_threads(1), no_grad, one observation per call).

The observation is what `env.atari`'s defaults give: 4 stacked 84x84 grayscale frames, uint8,
channels first (4, 84, 84). The network is Nature DQN's (conv 32x8x8/4, 64x4x4/2, 64x3x3/1,
dense 512, 6 actions: `env.image_features: 0`, `dqn.hidden: [512]`). Each side acts
`--calls` times per round after a warm-up, the rounds alternating numpy/torch; the median
over rounds of the per-call mean is printed for both, with the ratio numpy / torch, for one
observation and for a batch of `--batch` (a client with env.num_envs copies). `--impala` adds
the IMPALA CNN (256 features) on the same observation.

    python bench/client_cnn.py
    python bench/client_cnn.py --rounds 7 --calls 300 --batch 8 --impala
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# As the `soulsai` command line does before numpy loads (soulsai/cli/__init__.py): the client's
# BLAS on one thread. OpenBLAS's default threads made the numpy twin 10x slower on 2 busy cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line  # noqa: E402
from soulsai.model.cnn_spec import ImageOptions  # noqa: E402
from soulsai.model.nets import QNetwork, greedy_actions  # noqa: E402
from soulsai.model.numpy_q import NumpyQPolicy  # noqa: E402
from soulsai.model.obs import build_layout  # noqa: E402

SHAPE = (4, 84, 84)
N_ACTIONS = 6


def per_call(fn, obs, calls: int) -> float:
    """Mean seconds per call over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn(obs)
    return (time.perf_counter() - start) / calls


def measure(options: ImageOptions, hidden: list[int], batch: int, rounds: int, calls: int):
    import gymnasium as gym

    layout = build_layout(gym.spaces.Box(0, 255, SHAPE, np.uint8), image=options)
    torch.manual_seed(0)
    net = QNetwork(layout, N_ACTIONS, hidden, normalize_obs=False).eval()
    policy = NumpyQPolicy(net.state_dict(), False, layout)
    rng = np.random.default_rng(0)
    obs = {"": rng.integers(0, 256, (batch, *SHAPE), dtype=np.uint8)}
    act_np = lambda o: policy.act(o, 0.0, rng)  # noqa: E731
    act_torch = lambda o: greedy_actions(net, o)  # noqa: E731
    assert (act_np(obs) == act_torch(obs)).all()
    per_call(act_np, obs, 20), per_call(act_torch, obs, 20)  # warm-up
    np_times, torch_times = [], []
    for _ in range(rounds):
        np_times.append(per_call(act_np, obs, calls))
        torch_times.append(per_call(act_torch, obs, calls))
    return statistics.median(np_times), statistics.median(torch_times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--impala", action="store_true", help="also the IMPALA CNN")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    blas = os.environ["OPENBLAS_NUM_THREADS"]
    print(
        f"torch {torch.__version__} (1 thread), numpy {np.__version__} (OPENBLAS_NUM_THREADS="
        f"{blas}); obs {SHAPE} uint8, Nature DQN {N_ACTIONS} actions"
    )
    nets = [("nature", ImageOptions("nature", features=0), [512])]
    if args.impala:
        nets.append(("impala", ImageOptions("impala"), [256]))
    print(f"{'network':8} {'batch':>5} {'numpy ms':>9} {'torch ms':>9} {'numpy/torch':>11}")
    for name, options, hidden in nets:
        for batch in (1, args.batch):
            t_np, t_torch = measure(options, hidden, batch, args.rounds, args.calls)
            print(
                f"{name:8} {batch:5d} {t_np * 1e3:9.3f} {t_torch * 1e3:9.3f} {t_np / t_torch:11.2f}"
            )


if __name__ == "__main__":
    main()
