"""Summaries of a few numbers, one formula for every table bbtune prints: the mean and the *sample* standard
deviation (ddof = 1) over seeds, since three seeds are a sample of the seeds a user could draw.

    >>> [round(x, 2) for x in mean_std([80.8, 79.4, 80.4])]
    [80.2, 0.72]
"""
from __future__ import annotations

import statistics
from typing import Iterable


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """(mean, sample std) of `values`; std 0.0 for one value, (None, None) for none."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
