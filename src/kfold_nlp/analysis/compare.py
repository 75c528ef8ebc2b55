"""``kfold-nlp compare <folder of runs>``: the regularizer comparison, one column per experiment, written to
``table.md`` and ``table.csv`` in that folder.

Every difference between runs carries the 95% paired bootstrap interval of ``kfold_nlp.metrics`` (rows resampled
within folds), computed from the runs' ``oof.csv``; runs on other folds get no interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import metrics
from ..config.paths import resource
from ..files import atomic_path, write_csv
from .runs import run_rows
from .stats import intervals
from .tables import INTERVAL_NOTE, MARK, REFERENCE, text

TABLE_MD, TABLE_CSV = "table.md", "table.csv"  # written into the folder of runs


def regularizer_order() -> list[str]:
    """Column order of the comparison: baseline first, then every ``conf/regularizer/*.yaml`` by name."""
    names = sorted(p.stem for p in (resource("conf") / "regularizer").glob("*.yaml"))
    return [REFERENCE] + [n for n in names if n != REFERENCE]


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
    """``compare_table`` as text (``tables.text``): ``*`` after an RMSE diff whose interval excludes 0 and that is
    at least ``metrics.MIN_DIFF``."""
    out = table.map(text)
    excludes = table.loc["interval excludes 0"].map(lambda v: v is True or v is np.True_)
    diff = pd.to_numeric(table.loc["RMSE diff"], errors="coerce").abs()
    for col in excludes[excludes & (diff >= metrics.MIN_DIFF)].index:
        out.loc["RMSE diff", col] += f" {MARK}"
    return out


def compare_markdown(table: pd.DataFrame) -> str:
    return format_compare(table).to_markdown(stralign="right", disable_numparse=True)


def write_compare(root) -> pd.DataFrame:
    root = Path(root)
    table = compare_table(run_rows(root))
    write_csv(table.reset_index(names="metric"), root / TABLE_CSV)
    with atomic_path(root / TABLE_MD) as tmp:
        tmp.write_text(compare_markdown(table) + "\n\n" + _legend(table))
    return table


def _legend(table: pd.DataFrame) -> str:
    against = (f"the run in `compared with` (the reference `{table.attrs['reference']}`'s configuration, same seed; "
               f"blank: another seed of it)" if "compared with" in table.index else f"`{table.attrs['reference']}`")
    return f"Differences are against {against} (negative: better). {INTERVAL_NOTE}"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # the one command line passes the command's name first
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="kfold-nlp compare", description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("folder", type=Path, help="a folder of run folders")
    args = parser.parse_args(argv)
    table = write_compare(args.folder)
    print(compare_markdown(table))
    print(f"Wrote {args.folder / TABLE_MD} and {TABLE_CSV}")


if __name__ == "__main__":
    main()
