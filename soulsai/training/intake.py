"""Sample intake: drain Redis in batches with blocking reads, validate, hand over.

Runs in its own thread so the learner's gradient steps never stop Redis from being drained.
Every envelope is decoded and checked against the experience spec before it touches a
buffer; rejects are counted per reason and logged at a limited rate.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from soulsai.errors import ProtocolError
from soulsai.logs import RateLimitedLog
from soulsai.training.shares import ClientShares
from soulsai.transport.batch import LayoutCache, decode_experience_rows, decode_experiences
from soulsai.transport.envelope import Experience, ExperienceSpec
from soulsai.transport.links import TRANSIENT
from soulsai.transport.trainer_link import TrainerLink

log = logging.getLogger(__name__)

MAX_NUMBERED = 1 << 16  # client ids whose numbers are cached (beyond: the cache starts over)


class ClientNumbers:
    """Client id string -> a number (int64 >= 0) that names the client in `accept_rows`.

    The number is a hash of the id (8 bytes of BLAKE2b, top bit cleared), so it is the same
    in every node process and across resumes (a checkpointed frame store's streams go on),
    and another client cannot get a given client's number without sending its id. Hashes
    are cached in a bounded dict: one lookup per envelope, none per row.
    """

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def __call__(self, client_ids: np.ndarray) -> np.ndarray:
        """One number per entry of `client_ids` (an object array of str)."""
        cache = self._cache
        out = np.empty(len(client_ids), np.int64)
        for i, cid in enumerate(client_ids.tolist()):
            num = cache.get(cid)
            if num is None:
                if len(cache) >= MAX_NUMBERED:
                    cache.clear()
                num = cache[cid] = self.number(cid)
            out[i] = num
        return out

    @staticmethod
    def number(client_id: str) -> int:
        digest = hashlib.blake2b(client_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1


class Intake:
    """Pops envelopes, validates them, and calls `accept(experience)` for the good ones.

    With `accept_rows` the good transitions of a whole popped batch arrive in one call instead,
    one array per field (`decode_experience_rows`), with one int64 per row naming the client
    that sent it (`ClientNumbers`): no Python object per envelope.
    `current_model` returns the newest model id; samples older than `max_delay` ids (or from a
    model id that does not exist yet) are rejected as stale / future.
    """

    def __init__(
        self,
        link: TrainerLink,
        spec: ExperienceSpec,
        accept: Callable[[Experience], None] | None,
        current_model: Callable[[], int],
        max_delay: int,
        pop_count: int,
        stop: threading.Event,
        accept_rows: Callable[[dict[str, np.ndarray], np.ndarray], None] | None = None,
        shares: ClientShares | None = None,
    ) -> None:
        self.link = link
        self.spec = spec
        self.accept = accept
        self.accept_rows = accept_rows
        self.shares = shares  # per-client cap on the update debt (batch path only)
        self.current_model = current_model
        self.max_delay = max_delay
        self.pop_count = pop_count
        self.stop = stop
        self.rejected: Counter[str] = Counter()
        self.env_steps = 0  # every decoded transition is an env step, stale or not
        self.messages = 0
        self.drained_at = 0.0  # monotonic time of the last pop that left Redis's queue empty
        self.queued = 0  # envelopes still in Redis's queue after the last pop
        self.layouts = LayoutCache()  # clients' envelope layouts, reused across pops
        self.client_numbers = ClientNumbers()
        self.paused = threading.Event()
        self._log = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.1
        while not self.stop.is_set():
            if self.paused.is_set():
                self.stop.wait(0.05)
                continue
            try:
                raws, self.queued = self.link.pop_samples(self.pop_count, block=0.5)
                backoff = 0.1
            except TRANSIENT as e:
                self._log.warning(
                    "redis", f"intake cannot read Redis ({type(e).__name__}); retrying"
                )
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if raws:
                try:
                    self.handle_many(raws)
                except Exception as e:  # no input may stop the draining: drop, count, say
                    self.rejected["internal_error"] += len(raws)
                    self._log.warning(
                        "internal_error",
                        f"dropped {len(raws)} experience messages: {type(e).__name__}: {e}",
                    )
            if len(raws) < self.pop_count:  # whatever arrives next was pushed after this
                self.drained_at = time.monotonic()

    def handle(self, raw: bytes) -> bool:
        """Decode, validate and accept one envelope; True when accepted."""
        return self.handle_many([raw]) == 1

    def handle_many(self, raws: list[bytes]) -> int:
        """Decode and validate a batch of envelopes together, accept the good ones; returns
        how many envelopes were accepted."""
        self.messages += len(raws)
        newest = self.current_model()
        if self.accept_rows is not None:
            return self._handle_rows(raws, newest)
        good: list[Experience] = []
        for exp in self._decode_each(raws):
            if isinstance(exp, ProtocolError):
                self._reject(exp.reason, str(exp))
            elif self._fresh(exp.model_id, newest, exp.n):
                good.append(exp)
        assert self.accept is not None  # one of accept and accept_rows is given
        for exp in good:
            self.accept(exp)
        return len(good)

    def _decode_each(self, raws: list[bytes]) -> list[Experience | ProtocolError]:
        """Each envelope's Experience or error. Several: decoded together as `accept_rows`'
        are (`decode_experience_rows`: layouts cached across batches, each field checked once
        where it is kept, no joined copy made only for the checks), then handed over as views
        of the rows, one envelope each, grouped by layout rather than in arrival order."""
        if len(raws) < 2:  # one envelope: the structural decoder is all there is to do
            return decode_experiences(raws, self.spec)
        rows = decode_experience_rows(raws, self.spec, self.layouts)
        out: list[Experience | ProtocolError] = list(rows.errors)
        end = 0
        for model_id, n, client_id in zip(
            rows.model_ids.tolist(), rows.counts.tolist(), rows.client_ids, strict=True
        ):
            start, end = end, end + n
            fields = {name: value[start:end] for name, value in rows.fields.items()}
            out.append(Experience(str(client_id), model_id, n, fields))
        return out

    def _handle_rows(self, raws: list[bytes], newest: int) -> int:
        assert self.accept_rows is not None
        rows = decode_experience_rows(raws, self.spec, self.layouts)
        for e in rows.errors:
            self._reject(e.reason, str(e))
        mids, counts = rows.model_ids, rows.counts
        self.env_steps += int(counts.sum())
        future = mids > newest
        stale = ~future & (newest - mids > self.max_delay)
        if future.any():
            mid = int(mids[future][0])
            self._reject("future_model", f"model id {mid} > newest {newest}", int(future.sum()))
        if stale.any():
            mid, n = int(mids[stale][0]), int(counts[stale].sum())
            self._reject("stale_model", f"model id {mid} lags newest {newest}", n)
        fresh = ~(future | stale)
        fresh_counts = np.where(fresh, counts, 0)
        allowed = self._within_shares(rows.client_ids, fresh_counts)
        accepted = int((allowed > 0).sum())
        if not accepted:
            return 0
        fields = rows.fields
        clients = np.repeat(self.client_numbers(rows.client_ids), counts)
        mask: np.ndarray | None = None
        if allowed is not fresh_counts:  # a client's share cut envelopes short: their first rows
            starts = np.cumsum(counts) - counts
            within = np.arange(int(counts.sum())) - np.repeat(starts, counts)
            mask = within < np.repeat(allowed, counts)
        elif not fresh.all():
            mask = np.repeat(fresh, counts)
        if mask is not None:
            fields = {name: value[mask] for name, value in fields.items()}
            clients = clients[mask]
        self.accept_rows(fields, clients)
        return accepted

    def _within_shares(self, client_ids: np.ndarray, fresh_counts: np.ndarray) -> np.ndarray:
        """Rows to keep of each envelope: `fresh_counts` itself unless a client's share of the
        update debt caps some (the excess is counted as over_share, in transitions)."""
        if self.shares is None:
            return fresh_counts
        allowed = self.shares.admit(client_ids, fresh_counts)
        cut = fresh_counts - allowed
        if not cut.any():
            return fresh_counts
        cid = str(client_ids[int(np.argmax(cut))])[:64]
        self._reject(
            "over_share", f"client {cid!r} is at its share of the update debt", int(cut.sum())
        )
        return allowed

    def queued_steps(self) -> float:
        """Env steps waiting in Redis's queue, estimated from the mean envelope so far."""
        return self.queued * self.env_steps / self.messages if self.messages else 0.0

    def _fresh(self, model_id: int, newest: int, n: int) -> bool:
        """Count `n` env steps; False (and counted as rejected) when the model id is too new or
        too old."""
        self.env_steps += n
        if model_id > newest:
            self._reject("future_model", f"model id {model_id} > newest {newest}")
        elif newest - model_id > self.max_delay:
            self._reject("stale_model", f"model id {model_id} lags newest {newest}", n)
        else:
            return True
        return False

    def _reject(self, reason: str, detail: str, count: int = 1) -> None:
        self.rejected[reason] += count
        if reason != "stale_model":
            self._log.warning(reason, f"rejected experience message: {detail}")
