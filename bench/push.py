"""Client sender: CPU time of one outbox round (ClientLink.push: LPUSH + LTRIM of the
experience messages, one XADD per episode record) against redis-py's pipeline sending the same
commands, both on a real Redis in the same run. The sender thread shares the client's core and
the GIL with the env loop, so its CPU time is taken from env steps.

    python bench/push.py [--rounds 300] [--samples 30] [--episodes 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line  # noqa: E402
from soulsai.transport.client_link import ClientLink  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402

MAX_QUEUE, MAXLEN = 10000, 100000


def pipeline_push(r: redis.Redis, keys: Keys, samples: list[bytes], episodes: list[bytes]) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.lpush(keys.samples, *samples)
    pipe.ltrim(keys.samples, 0, MAX_QUEUE - 1)
    for blob in episodes:
        pipe.xadd(keys.episodes, {"m": blob}, maxlen=MAXLEN, approximate=True)
    pipe.execute()


def cpu_per_round(fn, rounds: int) -> float:
    t0 = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - t0) / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--samples", type=int, default=30, help="experience messages per round")
    ap.add_argument("--episodes", type=int, default=150, help="episode records per round")
    args = ap.parse_args()
    print(machine_line())
    # A CartPole client at 40k steps/s: 50 ms rounds of about 30 messages of 64 transitions
    # (5 kB each) and, with episodes of 13 steps, about 150 episode records (150 bytes each).
    samples, episodes = [b"s" * 5000] * args.samples, [b"e" * 150] * args.episodes
    with EmbeddedRedis() as server:
        r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        keys = Keys(f"pushbench{time.time_ns() % 10**6}")
        link = ClientLink(r, keys)
        ours, peer = [], []
        for _ in range(5):  # alternate, so both see the same machine
            ours.append(
                cpu_per_round(lambda: link.push(samples, episodes, MAXLEN, MAX_QUEUE), args.rounds)
            )
            peer.append(
                cpu_per_round(lambda: pipeline_push(r, keys, samples, episodes), args.rounds)
            )
            r.delete(keys.samples, keys.episodes)
        a, b = statistics.median(ours), statistics.median(peer)
        print(
            f"{args.samples} messages + {args.episodes} episode records per round: "
            f"ClientLink.push {a * 1e3:.3f} ms CPU | redis-py pipeline {b * 1e3:.3f} ms CPU | "
            f"ratio {a / b:.2f}"
        )


if __name__ == "__main__":
    main()
