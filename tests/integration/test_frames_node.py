"""Stacked frames into a real training node (real Redis, in-process node): a client's frame rows,
lz4-compressed, fill the frame store and the learner updates on the rebuilt stacks; hostile
compressed frames (a bomb, a short stream, garbage, a wrong shape) are rejected and counted,
and the node goes on."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zstandard

from soulsai.envs import make_single_env
from soulsai.training.frame_replay import FrameReplay
from soulsai.training.node import TrainingNode
from soulsai.transport.envelope import encode_experience
from tests.unit.test_frame_wire import config, run

pytestmark = pytest.mark.integration
pytest.importorskip("ale_py")

K = 4
FRAMES = [
    "env.id=ALE/Pong-v5",
    f"env.atari={{frame_stack: {K}}}",
    "algo=dqn",
    "dqn.learning_starts=64",
    "dqn.batch_size=16",
    "dqn.throttle=false",
    "dqn.buffer_size=2000",
]


def client_rows(steps: int) -> list[dict[str, np.ndarray]]:
    """Frame rows of two Pong copies (soulsai's env.atari preprocessing and frame stacking)
    as DQNActor sends them."""
    cfg = config()
    cfg.env.id, cfg.dqn.n_step = "ALE/Pong-v5", 3
    envs = [make_single_env(cfg.env) for _ in range(2)]
    messages, _ = run(cfg, envs, steps)
    return [f for _, f in messages]


def test_frame_rows_train_and_hostile_frames_are_counted(node_config, redis_server, tmp_path):
    node = TrainingNode(
        node_config(*FRAMES), redis_server.target, tmp_path / "run", threading.Event()
    )
    try:
        assert isinstance(node.driver.buffer, FrameReplay)
        rows = client_rows(120)
        good = [encode_experience("f-test", 0, f, "lz4", {"frame"}) for f in rows]
        assert node.intake.handle_many(good) == len(good)
        assert len(node.driver.buffer) > 150

        f = rows[0]
        n = len(f["seq"])
        shape = [n, *f["frame"].shape[1:]]
        size = f["frame"].nbytes

        def with_frame(item: list) -> bytes:
            body = {
                name: [v.dtype.str, list(v.shape), v.tobytes()]
                for name, v in f.items()
                if name != "frame"
            }
            body["frame"] = item
            return msgpack.packb(
                {"v": 1, "t": "exp", "client": "f-bad", "model_id": 0, "n": n, "f": body},
                use_bin_type=True,
            )

        hostile = [
            with_frame(
                ["|u1", shape, zstandard.ZstdCompressor().compress(bytes(64 * size)), "zstd"]
            ),
            with_frame(
                ["|u1", shape, zstandard.ZstdCompressor().compress(bytes(size // 2)), "zstd"]
            ),
            with_frame(["|u1", shape, b"\x00garbage" * 9, "lz4"]),
            with_frame(["|u1", [n, 84, 83], b"x", "lz4"]),
        ]
        assert node.intake.handle_many(hostile) == 0
        rejected = node.intake.rejected
        assert rejected["bad_compression"] == 3 and rejected["bad_shape"] == 1
        more = [encode_experience("f-test", 0, f, "zstd", {"frame"}) for f in client_rows(40)]
        assert node.intake.handle_many(more) == len(more)  # and the node goes on
        before = node.driver.learner.updates
        for _ in range(3):
            node.driver.step()
        assert node.driver.learner.updates > before
    finally:
        node.link.close()
