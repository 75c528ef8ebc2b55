"""Which folders are runs, sweeps and ensembles (the folders ``make notebook``, ``make ensemble`` and the tables are
given), and one row of scores per run.

A leaf of the analysis, so that the ensemble (which refuses to write over a run folder), the report (which shows
ensembles) and the compare and sweep tables read folders the same way without importing each other.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ..config.rules import override_key
from ..files import read_json
from ..rundir import RunDir

ROOT = Path.cwd()  # relative run and data paths are read from where the command runs (the repository's root)


# An ensemble folder's own file. Its oof.csv, submission.csv and metrics.json have a run's names (``RunDir``), so
# that what reads a run's results reads a blend's.
WEIGHTS = "weights.json"


def is_ensemble(folder) -> bool:
    """A folder written by ``kfold_nlp.analysis.ensemble``: weights.json beside a metrics.json that lists the members.

    A stray weights.json in a run folder, or an unreadable metrics.json, does not make one (the folder is then
    read as a run folder, refused with one line if it is none)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        return False
    try:
        members = RunDir(folder).read_metrics().get("members")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(members, dict)


def ensemble_metrics(folder) -> dict:
    """An ensemble folder's ``metrics.json``; one written before ``improvement`` (it had ``gain``: blend minus
    member, positive when the blend was worse) is read in today's terms (member minus blend, its interval flipped)."""
    m = RunDir(folder).read_metrics()
    for record, key in [(m.get("cv", {}), "vs_best_member"), *((r, "") for r in m.get("members", {}).values())]:
        old = f"gain_{key}" if key else "gain"
        if old in record and f"improvement{'_' + key if key else ''}" not in record:
            record[f"improvement{'_' + key if key else ''}"] = -record.pop(old)
            record["improvement_lo"], record["improvement_hi"] = -record.pop("gain_hi"), -record.pop("gain_lo")
            record["improvement_excludes_zero"] = record.pop("gain_excludes_zero")
    return m


def _resolve(p, root) -> Path:
    p = Path(p)
    return p if p.is_absolute() else Path(root) / p


def _folders(paths, root) -> list[Path]:
    """Folders given as a list or as one string ("a b", "a,b"), relative ones below ``root``."""
    if isinstance(paths, str):
        paths = paths.replace(",", " ").split()
    return [_resolve(p, root) for p in paths]


def ensemble_member_paths(folder, root=ROOT) -> list[Path]:
    """The run folders an ensemble blended (its recorded absolute paths, else their folders below ``root``)."""
    members = RunDir(folder).read_metrics()["members"]
    return [Path(m["path"]) if Path(m["path"]).exists() else _resolve(m.get("folder", name), root)
            for name, m in members.items()]


def find_runs(paths, root=ROOT) -> list[Path]:
    """Run folders (with metrics.json) given as run folders, folders of runs (a sweep) or ensemble folders (their
    members), in job order, each once."""
    runs = []
    for p in _folders(paths, root):
        if is_ensemble(p):
            runs += ensemble_member_paths(p, root)
            continue
        if RunDir(p).is_collected():
            runs.append(p)
            continue
        found = [m.parent for m in p.glob(f"**/{RunDir.METRICS}")]
        if not found:
            raise FileNotFoundError(f"{p}: no run folder ({RunDir.METRICS}) in it")
        found = sorted(found, key=lambda r: (len(r.parts), int(r.name) if r.name.isdigit() else 0, str(r)))
        runs += [m for r in found for m in (ensemble_member_paths(r, root) if is_ensemble(r) else [r])]
    return list(dict.fromkeys(runs))


def find_ensembles(paths, root=ROOT) -> list[Path]:
    """The ensemble folders among ``paths`` and below them."""
    found = []
    for p in _folders(paths, root):
        found += [p] if is_ensemble(p) else sorted(w.parent for w in p.glob(f"**/{WEIGHTS}")
                                                   if is_ensemble(w.parent))
    return list(dict.fromkeys(found))


def job_folders(root) -> list[Path]:
    """The run folders at and below ``root``, and the sweep jobs whose run never began (Hydra's folder only: the
    sweep table still lists their error), in path order."""
    root = Path(root)
    found = {p.parent for name in (RunDir.CONFIG, RunDir.HYDRA) for p in root.glob(f"**/{name}")}
    return sorted((p for p in found if RunDir(p).is_run() or RunDir(p).is_job()), key=lambda p: f"{p}/")


def run_rows(root) -> pd.DataFrame:
    """One row per run folder below ``root`` (a sweep folder or any folder of runs); failed runs have NaN scores.

    ``status``: ok (metrics.json), failed (the sweep callback recorded an exception, see ``error``), pruned (a search
    stopped it after a fold: ``pruned.json``, no CV) or unfinished.
    ``config``: the overrides without ``seed``, so runs that differ only in their seed share it. ``path``: the folder.
    """
    root, rows = Path(root), []
    for run in job_folders(root):
        rdir = RunDir(run)
        cfg = rdir.read_config() if rdir.is_run() else None  # a job that failed before its run began has none
        overrides = rdir.read_overrides()
        row = {"run": str(run.relative_to(root)) if run != root else ".", "path": run,
               "name": rdir.run_name(cfg) if cfg is not None else None,
               "regularizer": str(OmegaConf.select(cfg, "regularizer._target_", default="") if cfg is not None
                                  else "").rsplit(".", 1)[-1],
               "overrides": " ".join(overrides), "config": " ".join(o for o in overrides if override_key(o) != "seed"),
               "seed": cfg.get("seed") if cfg is not None else None, "status": "unfinished"}
        if rdir.is_collected():
            results = rdir.read_metrics()
            cv = results["cv"]
            row |= {"status": "ok", "cv_mse": cv["mse"], "cv_rmse": cv["rmse"], "fold_mse_mean": cv["fold_mse_mean"],
                    "fold_mse_sd": cv["fold_mse_sd"], "fold_rmse_mean": cv["fold_rmse_mean"],
                    "fold_rmse_sd": cv["fold_rmse_sd"], "train_time_s": cv["train_time_s"],
                    "wall_time_s": cv.get("wall_time_s")}
            selection = results.get("selection", {})
            if "rmse" in selection:
                row |= {"holdout_rmse": selection["rmse"], "optimism": selection["optimism"]["mean"],
                        "optimism_lo": selection["optimism"]["lo"], "optimism_hi": selection["optimism"]["hi"]}
        if rdir.job_status.exists():  # written by the sweep callback: whole-job time, failure
            job = read_json(rdir.job_status)
            row |= {"error": job.get("error"), "wall_time_s": job.get("wall_time_s")}
            row["status"] = job["status"] if job["status"] in ("failed", "pruned") else row["status"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """A unique label per row of ``run_rows``: the run's name; where names repeat, plus the overrides that differ
    between the runs (a seed or learning-rate sweep of one regularizer); where they still repeat, plus the folder."""
    common = set.intersection(*[set(o.split()) for o in runs["overrides"]]) if len(runs) else set()
    label = runs["name"].astype(str)
    dup = label.duplicated(keep=False)
    label[dup] = (label[dup] + " " + runs.loc[dup, "overrides"].map(
        lambda o: " ".join(t for t in o.split() if t not in common))).str.strip()
    dup = label.duplicated(keep=False)
    label[dup] += " (" + runs.loc[dup, "path"].map(lambda p: Path(p).name) + ")"
    return label
