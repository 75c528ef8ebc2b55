"""Which rows go where: the holdout set aside first, then stratified K folds on the binned target, seeded, so
every experiment on the same data shares the same holdout and OOF rows."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

FEW_ROWS = 8  # a fold trained on fewer rows than this is worth a warning: its score says little

HOLDOUT = -1  # the fold number of a holdout row in folds.csv: no fold trains on it, validates on it or selects by it


def sturges_bins(n: int) -> int:
    """Sturges' rule, as the CommonLit solutions used it: ``floor(1 + log2 n)`` equal-width bins."""
    return int(math.floor(1 + math.log2(n)))


def bin_labels(target, bins: int | str = "sturges") -> np.ndarray:
    """Equal-width bins of the target (Sturges' number by default): what the holdout and the folds stratify on."""
    target = np.asarray(target, dtype=float)
    n_bins = sturges_bins(len(target)) if bins == "sturges" else int(bins)
    return pd.cut(target, n_bins, labels=False) if n_bins > 1 else np.zeros(len(target), dtype=int)


def holdout_rows(ids: pd.Series, target, holdout, seed: int = 42, bins: int | str = "sturges",
                 id_col: str = "id") -> np.ndarray:
    """Which rows are held out (a boolean mask): a fraction drawn stratified on the binned target (``holdout``
    a number), or the ids listed in a file (``holdout`` a path: a CSV with an ``id`` or ``id_col`` column, else one
    id a line).

    The holdout is chosen before the folds and independently of them, so a row is either in it for every fold
    or for none.
    """
    n = len(ids)
    if holdout is None:
        return np.zeros(n, dtype=bool)
    if isinstance(holdout, str):
        return _listed(ids, holdout, id_col)
    labels = bin_labels(target, bins)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None  # train_test_split needs 2 rows a bin
    size = max(1, round(holdout * n))
    if n - size < 2:
        raise ConfigError(f"cv.holdout={holdout}: leaves {n - size} of {n} rows for the folds")
    classes = int((counts > 0).sum())
    if stratify is not None and min(size, n - size) < classes:  # train_test_split's own ValueError otherwise
        lo, hi = math.ceil((classes - 0.5) / n * 100) / 100, math.floor((n - classes + 0.5) / n * 100) / 100
        raise ConfigError(f"cv.holdout={holdout}: {size} of {n} rows held out, but a holdout stratified on "
                          f"{classes} target bins needs at least {classes} rows on each side; give a fraction from "
                          f"{lo:g} to {hi:g}, or lower cv.bins")
    _, held = train_test_split(np.arange(n), test_size=size, random_state=seed, stratify=stratify)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return mask


def _listed(ids: pd.Series, path: str, id_col: str = "id") -> np.ndarray:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read the holdout ids ({' '.join(str(err).split())[:160]})") from None
    known = set(ids.astype(str))
    column = next((c for c in (id_col, "id") if c in table.columns), None)
    if column is not None:
        listed = table[column]
    elif len(table.columns) == 1 and str(table.columns[0]).strip() in known:  # no header: one id a line
        listed = pd.concat([pd.Series([table.columns[0]]), table.iloc[:, 0]], ignore_index=True)
    else:
        raise DataError(f"{path}: no {id_col!r} column (columns: {', '.join(map(str, table.columns))}); give the "
                        f"holdout ids under a {id_col!r} column, or one id a line without a header")
    listed = listed.astype(str).str.strip()
    unknown = ~listed.isin(known)
    if unknown.any():
        raise DataError(f"{path}: {int(unknown.sum())} holdout id(s) not in the train file (first "
                        f"{listed[unknown].iloc[0]!r})")
    mask = ids.astype(str).isin(set(listed)).to_numpy()
    if len(ids) - mask.sum() < 2:
        raise DataError(f"{path}: holds {int(mask.sum())} of the {len(ids)} train ids; the folds need the rest")
    return mask


def assign(ids: pd.Series, target, cv_cfg, id_col: str = "id") -> np.ndarray:
    """Each row's fold number, ``HOLDOUT`` for the held-out rows; without a holdout exactly ``make_folds``."""
    held = holdout_rows(ids, target, cv_cfg.get("holdout"), cv_cfg.seed, cv_cfg.bins, id_col)
    folds = np.full(len(ids), HOLDOUT, dtype=int)
    folds[~held] = make_folds(np.asarray(target, dtype=float)[~held], cv_cfg.n_splits, cv_cfg.seed, cv_cfg.bins)
    fewest = int((~held).sum() - np.bincount(folds[~held]).max())  # the smallest fold's training rows
    if held.any() and fewest < FEW_ROWS:
        log.warning("warning: the holdout keeps %d of %d rows; the smallest fold trains on %d row(s)",
                    int(held.sum()), len(ids), fewest)
    return folds


def make_folds(target, n_splits: int = 5, seed: int = 42, bins: int | str = "sturges") -> np.ndarray:
    """Fold number (0..n_splits-1) of each row: seeded StratifiedKFold on ``target`` cut into equal-width bins."""
    target = np.asarray(target, dtype=float)
    n_bins = sturges_bins(len(target)) if bins == "sturges" else int(bins)
    labels = bin_labels(target, bins)
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


def same_folds(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Two ``folds.csv`` tables put the same rows (ids, in any order) in the same folds, the holdout included, with
    the same targets: what lets two runs' OOF predictions be compared, blended or distilled from."""
    a, b = (f.assign(id=f["id"].astype(str)).sort_values("id", kind="stable").reset_index(drop=True) for f in (a, b))
    return (len(a) == len(b) and (a["id"] == b["id"]).all() and (a["fold"] == b["fold"]).all()
            and np.allclose(a["target"].to_numpy(float), b["target"].to_numpy(float)))
