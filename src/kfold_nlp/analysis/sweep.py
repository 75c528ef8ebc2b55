"""``kfold-nlp sweep <sweep folder>``: the sweep summary, one row per job with its difference from the reference
job, and per configuration over seeds, written to ``sweep.md``, ``sweep.csv`` (and ``sweep_seeds.csv``). The Hydra
callback ``analysis.callbacks.SweepSummary`` rewrites it after every job, and a launcher's table of fold jobs.

Every difference between jobs carries the 95% paired bootstrap interval of ``kfold_nlp.metrics`` (rows resampled
within folds), computed from the jobs' ``oof.csv``; jobs on other folds get no interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics
from ..config.rules import override_key
from ..files import atomic_path, read_json, write_csv
from ..rundir import RunDir
from .runs import run_rows
from .stats import aligned, intervals
from .tables import INTERVAL_NOTE, MARK, REFERENCE, format_table, markdown

SCORES = ["cv_mse", "cv_rmse", "fold_rmse_mean", "fold_rmse_sd", "fold_mse_mean", "fold_mse_sd", "wall_time_s"]


SWEEP_MD, SWEEP_CSV, SEEDS_CSV = "sweep.md", "sweep.csv", "sweep_seeds.csv"  # written into the sweep folder


def reference_config(ok: pd.DataFrame) -> str:
    """The configuration the others are compared against: the best (lowest mean CV RMSE over its seeds) of those
    named ``baseline``, else the best of all."""
    means = ok.groupby("config")["cv_rmse"].mean()
    named = set(ok.loc[ok["name"] == REFERENCE, "config"]) if "name" in ok else set()
    return (means[means.index.isin(named)] if named else means).idxmin()


def _vs_reference(runs: pd.DataFrame) -> pd.DataFrame:
    """Per finished job: ``ref``, the job it is compared against (the reference configuration's job with the same
    seed, else its best job), ``diff_vs_ref`` in CV RMSE, its 95% paired bootstrap interval and ``sig``."""
    cols = ["ref", "diff_vs_ref", "ci_lo", "ci_hi", "sig"]
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(index=runs.index, columns=cols)
    ref_jobs = ok[ok["config"] == reference_config(ok)].sort_values("cv_rmse")
    firsts = ref_jobs.dropna(subset=["seed"]).drop_duplicates("seed")
    by_seed = dict(zip(firsts["seed"], firsts.index))
    ref_of = ok["seed"].map(lambda seed: by_seed.get(seed, ref_jobs.index[0]))
    rows = {}
    for ref, members in ref_of.groupby(ref_of):
        found = intervals(ok.loc[[ref, *members.index], "path"].to_dict(), ref)
        for i in members.index:
            iv = found.get(i, metrics.Interval(np.nan, np.nan, np.nan))
            rows[i] = {"ref": ok.at[ref, "run"], "diff_vs_ref": ok.at[i, "cv_rmse"] - ok.at[ref, "cv_rmse"],
                       "ci_lo": iv.lo, "ci_hi": iv.hi, "sig": MARK if iv.marked() else ""}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(index=runs.index, columns=cols)


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per job, best CV RMSE first (failed and unfinished jobs last); ``swept``: the overrides that vary;
    ``diff_vs_ref`` with its interval (``ci_lo``, ``ci_hi``; ``sig``: ``Interval.marked``) against job ``ref``."""
    vs = _vs_reference(runs) if {"path", "seed"} <= set(runs) else pd.DataFrame(index=runs.index)
    runs = runs.join(vs).reindex(columns=["run", "overrides", "config", "status", *SCORES, *vs, "error"])
    tokens = [set(o.split()) for o in runs["overrides"]]
    common = set.intersection(*tokens) if len(tokens) > 1 else set()
    swept = [" ".join(t for t in o.split() if t not in common) for o in runs["overrides"]]
    runs = runs.assign(job=runs["run"], swept=swept, _num=pd.to_numeric(runs["run"], errors="coerce"))
    runs = runs.sort_values(["cv_rmse", "_num", "run"], na_position="last", kind="stable")
    return runs[["job", "swept", "status", *SCORES, *vs, "overrides", "config", "error"]].reset_index(drop=True)


def _seeds(group: pd.DataFrame):
    """seed -> CV RMSE when every run of the configuration has its own seed (so seeds can pair), else the list."""
    seeds = group["seed"] if "seed" in group else pd.Series([None] * len(group), index=group.index)
    if seeds.notna().all() and seeds.is_unique:
        return dict(zip(seeds, group["cv_rmse"]))
    return group["cv_rmse"].tolist()


def _row_samples(ok: pd.DataFrame, ref: str) -> dict | None:
    """Each run's CV RMSE under the shared row resamples, ``{index: samples}``; None without every OOF file on the
    reference's rows and folds."""
    if "path" not in ok:
        return None
    first = ok.index[ok["config"] == ref][0]
    rows, preds = aligned(ok["path"].to_dict(), first)
    if len(preds) < len(ok):
        return None
    keys = list(preds)
    samples = metrics.resampled_rmse(rows["target"], np.column_stack([preds[k] for k in keys]),
                                     metrics.resample_counts(rows["fold"]))
    return {k: samples[:, j] for j, k in enumerate(keys)}


def seed_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and sd of the CV RMSE over seeds per configuration (runs whose overrides differ only in ``seed``), and
    the difference of each configuration's mean from the reference configuration's (``reference_config``).

    ``diff_se`` combines both sources of noise (``metrics.seed_diff``): the training noise over seeds, *paired* when
    both configurations ran the same seeds (the per-seed differences give the spread) and unpaired otherwise
    (``pairing``), plus the row noise from a paired bootstrap over the OOF rows when every run's ``oof.csv`` is on
    the same folds (``noise``: ``seeds+rows``, else ``seeds``). ``ci_lo``, ``ci_hi``: the 95% t interval; ``sig``:
    it excludes 0. None when no configuration ran with more than one seed.
    """
    ok = runs[runs["status"] == "ok"]
    if ok.empty or ok.groupby("config").size().max() < 2:
        return None
    common = set.intersection(*[set(c.split()) for c in ok["config"]])
    table = ok.groupby("config")["cv_rmse"].agg(n_seeds="count", rmse_mean="mean", rmse_sd="std", rmse_min="min",
                                                  rmse_max="max").sort_values("rmse_mean")
    ref = reference_config(ok)
    samples = _row_samples(ok, ref)
    groups = {c: g for c, g in ok.groupby("config")}
    diffs = {ref: {"diff": 0.0, "sig": "", "pairing": "reference"}}
    for config, group in groups.items():
        if config == ref:
            continue
        row_samples = None
        if samples is not None:
            row_samples = (np.mean([samples[i] for i in group.index], axis=0)
                           - np.mean([samples[i] for i in groups[ref].index], axis=0))
        d = metrics.seed_diff(_seeds(groups[ref]), _seeds(group), row_samples=row_samples)
        diffs[config] = {"diff": d.diff, "diff_se": d.se, "ci_lo": d.lo, "ci_hi": d.hi,
                         "sig": MARK if d.marked() else "", "pairing": d.pairing,
                         "noise": "seeds+rows" if samples is not None else "seeds"}
    cols = ["diff", "diff_se", "ci_lo", "ci_hi", "sig", "pairing", "noise"]
    table = table.join(pd.DataFrame.from_dict(diffs, orient="index").reindex(columns=cols))
    table.index = [" ".join(t for t in c.split() if t not in common) or c for c in table.index]
    return table.rename_axis("configuration").reset_index()


def best_trial(root, jobs: pd.DataFrame) -> str | None:
    """``best trial: <folder> (CV RMSE x, params ...)``: the finished job with the lowest CV RMSE and its swept
    overrides (an Optuna trial's sampled parameters); None before a job has finished."""
    ok = jobs[jobs["status"] == "ok"].dropna(subset=["cv_rmse"])
    if ok.empty:
        return None
    best = ok.iloc[0]
    return (f"best trial: {Path(root) / str(best['job'])} (CV RMSE {best['cv_rmse']:.4f}, "
            f"params {best['swept'] or 'none swept'})")


def fold_jobs(jobs_dir, run_dir) -> pd.DataFrame:
    """One row per fold job of a launcher (``<run>/.jobs/<n>/``): its fold, state (finished: the fold's
    ``result.json`` is there; failed; running) and the fold's scores from the run folder."""
    rows = []
    jobs = sorted((p.parent for p in Path(jobs_dir).glob(f"*/{RunDir.HYDRA}")),
                  key=lambda p: int(p.name) if p.name.isdigit() else 0)
    for job in map(RunDir, jobs):
        folds = [o.split("=", 1)[1].strip("[]") for o in job.read_overrides() if override_key(o) == "cv.folds"]
        row = {"job": job.path.name, "fold": folds[-1] if folds else "?", "state": "running"}
        if job.job_status.exists() and read_json(job.job_status)["status"] == "failed":
            row["state"] = "failed"
        fold = RunDir(run_dir).fold(row["fold"])
        if fold.finished():
            r = fold.read_result()
            row |= {"state": "finished", "val_rmse": r["rmse"], "holdout_rmse": r.get("holdout_rmse"),
                    "train_time_s": r["train_time_s"]}
        rows.append(row)
    return pd.DataFrame(rows)


def write_fold_jobs(jobs_dir, run_dir) -> pd.DataFrame:
    """``<run>/.jobs/sweep.md`` and ``sweep.csv``: the fold jobs' table (``fold_jobs``)."""
    table = fold_jobs(jobs_dir, run_dir)
    with atomic_path(Path(jobs_dir) / SWEEP_MD) as tmp:
        tmp.write_text(f"Fold jobs of {run_dir}\n\n" + format_table(table).to_markdown(index=False) + "\n")
    write_csv(table, Path(jobs_dir) / SWEEP_CSV)
    return table


def write_sweep(root) -> pd.DataFrame:
    """``sweep.csv`` (every column, full overrides) and ``sweep.md`` (+ the seed table, ``sweep_seeds.csv``)."""
    root = Path(root)
    runs = run_rows(root)
    if runs.empty:
        return runs
    jobs = sweep_table(runs)
    write_csv(jobs, root / SWEEP_CSV)
    seeds = seed_table(runs)
    md = f"# Sweep {root.name}: {len(jobs)} jobs, best CV RMSE first\n\n"
    md += markdown(jobs.drop(columns=["overrides", "config", "error"]))
    best = best_trial(root, jobs)
    if best:
        md += f"\n{best}\n"
    if "ref" in jobs and jobs["ref"].notna().any():
        md += f"\n`diff_vs_ref`: CV RMSE minus that of job `ref`. {INTERVAL_NOTE}"
    failed = jobs[jobs["status"] == "failed"]
    if len(failed):
        md += "\n## Failed jobs\n\n" + markdown(failed[["job", "swept", "error"]])
    if seeds is not None:
        write_csv(seeds, root / SEEDS_CSV)
        ref = seeds.loc[seeds["pairing"] == "reference", "configuration"].iloc[0]
        md += ("\n## Over seeds (mean and sd of the CV RMSE per configuration)\n\n" + markdown(seeds)
               + f"\n`diff`: mean CV RMSE minus that of `{ref}`; `diff_se` adds the seed noise (paired on the per-seed "
               f"differences when the seeds match) and the row noise (paired bootstrap over the OOF rows); `ci_lo`, "
               f"`ci_hi`: the 95% t interval; {MARK}: it excludes 0 and |diff| >= {metrics.MIN_DIFF}.\n")
    with atomic_path(root / SWEEP_MD) as tmp:
        tmp.write_text(md)
    return jobs


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # the one command line passes the command's name first
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="kfold-nlp sweep", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("folder", type=Path, help="a sweep folder (a multirun's hydra.sweep.dir)")
    args = parser.parse_args(argv)
    write_sweep(args.folder)
    print((args.folder / SWEEP_MD).read_text())


if __name__ == "__main__":
    main()
