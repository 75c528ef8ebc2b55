"""Tables over several run folders: the regularizer comparison (one column per experiment).

``python -m kfold_nlp.summary compare <folder of runs>`` writes ``table.md`` and ``table.csv`` into that folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from .files import atomic_path, write_csv

ORDER = ["baseline", "msd", "mixout", "rdrop", "no_dropout"]


def collect(root) -> pd.DataFrame:
    """One row per run folder below ``root`` (a sweep folder or any folder of runs); failed runs have NaN scores."""
    rows = []
    for hydra_dir in sorted(Path(root).glob("**/.hydra"), key=lambda p: str(p)):
        run = hydra_dir.parent
        cfg = OmegaConf.load(hydra_dir / "config.yaml")
        overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
        row = {"run": str(run.relative_to(root)) if run != Path(root) else ".", "name": cfg.get("name"),
               "regularizer": str(cfg.regularizer.get("_target_", "")).rsplit(".", 1)[-1],
               "overrides": " ".join(overrides), "seed": cfg.get("seed"), "status": "failed"}
        if (run / "metrics.json").exists():
            cv = json.loads((run / "metrics.json").read_text())["cv"]
            row |= {"status": "ok", "cv_mse": cv["mse"], "cv_rmse": cv["rmse"], "fold_mse_mean": cv["fold_mse_mean"],
                    "fold_mse_sd": cv["fold_mse_sd"], "fold_rmse_mean": cv["fold_rmse_mean"],
                    "fold_rmse_sd": cv["fold_rmse_sd"], "train_time_s": cv["train_time_s"],
                    "wall_time_s": cv.get("wall_time_s")}
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Summary tables over run folders")
    parser.add_argument("kind", choices=["compare"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    table = write_compare(args.folder)
    print(table.to_markdown(floatfmt=".4f"))
    print(f"Wrote {args.folder / 'table.md'} and table.csv")


if __name__ == "__main__":
    main()
