"""Valid-action masks in numpy: read from the env, checked, honoured when acting, packed as bits.

A mask is a bool array (B, n_actions), True where the action is valid. SoulsGym puts one in
`info["action_mask"]` every step; sb3-contrib's envs have an `action_masks()` method. The client
checks what the env gives (a bad mask is a ConfigError naming the setting, never a silent
argmax over invalid actions), acts among valid actions only, and sends the next observation's
mask as bits; the training node checks the bits (a reject reason, `bad_mask`) before use. The
torch side (targets, PPO's distribution) is `soulsai.model.masks_torch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from soulsai.errors import ConfigError, ProtocolError
from soulsai.transport.envelope import FieldSpec

SETTING = "env.action_mask"  # the config key that names where masks come from
METHOD = "action_masks()"  # its value that asks the env's action_masks() instead of an info key


def check_mask(
    mask: Any,
    n_actions: int,
    num_envs: int,
    source: str,
    allow_empty: np.ndarray | None = None,
    setting: str = SETTING,
) -> np.ndarray:
    """`mask` as a bool array (num_envs, n_actions), or a ConfigError naming `setting` and
    `source` (e.g. "info['action_mask']"): wrong shape, values other than 0/1/True/False, or
    a row with no valid action. Rows where `allow_empty` is set (observations after which
    nothing is chosen, e.g. terminal ones) may be empty and come back all True."""
    a = np.asarray(mask)
    if a.shape == (n_actions,) and num_envs == 1:
        a = a[None]
    if a.shape != (num_envs, n_actions):
        want = (n_actions,) if num_envs == 1 else (num_envs, n_actions)
        raise ConfigError(f"{setting}: {source} has shape {a.shape}, expected {want}")
    if a.dtype != np.bool_:
        if a.dtype.kind not in "iuf" or not np.isin(a, (0, 1)).all():
            raise ConfigError(f"{setting}: {source} must hold only 0/1 or booleans")
        a = a != 0
    empty = ~a.any(axis=1)
    if allow_empty is not None:
        a = a.copy()
        a[empty & allow_empty] = True
        empty &= ~allow_empty
    if empty.any():
        rows = np.flatnonzero(empty).tolist()
        raise ConfigError(f"{setting}: {source} allows no action (env copies {rows})")
    return a


def mask_from_info(
    info: Mapping[str, Any], key: str, n_actions: int, num_envs: int, **kw: Any
) -> np.ndarray:
    """The mask in `info[key]`: one env's vector, or a vector env's stacked rows (then every
    copy must have it: Gymnasium marks which do in `info["_" + key]`)."""
    source = f"info[{key!r}]"
    if key not in info:
        raise ConfigError(f"{kw.get('setting', SETTING)}: the env's step info has no {key!r}")
    present = info.get("_" + key)
    if present is not None and not np.asarray(present).all():
        missing = np.flatnonzero(~np.asarray(present, bool)).tolist()
        raise ConfigError(
            f"{kw.get('setting', SETTING)}: {source} missing for env copies {missing}"
        )
    return check_mask(info[key], n_actions, num_envs, source, **kw)


def mask_from_env(env: Any, n_actions: int, num_envs: int, **kw: Any) -> np.ndarray:
    """The mask from the env's `action_masks()` (sb3-contrib's convention), through wrappers;
    a Gymnasium vector env is asked copy by copy (`call`)."""
    try:
        if hasattr(env, "call") and hasattr(env, "num_envs"):
            raw = np.stack([np.asarray(m) for m in env.call("action_masks")])
        else:
            raw = env.get_wrapper_attr("action_masks")()
    except AttributeError:
        raise ConfigError(
            f"{kw.get('setting', SETTING)}: the env has no action_masks() method"
        ) from None
    return check_mask(raw, n_actions, num_envs, "action_masks()", **kw)


def masked_greedy(q: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Argmax of each row of `q` (B, n) over its valid actions only (int64, (B,))."""
    return np.where(mask, q, -np.inf).argmax(axis=1).astype(np.int64)


def uniform_valid(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row, uniform among the row's valid actions (int64, (B,))."""
    counts = mask.sum(axis=1)
    k = (rng.random(len(mask)) * counts).astype(np.int64)  # the k-th valid action, 0-based
    return (np.cumsum(mask, axis=1) > k[:, None]).argmax(axis=1).astype(np.int64)


def masked_epsilon_greedy(
    q: np.ndarray, mask: np.ndarray, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """Per row: with probability `epsilon` a uniform draw among valid actions, else the
    greedy valid action. Every row must have a valid action (`check_mask`)."""
    actions = masked_greedy(q, mask)
    if epsilon > 0:
        explore = rng.random(len(actions)) < epsilon
        if explore.any():
            actions[explore] = uniform_valid(mask[explore], rng)
    return actions


def masked_log_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Log-probabilities of the categorical over valid actions only; -inf where invalid."""
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def masked_sample(
    logits: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(actions int64, their log-probs float32) drawn from the masked categorical: Gumbel-max
    over valid actions, which can never pick an invalid one (a CDF walk can, by rounding)."""
    logp = masked_log_softmax(logits, mask)
    actions = np.where(mask, logp + rng.gumbel(size=logp.shape), -np.inf).argmax(axis=1)
    return actions.astype(np.int64), logp[np.arange(len(logp)), actions].astype(np.float32)


def masked_entropy(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Entropy of the masked categorical (invalid actions contribute nothing)."""
    logp = masked_log_softmax(logits, mask)
    return -(np.exp(logp) * np.where(mask, logp, 0.0)).sum(axis=1)  # never 0 * -inf


# ---------------------------------------------------------------- the wire


def mask_bytes(n_actions: int) -> int:
    return (n_actions + 7) // 8


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """(B, n) bool -> (B, ceil(n/8)) uint8, first action in the high bit of byte 0."""
    return np.packbits(np.asarray(mask, bool), axis=1)


def unpack_mask(bits: np.ndarray, n_actions: int) -> np.ndarray:
    """(B, ceil(n/8)) uint8 -> (B, n) bool."""
    return np.unpackbits(bits, axis=1, count=n_actions).astype(bool)


def mask_field(n_actions: int) -> FieldSpec:
    """The wire field of packed mask bits (any byte passes here; `check_mask_bits` checks)."""
    return FieldSpec(np.dtype("u1"), (mask_bytes(n_actions),))


def check_mask_bits(
    bits: np.ndarray, n_actions: int, allow_empty: np.ndarray | None = None
) -> np.ndarray:
    """Received mask bits as a bool mask (B, n), or ProtocolError("bad_mask"): padding bits
    set, or a row without a valid action (unless `allow_empty`, e.g. terminated rows, whose
    mask no target uses)."""
    pad = 8 * bits.shape[1] - n_actions
    if pad and (bits[:, -1] & ((1 << pad) - 1)).any():
        raise ProtocolError("bad_mask", "padding bits set")
    mask = unpack_mask(bits, n_actions)
    empty = ~mask.any(axis=1)
    if allow_empty is not None:
        empty &= ~np.asarray(allow_empty, bool)
    if empty.any():
        raise ProtocolError("bad_mask", "a mask allows no action")
    return mask
