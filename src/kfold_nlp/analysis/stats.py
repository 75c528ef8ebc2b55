"""Runs compared on their OOF rows: each run's ``oof.csv`` read, aligned row by row with another's, and the paired
bootstrap interval of their difference (the statistics themselves, and their conventions: ``kfold_nlp.metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import metrics
from ..metrics import (  # noqa: F401  (stats.* in the tests: they import these from here)
    LEVEL,
    MIN_DIFF,
    N_BOOT,
    SEED,
    Interval,
    SeedDiff,
    compare_columns,
    paired_bootstrap,
    percentile_interval,
    resample_counts,
    resampled_rmse,
    rmse,
    rmse_interval,
    seed_diff,
)
from ..rundir import RunDir, read_csv

OOF_COLUMNS = ("id", "fold", "target", "pred")


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
    """A run folder's ``oof.csv`` (id, fold, target, pred), ids as strings; a damaged one refused with one line."""
    return read_csv(RunDir(run).oof, OOF_COLUMNS, f"collect the run again: make collect RUN={run}", dtype={"id": str})


def aligned(paths: dict, first) -> tuple[pd.DataFrame | None, dict]:
    """The OOF rows of run ``first`` and the predictions, in that row order, of every run on the same rows and folds
    (runs without ``oof.csv`` or on other folds are left out)."""
    frames = {k: read_oof(p) for k, p in paths.items() if p is not None and RunDir(p).oof.exists()}
    if first not in frames:
        return None, {}
    preds = {}
    for k, frame in frames.items():
        try:
            rows, pred = align_oof([frames[first], frame])
        except FoldMismatch:
            continue
        preds[k] = pred[:, 1]
    return rows, preds


def intervals(paths: dict, ref) -> dict:
    """``{key: metrics.Interval}``: each run's OOF RMSE minus run ``ref``'s, with its paired bootstrap interval."""
    rows, preds = aligned(paths, ref)
    if rows is None:
        return {}
    base = preds.pop(ref)
    return metrics.compare_columns(rows["target"], rows["fold"], base, preds | {ref: base})
