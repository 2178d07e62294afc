"""Error bars for results over seeds: t intervals for means and paired differences, bootstrap.

A result over ``n`` seeds is reported as its mean with a 95% confidence interval. For a mean
(and for the mean of paired differences: two optimizers run on the same seeds, so the same
initial weights and batches) the interval is Student's t,

.. math:: \\bar x \\pm t_{0.975,\\,n-1}\\, s / \\sqrt{n},

and for a statistic without such a formula (a slope fitted to a grid, a share of variance) a
percentile bootstrap over seeds. A verdict is given only where the interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A mean (or a statistic) with its 95% confidence interval over ``seeds`` runs."""

    mean: float
    low: float
    high: float
    seeds: int

    def as_dict(self) -> dict[str, object]:
        """``{"mean": ..., "ci95": [low, high], "seeds": n}``, the form metrics.json uses."""
        return {"mean": self.mean, "ci95": [self.low, self.high], "seeds": self.seeds}

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _t_quantile(level: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, dof))


def mean_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """The mean of ``values`` (one per seed) with its Student-t interval at ``level``.

    Raises:
      ValueError: fewer than two values (no spread to estimate), or non-finite values.
    """
    x = np.asarray(values, np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"a confidence interval needs at least 2 seeds, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("a confidence interval needs finite values; some runs diverged")
    mean = float(x.mean())
    half = _t_quantile(level, x.size - 1) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


def paired_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> Interval:
    """``mean(a - b)`` over seeds with its t interval: ``a[i]`` and ``b[i]`` share seed ``i``."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired results need one value per seed on both sides, got {a.size} and {b.size}")
    return mean_interval(a - b, level)


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    per_seed: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """A percentile-bootstrap interval of ``statistic`` over the seed axis (axis 0) of ``per_seed``.

    Each resample draws as many seeds as there are, with replacement, and applies ``statistic``
    to them (for a grid: ``per_seed[seeds, lr, wd]`` averaged inside ``statistic``). The
    resampling is seeded, so the interval is the same on every machine for the same results.
    """
    data = np.asarray(per_seed)
    n = data.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap over seeds needs at least 2 seeds, got {n}")
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(data[rng.integers(0, n, n)]) for _ in range(resamples)], np.float64)
    draws = draws[np.isfinite(draws)]
    point = float(statistic(data))
    if draws.size == 0:
        return Interval(point, float("nan"), float("nan"), n)
    low, high = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(low), float(high), n)
