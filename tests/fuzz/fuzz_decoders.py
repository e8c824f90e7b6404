"""Coverage-guided fuzzing of every decoder with atheris (libFuzzer).

    python tests/fuzz/fuzz_decoders.py -runs=100000          # or -max_total_time=60
Any exception other than ProtocolError is a crash that libFuzzer reports with its input.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    import gymnasium as gym
    import numpy as np

    from soulsai.errors import ProtocolError
    from soulsai.model.specs import dqn_experience_spec
    from soulsai.transport.batch import LayoutCache, decode_experience_rows
    from soulsai.transport.commands import decode_command
    from soulsai.transport.envelope import decode_experience
    from soulsai.transport.episodes import decode_episode
    from soulsai.transport.weights import decode_weights, weights_metadata

SPEC = dqn_experience_spec(
    gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), 3, 4096, 1 << 20
)
LAYOUTS = LayoutCache()
DECODERS = (
    lambda raw: decode_experience(raw, SPEC),
    lambda raw: decode_experience_rows([raw, raw, raw[:-1], raw], SPEC),  # never raises
    lambda raw: decode_experience_rows([raw, raw], SPEC, LAYOUTS),  # layouts of earlier inputs
    lambda raw: decode_episode(raw, 65536),
    lambda raw: decode_command(raw, {"save_best", "quicksave", "shutdown"}),
    lambda raw: weights_metadata(raw, 1 << 20),
    lambda raw: decode_weights(raw, {"w": (4, 3)}, 1 << 20),
)


def one_input(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
