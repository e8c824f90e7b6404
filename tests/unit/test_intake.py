"""The intake's batch path: rows of fresh envelopes reach the node in one call; stale, future
and malformed ones are counted and dropped."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np

from soulsai.model.specs import dqn_experience_spec
from soulsai.training.intake import ClientNumbers, Intake
from soulsai.transport.envelope import encode_experience

SPEC = dqn_experience_spec(
    gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(2), 3, 64, 1 << 20
)


def envelope(model_id: int, n: int = 4, client: str = "c", obs: float = 0.0) -> bytes:
    return encode_experience(
        client,
        model_id,
        {
            "obs": np.full((n, 3), obs, np.float32),
            "action": np.ones(n, np.int64),
            "reward": np.ones(n, np.float32),
            "next_obs": np.zeros((n, 3), np.float32),
            "terminated": np.zeros(n, np.uint8),
            "steps": np.full(n, 2, np.uint8),
        },
    )


def make_intake(newest: int, max_delay: int) -> tuple[Intake, list[dict[str, np.ndarray]]]:
    got: list[dict[str, np.ndarray]] = []

    def per_envelope(exp):  # the batch path must not fall back to this
        raise AssertionError("accept called with accept_rows set")

    intake = Intake(
        None,  # type: ignore[arg-type]  # handle_many never touches the link
        SPEC,
        per_envelope,
        lambda: newest,
        max_delay,
        64,
        threading.Event(),
        accept_rows=lambda fields, clients: got.append(fields),
    )
    return intake, got


def test_rows_of_fresh_envelopes_arrive_in_one_call() -> None:
    intake, got = make_intake(newest=10, max_delay=2)
    raws = [envelope(10, obs=i) for i in range(5)] + [envelope(9, client="other", obs=7)]
    assert intake.handle_many(raws) == 6
    assert len(got) == 1 and got[0]["obs"].shape == (24, 3)
    assert sorted(set(got[0]["obs"][:, 0].tolist())) == [0, 1, 2, 3, 4, 7]
    assert intake.env_steps == 24 and intake.messages == 6 and not intake.rejected


def test_stale_future_and_malformed_are_counted_and_dropped() -> None:
    intake, got = make_intake(newest=10, max_delay=2)
    raws = [
        envelope(10, obs=1),
        envelope(7, obs=2),  # stale: counted in transitions
        envelope(7, obs=2),
        envelope(11, obs=3),  # future: counted in messages
        b"\x93garbage",
        envelope(10, obs=1),
    ]
    assert intake.handle_many(raws) == 2
    assert got[0]["obs"].shape == (8, 3) and (got[0]["obs"] == 1).all()
    assert intake.rejected == {"stale_model": 8, "future_model": 1, "not_msgpack": 1}
    assert intake.env_steps == 20  # stale and future samples are env steps too


def test_each_row_arrives_with_its_senders_number_the_same_in_every_node() -> None:
    """`accept_rows` gets one int64 per row naming its client (what keys the frame store's
    streams): rows of dropped envelopes take their numbers with them, and a client's number
    is a function of its id alone (the same after a restart, so resumed streams go on)."""
    got: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
    intake = Intake(
        None,  # type: ignore[arg-type]  # handle_many never touches the link
        SPEC, None, lambda: 10, 2, 64, threading.Event(),
        accept_rows=lambda fields, clients: got.append((fields, clients)),
    )  # fmt: skip
    raws = [
        envelope(10, n=2, client="a", obs=1),
        envelope(5, n=3, client="b", obs=2),  # stale: dropped with its clients
        envelope(10, n=4, client="b", obs=3),
        envelope(10, n=1, client="a", obs=4),
    ]
    assert intake.handle_many(raws) == 3
    fields, clients = got[0]
    assert clients.dtype == np.int64 and len(clients) == len(fields["obs"]) == 7
    a, b = ClientNumbers.number("a"), ClientNumbers.number("b")
    assert a != b and min(a, b) >= 0
    assert clients.tolist() == [a, a, b, b, b, b, a]
    assert fields["obs"][:, 0].tolist() == [1, 1, 3, 3, 3, 3, 4]
    assert (ClientNumbers()(np.array(["b", "a"], object)) == [b, a]).all()


def test_nothing_fresh_means_no_call() -> None:
    intake, got = make_intake(newest=10, max_delay=0)
    assert intake.handle_many([envelope(9), b""]) == 0
    assert got == [] and intake.rejected["stale_model"] == 4


def test_a_batch_that_fails_unforeseen_is_dropped_and_the_intake_drains_on() -> None:
    """Whatever goes wrong in handling one popped batch, the intake thread counts it, says so
    and keeps draining: a dead intake thread would leave the node running without samples."""

    class Link:
        def __init__(self) -> None:
            self.pops = 0

        def pop_samples(self, count: int, block: float) -> tuple[list[bytes], int]:
            self.pops += 1
            if self.pops > 2:
                stop.set()
                return [], 3  # three envelopes left in Redis's queue
            return [envelope(10), envelope(10)], 0

    stop = threading.Event()
    calls = []

    def accept_rows(rows: dict[str, np.ndarray], clients: np.ndarray) -> None:
        calls.append(rows)
        if len(calls) == 1:
            raise RuntimeError("a bug")

    link = Link()
    intake = Intake(link, SPEC, lambda e: None, lambda: 10, 2, 64, stop, accept_rows=accept_rows)  # type: ignore[arg-type]
    intake.start()
    intake.join(5.0)
    assert link.pops == 3 and len(calls) == 2
    assert intake.rejected["internal_error"] == 2
    assert intake.queued == 3  # what the last pop said stays queued, for the pause decision


def test_per_envelope_hook_gets_each_envelope_decoded_with_the_batch() -> None:
    """`accept` (PPO) gets one Experience per fresh envelope, with its own client, model id and
    rows; several envelopes are decoded together, their rows views of one array per field (no
    copy made only to check values), rejects counted as on the batch path."""
    got: list = []
    intake = Intake(
        None,  # type: ignore[arg-type]  # handle_many never touches the link
        SPEC,
        got.append,
        lambda: 10,
        0,
        64,
        threading.Event(),
    )
    raws = [
        envelope(10, n=3, client="a", obs=1),
        envelope(9, obs=2),  # stale
        envelope(10, n=5, client="bb", obs=3),
        b"\x93garbage",
        envelope(11, obs=4),  # future
        envelope(10, n=2, client="a", obs=5),
    ]
    assert intake.handle_many(raws) == 3
    assert intake.rejected == {"stale_model": 4, "future_model": 1, "not_msgpack": 1}
    assert intake.env_steps == 3 + 4 + 5 + 4 + 2 and intake.messages == 6
    by_obs = {float(e.fields["obs"][0, 0]): e for e in got}
    assert sorted(by_obs) == [1, 3, 5]
    for obs, (client, n) in {1: ("a", 3), 3: ("bb", 5), 5: ("a", 2)}.items():
        exp = by_obs[obs]
        assert (exp.client_id, exp.model_id, exp.n) == (client, 10, n)
        assert all(len(v) == n for v in exp.fields.values()) and (exp.fields["obs"] == obs).all()
        assert (exp.fields["steps"] == 2).all()
    assert np.shares_memory(got[0].fields["obs"].base, got[-1].fields["obs"].base)
    one: list = []
    alone = Intake(None, SPEC, one.append, lambda: 10, 0, 64, threading.Event())  # type: ignore[arg-type]
    assert alone.handle_many([envelope(10, n=3, client="a", obs=1)]) == 1
    assert one[0].n == 3 and (one[0].fields["obs"] == 1).all()
