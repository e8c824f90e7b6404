"""Broadcast latency: from the training node publishing weights to a client's policy using them.

A publisher (the training node's code path: `encode_weights_parts` + `publish_weights`)
and a client process (the real control thread: notification, GET, validation, a new policy
object, swap) on a real Redis. The client stamps the moment its env loop sees the new policy;
the latency is that minus the moment before encoding. Models of about 10k, 1M and 10M
parameters.

The client's stand-in env loop takes 0.2 ms per step and records every gap between two steps
longer than 1 ms; `stall` is the longest gap while a new model was on its way (publish to
swap), p50 and worst over the repeats: how long the env loop was held up by a broadcast. The
client gets a core of its own, as on its own machine (`--shared-cores`: it shares the cores
with Redis and the publisher, whose work then takes the loop's core at times). The
peer, `quiet`, is the longest gap in a window of the same length right after each swap, when
no model is on its way: what the machine's scheduler alone costs the loop. A stall no longer
than the quiet gaps means the broadcast itself holds the env loop up by nothing measurable.

    python bench/broadcast.py [--repeats 40] [--sizes 10k,1M,10M] [--dtype float32|float16]
                              [--shared-cores]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the soulsai CLI sets it for clients
import numpy as np  # noqa: E402
import redis  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line  # noqa: E402
from soulsai.client.control import Control  # noqa: E402
from soulsai.model.nets import QNetwork  # noqa: E402
from soulsai.model.numpy_q import NumpyQPolicy  # noqa: E402
from soulsai.transport import ClientLink, Keys, TrainerLink  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.weights import encode_weights_parts  # noqa: E402

SIZES = {"10k": [96, 96], "1M": [1000, 1000], "10M": [2230, 2230, 2230]}
OBS, ACTIONS = (8,), 4
STEP = 0.0002  # seconds: one env step of a fast env
GAP = 0.001  # seconds: loop gaps longer than this are recorded


def client_proc(
    port: int,
    password: str,
    prefix: str,
    hidden: list[int],
    n: int,
    report: Connection,
    cores: set[int] | None,
) -> None:
    """Runs the real control thread and a stand-in env loop that swaps policies each 'step';
    reports each swap through a local pipe (a write of a few bytes, not a Redis round trip,
    which would be a gap of the loop's own)."""
    import torch

    torch.set_num_threads(1)
    if cores:
        os.sched_setaffinity(0, cores)
    r = redis.Redis(host="127.0.0.1", port=port, password=password)
    link = ClientLink(r, Keys(prefix))
    net = QNetwork(OBS, ACTIONS, hidden, True)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    stop = threading.Event()
    control = Control(
        link,
        "bench",
        expected,
        lambda s: NumpyQPolicy(s, True),
        heartbeat_interval=1.0,
        heartbeat_timeout=5.0,
        poll_interval=1.0,
        max_bytes=1 << 30,
        status=lambda: {},
        stop=stop,
    )
    seen = -1
    control.start()
    r.set(f"{prefix}:ready", 1)
    obs = np.zeros((1, *OBS), np.float32)
    gaps: list[tuple[float, float]] = []  # (end of the gap, its length), both in seconds
    last = time.time()
    while seen < n - 1:
        latest = control.latest
        if latest is not None and latest[0] != seen:
            seen, policy, _ = latest
            policy.act(obs, 0.0, np.random.default_rng())  # the env loop uses it
            report.send_bytes(f"{seen} {time.time()}".encode())
        time.sleep(STEP)
        now = time.time()
        if now - last > GAP:
            gaps.append((now, now - last))
        last = now
    r.set(f"{prefix}:gaps", json.dumps(gaps))
    stop.set()


def measure(
    server: EmbeddedRedis,
    name: str,
    hidden: list[int],
    repeats: int,
    dtype: str,
    client_cores: set[int] | None,
) -> dict:
    import torch

    torch.set_num_threads(1)  # as the training node runs (training.threads: 1)

    prefix = f"bc{name}{time.time_ns() % 10**6}"
    r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    link = TrainerLink(r, Keys(prefix))
    net = QNetwork(OBS, ACTIONS, hidden, True)
    params = sum(p.numel() for p in net.parameters())
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    link.publish_weights(encode_weights_parts(state, 0, {}), 0)
    ctx = mp.get_context("spawn")
    swaps, report = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=client_proc,
        args=(server.port, server.password, prefix, hidden, repeats + 1, report, client_cores),
    )
    proc.start()
    while not r.get(f"{prefix}:ready"):
        time.sleep(0.05)

    def next_swap() -> bytes:
        if not swaps.poll(30):
            raise SystemExit(f"the client did not swap in model {len(seen)} within 30 s")
        return swaps.recv_bytes()

    seen: list[bytes] = []
    seen.append(next_swap())  # the client runs model 0
    time.sleep(0.5)
    sent: dict[int, float] = {}
    size = 0
    kw = {} if dtype == "float32" else {"wire_dtype": dtype}
    for mid in range(1, repeats + 1):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.001)
        t0 = time.time()
        parts = encode_weights_parts(net.state_dict(), mid, {"env_steps": mid}, **kw)
        link.publish_weights(parts, mid)
        sent[mid], size = t0, sum(p.nbytes for p in parts)
        # block until the client reports (no polling here: it would take CPU from what we time)
        seen.append(next_swap())
        # room for the quiet window after the swap (as long as the publish-to-swap one)
        time.sleep(max(0.02, 2.5 * (time.time() - t0)))
    proc.join(30)
    link.close()
    lat, stalls, quiet = [], [], []
    gaps = json.loads(r.get(f"{prefix}:gaps") or b"[]")

    def longest(start: float, end: float) -> float:
        """The longest loop gap overlapping [start, end], in ms."""
        inside = [g for stop, g in gaps if stop > start and stop - g < end]
        return max(inside, default=STEP) * 1000

    for raw in seen:
        mid, t = raw.decode().split()
        if int(mid) in sent:
            t0, t1 = sent[int(mid)], float(t)
            lat.append((t1 - t0) * 1000)
            stalls.append(longest(t0, t1))  # the loop held up while this model was on its way
            if int(mid) < repeats:  # the loop ends at the last swap
                quiet.append(longest(t1 + 0.002, t1 + 0.002 + (t1 - t0)))  # none on its way
    lat_arr = np.asarray(lat)
    return {
        "params": params,
        "mb": size / 2**20,
        "n": len(lat),
        "p50": float(np.percentile(lat_arr, 50)),
        "p99": float(np.percentile(lat_arr, 99)),
        "stall50": float(np.percentile(stalls, 50)),
        "stall_max": float(np.max(stalls)),
        "quiet50": float(np.percentile(quiet, 50)) if quiet else float("nan"),
        "quiet_max": float(np.max(quiet)) if quiet else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated, of " + str(SIZES))
    ap.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="wire dtype of the weight matrices (training.weights_dtype)",
    )
    ap.add_argument(
        "--shared-cores",
        action="store_true",
        help="let the client share every core with Redis and the publisher (default: the "
        "client gets a core of its own, as on its own machine)",
    )
    args = ap.parse_args()
    print(machine_line())
    cores = sorted(os.sched_getaffinity(0))
    client_cores = None
    if not args.shared_cores and len(cores) >= 2:
        client_cores = {cores[-1]}  # Redis (started below) and the publisher keep the rest
        os.sched_setaffinity(0, set(cores[:-1]))
    rest = ",".join(map(str, cores[:-1]))
    print(
        f"client on core {cores[-1]}, Redis and publisher on {rest}"
        if client_cores
        else "client, Redis and publisher share all cores"
    )
    print(
        f"dtype {args.dtype}; stall = longest env-loop gap (ms) while a model was on its way;"
        " quiet = the same in an equal window with none on its way (peer)"
    )
    print(
        f"{'model':>6} {'params':>11} {'MB':>7} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'stall p50':>10} {'stall max':>10} {'quiet p50':>10} {'quiet max':>10} "
        f"{'stall/quiet p50':>15}"
    )
    with EmbeddedRedis() as server:
        for name in args.sizes.split(","):
            res = measure(server, name, SIZES[name], args.repeats, args.dtype, client_cores)
            print(
                f"{name:>6} {res['params']:>11,} {res['mb']:>7.1f} {res['n']:>4} "
                f"{res['p50']:>8.2f} {res['p99']:>8.2f} "
                f"{res['stall50']:>10.2f} {res['stall_max']:>10.2f} "
                f"{res['quiet50']:>10.2f} {res['quiet_max']:>10.2f} "
                f"{res['stall50'] / res['quiet50']:>15.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
