"""An ensemble's members read and checked: the runs' OOF, holdout and test predictions on shared rows, refused with
one line when they cannot be blended (other folds, other test ids, a blank prediction, a damaged file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.folds import HOLDOUT, same_folds
from ..errors import OneLineError
from ..rundir import RunDir, read_csv
from .runs import run_labels, run_rows
from .stats import FoldMismatch, align_oof


class EnsembleError(OneLineError):
    """Members that cannot be blended; the message is the one line the user sees."""


FOLDS = ("id", "fold", "target")  # the columns of folds.csv, and the first of oof.csv


HOLDOUT_COLUMNS = ("id", "target")  # the first columns of holdout.csv


FIX = "re-collect or rerun that run"  # a member's damaged file


@dataclass
class Members:
    """The members' predictions on shared rows: OOF ``(n_rows, n_members)`` and test ``(n_test, n_members)``."""

    names: list[str]  # run names, unique (``runs.run_labels``)
    paths: list[Path]
    rows: pd.DataFrame  # id, fold, target of the OOF rows, in the first member's order
    oof: np.ndarray
    test_ids: pd.Series | None = None
    test: np.ndarray | None = None
    test_header: tuple[str, str] = ("id", "target")
    holdout_target: np.ndarray | None = None  # the runs' cv.holdout rows (fold -1 of folds.csv), never blended on
    holdout: np.ndarray | None = None  # each member's bagged holdout predictions, ``(n_holdout, n_members)``
    spread: np.ndarray | None = None  # ``fold_spread``: how the members' fold models differ on shared rows


def fold_spread(paths: list[Path], folds: list[int]) -> np.ndarray | None:
    """The covariance between the members' fold models, ``(n_members, n_members)``: over the rows every fold model
    predicted (the holdout's and the test file's; no target is read), each model's deviation from its member's bag,
    averaged. ``spread[i, i]`` is how much better member ``i``'s bag is than its single fold models (an OOF row is
    scored by one fold model, a holdout or test row by the bag). None when a member lacks a fold's predictions."""
    per_member = []
    for path in paths:
        columns = []
        for k in folds:
            fold = RunDir(path).fold(k)
            tables = [read_csv(f, ("id", "pred"), FIX, dtype={"id": str}) for f in (fold.holdout_pred, fold.test_pred)
                      if f.exists()]
            if not tables:
                return None
            columns.append(pd.concat(tables).drop_duplicates("id").set_index("id")["pred"])
        per_member.append(pd.concat(columns, axis=1, join="inner"))
    ids = per_member[0].index
    for table in per_member[1:]:
        ids = ids.intersection(table.index)
    if not len(ids):
        return None
    dev = [t.loc[ids].to_numpy(float) - t.loc[ids].to_numpy(float).mean(1, keepdims=True) for t in per_member]
    if any(not np.isfinite(d).all() for d in dev):
        return None
    return np.array([[float(np.mean(a * b)) for b in dev] for a in dev])


def display(path: Path) -> str:
    """The member's folder: its path relative to the working directory when below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def member_names(paths: list[Path]) -> list[str]:
    """Each member's run name (its ``name``, with what differs where names repeat), not its folder: a sweep's
    folders are numbers. A folder that is not a run folder (no run config) is named by its folder."""
    rows = []
    for path in paths:
        found = run_rows(path) if RunDir(path).is_run() else pd.DataFrame()
        row = found[found["run"] == "."].iloc[0].to_dict() if len(found) else {"name": None, "overrides": ""}
        rows.append(row | {"name": row["name"] or display(path), "path": path})
    return run_labels(pd.DataFrame(rows)).tolist()


def _read(file: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A member's file with ``columns``, ids as strings, ``pred`` a number (NaN where it is none)."""
    if not file.exists():
        raise EnsembleError(f"{file.parent}: no {file.name} (not a finished run folder)")
    table = read_csv(file, columns, FIX, dtype={"id": str})
    if "pred" in columns:
        table["pred"] = pd.to_numeric(table["pred"], errors="coerce")
    return table


def _check_finite(path: Path, values: np.ndarray) -> None:
    """A blank or non-finite prediction would make every weight and score NaN (or a silently skewed blend)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise EnsembleError(f"{path}: {int(bad.sum())} blank or non-finite prediction(s), first at data row "
                            f"{int(np.flatnonzero(bad)[0]) + 1}; {FIX}")


def _submission(path: Path) -> pd.DataFrame | None:
    """A member's ``submission.csv``: the first column is the id, the second the prediction, whatever their names."""
    file = RunDir(path).submission
    if not file.exists():
        return None
    sub = read_csv(file, (), FIX, dtype=str)
    if sub.shape[1] < 2:
        raise EnsembleError(f"{file}: needs an id and a prediction column; {FIX}")
    return sub.iloc[:, :2].assign(**{sub.columns[1]: pd.to_numeric(sub.iloc[:, 1], errors="coerce")})


def load_members(paths: list[Path]) -> Members:
    """Read the members and check that they can be blended (``EnsembleError`` otherwise)."""
    paths = list(dict.fromkeys(Path(p).resolve() for p in paths))  # a run listed twice is one member
    if not paths:
        raise EnsembleError("no runs to blend")
    first, folds0 = paths[0], _read(RunDir(paths[0]).folds_csv, FOLDS)
    oofs, subs = [], []
    for path in paths:
        run = RunDir(path)
        if not same_folds(folds0, _read(run.folds_csv, FOLDS)):
            raise EnsembleError(f"{path}: {RunDir.FOLDS} differs from {first}'s (other rows or other folds); blend "
                                f"only runs on the same data and cv.seed")
        oofs.append(_read(run.oof, (*FOLDS, "pred")))
        _check_finite(run.oof, oofs[-1]["pred"].to_numpy(float))
        subs.append(_submission(path))
        if subs[-1] is not None:
            _check_finite(run.submission, subs[-1].iloc[:, 1].to_numpy(float))
    try:
        rows, oof = align_oof(oofs)
    except FoldMismatch as err:
        raise EnsembleError(f"{paths[err.index]}: {RunDir.OOF} covers other rows than {first}'s "
                            f"(a run of some folds only?)") from None
    if rows["fold"].nunique() < 2:
        raise EnsembleError("the OOF rows cover one fold: no held-out fold to score the weights on")
    members = Members(member_names(paths), paths, rows, oof)
    members.spread = fold_spread(paths, sorted(int(k) for k in rows["fold"].unique()))
    held = folds0[folds0["fold"] == HOLDOUT]
    if len(held):  # the same rows for every member (same folds.csv): weights fitted on OOF rows predict them
        tables = [_read(RunDir(path).holdout, (*HOLDOUT_COLUMNS, "pred")) for path in paths]
        for path, table in zip(paths, tables):
            _check_finite(RunDir(path).holdout, table["pred"].to_numpy(float))
            if list(table["id"]) != list(held["id"]):
                raise EnsembleError(f"{RunDir(path).holdout}: other ids than the holdout rows of {RunDir.FOLDS}; "
                                    f"{FIX}")
        members.holdout_target = held["target"].to_numpy(float)
        members.holdout = np.column_stack([t["pred"].to_numpy(float) for t in tables])
    if all(s is None for s in subs):
        return members
    if any(s is None for s in subs):
        missing, has = (paths[[s is None for s in subs].index(flag)] for flag in (True, False))
        raise EnsembleError(f"{missing}: no {RunDir.SUBMISSION}, while {has} has one")
    ids = subs[0].iloc[:, 0]
    for path, sub in zip(paths, subs):
        if len(sub) != len(ids) or not sub.iloc[:, 0].is_unique or set(sub.iloc[:, 0]) != set(ids):
            raise EnsembleError(f"{path}: {RunDir.SUBMISSION} has other test ids than {first}'s")
    members.test_ids = ids
    members.test = np.column_stack([s.set_index(s.columns[0]).loc[ids].iloc[:, 0].to_numpy(float) for s in subs])
    members.test_header = tuple(subs[0].columns[:2])
    return members

