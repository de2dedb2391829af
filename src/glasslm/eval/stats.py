"""Summary statistics shared by evaluation results and adaptation's before/after comparisons."""

from __future__ import annotations

import math

import numpy as np


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / √n, as lm-evaluation-harness reports it);
    (nan, nan) for no values, standard error 0 for one."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = float(np.mean(values))
    err = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return mean, err
