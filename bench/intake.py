"""Intake benchmark: how many transitions/s the training node accepts into its replay buffer.

N synthetic load generators (no env) push CartPole- or LunarLander-shaped experience envelopes
into a real Redis while a real training node runs, (a) with learning paused and (b) with
learning on at the default replay ratio. In the same run, two peers through the same Redis:
- ceiling: raw numpy batches, one producer and one consumer, no validation, no node;
- original: the original SoulsAI wire path, one transition per message, torch.save of a dict of
  tensors, torch.load on receipt (a bench-only baseline, never in the package).

    python bench/intake.py                # CartPole and LunarLander, N = 1 2 8 64
    python bench/intake.py --env LunarLander-v3 --clients 2 --seconds 8
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line, node_sets, soulsai_proc, stop  # noqa: E402
from soulsai.transport.codec import encode_experience  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402
from soulsai.transport.links import ClientLink  # noqa: E402

SHAPES = {"CartPole-v1": (4, 2), "LunarLander-v3": (8, 4)}
BATCH = 64  # transitions per envelope, the client default
MAX_QUEUE = 10000  # training.max_queue default: clients trim Redis's queue to this


def _envelopes(obs_dim: int, n_actions: int, model_id: int, k: int = 8) -> list[bytes]:
    rng = np.random.default_rng(model_id)
    out = []
    for _ in range(k):
        out.append(
            encode_experience(
                "load",
                model_id,
                {
                    "obs": rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
                    "action": rng.integers(0, n_actions, BATCH).astype(np.int64),
                    "reward": rng.normal(size=BATCH).astype(np.float32),
                    "next_obs": rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
                    "terminated": (rng.random(BATCH) < 0.01).astype(np.uint8),
                    "steps": np.full(BATCH, 3, np.uint8),
                },
            )
        )
    return out


def generator(
    port: int, password: str, prefix: str, obs_dim: int, n_actions: int, honor_throttle: bool
) -> None:
    """One load client: pipelines 16 envelopes per round trip with the newest model id, until
    the benchmark sets the stop key; announces itself once it is running."""
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    keys = Keys(prefix)
    link = ClientLink(r, keys)
    model_id, envs, next_check, paused = -1, [], 0.0, False
    r.incr(f"{prefix}:bench_ready")
    while True:
        now = time.time()
        if now >= next_check:
            next_check = now + 0.005
            pipe = r.pipeline(transaction=False)
            pipe.get(keys.model_id)
            pipe.exists(keys.throttle)
            pipe.exists(f"{prefix}:bench_stop")
            mid, throttled, stopped = pipe.execute()
            if stopped:
                return
            mid = int(mid or 0)
            if mid != model_id:
                model_id, envs = mid, _envelopes(obs_dim, n_actions, mid)
            paused = honor_throttle and bool(throttled)
        if paused:
            time.sleep(0.005)
            continue
        # exactly what a real client's sender does: one LPUSH of all queued + LTRIM to max_queue
        link.push([envs[i % len(envs)] for i in range(16)], [], 1000, MAX_QUEUE)


def run_node_case(
    server: EmbeddedRedis, env_id: str, clients: int, seconds: float, learning: bool, tmp: Path
) -> dict:
    obs_dim, n_actions = SHAPES[env_id]
    prefix = f"bench{clients}{int(learning)}{time.time_ns() % 10**6}"
    extra = [f"env.id={env_id}", "training.intake_batch=512"]
    if not learning:
        extra.append("dqn.learning_starts=1000000000")
    node = soulsai_proc(
        ["node", "training", *node_sets(server.port, prefix, tmp, *extra)],
        server.password,
        tmp / f"node-{prefix}.log",
    )
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    keys = Keys(prefix)
    deadline = time.time() + 60
    while r.get(keys.model_id) is None:
        if time.time() > deadline or node.poll() is not None:
            raise SystemExit(f"training node did not start: see {tmp}/node-{prefix}.log")
        time.sleep(0.1)
    ctx = mp.get_context("spawn")
    gens = [
        ctx.Process(
            target=generator,
            args=(server.port, server.password, prefix, obs_dim, n_actions, learning),
        )
        for _ in range(clients)
    ]
    for g in gens:
        g.start()
    deadline = time.time() + 300
    while int(r.get(f"{prefix}:bench_ready") or 0) < clients and time.time() < deadline:
        time.sleep(0.2)  # 64 processes take a while to start on 2 cores
    # learning on: let the learner pay for the start-up burst before measuring
    time.sleep(10.0 if learning else 2.0)

    def snap() -> tuple[float, int, int]:
        s = r.hgetall(keys.trainer_stats)
        return time.time(), int(s.get(b"accepted", 0)), int(s.get(b"updates", 0))

    t0, a0, u0 = snap()
    mem = 0
    while time.time() < t0 + seconds:
        time.sleep(0.5)
        mem = max(mem, int(r.info("memory")["used_memory"]))
    t1, a1, u1 = snap()
    r.set(f"{prefix}:bench_stop", 1)
    for g in gens:
        g.join()
    stats = r.hgetall(keys.trainer_stats)
    stop(node)
    r.delete(keys.samples)
    accepted = (a1 - a0) / (t1 - t0)
    return {
        "accepted_per_s": accepted,
        "updates_per_s": (u1 - u0) / (t1 - t0),
        "replay_ratio": (u1 - u0) * 128 / max(1, a1 - a0),
        "redis_mb": mem / 2**20,
        "rejected": stats.get(b"rejected", b"0").decode(),
    }


def ceiling(server: EmbeddedRedis, env_id: str, seconds: float) -> float:
    """Raw numpy batches through the same Redis: one producer thread-free process, one reader."""
    obs_dim, _ = SHAPES[env_id]
    per_transition = (2 * obs_dim + 2) * 4 + 8 + 2
    blob = np.random.default_rng(0).bytes(per_transition * BATCH)
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    key = f"ceiling{time.time_ns()}"
    until = time.time() + seconds + 1.0
    ctx = mp.get_context("spawn")
    prod = ctx.Process(target=_raw_producer, args=(server.port, server.password, key, blob, until))
    prod.start()
    time.sleep(0.5)
    got, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        items = r.rpop(key, 512)
        if items:
            for it in items:
                np.frombuffer(it, dtype=np.uint8)
            got += len(items) * BATCH
    dt = time.time() - t0
    prod.join()
    r.delete(key)
    return got / dt


def _raw_producer(port: int, password: str, key: str, blob: bytes, until: float) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    while time.time() < until:
        if r.llen(key) > 20000:
            time.sleep(0.001)
            continue
        pipe = r.pipeline(transaction=False)
        for _ in range(16):
            pipe.lpush(key, blob)
        pipe.execute()


def original(server: EmbeddedRedis, env_id: str, seconds: float) -> float:
    """The original design: one transition per message, torch.save / torch.load."""
    import torch

    obs_dim, _ = SHAPES[env_id]
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    key = f"orig{time.time_ns()}"
    until = time.time() + seconds + 1.0
    ctx = mp.get_context("spawn")
    prod = ctx.Process(
        target=_torch_producer, args=(server.port, server.password, key, obs_dim, until)
    )
    prod.start()
    time.sleep(1.0)
    got, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        item = r.brpop([key], timeout=1)
        if item:
            torch.load(io.BytesIO(item[1]), weights_only=False)  # what the original does
            got += 1
    dt = time.time() - t0
    prod.join()
    r.delete(key)
    return got / dt


def _torch_producer(port: int, password: str, key: str, obs_dim: int, until: float) -> None:
    import torch

    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    while time.time() < until:
        if r.llen(key) > 20000:
            time.sleep(0.001)
            continue
        sample = {
            "obs": torch.randn(obs_dim),
            "action": torch.tensor(1),
            "reward": torch.tensor(0.5),
            "next_obs": torch.randn(obs_dim),
            "done": torch.tensor(False),
            "model_id": torch.tensor(3),
        }
        buf = io.BytesIO()
        torch.save(sample, buf)
        r.lpush(key, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--env", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--clients", nargs="*", type=int, default=[1, 2, 8, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    print(machine_line())
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        for env_id in args.env:
            ceil = ceiling(server, env_id, args.seconds)
            orig = original(server, env_id, args.seconds)
            print(
                f"\n{env_id}: raw numpy ceiling {ceil:,.0f} transitions/s | original wire "
                f"path {orig:,.0f} transitions/s"
            )
            print(
                f"{'clients':>7} {'learning':>8} {'accepted/s':>12} {'x ceiling':>9} "
                f"{'x original':>10} {'updates/s':>9} {'ratio':>6} {'redis MB':>8}"
            )
            for n in args.clients:
                for learning in (False, True):
                    res = run_node_case(server, env_id, n, args.seconds, learning, Path(tmp))
                    acc = res["accepted_per_s"]
                    print(
                        f"{n:>7} {'on' if learning else 'paused':>8} {acc:>12,.0f} "
                        f"{acc / ceil:>9.2f} {acc / orig:>10.0f} {res['updates_per_s']:>9.0f} "
                        f"{res['replay_ratio']:>6.1f} {res['redis_mb']:>8.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
