"""How far a hard search steps: the scale of ``A`` at which a step of sigma0 changes a given share of p0's nearest
tokens. At BBT's scale a step barely moves a prompt vector off p0's tokens, so a search by projection in the loop
would see one prompt; the scale is found by bisection instead of guessed."""
from __future__ import annotations

import math

import numpy as np
import torch

from bbtune.search.discretize import Discretizer
from bbtune.search.subspace import Subspace


def calibrate_hard_scale(subspace: Subspace, discretizer: Discretizer, sigma0: float, target: float, seed: int,
                         samples: int = 16, steps: int = 18) -> tuple[float, float]:
    """Factor for A such that candidates z ~ N(0, sigma0^2 I) change about `target` of p0's nearest tokens.

    The share of changed tokens grows monotonically with the scale, so a bisection in log-scale finds it.
    Returns (factor, share reached).
    """
    Z = np.random.default_rng(seed + 1).standard_normal((samples, subspace.dim)) * sigma0
    start = discretizer.ids(subspace.p0)
    moves = (torch.as_tensor(Z, dtype=subspace.A.dtype) @ subspace.A.T).view(samples, *subspace.p0.shape)

    def share(scale: float) -> float:
        return float((discretizer.ids(subspace.p0 + scale * moves) != start).float().mean())

    lo, hi = 1e-2, 1e3
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if share(mid) < target else (lo, mid)
    return hi, share(hi)
