"""Intake benchmark: how many transitions/s the training node accepts into its replay buffer.

N synthetic load generators (no env) push CartPole- or LunarLander-shaped experience envelopes
into a real Redis while a real training node runs, (a) with learning paused and (b) with
learning on at the default replay ratio. A load generator is not what is measured: it encodes
8 envelopes per model id once and pushes those again and again (the node still unpacks and
validates every one), and it backs off while Redis holds more than HIGH_WATER messages, so it
leaves the CPU to the node instead of pushing what the queue trim would drop. With learning
on it honors the pause like a real client: notices on the commands channel, checked before
every message. In the same run, two peers through the same Redis:
- ceiling: raw numpy batches, one producer (the same push and back-off as a load generator)
  and one consumer (RPOP of 512, numpy view of each), no validation, no node;
- original: the original SoulsAI wire path, one transition per message, torch.save of a dict of
  tensors, torch.load on receipt (a bench-only baseline, never in the package).

Atari (`--env ALE/Pong-v5`, learning paused): frame rows as a DQN client sends them for
stacked 84x84 frames (k = 4): real Pong frames (bench/frames.py), 8 env copies per load
generator, each frame once, lz4-compressed (training.frame_compression: auto), into the node's
frame store. Printed besides: wire bytes per transition and the frame store's bytes per
transition, each against the naive stacked obs + next_obs.

    python bench/intake.py                # CartPole and LunarLander, N = 1 2 8 64
    python bench/intake.py --env LunarLander-v3 --clients 2 --seconds 8
    python bench/intake.py --env ALE/Pong-v5 --learning paused --clients 1 2 8
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, machine_line, node_sets, soulsai_proc, stop  # noqa: E402
from bench.frames import atari_frames  # noqa: E402
from soulsai.config import load_config  # noqa: E402
from soulsai.config.schema import DQNConfig  # noqa: E402
from soulsai.transport.client_link import ClientLink  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.envelope import encode_experience  # noqa: E402
from soulsai.transport.keys import Keys  # noqa: E402

SHAPES = {"CartPole-v1": (4, 2), "LunarLander-v3": (8, 4)}
ATARI = "ALE/Pong-v5"  # frame rows of stacked 84x84 frames
FRAME_K, STREAMS, ROWS_PER_STREAM = 4, 8, 128  # stack, env copies per generator, rows per cycle
ATARI_BUFFER = 30000  # frame store rows on the node (the bench machine is shared)
BATCH = 64  # transitions per envelope, the client default
MAX_QUEUE = 10000  # training.max_queue default: clients trim Redis's queue to this
HIGH_WATER = 4096  # messages queued in Redis above which a load generator backs off
PUSH = 16  # envelopes per round trip with learning paused
CLIENT_RATE = 16000  # transitions/s of one load generator with learning on: a real client's top


def dqn_config(env_id: str) -> DQNConfig:
    """The DQN settings the node runs with on `env_id` (defaults, and the env's preset if any)."""
    return load_config(ROOT / "config", [f"env.id={env_id}"]).dqn


def _envelopes(
    client_id: str, obs_dim: int, n_actions: int, model_id: int, k: int = 8
) -> list[bytes]:
    rng = np.random.default_rng(model_id)
    out = []
    for _ in range(k):
        out.append(
            encode_experience(
                client_id,
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


def atari_sets() -> list[str]:
    """Node settings for Pong as stacked 84x84 frames (soulsai's env.atari preprocessing)."""
    return [
        f"env.id={ATARI}",
        f"env.atari={{frame_stack: {FRAME_K}}}",
        f"dqn.buffer_size={ATARI_BUFFER}",
    ]


class FrameEnvelopes:
    """A load generator's frame rows: STREAMS env copies of ROWS_PER_STREAM consecutive real
    frames each, in messages of BATCH rows (each copy's rows in order, as DQNActor sends them),
    lz4-compressed once. Every cycle through them starts new streams: only the stream ids'
    bytes are rewritten, so the node links every row as it would a client's."""

    def __init__(self, client_id: str, index: int, model_id: int, frames: np.ndarray) -> None:
        from soulsai.transport.compress import resolve

        n_step = dqn_config(ATARI).n_step
        rows = STREAMS * ROWS_PER_STREAM
        copy = np.arange(rows) // ROWS_PER_STREAM
        seq = np.arange(rows) % ROWS_PER_STREAM
        self.base = (index + 1) << 40
        stream = self.base + copy
        pick = (copy * 131 + seq) % len(frames)
        codec = resolve("auto")
        self.raws, self.offsets, self.streams = [], [], []
        for a in range(0, rows, BATCH):
            part = slice(a, a + BATCH)
            fields = {
                "frame": frames[pick[part]],
                "flags": (seq[part] == 0).astype(np.uint8),
                "stream": stream[part].astype(np.int64),
                "seq": seq[part].astype(np.int64),
                "action": np.zeros(BATCH, np.int64),
                "reward": np.zeros(BATCH, np.float32),
                "terminated": np.zeros(BATCH, np.uint8),
                "steps": np.full(BATCH, n_step, np.uint8),
            }
            raw = encode_experience(client_id, model_id, fields, codec, {"frame"})
            self.offsets.append(raw.find(fields["stream"].tobytes()))
            self.streams.append(fields["stream"])
            self.raws.append(raw)
        self.bytes_per_row = sum(map(len, self.raws)) / rows

    def get(self, i: int) -> bytes:
        """Envelope i (counting on from 0 across cycles), in its cycle's new streams."""
        cycle, j = divmod(i, len(self.raws))
        raw, off, stream = self.raws[j], self.offsets[j], self.streams[j]
        fresh = (stream + cycle * STREAMS).tobytes()
        return raw[:off] + fresh + raw[off + len(fresh) :]


def push(link: ClientLink, items: list[bytes]) -> None:
    """LPUSH + LTRIM in one round trip, as a real client's sender does (ClientLink.push); then,
    while Redis holds more than HIGH_WATER messages, wait with a growing sleep (1 to 50 ms)
    instead of pushing."""
    queued = link.push(items, [], 0, MAX_QUEUE)
    wait = 0.001
    while queued > HIGH_WATER:
        time.sleep(wait)
        wait = min(2 * wait, 0.05)
        queued = link.r.llen(link.keys.samples)


def generator(
    port: int,
    password: str,
    prefix: str,
    index: int,
    obs_dim: int,
    n_actions: int,
    honor_throttle: bool,
    rate: float = CLIENT_RATE,
    frames: np.ndarray | None = None,
) -> None:
    """One load client, until the benchmark sets the stop key; announces itself once running.

    Learning paused: PUSH envelopes per round trip, as fast as Redis takes them. Learning on:
    like a real client, at most `rate` transitions/s (default CLIENT_RATE, about as fast as
    bench/client.py's CartPole client steps; 0: no limit); it learns of pauses and new models
    from the commands and model channels and checks the pause before every message (a real
    client checks before every env step). Both poll the throttle key, the model id and the
    stop key every 0.1 s. With `frames`: Atari frame rows (FrameEnvelopes) instead."""
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    keys = Keys(prefix)
    link = ClientLink(r, keys)
    client_id = f"load-{index}"
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    if honor_throttle:
        pubsub.subscribe(keys.commands, keys.model_channel)
    per_push = 1 if honor_throttle else PUSH
    model_id, envs, next_check, paused, sent = -1, [b""], 0.0, False, 0
    next_send, interval = 0.0, BATCH / rate if rate > 0 else 0.0
    r.incr(f"{prefix}:bench_ready")
    while True:
        now = time.monotonic()
        if now >= next_check:
            next_check = now + 0.1
            pipe = r.pipeline(transaction=False)
            pipe.get(keys.model_id)
            pipe.exists(keys.throttle)
            pipe.exists(f"{prefix}:bench_stop")
            mid, throttled, stopped = pipe.execute()
            if stopped:
                return
            mid = int(mid or 0)
            if mid != model_id and frames is not None:
                model_id, atari = mid, FrameEnvelopes(client_id, index, mid, frames)
                envs = [atari.get(i) for i in range(len(atari.raws))]
            elif mid != model_id:
                model_id, envs = mid, _envelopes(client_id, obs_dim, n_actions, mid)
            paused = honor_throttle and bool(throttled)
        if honor_throttle:
            wait = 0.05 if paused else max(0.0, next_send - now)
            msg = pubsub.get_message(timeout=wait)
            while msg is not None:
                data = msg["data"].decode() if isinstance(msg["data"], bytes) else ""
                if data.startswith("{"):
                    cmd = json.loads(data).get("cmd")
                    paused = {"pause": True, "resume": False}.get(cmd, paused)
                elif data.isdigit() and int(data) != model_id:
                    model_id = int(data)
                    envs = _envelopes(client_id, obs_dim, n_actions, model_id)
                msg = pubsub.get_message(timeout=0.0)
        if paused or (honor_throttle and time.monotonic() < next_send):
            continue
        next_send = max(next_send, time.monotonic()) + interval  # a pause is not made up for
        if frames is not None:
            push(link, [atari.get(sent + i) for i in range(per_push)])
        else:
            push(link, [envs[(sent + i) % len(envs)] for i in range(per_push)])
        sent += per_push


def run_node_case(
    server: EmbeddedRedis,
    env_id: str,
    clients: int,
    seconds: float,
    learning: bool,
    tmp: Path,
    rate: float = CLIENT_RATE,
) -> dict:
    atari = env_id == ATARI
    obs_dim, n_actions = SHAPES.get(env_id, (0, 6))
    frames = atari_frames(ATARI, 1024) if atari else None
    dqn = dqn_config(env_id)
    prefix = f"bench{clients}{int(learning)}{time.time_ns() % 10**6}"
    extra = [*(atari_sets() if atari else [f"env.id={env_id}"]), "training.intake_batch=512"]
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
            args=(
                server.port,
                server.password,
                prefix,
                i,
                obs_dim,
                n_actions,
                learning,
                rate,
                frames,
            ),
        )
        for i in range(clients)
    ]
    for g in gens:
        g.start()
    deadline = time.time() + 300
    while int(r.get(f"{prefix}:bench_ready") or 0) < clients and time.time() < deadline:
        time.sleep(0.2)  # 64 processes take a while to start on 2 cores
    time.sleep(2.0)
    if learning:  # measure in steady state: the learner has paid for the start-up burst
        deadline = time.time() + 120
        while time.time() < deadline:  # the debt back below the pause threshold
            debt = r.hget(keys.trainer_stats, "debt")
            if debt is not None and int(debt) <= dqn.max_update_debt:
                break
            time.sleep(0.2)

    def snap() -> tuple[float, int, int, int, int]:
        s = r.hgetall(keys.trainer_stats)
        return (
            time.time(),
            int(s.get(b"accepted", 0)),
            int(s.get(b"updates", 0)),
            int(s.get(b"forgiven", 0)),
            int(s.get(b"debt", 0)),
        )

    t0, a0, u0, f0, _ = snap()
    mem = 0
    while time.time() < t0 + seconds:
        time.sleep(0.5)
        mem = max(mem, int(r.info("memory")["used_memory"]))
    t1, a1, u1, f1, owed = snap()
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
        "replay_ratio": (u1 - u0) * dqn.batch_size / max(1, a1 - a0),
        "redis_mb": mem / 2**20,
        "forgiven": f1 - f0,
        "owed": owed,
        "rejected": stats.get(b"rejected", b"0").decode(),
        "buffer": int(stats.get(b"buffer", 0)),
    }


def ceiling(server: EmbeddedRedis, env_id: str, seconds: float, producers: int) -> float:
    """Raw numpy batches through the same Redis: `producers` processes, one reader."""
    obs_dim, _ = SHAPES[env_id]
    per_transition = (2 * obs_dim + 2) * 4 + 8 + 2
    blob = np.random.default_rng(0).bytes(per_transition * BATCH)
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    prefix = f"ceiling{time.time_ns()}"
    key = Keys(prefix).samples
    until = time.time() + seconds + 30.0
    ctx = mp.get_context("spawn")
    prods = [
        ctx.Process(target=_raw_producer, args=(server.port, server.password, prefix, blob, until))
        for _ in range(producers)
    ]
    for prod in prods:
        prod.start()
    while not r.llen(key):
        time.sleep(0.05)
    got, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        items = r.rpop(key, 512)
        if items:
            for it in items:
                np.frombuffer(it, dtype=np.uint8)
            got += len(items) * BATCH
    dt = time.time() - t0
    for prod in prods:
        prod.terminate()
        prod.join()
    r.delete(key)
    return got / dt


def _raw_producer(port: int, password: str, prefix: str, blob: bytes, until: float) -> None:
    link = ClientLink(redis.Redis(host="127.0.0.1", port=port, password=password), Keys(prefix))
    while time.time() < until:
        push(link, [blob] * PUSH)


def original(server: EmbeddedRedis, env_id: str, seconds: float) -> float:
    """The original design: one transition per message, torch.save / torch.load."""
    import torch

    obs_dim, _ = SHAPES[env_id]
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    key = f"orig{time.time_ns()}"
    until = time.time() + seconds + 30.0
    ctx = mp.get_context("spawn")
    prod = ctx.Process(
        target=_torch_producer, args=(server.port, server.password, key, obs_dim, until)
    )
    prod.start()
    while not r.llen(key):  # importing torch takes seconds on a busy machine
        time.sleep(0.05)
    got, t0 = 0, time.time()
    while time.time() < t0 + seconds:
        item = r.brpop([key], timeout=1)
        if item:
            torch.load(io.BytesIO(item[1]), weights_only=False)  # what the original does
            got += 1
    dt = time.time() - t0
    prod.terminate()
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


def atari_case(server: EmbeddedRedis, clients: list[int], seconds: float, tmp: Path) -> None:
    """Frame rows of stacked 84x84 Pong frames, learning paused: accepted transitions/s, wire
    bytes and frame-store bytes per transition against the naive stacked obs + next_obs."""
    from soulsai.training.frame_replay import FrameReplay

    frames = atari_frames(ATARI, 1024)
    frame = frames[0].nbytes
    naive = 2 * FRAME_K * frame
    wire = FrameEnvelopes("load-0", 0, 0, frames).bytes_per_row
    store = FrameReplay.planned_bytes(1_000_000, frames.shape[1:], 6) / 1_000_000
    print(f"\n{ATARI} as frame rows (84x84, k={FRAME_K}, lz4, real Pong frames), learning paused")
    print(f"'sampleable': linked transitions in the node's frame store of {ATARI_BUFFER:,} rows")
    print(
        f"wire: {wire:,.0f} bytes per transition = 1/{naive / wire:,.0f} of the naive stacked "
        f"obs + next_obs ({naive:,} bytes; target <= 1/8 = {naive // 8:,})"
    )
    print(
        f"replay: {store:,.0f} bytes per transition = {store / frame:.3f} x one frame "
        f"({frame:,} bytes; target <= 1.25 x); 1M transitions: {store * 1e6 / 2**30:.2f} GiB"
    )
    print(
        f"{'clients':>7} {'accepted/s':>12} {'x 50k/s':>8} {'redis MB':>8} {'rejected':>8} "
        f"{'sampleable':>10}"
    )
    for n in clients:
        res = run_node_case(server, ATARI, n, seconds, False, tmp)
        acc = res["accepted_per_s"]
        print(
            f"{n:>7} {acc:>12,.0f} {acc / 50000:>8.2f} {res['redis_mb']:>8.1f} "
            f"{res['rejected']:>8} {res['buffer']:>10,}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--env", nargs="*", default=list(SHAPES), choices=[*SHAPES, ATARI])
    ap.add_argument("--clients", nargs="*", type=int, default=[1, 2, 8, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--seconds-on",
        type=float,
        default=20.0,
        help="window with learning on: pauses come and go every few seconds",
    )
    ap.add_argument("--learning", choices=["paused", "on", "both"], default="both")
    ap.add_argument(
        "--client-rate",
        type=float,
        default=CLIENT_RATE,
        help="transitions/s of one load generator with learning on (0: no limit)",
    )
    args = ap.parse_args()
    cases = {"paused": (False,), "on": (True,), "both": (False, True)}[args.learning]
    print(machine_line())
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as tmp:
        for env_id in args.env:
            if env_id == ATARI:
                atari_case(server, args.clients, args.seconds, Path(tmp))
                continue
            ceils = [ceiling(server, env_id, args.seconds, p) for p in (1, 2)]
            ceil = max(ceils)
            orig = original(server, env_id, args.seconds)
            print(
                f"\n{env_id}: raw numpy ceiling {ceil:,.0f} transitions/s (the better of 1 "
                f"producer: {ceils[0]:,.0f}, 2: {ceils[1]:,.0f}) | original wire path "
                f"{orig:,.0f} transitions/s"
            )
            print(f"configured replay ratio {dqn_config(env_id).replay_ratio:g}")
            print(
                f"{'clients':>7} {'learning':>8} {'accepted/s':>12} {'x ceiling':>9} "
                f"{'x original':>10} {'updates/s':>9} {'ratio':>6} {'forgiven':>8} "
                f"{'owed':>6} {'redis MB':>8}"
            )
            for n in args.clients:
                for learning in cases:
                    secs = args.seconds_on if learning else args.seconds
                    res = run_node_case(
                        server, env_id, n, secs, learning, Path(tmp), args.client_rate
                    )
                    acc = res["accepted_per_s"]
                    print(
                        f"{n:>7} {'on' if learning else 'paused':>8} {acc:>12,.0f} "
                        f"{acc / ceil:>9.2f} {acc / orig:>10.0f} {res['updates_per_s']:>9.0f} "
                        f"{res['replay_ratio']:>6.1f} {res['forgiven']:>8,} "
                        f"{res['owed']:>6,} {res['redis_mb']:>8.1f}",
                        flush=True,
                    )
    print("\n'forgiven': accepted transitions in the")
    print("window whose updates the node forgave (clients that ignore the pause); 'owed': updates")
    print("the learner still owed at the end of the window (paid while the clients stay paused)")
    print(machine_line())


if __name__ == "__main__":
    main()
