"""Paired bootstrap intervals for comparing two policies unit by unit (seed instructions): ``Interval`` (a ratio with
its percentile interval and the share of draws at or below 1), and the ratio of two sums (``paired_bootstrap_ratio``)
or of two rates such as rows per expert call (``paired_bootstrap_rate_ratio``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

# Work arrays (bootstrap index blocks here, cosine blocks in ``compare``) hold at most this many entries (32 MiB of
# int64 or float64), whatever the number of units or texts.
BLOCK_ENTRIES = 1 << 22


# Ratios within TIE of 1 are ties: the same policy computed another way (an exactly uniform head's softmax against
# 1/6) comes out at 1 +- 1e-8, and must not count as a win.
TIE = 1e-6


@dataclass(frozen=True)
class Interval:
    """A ratio with its bootstrap percentile interval.

    ``n_boot`` counts the draws used (those with a non-zero base sum); ``share_below_one`` is the fraction of them
    whose ratio is <= 1, a one-sided p-value-like number for "ours is no better than base".
    """

    estimate: float
    lo: float
    hi: float
    n_units: int
    n_boot: int
    level: float
    share_below_one: float

    @property
    def excludes_one(self) -> bool:
        """The interval lies wholly above or below 1.0 (False when undefined)."""
        return bool(self.lo > 1.0 + TIE or self.hi < 1.0 - TIE)

    def as_dict(self) -> dict:
        """The fields plus ``excludes_one``, for JSON reports."""
        return {**asdict(self), "excludes_one": self.excludes_one}


def _paired_arrays(ours: Mapping[str, float], base: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    missing_base, missing_ours = sorted(set(ours) - set(base)), sorted(set(base) - set(ours))
    if missing_base or missing_ours:
        raise ValueError(
            f"ours and base must have the same units; missing from base: {missing_base[:10]}"
            f"{' ...' if len(missing_base) > 10 else ''}, missing from ours: {missing_ours[:10]}"
            f"{' ...' if len(missing_ours) > 10 else ''}"
        )
    keys = sorted(ours)
    a = np.asarray([ours[k] for k in keys], dtype=np.float64)
    b = np.asarray([base[k] for k in keys], dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or (a < 0).any() or (b < 0).any():
        raise ValueError("values must be finite and non-negative")
    return keys, a, b


def paired_bootstrap_ratio(
    ours: Mapping[str, float],
    base: Mapping[str, float],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """sum(ours) / sum(base) over units (seed instruction ids) with a paired percentile bootstrap interval.

    Each draw resamples the unit ids with replacement, the same ids for both sides, and takes the ratio of the
    resampled sums. Units are taken in sorted-key order and indices are drawn from ``np.random.default_rng(seed)``
    as ``rng.integers(0, n_units, size=(block, n_units))`` blocks. Draws whose base sum is 0 have no ratio and are
    dropped (``Interval.n_boot`` says how many remain); a base total of 0 gives nan everywhere. Values must be
    finite and non-negative (rows or counts); keys that differ between the sides raise ValueError.
    """
    _, a, b = _paired_arrays(ours, base)
    return _bootstrap([a, b], lambda sa, sb: (sa, sb), n_boot=n_boot, seed=seed, level=level)


def paired_bootstrap_rate_ratio(
    ours: Mapping[str, float],
    ours_cost: Mapping[str, float],
    base: Mapping[str, float],
    base_cost: Mapping[str, float],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """(sum(ours) / sum(ours_cost)) / (sum(base) / sum(base_cost)): e.g. rows per expert call of a policy over
    random's, with the same paired percentile bootstrap over units as ``paired_bootstrap_ratio`` (all four
    mappings over the same unit ids; a unit one side never reached holds 0 rows at 0 cost)."""
    _, a, b = _paired_arrays(ours, base)
    _, ac, bc = _paired_arrays(ours_cost, base_cost)
    _paired_arrays(ours, ours_cost)  # the same units on every side

    def stat(sa, sac, sb, sbc):
        with np.errstate(divide="ignore", invalid="ignore"):
            return sa * sbc, sb * sac  # (sa / sac) / (sb / sbc) as a ratio of two products

    return _bootstrap([a, ac, b, bc], stat, n_boot=n_boot, seed=seed, level=level)


def _bootstrap(columns: list[np.ndarray], stat, *, n_boot: int, seed: int, level: float) -> Interval:
    """Resample units (rows of ``columns``) with replacement; ``stat`` maps the resampled column sums to a
    (numerator, denominator) pair whose ratio is the statistic. Draws with a zero denominator are dropped."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(columns[0])
    num, den = stat(*(c.sum() for c in columns))
    if n == 0 or den == 0:
        return Interval(math.nan, math.nan, math.nan, n, 0, level, math.nan)
    estimate = float(num / den)
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_ENTRIES // n)
    ratios = []
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
        num, den = stat(*(c[idx].sum(axis=1) for c in columns))
        keep = den > 0
        ratios.append(num[keep] / den[keep])
    r = np.concatenate(ratios)
    if len(r) == 0:
        return Interval(estimate, math.nan, math.nan, n, 0, level, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    return Interval(estimate, float(lo), float(hi), n, len(r), level, float(np.mean(r <= 1.0 + TIE)))
