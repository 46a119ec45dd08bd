"""Seeds of the phantom generators: which seeds are shipped held-out cases and which are for
training, and one independent random stream per purpose.

Every random draw comes from ``numpy.random.default_rng([seed, stream])`` (PCG64, platform
independent) with one stream per purpose (:data:`STREAM_PARAMS` ...), so e.g. switching a finding
off does not change the noise. Seeds 1..N are the shipped held-out cases; training code uses
seeds >= :data:`TRAIN_SEED_START` so the two never overlap. numpy only: cheap to import.
"""

from __future__ import annotations

import numpy as np

#: First seed used for training data; shipped held-out cases use small seeds (1..N).
TRAIN_SEED_START = 1000
GLIOMA_HELDOUT_SEEDS = (1, 2, 3, 4)
CXR_HELDOUT_SEEDS = tuple(range(1, 25))

# Independent random streams per case (``default_rng([seed, stream])``).
STREAM_PARAMS, STREAM_SHAPE, STREAM_BIAS, STREAM_NOISE = 0, 1, 2, 3


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of random stream ``stream`` of case ``seed`` (``seed`` must be >= 0)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([int(seed), stream])
