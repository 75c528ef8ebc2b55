"""Tables over several run folders: the regularizer comparison (one column per experiment) and the sweep summary.

``kfold-nlp compare <folder of runs>`` writes ``table.md`` and ``table.csv`` into that folder;
``kfold-nlp sweep <sweep folder>`` writes ``sweep.md`` and ``sweep.csv`` (the Hydra callback
``kfold_nlp.callbacks.SweepSummary`` does it during every sweep).

Every difference between runs carries the 95% paired bootstrap interval of ``kfold_nlp.stats`` (rows resampled
within folds), computed from the runs' ``oof.csv``; runs on other folds get no interval.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from ..config.paths import resource
from ..config.rules import override_key
from ..files import atomic_path, write_csv
from . import stats

SCORES = ["cv_mse", "cv_rmse", "fold_rmse_mean", "fold_rmse_sd", "fold_mse_mean", "fold_mse_sd", "wall_time_s"]


REFERENCE = "baseline"  # the run every other is compared against, when there is one


MARK = "*"  # a difference whose interval excludes 0 and that is at least stats.MIN_DIFF (Interval.marked)


MARK_NOTE = f"{MARK}: the interval excludes 0 and |diff| >= {stats.MIN_DIFF} (a smaller gap is not marked)"


INTERVAL_NOTE = (f"95% interval: paired bootstrap over the OOF rows, stratified by fold, {stats.N_BOOT} resamples; "
                 f"{MARK_NOTE}. Blank: no OOF file, or other folds.\n")


def text(value, fmt: str = ".4f") -> str:
    """A table cell: blank when missing (never ``nan``), ``yes``/``no`` for a flag, never ``-0.0000``."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.number)):
        out = f"{value:{fmt}}"
        return out[1:] if out.startswith("-") and float(out) == 0 else out
    return str(value)


def format_table(df: pd.DataFrame, fmt: dict | None = None) -> pd.DataFrame:
    """Every cell as ``text`` (4 decimals unless ``fmt`` says otherwise per column), one line per cell."""
    fmt = fmt or {}
    out = pd.DataFrame({c: [text(v, fmt.get(c, ".4f")) for v in df[c]] for c in df.columns}, index=df.index)
    return out.replace(r"\s*\n\s*", " ", regex=True)


def regularizer_order() -> list[str]:
    """Column order of the comparison: baseline first, then every ``conf/regularizer/*.yaml`` by name."""
    names = sorted(p.stem for p in (resource("conf") / "regularizer").glob("*.yaml"))
    return [REFERENCE] + [n for n in names if n != REFERENCE]


def run_name(hydra_dir: Path, cfg) -> str | None:
    """The run's ``name``; Hydra saves ``${hydra:...}`` in it unresolved, so look that up in ``hydra.yaml``."""
    raw = OmegaConf.to_container(cfg).get("name")
    m = re.fullmatch(r"\$\{hydra:([\w.]+)\}", str(raw))
    if m and (hydra_dir / "hydra.yaml").exists():
        return OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), f"hydra.{m[1]}")
    return raw


def collect(root) -> pd.DataFrame:
    """One row per run folder below ``root`` (a sweep folder or any folder of runs); failed runs have NaN scores.

    ``status``: ok (metrics.json), failed (the sweep callback recorded an exception, see ``error``), pruned (a search
    stopped it after a fold: ``pruned.json``, no CV) or unfinished.
    ``config``: the overrides without ``seed``, so runs that differ only in their seed share it. ``path``: the folder.
    """
    rows = []
    for hydra_dir in sorted(Path(root).glob("**/.hydra"), key=lambda p: str(p)):
        run = hydra_dir.parent
        cfg = OmegaConf.load(hydra_dir / "config.yaml")
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
        row = {"run": str(run.relative_to(root)) if run != Path(root) else ".", "path": run,
               "name": run_name(hydra_dir, cfg),
               "regularizer": str(cfg.regularizer.get("_target_", "")).rsplit(".", 1)[-1],
               "overrides": " ".join(overrides), "config": " ".join(o for o in overrides if override_key(o) != "seed"),
               "seed": cfg.get("seed"), "status": "unfinished"}
        if (run / "metrics.json").exists():
            cv = json.loads((run / "metrics.json").read_text())["cv"]
            row |= {"status": "ok", "cv_mse": cv["mse"], "cv_rmse": cv["rmse"], "fold_mse_mean": cv["fold_mse_mean"],
                    "fold_mse_sd": cv["fold_mse_sd"], "fold_rmse_mean": cv["fold_rmse_mean"],
                    "fold_rmse_sd": cv["fold_rmse_sd"], "train_time_s": cv["train_time_s"],
                    "wall_time_s": cv.get("wall_time_s")}
            selection = json.loads((run / "metrics.json").read_text()).get("selection", {})
            if "rmse" in selection:
                row |= {"holdout_rmse": selection["rmse"], "optimism": selection["optimism"]["mean"],
                        "optimism_lo": selection["optimism"]["lo"], "optimism_hi": selection["optimism"]["hi"]}
        if (run / "job_status.json").exists():  # written by the sweep callback: whole-job time, failure
            job = json.loads((run / "job_status.json").read_text())
            row |= {"error": job.get("error"), "wall_time_s": job.get("wall_time_s")}
            row["status"] = job["status"] if job["status"] in ("failed", "pruned") else row["status"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """A unique label per row of ``collect``: the run's name; where names repeat, plus the overrides that differ
    between the runs (a seed or learning-rate sweep of one regularizer); where they still repeat, plus the folder."""
    common = set.intersection(*[set(o.split()) for o in runs["overrides"]]) if len(runs) else set()
    label = runs["name"].astype(str)
    dup = label.duplicated(keep=False)
    label[dup] = (label[dup] + " " + runs.loc[dup, "overrides"].map(
        lambda o: " ".join(t for t in o.split() if t not in common))).str.strip()
    dup = label.duplicated(keep=False)
    label[dup] += " (" + runs.loc[dup, "path"].map(lambda p: Path(p).name) + ")"
    return label


def _aligned(paths: dict, first) -> tuple[pd.DataFrame | None, dict]:
    """The OOF rows of run ``first`` and the predictions, in that row order, of every run on the same rows and folds
    (runs without ``oof.csv`` or on other folds are left out)."""
    frames = {k: stats.read_oof(p) for k, p in paths.items() if p is not None and (Path(p) / "oof.csv").exists()}
    if first not in frames:
        return None, {}
    preds = {}
    for k, frame in frames.items():
        try:
            rows, pred = stats.align_oof([frames[first], frame])
        except stats.FoldMismatch:
            continue
        preds[k] = pred[:, 1]
    return rows, preds


def intervals(paths: dict, ref) -> dict:
    """``{key: stats.Interval}``: each run's OOF RMSE minus run ``ref``'s, with its paired bootstrap interval."""
    rows, preds = _aligned(paths, ref)
    if rows is None:
        return {}
    base = preds.pop(ref)
    return stats.compare_columns(rows["target"], rows["fold"], base, preds | {ref: base})


def compare_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The blog layout: one column per experiment; rows: validation MSE and its diff, validation RMSE and its diff
    with the 95% paired bootstrap interval, fold spread, time. Differences are against ``baseline`` when there is
    one, else against the first column (``table.attrs["reference"]``)."""
    runs = runs[runs["status"] == "ok"].drop_duplicates("name", keep="last").set_index("name")
    order = regularizer_order()
    runs = runs.loc[[n for n in order if n in runs.index] + [n for n in runs.index if n not in order]]
    ref = runs.index[0] if len(runs) else None
    partner = pd.Series(_partners(runs), index=runs.index, dtype=object)
    found = {}
    for base, group in partner.dropna().groupby(partner.dropna()):
        if "path" in runs:
            found |= {k: v for k, v in intervals(runs.loc[[base, *group.index], "path"].to_dict(), base).items()
                      if k in group.index}
    ci = pd.DataFrame({k: {"lo": v.lo, "hi": v.hi, "sig": v.excludes_zero} for k, v in found.items()},
                      index=["lo", "hi", "sig"]).T.reindex(runs.index)

    def against(col):  # each column minus its partner's
        return pd.Series({n: runs.at[n, col] - runs.at[p, col] if p is not None else np.nan
                          for n, p in partner.items()}, dtype=float)

    rows = {
        "validation MSE": runs["cv_mse"],
        "diff": against("cv_mse"),
        "validation RMSE": runs["cv_rmse"],
        "RMSE diff": against("cv_rmse"),
        "RMSE diff 95% low": ci["lo"].astype(float),
        "RMSE diff 95% high": ci["hi"].astype(float),
        "interval excludes 0": ci["sig"],
        **({"holdout RMSE": runs["holdout_rmse"], "selection optimism": runs["optimism"],
            "optimism 95% low": runs["optimism_lo"], "optimism 95% high": runs["optimism_hi"]}
           if "holdout_rmse" in runs else {}),
        "fold MSE mean": runs["fold_mse_mean"],
        "fold MSE sd": runs["fold_mse_sd"],
        "train time (s)": runs["train_time_s"],
    }
    if partner.dropna().nunique() > 1:  # seeds paired: say which run each one is compared with
        rows = {"compared with": partner.where(partner.notna(), None), **rows}
    table = pd.DataFrame(rows).T
    table.columns.name = None
    table.attrs["reference"] = ref
    return table


def _partners(runs: pd.DataFrame) -> dict:
    """name -> the run it is compared against: the reference (the first column), or, with seeds, the reference
    configuration's run of the same seed (seeds paired); None for another seed of the reference configuration,
    which is the same configuration, not a rival (the seed table compares configurations over seeds)."""
    if not len(runs):
        return {}
    ref = runs.index[0]
    if not {"config", "seed"} <= set(runs):
        return {n: ref for n in runs.index}
    config, seed = runs.at[ref, "config"], runs.at[ref, "seed"]
    same = runs.index[runs["config"] == config]
    by_seed = {seed: ref} | {s: n for n, s in runs.loc[same, "seed"].items() if pd.notna(s) and s != seed}
    other_seed = {n for n in same if pd.notna(seed) and pd.notna(runs.at[n, "seed"]) and runs.at[n, "seed"] != seed}
    return {n: ref if n == ref else None if n in other_seed else by_seed.get(runs.at[n, "seed"], ref)
            for n in runs.index}


def format_compare(table: pd.DataFrame) -> pd.DataFrame:
    """``compare_table`` as text (``text``): ``*`` after an RMSE diff whose interval excludes 0 and that is at least
    ``stats.MIN_DIFF``."""
    out = table.map(text)
    excludes = table.loc["interval excludes 0"].map(lambda v: v is True or v is np.True_)
    diff = pd.to_numeric(table.loc["RMSE diff"], errors="coerce").abs()
    for col in excludes[excludes & (diff >= stats.MIN_DIFF)].index:
        out.loc["RMSE diff", col] += f" {MARK}"
    return out


def compare_markdown(table: pd.DataFrame) -> str:
    return format_compare(table).to_markdown(stralign="right", disable_numparse=True)


def write_compare(root) -> pd.DataFrame:
    root = Path(root)
    table = compare_table(collect(root))
    write_csv(table.reset_index(names="metric"), root / "table.csv")
    with atomic_path(root / "table.md") as tmp:
        tmp.write_text(compare_markdown(table) + "\n\n" + _legend(table))
    return table


def _legend(table: pd.DataFrame) -> str:
    against = (f"the run in `compared with` (the reference `{table.attrs['reference']}`'s configuration, same seed; "
               f"blank: another seed of it)" if "compared with" in table.index else f"`{table.attrs['reference']}`")
    return f"Differences are against {against} (negative: better). {INTERVAL_NOTE}"


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
            iv = found.get(i, stats.Interval(np.nan, np.nan, np.nan))
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
    rows, preds = _aligned(ok["path"].to_dict(), first)
    if len(preds) < len(ok):
        return None
    keys = list(preds)
    samples = stats.resampled_rmse(rows["target"], np.column_stack([preds[k] for k in keys]),
                                   stats.resample_counts(rows["fold"]))
    return {k: samples[:, j] for j, k in enumerate(keys)}


def seed_table(runs: pd.DataFrame) -> pd.DataFrame | None:
    """Mean and sd of the CV RMSE over seeds per configuration (runs whose overrides differ only in ``seed``), and
    the difference of each configuration's mean from the reference configuration's (``reference_config``).

    ``diff_se`` combines both sources of noise (``stats.seed_diff``): the training noise over seeds, *paired* when
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
        d = stats.seed_diff(_seeds(groups[ref]), _seeds(group), row_samples=row_samples)
        diffs[config] = {"diff": d.diff, "diff_se": d.se, "ci_lo": d.lo, "ci_hi": d.hi,
                         "sig": MARK if d.marked() else "", "pairing": d.pairing,
                         "noise": "seeds+rows" if samples is not None else "seeds"}
    cols = ["diff", "diff_se", "ci_lo", "ci_hi", "sig", "pairing", "noise"]
    table = table.join(pd.DataFrame.from_dict(diffs, orient="index").reindex(columns=cols))
    table.index = [" ".join(t for t in c.split() if t not in common) or c for c in table.index]
    return table.rename_axis("configuration").reset_index()


def _markdown(df: pd.DataFrame) -> str:
    """4 decimals for scores, 1 for seconds, blanks for missing values, one line per row."""
    fmt = {c: ".1f" if c.endswith("_s") else "g" if c == "n_seeds" else ".4f" for c in df.columns}
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in df.columns]
    return format_table(df, fmt).to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


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
    for hydra_dir in sorted(Path(jobs_dir).glob("*/.hydra"), key=lambda p: int(p.parent.name)
                            if p.parent.name.isdigit() else 0):
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
        folds = [o.split("=", 1)[1].strip("[]") for o in overrides if override_key(o) == "cv.folds"]
        row = {"job": hydra_dir.parent.name, "fold": folds[-1] if folds else "?", "state": "running"}
        status = hydra_dir.parent / "job_status.json"
        if status.exists() and json.loads(status.read_text())["status"] == "failed":
            row["state"] = "failed"
        result = Path(run_dir) / f"fold_{row['fold']}" / "result.json"
        if result.exists():
            r = json.loads(result.read_text())
            row |= {"state": "finished", "val_rmse": r["rmse"], "holdout_rmse": r.get("holdout_rmse"),
                    "train_time_s": r["train_time_s"]}
        rows.append(row)
    return pd.DataFrame(rows)


def write_fold_jobs(jobs_dir, run_dir) -> pd.DataFrame:
    """``<run>/.jobs/sweep.md`` and ``sweep.csv``: the fold jobs' table (``fold_jobs``)."""
    table = fold_jobs(jobs_dir, run_dir)
    with atomic_path(Path(jobs_dir) / "sweep.md") as tmp:
        tmp.write_text(f"Fold jobs of {run_dir}\n\n" + format_table(table).to_markdown(index=False) + "\n")
    write_csv(table, Path(jobs_dir) / "sweep.csv")
    return table


def write_sweep(root) -> pd.DataFrame:
    """``sweep.csv`` (every column, full overrides) and ``sweep.md`` (+ the seed table, ``sweep_seeds.csv``)."""
    root = Path(root)
    runs = collect(root)
    if runs.empty:
        return runs
    jobs = sweep_table(runs)
    write_csv(jobs, root / "sweep.csv")
    seeds = seed_table(runs)
    md = f"# Sweep {root.name}: {len(jobs)} jobs, best CV RMSE first\n\n"
    md += _markdown(jobs.drop(columns=["overrides", "config", "error"]))
    best = best_trial(root, jobs)
    if best:
        md += f"\n{best}\n"
    if "ref" in jobs and jobs["ref"].notna().any():
        md += f"\n`diff_vs_ref`: CV RMSE minus that of job `ref`. {INTERVAL_NOTE}"
    failed = jobs[jobs["status"] == "failed"]
    if len(failed):
        md += "\n## Failed jobs\n\n" + _markdown(failed[["job", "swept", "error"]])
    if seeds is not None:
        write_csv(seeds, root / "sweep_seeds.csv")
        ref = seeds.loc[seeds["pairing"] == "reference", "configuration"].iloc[0]
        md += ("\n## Over seeds (mean and sd of the CV RMSE per configuration)\n\n" + _markdown(seeds)
               + f"\n`diff`: mean CV RMSE minus that of `{ref}`; `diff_se` adds the seed noise (paired on the per-seed "
               f"differences when the seeds match) and the row noise (paired bootstrap over the OOF rows); `ci_lo`, "
               f"`ci_hi`: the 95% t interval; {MARK}: it excludes 0 and |diff| >= {stats.MIN_DIFF}.\n")
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
    print(compare_markdown(table))
    print(f"Wrote {args.folder / 'table.md'} and table.csv")


if __name__ == "__main__":
    main()
