"""Learner updates/s on image batches: the DQN learner with the Nature CNN on Atari-shaped
frames (84x84, 4 stacked, uint8 from the replay), batch 32, on the CPU (torch threads as
`training.threads` sets them) and, where a CUDA device is present, on it — same invocation,
same batches. On CUDA it first checks the device path: the frames arrive on the device as uint8
(through pinned memory), equal to the replay's, and an update's loss is finite.

    python bench/learner_device.py                 # CPU, and CUDA when available
    python bench/learner_device.py --updates 200 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.model.obs import env_layout  # noqa: E402
from soulsai.training.algorithms.dqn import DQNLearner  # noqa: E402
from soulsai.training.device import to_device  # noqa: E402
from soulsai.training.replay import ReplayBuffer  # noqa: E402

FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)
N_ACTIONS = 6


def filled_replay(layout, n: int) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(n, seed=0, layout=layout)
    frames = lambda: {"": rng.integers(0, 256, (n, *FRAMES.shape), dtype=np.uint8)}  # noqa: E731
    buffer.add_batch(
        frames(),
        rng.integers(0, N_ACTIONS, n),
        rng.random(n, np.float32),
        frames(),
        np.ones(n, np.float32),
    )
    return buffer


def updates_per_second(cfg, layout, replay, device: str, updates: int) -> float:
    learner = DQNLearner(cfg.dqn, layout, N_ACTIONS, seed=0, device=device)
    for _ in range(5):  # warm-up (CUDA kernels, allocator)
        learner.update(replay.sample(cfg.dqn.batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(updates):
        learner.update(replay.sample(cfg.dqn.batch_size))
    if device == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - t0)


def check_cuda_path(cfg, layout, replay) -> None:
    batch = replay.sample(cfg.dqn.batch_size)
    moved = to_device(batch.obs, "cuda")
    assert moved[""].device.type == "cuda" and moved[""].dtype == torch.uint8
    assert torch.equal(moved[""].cpu(), batch.obs[""])
    learner = DQNLearner(cfg.dqn, layout, N_ACTIONS, seed=0, device="cuda")
    assert np.isfinite(learner.update(batch)["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--updates", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "config", ["dqn.batch_size=32", "env.image_encoder=nature"])
    layout = env_layout(cfg.env, FRAMES)
    replay = filled_replay(layout, 512)
    print(f"{machine_line()} | torch {torch.__version__} | {args.threads} CPU thread(s)")
    cpu = updates_per_second(cfg, layout, replay, "cpu", args.updates)
    print(f"cpu: {cpu:.1f} updates/s (Nature CNN, 84x84x4 frames, batch 32)", flush=True)
    if not torch.cuda.is_available():
        print("cuda: no CUDA device here")
        return
    check_cuda_path(cfg, layout, replay)
    gpu = updates_per_second(cfg, layout, replay, "cuda", args.updates * 10)
    print(f"cuda ({torch.cuda.get_device_name()}): {gpu:.1f} updates/s; gpu/cpu {gpu / cpu:.1f}x")


if __name__ == "__main__":
    main()
