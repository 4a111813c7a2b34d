"""Seeded random streams: one derivation from integer words to a torch Generator.

Every seeded stream in lvm (the estimators' draw blocks, training's data order
and z draws, synthetic data) is keyed by a tuple of integers, e.g.
(seed, block index) or (seed, stream id). numpy's SeedSequence hashes the tuple
into well-mixed entropy, so neighbouring keys give independent streams; the
derivation is fixed because changing it changes every draw.
"""

from __future__ import annotations

import numpy as np
import torch


def entropy(*words: int) -> int:
    """64 bits of entropy derived from ``words`` by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0])


def generator(*words: int) -> torch.Generator:
    """A CPU torch Generator seeded from ``words`` (its seed is :func:`entropy` masked to 63 bits)."""
    return torch.Generator().manual_seed(entropy(*words) & ((1 << 63) - 1))
