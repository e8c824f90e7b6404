"""Frame compression benchmark: does lz4 or zstd pay for image frames on the wire?

Frames come from real Atari games (ale-py, Gymnasium's AtariPreprocessing: 84x84 grayscale,
frame skip 4, random actions); without ale-py, from soulsai/IudexLikeImg-v0 (90x160x3, a
synthetic arena: far more compressible than Atari, said in the output). They travel as DQN
frame rows (model/specs.dqn_frame_spec, 64 per message as a client sends them) encoded with
each codec, and each case measures:

- bytes per transition on the wire (whole envelopes / frames), against the naive layout of
  stacked obs + next_obs (2 x k frames per transition);
- the codec's cost: encode (client) + validated decode (node), per transition;
- loopback: the same envelopes pushed through a real Redis on 127.0.0.1 (LPUSH in pipelines)
  and popped (RPOP 256) and decoded, wall time per transition;
- a 1 Gbit/s link model: encode + decode + bytes / 125 MB/s.

The printed ratio is none / codec (above 1: the codec pays).

    python bench/frames.py
    python bench/frames.py --games ALE/Pong-v5 --frames 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line  # noqa: E402
from soulsai.model.specs import dqn_frame_spec  # noqa: E402
from soulsai.transport import compress  # noqa: E402
from soulsai.transport.embedded import EmbeddedRedis  # noqa: E402
from soulsai.transport.envelope import decode_experience, encode_experience  # noqa: E402

BATCH = 64  # frame rows per message: client.batch_size's default
LINK = 125e6  # 1 Gbit/s in bytes per second
K = 4  # frames per stacked observation (env.atari.frame_stack's default)
GAMES = ["ALE/Pong-v5", "ALE/Breakout-v5", "ALE/MsPacman-v5"]


def atari_frames(game: str, count: int, seed: int = 0) -> np.ndarray:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.wrappers.AtariPreprocessing(
        gym.make(game, frameskip=1), frame_skip=4, screen_size=84, grayscale_obs=True
    )
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    while len(out) < count:
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset()
        out.append(obs)
    env.close()
    return np.stack(out)


def iudex_frames(count: int, seed: int = 0) -> np.ndarray:
    import soulsai.envs  # noqa: F401  (registers soulsai/IudexLikeImg-v0)

    env = gym.make("soulsai/IudexLikeImg-v0")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    while len(out) < count:
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset()
        out.append(obs)
    env.close()
    return np.stack(out)


def messages(frames: np.ndarray) -> list[dict[str, np.ndarray]]:
    out = []
    for a in range(0, len(frames) - BATCH + 1, BATCH):
        n = BATCH
        out.append(
            {
                "frame": frames[a : a + n],
                "flags": np.zeros(n, np.uint8),
                "stream": np.full(n, 12345, np.int64),
                "seq": np.arange(a, a + n, dtype=np.int64),
                "action": np.zeros(n, np.int64),
                "reward": np.zeros(n, np.float32),
                "terminated": np.zeros(n, np.uint8),
                "steps": np.full(n, 3, np.uint8),
            }
        )
    return out


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(frames: np.ndarray, codec: str | None, r: redis.Redis, repeats: int) -> dict:
    space = gym.spaces.Box(0, 255, frames.shape[1:], np.uint8)
    spec = dqn_frame_spec(space, gym.spaces.Discrete(18), 3, 4096, 64 << 20)
    msgs = messages(frames)
    n = len(msgs) * BATCH
    fields = {"frame"} if codec else set()
    raws = [encode_experience("bench", 0, m, codec, fields) for m in msgs]
    enc = best_of(repeats, lambda: [encode_experience("bench", 0, m, codec, fields) for m in msgs])
    dec = best_of(repeats, lambda: [decode_experience(raw, spec) for raw in raws])
    for raw, m in zip(raws, msgs, strict=True):  # lossless
        np.testing.assert_array_equal(decode_experience(raw, spec).fields["frame"], m["frame"])
    wire = sum(len(raw) for raw in raws)
    key = f"bench_frames_{codec}"

    def loop() -> None:
        pipe = r.pipeline(transaction=False)
        for raw in [encode_experience("bench", 0, m, codec, fields) for m in msgs]:
            pipe.lpush(key, raw)
        pipe.execute()
        while True:
            got = r.rpop(key, 256)
            if not got:
                break
            for raw in got:
                decode_experience(raw, spec)

    loopback = best_of(repeats, loop)
    per = wire / n
    return {
        "bytes": per,
        "encode_us": enc / n * 1e6,
        "decode_us": dec / n * 1e6,
        "loopback_us": loopback / n * 1e6,
        "link_us": (enc + dec) / n * 1e6 + per / LINK * 1e6,
    }


def report(name: str, frames: np.ndarray, r: redis.Redis, repeats: int) -> None:
    frame_bytes = frames[0].nbytes
    naive = 2 * K * frame_bytes
    print(
        f"\n{name}: {len(frames)} frames of {frames.shape[1:]} ({frame_bytes:,} bytes); naive "
        f"stacked obs + next_obs = {naive:,} bytes per transition (k={K})"
    )
    print(
        f"{'codec':>6} {'B/transition':>12} {'x naive':>8} {'encode us':>9} {'decode us':>9} "
        f"{'loopback us':>11} {'1Gbit us':>9} {'loop ratio':>10} {'link ratio':>10}"
    )
    base = None
    for codec in (None, *compress.CODECS):
        if codec is not None and not compress.available(codec):
            print(f"{codec:>6} not installed")
            continue
        m = measure(frames, codec, r, repeats)
        base = base or m
        print(
            f"{codec or 'none':>6} {m['bytes']:>12,.0f} {m['bytes'] / naive:>8.3f} "
            f"{m['encode_us']:>9.1f} {m['decode_us']:>9.1f} {m['loopback_us']:>11.1f} "
            f"{m['link_us']:>9.1f} {base['loopback_us'] / m['loopback_us']:>10.2f} "
            f"{base['link_us'] / m['link_us']:>10.2f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--games", nargs="*", default=GAMES)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(machine_line())
    try:
        import ale_py  # noqa: F401

        sources = [(g, lambda g=g: atari_frames(g, args.frames)) for g in args.games]
    except ImportError:
        print("ale-py is not installed: frames from soulsai/IudexLikeImg-v0 (synthetic, and much")
        print("more compressible than Atari's)")
        sources = [("soulsai/IudexLikeImg-v0", lambda: iudex_frames(args.frames))]
    with EmbeddedRedis() as server:
        r = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
        for name, make in sources:
            report(name, make(), r, args.repeats)
    print("\nratios: none / codec, per transition (above 1: the codec pays); loopback = LPUSH +")
    print("RPOP + validated decode through a real Redis on this machine; 1Gbit = encode + decode")
    print("+ bytes / 125 MB/s")
    print(machine_line())


if __name__ == "__main__":
    main()
