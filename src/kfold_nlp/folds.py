"""Stratified K folds on the binned target, seeded, so every experiment shares the same OOF rows."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from .errors import ConfigError


def sturges_bins(n: int) -> int:
    """Sturges' rule, as the CommonLit solutions used it: ``floor(1 + log2 n)`` equal-width bins."""
    return int(math.floor(1 + math.log2(n)))


def make_folds(target, n_splits: int = 5, seed: int = 42, bins: int | str = "sturges") -> np.ndarray:
    """Fold number (0..n_splits-1) of each row: seeded StratifiedKFold on ``target`` cut into equal-width bins."""
    target = np.asarray(target, dtype=float)
    n_bins = sturges_bins(len(target)) if bins == "sturges" else int(bins)
    labels = pd.cut(target, n_bins, labels=False) if n_bins > 1 else np.zeros(len(target), dtype=int)
    largest = int(np.bincount(labels).max())
    if largest < n_splits:  # StratifiedKFold's own ValueError, after the run folder was made
        raise ConfigError(f"cv.n_splits={n_splits}: stratified folds need a target bin of at least {n_splits} rows, "
                          f"and the largest of the {n_bins} bins (cv.bins={bins}) holds {largest}; lower cv.n_splits "
                          f"or cv.bins")
    folds = np.empty(len(target), dtype=int)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # the extreme bins are often smaller than n_splits; they are spread as far as they go
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        for k, (_, val) in enumerate(splitter.split(np.zeros(len(target)), labels)):
            folds[val] = k
    return folds
