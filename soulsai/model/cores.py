"""Recurrent cores (LSTM, GRU) without torch: sizes, weight shapes, the state's wire form and
the clients' numpy cells.

A core is one `torch.nn.LSTM` or `torch.nn.GRU` layer (`soulsai.model.cores_torch`); its
state travels and is stored as one float32 row per env copy: `[h, c]` for an LSTM (torch's
(h, c) order), `[h]` for a GRU. The numpy cells compute exactly what torch computes, gates in
torch's order (LSTM: input, forget, cell, output; GRU: reset, update, new), tested step by step.

On the wire (ppo_experience_spec's `state` field) a fragment's initial state is spread over
the fragment's rows: row j of a fragment of L rows carries elements j*k .. j*k + k - 1 of the
state, k = ceil(state_size / L), zero-padded, so a fragment carries its state once however
long it is. Values are bounded by STATE_BOUND: h lies in (-1, 1); an LSTM's c grows by at
most 1 per step, and the client clips it to the bound (reached only after STATE_BOUND steps
without a reset).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from soulsai.errors import ProtocolError

KINDS = ("lstm", "gru")
GATES = {"lstm": 4, "gru": 3}
STATE_BOUND = 1e4  # |state| on the wire and in the client's carry


def state_size(kind: str | None, size: int) -> int:
    """Floats per env copy in the state of a core (0 without one)."""
    if kind is None:
        return 0
    return 2 * size if kind == "lstm" else size


def core_weight_shapes(
    kind: str, n_in: int, size: int, prefix: str = "core"
) -> dict[str, tuple[int, ...]]:
    """The state_dict of a one-layer torch LSTM/GRU named `prefix`."""
    g = GATES[kind] * size
    return {
        f"{prefix}.weight_ih_l0": (g, n_in),
        f"{prefix}.weight_hh_l0": (g, size),
        f"{prefix}.bias_ih_l0": (g,),
        f"{prefix}.bias_hh_l0": (g,),
    }


def state_chunk(size: int, fragment_length: int) -> int:
    """Floats of the initial state each row of a fragment carries on the wire."""
    return max(1, math.ceil(size / fragment_length))


def spread_state(states: np.ndarray, fragment_length: int) -> np.ndarray:
    """(n, S) initial states of n fragments -> (n * L, k) rows: each fragment's state cut into
    its L rows, zero-padded (see the module docstring)."""
    n, size = states.shape
    k = state_chunk(size, fragment_length)
    rows = np.zeros((n, fragment_length * k), dtype=np.float32)
    rows[:, :size] = states
    return rows.reshape(n * fragment_length, k)


def gather_state(rows: np.ndarray, last: np.ndarray, size: int, fragment_length: int) -> np.ndarray:
    """The (n, S) initial states of the fragments of a received message (rows (N, k)), or a
    ProtocolError: `bad_structure` unless the message is whole fragments of `fragment_length`
    rows (`last` set on each one's last row only); `out_of_range` when the padding is not 0."""
    n_rows = len(rows)
    if n_rows % fragment_length:
        raise ProtocolError(
            "bad_structure", f"{n_rows} rows are not whole fragments of {fragment_length}"
        )
    n = n_rows // fragment_length
    want = np.zeros((n, fragment_length), dtype=bool)
    want[:, -1] = True
    if not np.array_equal(np.asarray(last, bool).reshape(n, fragment_length), want):
        raise ProtocolError("bad_structure", f"'last' does not end every {fragment_length} rows")
    flat = rows.reshape(n, -1)
    if flat.shape[1] < size:
        raise ProtocolError("bad_structure", f"the state needs {size} floats per fragment")
    if np.any(flat[:, size:]):
        raise ProtocolError("out_of_range", "the state's padding is not zero")
    return np.ascontiguousarray(flat[:, :size], dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


def _arr(t: Any) -> np.ndarray:
    a = t.detach().cpu().numpy().copy() if hasattr(t, "detach") else np.asarray(t)
    return a.astype(np.float32, copy=False)


class NumpyCore:
    """One step of a torch LSTM/GRU layer in numpy, from its state_dict entries `prefix.*`."""

    def __init__(self, kind: str, state: Mapping[str, Any], prefix: str = "core") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown recurrent core {kind!r}")
        self.kind = kind
        self.w_ih = _arr(state[f"{prefix}.weight_ih_l0"]).T  # (F, G * H)
        self.w_hh = _arr(state[f"{prefix}.weight_hh_l0"]).T  # (H, G * H)
        self.b_ih = _arr(state[f"{prefix}.bias_ih_l0"])
        self.b_hh = _arr(state[f"{prefix}.bias_hh_l0"])
        self.size = self.w_hh.shape[0]
        if self.w_hh.shape[1] != GATES[kind] * self.size:
            raise ValueError(f"{prefix}: weights of shape {self.w_hh.shape} are not a {kind}")
        self.state_size = state_size(kind, self.size)

    def step(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(output h' (B, H), new state (B, S)) for inputs x (B, F) and states (B, S)."""
        hs = self.size
        h = state[:, :hs]
        if self.kind == "lstm":
            c = state[:, hs:]
            gates = x @ self.w_ih + self.b_ih + h @ self.w_hh + self.b_hh
            i = _sigmoid(gates[:, :hs])
            f = _sigmoid(gates[:, hs : 2 * hs])
            g = np.tanh(gates[:, 2 * hs : 3 * hs])
            o = _sigmoid(gates[:, 3 * hs :])
            c_new = f * c + i * g
            h_new = o * np.tanh(c_new)
            return h_new, np.concatenate([h_new, c_new], axis=1).astype(np.float32, copy=False)
        gi = x @ self.w_ih + self.b_ih
        gh = h @ self.w_hh + self.b_hh
        r = _sigmoid(gi[:, :hs] + gh[:, :hs])
        z = _sigmoid(gi[:, hs : 2 * hs] + gh[:, hs : 2 * hs])
        n = np.tanh(gi[:, 2 * hs :] + r * gh[:, 2 * hs :])
        h_new = ((1.0 - z) * n + z * h).astype(np.float32, copy=False)
        return h_new, h_new
