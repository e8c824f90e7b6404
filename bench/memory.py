"""Memory benchmark: a 1M-transition LunarLander replay buffer, filled through the real path.

Builds a DQN training node (against a private Redis) with `dqn.buffer_size` transitions, after
a throw-away node has imported and warmed up everything on the path. Then feeds it pre-encoded
LunarLander-shaped envelopes through `node.intake.handle_many` (the intake thread's decode,
validation and buffer write), merging the observation normalizer as the learner loop does,
until the ring buffer is full and has wrapped once. Reports the growth of the process's RSS and
of what numpy and Python allocations hold (tracemalloc), next to the raw bytes of the buffer's
arrays.

    python bench/memory.py                       # 1,000,000 transitions
    python bench/memory.py --transitions 200000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line  # noqa: E402
from bench.intake import BATCH, SHAPES, _envelopes  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.training.node import TrainingNode  # noqa: E402
from soulsai.transport import RedisTarget  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402

ENV = "LunarLander-v3"
POP = 512  # envelopes per intake round (bench/intake.py's training.intake_batch)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--transitions", type=int, default=1_000_000)
    args = ap.parse_args()
    print(machine_line())
    obs_dim, n_actions = SHAPES[ENV]
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:

        def make_node(capacity: int) -> TrainingNode:
            sets = [
                "redis_address=127.0.0.1",
                f"redis_port={server.port}",
                "key_prefix=membench",
                "training.metrics_port=0",
                f"env.id={ENV}",
                f"dqn.buffer_size={capacity}",
                # no learner pays the debt here: one client's share would stop the fill
                "dqn.max_client_debt=0",
            ]
            target = RedisTarget("127.0.0.1", server.port, password=server.password)
            run = Path(tmp) / f"run{capacity}"
            cfg = load_config(ROOT / "config", sets)
            return TrainingNode(cfg, target, run, threading.Event())

        raws = [e for mid in range(8) for e in _envelopes(f"load-{mid}", obs_dim, n_actions, 0)]
        warm = make_node(1000)  # imports, lazy initialisation, the decode path once
        warm.intake.handle_many(raws)
        warm.driver.merge_normalizer()
        warm.link.close()
        del warm
        gc.collect()
        tracemalloc.start()
        rss0 = rss_bytes()
        traced0 = tracemalloc.get_traced_memory()[0]
        node = make_node(args.transitions)
        buf = node.driver.buffer
        raw_bytes = sum(a.nbytes for a in (buf.obs, buf.next_obs, buf.action, buf.reward))
        raw_bytes += buf.discount.nbytes
        rounds = -(-2 * args.transitions // (POP * BATCH))  # fill, then wrap once
        for i in range(rounds):
            batch = [raws[(i * POP + j) % len(raws)] for j in range(POP)]
            assert node.intake.handle_many(batch) == POP
            node.driver.merge_normalizer()  # what the learner loop does between updates
        gc.collect()
        rss1 = rss_bytes()
        traced1, peak = tracemalloc.get_traced_memory()
        assert len(buf) == args.transitions, len(buf)
        node.link.close()
    mb = 2**20
    print(
        f"\n{ENV}: replay buffer of {args.transitions:,} transitions, "
        f"{rounds * POP * BATCH:,} pushed through the intake (the ring wrapped once)"
    )
    print(f"raw array bytes (obs, next_obs, action, reward, discount): {raw_bytes / mb:,.1f} MiB")
    print(
        f"RSS growth, node construction through fill: {(rss1 - rss0) / mb:,.1f} MiB = "
        f"{(rss1 - rss0) / raw_bytes:.2f} x raw (includes a second learner's networks)"
    )
    print(
        f"tracemalloc (numpy and Python allocations): held {(traced1 - traced0) / mb:,.1f} MiB "
        f"= {(traced1 - traced0) / raw_bytes:.2f} x raw; peak {(peak - traced0) / mb:,.1f} MiB "
        f"= {(peak - traced0) / raw_bytes:.2f} x raw"
    )


if __name__ == "__main__":
    main()
