"""Tables over several run folders: the regularizer comparison (one column per experiment) and the sweep summary.

``python -m kfold_nlp.summary compare <folder of runs>`` writes ``table.md`` and ``table.csv`` into that folder;
``python -m kfold_nlp.summary sweep <sweep folder>`` writes ``sweep.md`` and ``sweep.csv`` (the Hydra callback
``kfold_nlp.callbacks.SweepSummary`` does it during every sweep).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from .files import atomic_path, write_csv

ORDER = ["baseline", "msd", "mixout", "rdrop", "no_dropout"]
SCORES = ["cv_mse", "cv_rmse", "fold_rmse_mean", "fold_rmse_sd", "fold_mse_mean", "fold_mse_sd", "wall_time_s"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_name(hydra_dir: Path, cfg) -> str | None:
    """The run's ``name``; Hydra saves ``${hydra:...}`` in it unresolved, so look that up in ``hydra.yaml``."""
    raw = OmegaConf.to_container(cfg).get("name")
    m = re.fullmatch(r"\$\{hydra:([\w.]+)\}", str(raw))
    if m and (hydra_dir / "hydra.yaml").exists():
        return OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), f"hydra.{m[1]}")
    return raw


def collect(root) -> pd.DataFrame:
    """One row per run folder below ``root`` (a sweep folder or any folder of runs); failed runs have NaN scores.

    ``status``: ok (metrics.json), failed (the sweep callback recorded an exception, see ``error``) or unfinished.
    ``config``: the overrides without ``seed``, so runs that differ only in their seed share it.
    """
    rows = []
    for hydra_dir in sorted(Path(root).glob("**/.hydra"), key=lambda p: str(p)):
        run = hydra_dir.parent
        cfg = OmegaConf.load(hydra_dir / "config.yaml")
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
        row = {"run": str(run.relative_to(root)) if run != Path(root) else ".", "name": run_name(hydra_dir, cfg),
               "regularizer": str(cfg.regularizer.get("_target_", "")).rsplit(".", 1)[-1],
               "overrides": " ".join(overrides), "config": " ".join(o for o in overrides if _key(o) != "seed"),
               "seed": cfg.get("seed"), "status": "unfinished"}
        if (run / "metrics.json").exists():
            cv = json.loads((run / "metrics.json").read_text())["cv"]
            row |= {"status": "ok", "cv_mse": cv["mse"], "cv_rmse": cv["rmse"], "fold_mse_mean": cv["fold_mse_mean"],
                    "fold_mse_sd": cv["fold_mse_sd"], "fold_rmse_mean": cv["fold_rmse_mean"],
                    "fold_rmse_sd": cv["fold_rmse_sd"], "train_time_s": cv["train_time_s"],
                    "wall_time_s": cv.get("wall_time_s")}
        if (run / "job_status.json").exists():  # written by the sweep callback: whole-job time, failure
            job = json.loads((run / "job_status.json").read_text())
            row |= {"error": job.get("error"), "wall_time_s": job.get("wall_time_s")}
            row["status"] = "failed" if job["status"] == "failed" else row["status"]
        rows.append(row)
    return pd.DataFrame(rows)


def compare_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The blog layout: one column per experiment, rows validation MSE, diff from baseline, fold spread, time."""
    runs = runs[runs["status"] == "ok"].drop_duplicates("name", keep="last").set_index("name")
    names = [n for n in ORDER if n in runs.index] + [n for n in runs.index if n not in ORDER]
    runs = runs.loc[names]
    base = runs["cv_mse"].get("baseline")
    table = pd.DataFrame({
        "validation MSE": runs["cv_mse"],
        "diff": runs["cv_mse"] - base if base is not None else float("nan"),
        "validation RMSE": runs["cv_rmse"],
        "fold MSE mean": runs["fold_mse_mean"],
        "fold MSE sd": runs["fold_mse_sd"],
        "train time (s)": runs["train_time_s"],
    }).T
    table.columns.name = None
    return table


def write_compare(root) -> pd.DataFrame:
    root = Path(root)
    table = compare_table(collect(root))
    write_csv(table.reset_index(names="metric"), root / "table.csv")
    with atomic_path(root / "table.md") as tmp:
        tmp.write_text(table.to_markdown(floatfmt=".4f") + "\n")
    return table


def sweep_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per job, best CV RMSE first (failed and unfinished jobs last); ``swept``: the overrides that vary."""
    runs = runs.reindex(columns=["run", "overrides", "config", "status", *SCORES, "error"])
    tokens = [set(o.split()) for o in runs["overrides"]]
    common = set.intersection(*tokens) if len(tokens) > 1 else set()
    swept = [" ".join(t for t in o.split() if t not in common) for o in runs["overrides"]]
    runs = runs.assign(job=runs["run"], swept=swept, _num=pd.to_numeric(runs["run"], errors="coerce"))
    runs = runs.sort_values(["cv_rmse", "_num", "run"], na_position="last", kind="stable")
    return runs[["job", "swept", "status", *SCORES, "overrides", "config", "error"]].reset_index(drop=True)


def seed_table(jobs: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and sd of the CV RMSE over seeds per configuration (jobs whose overrides differ only in ``seed``).

    ``diff_se`` is the standard error of the difference from the best configuration: a gap within about two of them
    is seed noise. None when no configuration ran with more than one seed.
    """
    ok = jobs[jobs["status"] == "ok"]
    if ok.empty or ok.groupby("config").size().max() < 2:
        return None
    common = set.intersection(*[set(c.split()) for c in ok["config"]])
    table = ok.groupby("config")["cv_rmse"].agg(n_seeds="count", rmse_mean="mean", rmse_sd="std", rmse_min="min",
                                                  rmse_max="max").sort_values("rmse_mean")
    best = table.iloc[0]
    table["diff_vs_best"] = table["rmse_mean"] - best["rmse_mean"]
    table["diff_se"] = (table["rmse_sd"] ** 2 / table["n_seeds"] + best["rmse_sd"] ** 2 / best["n_seeds"]) ** 0.5
    table.iloc[0, table.columns.get_loc("diff_se")] = float("nan")  # the best against itself
    table.index = [" ".join(t for t in c.split() if t not in common) or c for c in table.index]
    return table.rename_axis("configuration").reset_index()


def _markdown(df: pd.DataFrame) -> str:
    """4 decimals for scores, 1 for seconds, blanks for missing values, one line per row."""
    fmt = [".1f" if c.endswith("_s") else "g" if c == "n_seeds" else ".4f" for c in df.columns]
    df = df.astype(object).where(df.notna(), "").replace(r"\s*\n\s*", " ", regex=True)
    return df.to_markdown(index=False, floatfmt=fmt) + "\n"


def write_sweep(root) -> pd.DataFrame:
    """``sweep.csv`` (every column, full overrides) and ``sweep.md`` (+ the seed table, ``sweep_seeds.csv``)."""
    root = Path(root)
    runs = collect(root)
    if runs.empty:
        return runs
    jobs = sweep_table(runs)
    write_csv(jobs, root / "sweep.csv")
    seeds = seed_table(jobs)
    md = f"# Sweep {root.name}: {len(jobs)} jobs, best CV RMSE first\n\n"
    md += _markdown(jobs.drop(columns=["overrides", "config", "error"]))
    failed = jobs[jobs["status"] == "failed"]
    if len(failed):
        md += "\n## Failed jobs\n\n" + _markdown(failed[["job", "swept", "error"]])
    if seeds is not None:
        write_csv(seeds, root / "sweep_seeds.csv")
        md += "\n## Over seeds (mean and sd of the CV RMSE per configuration)\n\n" + _markdown(seeds)
    with atomic_path(root / "sweep.md") as tmp:
        tmp.write_text(md)
    return jobs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Summary tables over run folders")
    parser.add_argument("kind", choices=["compare", "sweep"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "sweep":
        write_sweep(args.folder)
        print((args.folder / "sweep.md").read_text())
        return
    table = write_compare(args.folder)
    print(table.to_markdown(floatfmt=".4f"))
    print(f"Wrote {args.folder / 'table.md'} and table.csv")


if __name__ == "__main__":
    main()
