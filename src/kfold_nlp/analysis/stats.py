"""The statistics behind every comparison of runs: compare, the sweep summary, ensembles and the notebook.

Conventions, the same everywhere:

- A *difference* is ``other - base`` in OOF RMSE: negative means ``other`` is better (lower error).
- A *paired bootstrap over rows* draws the same rows for both runs, so what the two runs share (hard texts, label
  noise) cancels and only their disagreement is left. Rows are drawn with replacement within each fold (stratified
  by fold), so every resample keeps each fold's size, like the CV score it imitates.
- The interval is the 2.5% and 97.5% percentiles of the resampled differences (95%): it says how much the
  difference would move on another sample of texts like these, for these trained models. A difference is marked
  (``marked``) when its interval excludes 0 *and* it is at least ``MIN_DIFF``: with thousands of rows and
  near-constant predictors a gap far too small to matter can still exclude 0.
- Over seeds, the training noise of each run adds to the row noise; ``seed_diff`` adds the two variances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import stdtrit

N_BOOT = 2000  # resamples: each bound of a 95% interval then varies by about 0.06 se from one seed to another


LEVEL = 0.95


SEED = 0  # fixed, so a table rebuilt from the same files shows the same intervals


MIN_DIFF = 0.005  # RMSE: the smallest difference worth a mark, whatever its interval (a practical threshold)


@dataclass(frozen=True)
class Interval:
    """A difference ``other - base`` in RMSE with its interval ``[lo, hi]``."""

    diff: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        """The interval lies on one side of 0: a real difference at this level, not row noise."""
        return bool(self.lo > 0 or self.hi < 0)

    def marked(self, min_diff: float = MIN_DIFF) -> bool:
        """Worth a mark: the interval excludes 0 and the difference is large enough to matter in practice."""
        return self.excludes_zero and bool(abs(self.diff) >= min_diff)


@dataclass(frozen=True)
class SeedDiff(Interval):
    """A difference of mean CV RMSE over seeds, with its standard error and how it was computed.

    ``pairing``: ``paired`` when both configurations ran the same seeds (the per-seed differences give the spread),
    ``unpaired`` otherwise (Welch: the two spreads add). ``se_seeds``: the training noise part, ``se_rows``: the row
    part (the paired bootstrap of the mean difference; 0 when the OOF files were not available), ``se``: both.
    """

    se: float = float("nan")
    se_seeds: float = float("nan")
    se_rows: float = 0.0
    pairing: str = ""
    df: float = float("nan")


def rmse(target, pred) -> float:
    """Root mean squared error over all rows: the CV score when the rows are the OOF rows of every fold."""
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(target, float)) ** 2)))


def resample_counts(folds, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """How often each row is drawn in each resample, ``(n_boot, n_rows)``: each fold's rows drawn with replacement,
    as many as the fold has. One matrix serves every run on these folds, which is what makes the bootstrap paired."""
    folds = np.asarray(folds)
    n, rng = len(folds), np.random.default_rng(seed)
    picks = []
    for k in np.unique(folds):
        rows = np.flatnonzero(folds == k)
        picks.append(rows[rng.integers(0, len(rows), size=(n_boot, len(rows)))])
    flat = np.concatenate(picks, axis=1) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def resampled_rmse(target, preds, counts: np.ndarray) -> np.ndarray:
    """The RMSE of each prediction column under each resample, ``(n_boot, n_columns)``.

    One matrix-vector product per column, so two identical columns give identical numbers to the last bit.
    """
    target = np.asarray(target, float)
    preds = np.asarray(preds, float).reshape(len(target), -1)
    sq = (preds - target[:, None]) ** 2
    return np.sqrt(np.stack([counts @ sq[:, j] for j in range(sq.shape[1])], axis=1) / len(target))


def percentile_interval(diff: float, samples: np.ndarray, level: float = LEVEL) -> Interval:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(diff), float(lo), float(hi))


def rmse_interval(target, pred, folds, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED) -> Interval:
    """The RMSE of ``pred`` with its bootstrap interval over rows drawn within each fold: how much the CV score
    would move on another sample of texts like these (``diff`` holds the RMSE itself)."""
    samples = resampled_rmse(target, pred, resample_counts(folds, n_boot, seed))[:, 0]
    return percentile_interval(rmse(target, pred), samples, level)


def paired_bootstrap(target, base, other, folds, *, n_boot: int = N_BOOT, level: float = LEVEL,
                     seed: int = SEED) -> Interval:
    """``rmse(other) - rmse(base)`` on the same OOF rows, with its paired bootstrap interval (stratified by fold).

    Identical predictions give exactly ``[0, 0]``; 2,000 resamples of 3,000 rows take about 0.1 s.
    """
    return compare_columns(target, folds, base, {"other": other}, n_boot=n_boot, level=level, seed=seed)["other"]


def compare_columns(target, folds, base, others: Mapping[str, np.ndarray], *, n_boot: int = N_BOOT,
                    level: float = LEVEL, seed: int = SEED, counts: np.ndarray | None = None) -> dict[str, Interval]:
    """``paired_bootstrap`` of several columns against one base, all on the same resamples."""
    counts = resample_counts(folds, n_boot, seed) if counts is None else counts
    names = list(others)
    cols = np.column_stack([np.asarray(base, float), *[np.asarray(others[k], float) for k in names]])
    samples = resampled_rmse(target, cols, counts)
    return {k: percentile_interval(rmse(target, cols[:, j + 1]) - rmse(target, cols[:, 0]),
                                   samples[:, j + 1] - samples[:, 0], level) for j, k in enumerate(names)}


def seed_diff(base: Sequence[float] | Mapping, other: Sequence[float] | Mapping, *, row_samples=None,
              level: float = LEVEL) -> SeedDiff:
    """Difference of the mean CV RMSE over seeds, ``mean(other) - mean(base)``, with both sources of noise.

    Pass mappings seed -> CV RMSE. When both ran the same seeds (at least two), the comparison is *paired*: the
    per-seed differences ``d_s`` cancel what a seed does to both (its data order, its initialisation), and
    ``se_seeds = sd(d_s) / sqrt(n)``, ``n - 1`` degrees of freedom. Otherwise it is *unpaired* (Welch):
    ``se_seeds = sqrt(sd_a^2 / n_a + sd_b^2 / n_b)``, NaN when a side has one seed.

    The seeds were all scored on the same OOF rows, so their spread says nothing about the rows; ``row_samples``
    (the paired bootstrap over rows of the same mean difference, one value per resample) adds that part:
    ``se = sqrt(se_seeds^2 + sd(row_samples)^2)`` (the law of total variance: training noise given the rows, plus
    the row noise of the mean). The interval is ``diff +- t(df) * se`` with the seeds' degrees of freedom, which
    is conservative when the row part dominates.
    """
    a, b = (dict(x) if isinstance(x, Mapping) else dict(enumerate(x)) for x in (base, other))
    paired = isinstance(base, Mapping) and isinstance(other, Mapping) and set(a) == set(b) and len(a) >= 2
    if paired:
        d = np.array([b[s] - a[s] for s in sorted(a)])
        diff, se_seeds, df = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d) - 1.0
    else:
        va, vb = (np.array(list(x.values()), float) for x in (a, b))
        diff, se_seeds, df = float(vb.mean() - va.mean()), float("nan"), float("nan")
        if min(len(va), len(vb)) >= 2:
            pa, pb = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
            se_seeds = float(np.sqrt(pa + pb))
            df = len(va) + len(vb) - 2.0  # Welch-Satterthwaite below; the pooled value when both spreads are 0
            if pa + pb > 0:
                df = (pa + pb) ** 2 / (pa**2 / (len(va) - 1) + pb**2 / (len(vb) - 1))
    se_rows = float(np.std(row_samples, ddof=1)) if row_samples is not None else 0.0
    se = float(np.hypot(se_seeds, se_rows))
    q = float(stdtrit(df, (1 + level) / 2)) if df >= 1 else np.nan
    return SeedDiff(diff, diff - q * se, diff + q * se, se=se, se_seeds=se_seeds, se_rows=se_rows,
                    pairing="paired" if paired else "unpaired", df=df)


class FoldMismatch(ValueError):
    """Two OOF files do not cover the same rows in the same folds: their errors cannot be paired. ``index``: the
    position of the first frame that differs from frame 0."""

    def __init__(self, index: int):
        super().__init__(f"OOF file {index} covers other rows or other folds than OOF file 0")
        self.index = index


def align_oof(oofs: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows ``(id, fold, target)`` of the first OOF frame and every frame's ``pred`` in that order, ``(n, m)``.

    Raises ``FoldMismatch`` naming the first frame (by position) whose ids or folds differ from the first's.
    """
    first = oofs[0].set_index("id")
    preds = []
    for i, oof in enumerate(oofs):
        oof = oof.set_index("id")
        if len(oof) != len(first) or not oof.index.is_unique or not oof.index.isin(first.index).all() \
                or not (oof.loc[first.index, "fold"].to_numpy() == first["fold"].to_numpy()).all():
            raise FoldMismatch(i)
        preds.append(oof.loc[first.index, "pred"].to_numpy(float))
    return first.reset_index()[["id", "fold", "target"]], np.column_stack(preds)


def read_oof(run) -> pd.DataFrame:
    """A run folder's ``oof.csv`` (id, fold, target, pred), ids as strings."""
    return pd.read_csv(Path(run) / "oof.csv", dtype={"id": str})
