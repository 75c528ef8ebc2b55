"""Blend the OOF predictions of several runs on the same folds, score the blend honestly, write a submission.

``python -m kfold_nlp.ensemble RUNS... [--method mean|nnls|greedy] [--out DIR] [--wandb-mode MODE]``
(``make ensemble RUNS="..."``). RUNS are run folders, sweep folders (every run below) or earlier ensemble folders
(their members). Members must share ``folds.csv`` (same rows, same folds: the same data and ``cv.seed``) and their
test ids, and have no blank prediction; ``--out`` must be new, empty or an earlier ensemble folder (never a run
folder, whose results it would overwrite); otherwise nothing is written and the command exits 2 with one
``error:`` line.

Weights are non-negative and sum to 1 for every method, so the blend stays on the members' scale and a run blended
with copies of itself is that run. The reported CV RMSE is *nested*: for each fold, weights fitted on the OOF rows of
the other folds predict its rows, so no row is scored by weights fitted on it. The weights fitted on all rows are
the ones written to ``weights.json`` and applied to the members' bagged test predictions (``submission.csv``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from . import stats
from .errors import OneLineError, refuse
from .files import write_csv, write_json
from .runfiles import read_csv

METHODS = ("mean", "nnls", "greedy")
GREEDY_STEPS = 100  # selections with replacement: weights are multiples of 1/steps at most
GROUP = "ensemble"  # the W&B group of every ensemble run


class EnsembleError(OneLineError):
    """Members that cannot be blended; the message is the one line the user sees."""


FOLDS = ("id", "fold", "target")  # the columns of folds.csv, and the first of oof.csv
FIX = "re-collect or rerun that run"  # a member's damaged file


@dataclass
class Members:
    """The members' predictions on shared rows: OOF ``(n_rows, n_members)`` and test ``(n_test, n_members)``."""

    names: list[str]
    paths: list[Path]
    rows: pd.DataFrame  # id, fold, target of the OOF rows, in the first member's order
    oof: np.ndarray
    test_ids: pd.Series | None = None
    test: np.ndarray | None = None
    test_header: tuple[str, str] = ("id", "target")


# ---- weights ----

def mean_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Equal weights: the plain average, nothing fitted."""
    return np.full(preds.shape[1], 1 / preds.shape[1])


def nnls_weights(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares weights on the OOF columns, non-negative and summing to 1 (the best convex blend).

    ``scipy.optimize.nnls`` has no equality constraint, so the sum is one more row of the system, scaled far above
    the data rows (it then holds to about 1e-8), and the weights are divided by their sum to make it exact.
    """
    scale = 1e3 * np.sqrt(len(target)) * max(1.0, float(np.abs(preds).max()))
    a = np.vstack([preds, np.full((1, preds.shape[1]), scale)])
    w, _ = nnls(a, np.append(target, scale))
    return w / w.sum()


def greedy_weights(preds: np.ndarray, target: np.ndarray, steps: int = GREEDY_STEPS) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004): start from the best member, then at each step add
    the member (again, if it helps most) that lowers the RMSE of the running average most; keep the step with the
    lowest RMSE. A member's weight is the share of the selections it got."""
    chosen, total = np.zeros(preds.shape[1]), np.zeros(len(target))
    best, best_chosen = np.inf, None
    for step in range(1, steps + 1):
        scores = np.sqrt(np.mean(((total[:, None] + preds) / step - target[:, None]) ** 2, axis=0))
        j = int(np.argmin(scores))
        chosen[j] += 1
        total += preds[:, j]
        if scores[j] < best:
            best, best_chosen = scores[j], chosen.copy()
    return best_chosen / best_chosen.sum()


def fitter(method: str, steps: int = GREEDY_STEPS):
    if method not in METHODS:
        raise EnsembleError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if steps < 1:
        raise EnsembleError(f"--steps must be at least 1, got {steps}")
    return {"mean": mean_weights, "nnls": nnls_weights,
            "greedy": lambda p, t: greedy_weights(p, t, steps)}[method]


def nested_predictions(preds: np.ndarray, target: np.ndarray, folds: np.ndarray, fit) -> tuple[np.ndarray, dict]:
    """Each fold's rows blended with weights fitted on the other folds' rows: ``(predictions, {fold: weights})``.

    The RMSE of these predictions is the blend's honest CV score; fitted and scored on the same rows (in-sample) it
    would reward weights that fit noise.
    """
    out, weights = np.empty(len(target)), {}
    for k in np.unique(folds):
        held = folds == k
        weights[int(k)] = fit(preds[~held], target[~held])
        out[held] = preds[held] @ weights[int(k)]
    return out, weights


# ---- members ----

def _display(path: Path) -> str:
    """The member's name: its path relative to the working directory when below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read(path: Path, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A member's ``name`` with ``columns``, ids as strings, ``pred`` a number (NaN where it is none)."""
    if not (path / name).exists():
        raise EnsembleError(f"{path}: no {name} (not a finished run folder)")
    table = read_csv(path / name, columns, FIX, dtype={"id": str})
    if "pred" in columns:
        table["pred"] = pd.to_numeric(table["pred"], errors="coerce")
    return table


def _check_finite(path: Path, values: np.ndarray) -> None:
    """A blank or non-finite prediction would make every weight and score NaN (or a silently skewed blend)."""
    bad = ~np.isfinite(values)
    if bad.any():
        raise EnsembleError(f"{path}: {int(bad.sum())} blank or non-finite prediction(s), first at data row "
                            f"{int(np.flatnonzero(bad)[0]) + 1}; {FIX}")


def _same_folds(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    a, b = (f.sort_values("id", kind="stable").reset_index(drop=True) for f in (a, b))
    return (len(a) == len(b) and (a["id"] == b["id"]).all() and (a["fold"] == b["fold"]).all()
            and np.allclose(a["target"], b["target"]))


def _submission(path: Path) -> pd.DataFrame | None:
    """A member's ``submission.csv``: the first column is the id, the second the prediction, whatever their names."""
    if not (path / "submission.csv").exists():
        return None
    sub = read_csv(path / "submission.csv", (), FIX, dtype=str)
    if sub.shape[1] < 2:
        raise EnsembleError(f"{path / 'submission.csv'}: needs an id and a prediction column; {FIX}")
    return sub.iloc[:, :2].assign(**{sub.columns[1]: pd.to_numeric(sub.iloc[:, 1], errors="coerce")})


def load_members(paths: list[Path]) -> Members:
    """Read the members and check that they can be blended (``EnsembleError`` otherwise)."""
    paths = list(dict.fromkeys(Path(p).resolve() for p in paths))  # a run listed twice is one member
    if not paths:
        raise EnsembleError("no runs to blend")
    first, folds0 = paths[0], _read(paths[0], "folds.csv", FOLDS)
    oofs, subs = [], []
    for path in paths:
        if not _same_folds(folds0, _read(path, "folds.csv", FOLDS)):
            raise EnsembleError(f"{path}: folds.csv differs from {first}'s (other rows or other folds); blend only "
                                f"runs on the same data and cv.seed")
        oofs.append(_read(path, "oof.csv", (*FOLDS, "pred")))
        _check_finite(path / "oof.csv", oofs[-1]["pred"].to_numpy(float))
        subs.append(_submission(path))
        if subs[-1] is not None:
            _check_finite(path / "submission.csv", subs[-1].iloc[:, 1].to_numpy(float))
    try:
        rows, oof = stats.align_oof(oofs)
    except stats.FoldMismatch as err:
        raise EnsembleError(f"{paths[err.index]}: oof.csv covers other rows than {first}'s "
                            f"(a run of some folds only?)") from None
    if rows["fold"].nunique() < 2:
        raise EnsembleError("the OOF rows cover one fold: no held-out fold to score the weights on")
    members = Members([_display(p) for p in paths], paths, rows, oof)
    if all(s is None for s in subs):
        return members
    if any(s is None for s in subs):
        missing, has = (paths[[s is None for s in subs].index(flag)] for flag in (True, False))
        raise EnsembleError(f"{missing}: no submission.csv, while {has} has one")
    ids = subs[0].iloc[:, 0]
    for path, sub in zip(paths, subs):
        if len(sub) != len(ids) or not sub.iloc[:, 0].is_unique or set(sub.iloc[:, 0]) != set(ids):
            raise EnsembleError(f"{path}: submission.csv has other test ids than {first}'s")
    members.test_ids = ids
    members.test = np.column_stack([s.set_index(s.columns[0]).loc[ids].iloc[:, 0].to_numpy(float) for s in subs])
    members.test_header = tuple(subs[0].columns[:2])
    return members


# ---- the blend ----

def blend(members: Members, method: str = "nnls", steps: int = GREEDY_STEPS) -> dict:
    """Weights, OOF predictions (nested and in-sample), metrics and the blended submission of ``members``."""
    fit = fitter(method, steps)
    target, folds = members.rows["target"].to_numpy(float), members.rows["fold"].to_numpy()
    weights = fit(members.oof, target)
    nested, fold_weights = nested_predictions(members.oof, target, folds, fit)
    in_sample = members.oof @ weights
    counts = stats.resample_counts(folds)
    member_rmse = {n: stats.rmse(target, members.oof[:, j]) for j, n in enumerate(members.names)}
    # The blend's gain over each member: nested blend RMSE minus the member's, paired over the same rows.
    gains = {n: stats.compare_columns(target, folds, members.oof[:, j], {"blend": nested}, counts=counts)["blend"]
             for j, n in enumerate(members.names)}
    best = min(member_rmse, key=member_rmse.get)
    fold_rmse = np.array([stats.rmse(target[folds == k], nested[folds == k]) for k in fold_weights])
    metrics = {
        "method": method, **({"steps": steps} if method == "greedy" else {}),
        "weights_sum_to_1": True,
        "cv": {
            "rmse": stats.rmse(target, nested), "mse": stats.rmse(target, nested) ** 2,
            "rmse_in_sample": stats.rmse(target, in_sample), "mse_in_sample": stats.rmse(target, in_sample) ** 2,
            "fold_rmse_mean": float(fold_rmse.mean()), "fold_rmse_sd": float(fold_rmse.std(ddof=1)),
            "n_rows": len(target), "best_member": best, "best_member_rmse": member_rmse[best],
            "gain_vs_best_member": gains[best].diff, "gain_lo": gains[best].lo, "gain_hi": gains[best].hi,
            "gain_excludes_zero": gains[best].excludes_zero, "n_boot": stats.N_BOOT, "level": stats.LEVEL,
        },
        "members": {n: {"path": str(p), "weight": float(w), "cv_rmse": member_rmse[n], "gain": gains[n].diff,
                        "gain_lo": gains[n].lo, "gain_hi": gains[n].hi, "gain_excludes_zero": gains[n].excludes_zero}
                    for n, p, w in zip(members.names, members.paths, weights)},
        "folds": {str(k): {"rmse": float(r), "weights": dict(zip(members.names, map(float, fold_weights[k])))}
                  for k, r in zip(fold_weights, fold_rmse)},
    }
    oof = members.rows.assign(pred=nested, pred_in_sample=in_sample)
    submission = None
    if members.test is not None:
        submission = pd.DataFrame({members.test_header[0]: members.test_ids.to_numpy(),
                                   members.test_header[1]: members.test @ weights})
    return {"weights": dict(zip(members.names, map(float, weights))), "metrics": metrics, "oof": oof,
            "submission": submission}


# ---- output ----

def default_out(base: Path = Path("outputs") / GROUP) -> Path:
    """``outputs/ensemble/<YYYY-mm-dd_HH-MM-SS>``, with ``_1``, ``_2``... when that folder exists."""
    out = base / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    stem, i = out, 0
    while out.exists():
        i += 1
        out = stem.with_name(f"{stem.name}_{i}")
    return out


def check_out(out: Path | None) -> None:
    """``--out`` may replace an earlier ensemble folder, never a run folder or anything else: its oof.csv,
    metrics.json and submission.csv would be overwritten by the blend's."""
    from .report import is_ensemble

    if out is None or not out.exists() or (out.is_dir() and not any(out.iterdir())) or is_ensemble(out):
        return
    raise EnsembleError(f"--out {out}: exists and is not an ensemble folder (a run folder's results would be "
                        f"overwritten); give a new folder")


def write(result: dict, out: Path) -> None:
    write_json(result["weights"], out / "weights.json")
    write_csv(result["oof"], out / "oof.csv")
    if result["submission"] is not None:
        write_csv(result["submission"], out / "submission.csv")
    write_json(result["metrics"], out / "metrics.json")  # last: the folder is complete


def log_wandb(result: dict, members: Members, out: Path, mode: str) -> None:
    """One W&B run in group ``ensemble`` (project and entity of the first member's logger)."""
    from omegaconf import OmegaConf

    from .tracking import wandb_run

    logger = {"project": "kfold-nlp", "entity": None}
    cfg_path = members.paths[0] / ".hydra" / "config.yaml"
    if cfg_path.exists():
        logger |= {k: v for k, v in (OmegaConf.load(cfg_path).get("logger") or {}).items() if k in logger}
    m = result["metrics"]
    cfg = OmegaConf.create({"name": GROUP, "logger": {**logger, "mode": mode, "tags": [GROUP]}, "method": m["method"],
                            "members": {n: str(p) for n, p in zip(members.names, members.paths)},
                            "weights": result["weights"]})
    with wandb_run(cfg, run_dir=out, group=GROUP, name=f"{GROUP}-{m['method']}-{out.name}", job_type=m["method"]) as wb:
        wb.summary.update({"cv/rmse": m["cv"]["rmse"], "cv/rmse_in_sample": m["cv"]["rmse_in_sample"],
                           "cv/best_member_rmse": m["cv"]["best_member_rmse"],
                           "cv/gain_vs_best_member": m["cv"]["gain_vs_best_member"],
                           "cv/gain_lo": m["cv"]["gain_lo"], "cv/gain_hi": m["cv"]["gain_hi"]})
        if mode != "disabled":
            import wandb

            table = pd.DataFrame([{"run": n, **{k: v for k, v in d.items() if k != "path"}}
                                  for n, d in m["members"].items()])
            wb.log({"members": wandb.Table(dataframe=table)})


def members_table(metrics: dict) -> pd.DataFrame:
    """One row per member: weight, CV RMSE, the blend's gain over it and its interval (``*``: excludes 0)."""
    table = pd.DataFrame.from_dict(metrics["members"], orient="index").drop(columns="path")
    table["sig"] = table.pop("gain_excludes_zero").map(lambda v: "*" if v else "")
    return table.rename_axis("run")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, sweep folders or ensemble folders")
    parser.add_argument("--method", choices=METHODS, default="nnls")
    parser.add_argument("--steps", type=int, default=GREEDY_STEPS, help="greedy: number of selections")
    parser.add_argument("--out", type=Path, help="default: outputs/ensemble/<YYYY-mm-dd_HH-MM-SS>")
    parser.add_argument("--wandb-mode", choices=["offline", "online", "disabled"],
                        default=os.environ.get("WANDB_MODE", "offline"))
    args = parser.parse_args(argv)
    from .report import find_runs

    try:
        check_out(args.out)
        try:
            runs = find_runs(args.runs, root=Path.cwd())
        except FileNotFoundError as err:
            raise EnsembleError(str(err)) from None
        members = load_members(runs)
        result = blend(members, args.method, args.steps)
        out = args.out or default_out()
        write(result, out)
        log_wandb(result, members, out, args.wandb_mode)
    except (OneLineError, OSError) as err:
        refuse(err, "blend again")
    c = result["metrics"]["cv"]
    print(members_table(result["metrics"]).to_markdown(floatfmt=".4f"))
    print(f"Ensemble folder: {out} | {args.method} | CV RMSE {c['rmse']:.4f} nested ({c['rmse_in_sample']:.4f} "
          f"in-sample) | best member {c['best_member_rmse']:.4f}: gain {c['gain_vs_best_member']:+.4f} "
          f"[{c['gain_lo']:+.4f}, {c['gain_hi']:+.4f}]")


if __name__ == "__main__":
    main()
