"""Runs that differ only by seed: one point each, drawn as the mean with a 95% confidence interval over seeds.

A run's seed is its ``seed`` factor (``studies/run.py --seeds N``), else the seed its tokenizer was trained with
(runs planned with one seed have no ``seed`` factor and are seed 0). At one point of a figure or row of a table,
the newest FINISHED run of each seed counts once.

The interval is seaborn's: the 2.5th and 97.5th percentiles of the bootstrapped mean (fixed resampling seed, so a
figure is redrawn identically). With two seeds it is the range of the two values. Two points differ beyond the
seed spread when their intervals do not overlap, which is what a reader sees of their bands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from seaborn.algorithms import bootstrap

N_BOOT = 1000
CI_LEVEL = 95
BOOT_SEED = 0


def run_seeds(runs: pd.DataFrame) -> pd.Series:
    """Each run's seed: the ``seed`` factor, else the tokenizer's training seed, else 0."""
    seed = pd.Series(pd.NA, index=runs.index, dtype="Int64")
    if "factor_seed" in runs:
        seed = pd.to_numeric(runs["factor_seed"], errors="coerce").astype("Int64")
    if "seed" in runs:
        seed = seed.fillna(pd.to_numeric(runs["seed"], errors="coerce").astype("Int64"))
    return seed.fillna(0).astype("int64")


def newest_per_seed(runs: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs`` (with a ``seed`` column) keeping the newest run of each (``keys``, seed); and the runs left out."""
    runs = runs.assign(seed=run_seeds(runs))
    ordered = runs.sort_values("start_time", kind="stable") if "start_time" in runs else runs
    kept = ordered.drop_duplicates(subset=[*keys, "seed"], keep="last").index
    return runs.loc[runs.index.isin(kept)], runs.loc[~runs.index.isin(kept)]


def ci95(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """The 95% bootstrap confidence interval of the mean of ``values`` (NaN, NaN below two values)."""
    v = np.asarray(values, dtype="float64")
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return math.nan, math.nan
    boots = bootstrap(v, func="mean", n_boot=N_BOOT, seed=BOOT_SEED)
    low, high = np.percentile(boots, [(100 - CI_LEVEL) / 2, 50 + CI_LEVEL / 2])
    return float(low), float(high)


def summary(values: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float]:
    """mean, std (n - 1), n, ci_low, ci_high of the values present."""
    v = np.asarray(values, dtype="float64")
    v = v[~np.isnan(v)]
    low, high = ci95(v)
    return {
        "mean": float(v.mean()) if len(v) else math.nan,
        "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
        "n": len(v),
        "ci_low": low,
        "ci_high": high,
    }


def beyond_spread(a: dict[str, float], b: dict[str, float]) -> bool | None:
    """Whether two points (:func:`summary` dicts) differ by more than their seed spread: their 95% intervals do not
    overlap. None when either has fewer than two seeds (nothing to judge by)."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    return max(a["ci_low"], b["ci_low"]) > min(a["ci_high"], b["ci_high"])
