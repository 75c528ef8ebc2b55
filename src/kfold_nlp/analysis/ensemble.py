"""Blend the OOF predictions of several runs on the same folds, score the blend honestly, write a submission.

``kfold-nlp ensemble RUNS... [--method mean|nnls|greedy] [--out DIR] [--logger NAME] [--wandb-mode MODE]``
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

from ..data.folds import HOLDOUT, same_folds
from ..errors import OneLineError, refuse
from ..files import write_csv, write_json
from ..rundir import read_csv
from ..track.wandb import MODES
from . import stats
from .runs import find_runs, is_ensemble
from .summary import MARK, collect, format_table, run_labels

METHODS = ("mean", "nnls", "greedy")


GREEDY_STEPS = 100  # selections with replacement: weights are multiples of 1/steps at most


GROUP = "ensemble"  # the tracker group of every ensemble run


class EnsembleError(OneLineError):
    """Members that cannot be blended; the message is the one line the user sees."""


FOLDS = ("id", "fold", "target")  # the columns of folds.csv, and the first of oof.csv


HOLDOUT_COLUMNS = ("id", "target")  # the first columns of holdout.csv


FIX = "re-collect or rerun that run"  # a member's damaged file


@dataclass
class Members:
    """The members' predictions on shared rows: OOF ``(n_rows, n_members)`` and test ``(n_test, n_members)``."""

    names: list[str]  # run names, unique (``summary.run_labels``)
    paths: list[Path]
    rows: pd.DataFrame  # id, fold, target of the OOF rows, in the first member's order
    oof: np.ndarray
    test_ids: pd.Series | None = None
    test: np.ndarray | None = None
    test_header: tuple[str, str] = ("id", "target")
    holdout_target: np.ndarray | None = None  # the runs' cv.holdout rows (fold -1 of folds.csv), never blended on
    holdout: np.ndarray | None = None  # each member's bagged holdout predictions, ``(n_holdout, n_members)``


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


def _display(path: Path) -> str:
    """The member's folder: its path relative to the working directory when below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def member_names(paths: list[Path]) -> list[str]:
    """Each member's run name (its ``name``, with what differs where names repeat), not its folder: a sweep's
    folders are numbers. A folder without a Hydra config is named by its folder."""
    rows = []
    for path in paths:
        found = collect(path) if (path / ".hydra").is_dir() else pd.DataFrame()
        row = found[found["run"] == "."].iloc[0].to_dict() if len(found) else {"name": None, "overrides": ""}
        rows.append(row | {"name": row["name"] or _display(path), "path": path})
    return run_labels(pd.DataFrame(rows)).tolist()


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
        if not same_folds(folds0, _read(path, "folds.csv", FOLDS)):
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
    members = Members(member_names(paths), paths, rows, oof)
    held = folds0[folds0["fold"] == HOLDOUT]
    if len(held):  # the same rows for every member (same folds.csv): weights fitted on OOF rows predict them
        tables = [_read(path, "holdout.csv", (*HOLDOUT_COLUMNS, "pred")) for path in paths]
        for path, table in zip(paths, tables):
            _check_finite(path / "holdout.csv", table["pred"].to_numpy(float))
            if list(table["id"]) != list(held["id"]):
                raise EnsembleError(f"{path / 'holdout.csv'}: other ids than the holdout rows of folds.csv; {FIX}")
        members.holdout_target = held["target"].to_numpy(float)
        members.holdout = np.column_stack([t["pred"].to_numpy(float) for t in tables])
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


def blend(members: Members, method: str = "nnls", steps: int = GREEDY_STEPS) -> dict:
    """Weights, OOF predictions (nested and in-sample), metrics and the blended submission of ``members``."""
    fit = fitter(method, steps)
    target, folds = members.rows["target"].to_numpy(float), members.rows["fold"].to_numpy()
    weights = fit(members.oof, target)
    nested, fold_weights = nested_predictions(members.oof, target, folds, fit)
    in_sample = members.oof @ weights
    counts = stats.resample_counts(folds)
    member_rmse = {n: stats.rmse(target, members.oof[:, j]) for j, n in enumerate(members.names)}
    # The blend's improvement over each member: the member's RMSE minus the nested blend's (positive: the blend is
    # better), paired over the same rows.
    better = {n: stats.compare_columns(target, folds, nested, {"member": members.oof[:, j]}, counts=counts)["member"]
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
            "improvement_vs_best_member": better[best].diff, "improvement_lo": better[best].lo,
            "improvement_hi": better[best].hi, "improvement_excludes_zero": better[best].excludes_zero,
            "n_boot": stats.N_BOOT, "level": stats.LEVEL,
        },
        "members": {n: {"path": str(p), "folder": _display(p), "weight": float(w), "cv_rmse": member_rmse[n],
                        "improvement": better[n].diff, "improvement_lo": better[n].lo,
                        "improvement_hi": better[n].hi, "improvement_excludes_zero": better[n].excludes_zero}
                    for n, p, w in zip(members.names, members.paths, weights)},
        "folds": {str(k): {"rmse": float(r), "weights": dict(zip(members.names, map(float, fold_weights[k])))}
                  for k, r in zip(fold_weights, fold_rmse)},
    }
    if members.holdout is not None:  # rows no weight was fitted on and no fold model trained or selected on
        held = {n: stats.rmse(members.holdout_target, members.holdout[:, j]) for j, n in enumerate(members.names)}
        metrics["cv"] |= {"holdout_rmse": stats.rmse(members.holdout_target, members.holdout @ weights),
                          "best_member_holdout_rmse": held[best], "holdout_rows": len(members.holdout_target)}
        for n in members.names:
            metrics["members"][n]["holdout_rmse"] = held[n]
    oof = members.rows.assign(pred=nested, pred_in_sample=in_sample)
    submission = None
    if members.test is not None:
        submission = pd.DataFrame({members.test_header[0]: members.test_ids.to_numpy(),
                                   members.test_header[1]: members.test @ weights})
    return {"weights": dict(zip(members.names, map(float, weights))), "metrics": metrics, "oof": oof,
            "submission": submission}


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


def logger_config(name: str, wandb_mode: str, members: Members):
    """``conf/logger/<name>.yaml``; for W&B the mode given and the first member's project and entity."""
    from omegaconf import OmegaConf

    from ..config.paths import CONFIG_DIR

    path = Path(CONFIG_DIR) / "logger" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise EnsembleError(f"--logger {name}: no conf/logger/{name}.yaml (known: {', '.join(known)})")
    logger = OmegaConf.load(path)
    if "mode" in logger:
        logger.mode = wandb_mode
    cfg_path = members.paths[0] / ".hydra" / "config.yaml"
    if cfg_path.exists():
        own = OmegaConf.load(cfg_path).get("logger") or {}
        for key in ("project", "entity"):
            if key in logger and key in own:
                logger[key] = own[key]
    return logger


def log_run(result: dict, members: Members, out: Path, logger) -> None:
    """One tracker run in group ``ensemble``: the blend's scores and its members table."""
    from ..track.base import make, tracked  # hydra only once there is a blend to log

    m = result["metrics"]
    config = {"name": GROUP, "method": m["method"], "weights": result["weights"],
              "members": {n: str(p) for n, p in zip(members.names, members.paths)}}
    with tracked(make(logger), run_dir=out, group=GROUP, name=f"{GROUP}-{m['method']}-{out.name}",
                 job_type=m["method"], config=config, tags=(GROUP,)) as run:
        run.update_summary({"cv/rmse": m["cv"]["rmse"], "cv/rmse_in_sample": m["cv"]["rmse_in_sample"],
                            "cv/best_member_rmse": m["cv"]["best_member_rmse"],
                            "cv/improvement_vs_best_member": m["cv"]["improvement_vs_best_member"],
                            "cv/improvement_lo": m["cv"]["improvement_lo"],
                            "cv/improvement_hi": m["cv"]["improvement_hi"]}
                           | ({"cv/holdout_rmse": m["cv"]["holdout_rmse"]} if "holdout_rmse" in m["cv"] else {}))
        run.table("members", pd.DataFrame([{"run": n, **{k: v for k, v in d.items() if k not in ("path", "folder")}}
                                           for n, d in m["members"].items()]))


def improvement_marked(d: dict, key: str = "improvement_vs_best_member") -> bool:
    """``stats.Interval.marked`` of a recorded improvement (``metrics["cv"]``, or a member's with ``key``
    ``improvement``): the interval excludes 0 and the improvement is at least ``stats.MIN_DIFF``."""
    return bool(d["improvement_excludes_zero"]) and abs(d[key]) >= stats.MIN_DIFF


def members_table(metrics: dict) -> pd.DataFrame:
    """One row per member (its run name): weight, CV RMSE, the blend's improvement over it (positive: the blend is
    better) and its interval, ``sig`` (``*``: ``improvement_marked``)."""
    members = metrics["members"]
    table = pd.DataFrame.from_dict(members, orient="index").drop(columns=["path", "folder"], errors="ignore")
    table["sig"] = [MARK if improvement_marked(d, "improvement") else "" for d in members.values()]
    return table.drop(columns="improvement_excludes_zero").rename_axis("run")


def report_line(metrics: dict, out: Path) -> str:
    c = metrics["cv"]
    mark = f" {MARK}" if improvement_marked(c) else ""
    return (f"Ensemble folder: {out} | {metrics['method']} | CV RMSE {c['rmse']:.4f} nested "
            f"({c['rmse_in_sample']:.4f} in-sample) | best member {c['best_member']} {c['best_member_rmse']:.4f}: "
            f"improvement {c['improvement_vs_best_member']:+.4f} [{c['improvement_lo']:+.4f}, "
            f"{c['improvement_hi']:+.4f}]{mark} (best member - blend: positive, the blend is better)"
            + (f" | holdout RMSE {c['holdout_rmse']:.4f} (best member {c['best_member_holdout_rmse']:.4f}, "
               f"{c['holdout_rows']} rows)" if "holdout_rmse" in c else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders, sweep folders or ensemble folders")
    parser.add_argument("--method", choices=METHODS, default="nnls")
    parser.add_argument("--steps", type=int, default=GREEDY_STEPS, help="greedy: number of selections")
    parser.add_argument("--out", type=Path, help="default: outputs/ensemble/<YYYY-mm-dd_HH-MM-SS>")
    parser.add_argument("--logger", default="wandb", help="a conf/logger choice: wandb (default), csv, none")
    parser.add_argument("--wandb-mode", choices=MODES,
                        default=os.environ.get("WANDB_MODE", "offline"))
    args = parser.parse_args(argv)
    try:
        check_out(args.out)
        try:
            runs = find_runs(args.runs, root=Path.cwd())
        except FileNotFoundError as err:
            raise EnsembleError(str(err)) from None
        members = load_members(runs)
        result = blend(members, args.method, args.steps)
        logger = logger_config(args.logger, args.wandb_mode, members)
        out = args.out or default_out()
        write(result, out)
        log_run(result, members, out, logger)
    except (OneLineError, OSError) as err:
        refuse(err, "blend again")
    table = members_table(result["metrics"])
    signed = {c: "+.4f" for c in table.columns if c.startswith("improvement")}
    print(format_table(table.reset_index(), signed).to_markdown(index=False, stralign="right", disable_numparse=True))
    print(report_line(result["metrics"], out))


if __name__ == "__main__":
    main()
