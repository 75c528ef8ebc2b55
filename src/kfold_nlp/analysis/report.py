"""Data behind ``notebooks/oof_analysis.ipynb`` and the headless report.

``kfold-nlp report <run or sweep folder>...`` (``make notebook RUNS="..."``) executes the notebook with
papermill and writes ``<first folder>/oof_analysis.html`` (nbconvert, code cells hidden) and the executed notebook.
The helpers stay here, not in the notebook, so the tests check them and the notebook stays short.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from .. import metrics
from ..config.paths import NOTEBOOK
from ..data.tables import test_file
from ..rundir import RunDir, read_csv, read_preds, read_run_config
from .ensemble import improvement_marked, members_table
from .runs import (  # noqa: F401  (find_ensembles, find_runs, is_ensemble: report.* in the notebook and tests)
    ROOT,
    ensemble_metrics,
    find_ensembles,
    find_runs,
    is_ensemble,
    run_labels,
    run_rows,
)
from .stats import read_oof
from .tables import MARK


def _member_label(m: dict, name: str, labels: dict | None) -> str:
    by_path = {Path(k).resolve(): v for k, v in (labels or {}).items()}
    return by_path.get(Path(m["members"][name]["path"]).resolve(), name)


def ensemble_scores(folder, labels: dict | None = None) -> pd.Series:
    """What an ensemble folder's numbers mean, one line each (see ``kfold_nlp.analysis.ensemble``); ``labels``:
    path -> the name shown elsewhere in the notebook."""
    m = ensemble_metrics(folder)
    c = m["cv"]
    return pd.Series({
        "method": m["method"],
        "CV RMSE, nested (weights never fitted on the rows they score)": f"{c['rmse']:.4f}",
        "CV RMSE, in-sample (weights fitted on all rows)": f"{c['rmse_in_sample']:.4f}",
        "optimism of the in-sample score (nested - in-sample)": f"{c['rmse'] - c['rmse_in_sample']:+.4f}",
        f"best member ({_member_label(m, c['best_member'], labels)}) CV RMSE": f"{c['best_member_rmse']:.4f}",
        "improvement over the best member (best - nested blend; positive: the blend is better)":
            f"{c['improvement_vs_best_member']:+.4f}",
        f"improvement {c['level']:.0%} interval (paired bootstrap over rows)":
            f"[{c['improvement_lo']:+.4f}, {c['improvement_hi']:+.4f}]" + (f" {MARK}" if improvement_marked(c) else ""),
    }, name=Path(folder).name)


def ensemble_members(folder, labels: dict | None = None) -> pd.DataFrame:
    """One row per member: weight (fitted on all rows), its CV RMSE, the blend's improvement over it with the
    interval (``*``: ``ensemble.improvement_marked``), and the weights fitted without each fold (how stable they
    are). ``labels``: path -> the name shown elsewhere in the notebook."""
    m = ensemble_metrics(folder)
    table = members_table(m)
    for k, fold in sorted(m["folds"].items(), key=lambda kv: int(kv[0])):
        table[f"weight w/o fold {k}"] = pd.Series(fold["weights"])
    table.index = [_member_label(m, n, labels) for n in m["members"]]
    return table.rename_axis("member")


def load_runs(runs: list[Path]) -> pd.DataFrame:
    """One row per run (``runs.run_rows`` plus path, label, per-fold RMSE). Labels: the name, and the overrides
    that differ between runs when names repeat (a learning-rate sweep of one regularizer)."""
    rows = []
    for run in runs:
        row = run_rows(run).iloc[0].to_dict()
        folds = RunDir(run).read_metrics()["folds"]
        by_fold = sorted(folds.items(), key=lambda kv: int(kv[0]))
        rows.append(row | {"path": run} | {f"fold {k} RMSE": v["rmse"] for k, v in by_fold})
    df = pd.DataFrame(rows)
    df["label"] = run_labels(df)
    return df


def fold_table(runs: pd.DataFrame) -> pd.DataFrame:
    """CV and per-fold RMSE, one row per run."""
    folds = [c for c in runs.columns if c.startswith("fold ") and c.endswith(" RMSE")]
    cols = {"cv_rmse": "CV RMSE", "cv_mse": "CV MSE", **{c: c for c in folds},
            "fold_rmse_mean": "fold RMSE mean", "fold_rmse_sd": "fold RMSE sd"}
    return runs.set_index("label")[list(cols)].rename(columns=cols).rename_axis(None)


def run_config(run: Path):
    """The config the run was started with (its ``run_config.yaml``)."""
    return read_run_config(Path(run))


def _data_path(path, root) -> Path:
    path = Path(str(path))
    return path if path.is_absolute() else Path(root) / path


def load_oof(run: Path, root=ROOT) -> pd.DataFrame:
    """The run's OOF rows with residual (pred - target) and, when the data file is there, the text and its length."""
    oof = read_oof(run)
    oof["residual"] = oof["pred"] - oof["target"]
    data = run_config(run).data
    path = _data_path(data.path, root)
    if path.exists():
        texts = pd.read_csv(path, dtype={data.id_col: str})[[data.id_col, data.text_col]]
        texts.columns = ["id", "text"]
        oof = oof.merge(texts, on="id", how="left")
        oof["n_words"] = oof["text"].str.split().str.len()
    return oof


def binned(oof: pd.DataFrame, by: str, bins: int = 8) -> pd.DataFrame:
    """Mean residual and RMSE per quantile bin of ``by`` (target or text length): where the model is biased."""
    groups = oof.groupby(pd.qcut(oof[by], bins, duplicates="drop"), observed=True)["residual"]
    out = pd.DataFrame({"n": groups.size(), "mean residual": groups.mean(),
                        "RMSE": groups.apply(lambda r: metrics.rmse(0.0, r))})  # the residuals' RMSE
    out.index = [f"{iv.left:.2f} to {iv.right:.2f}" for iv in out.index]
    return out.rename_axis(by)


def worst(oof: pd.DataFrame, n: int = 10, width: int = 300) -> pd.DataFrame:
    """The ``n`` rows with the largest absolute residual, text shortened to ``width`` characters."""
    rows = oof.loc[oof["residual"].abs().sort_values(ascending=False).index[:n]]
    rows = rows.drop(columns=[c for c in ("fold",) if c in rows])
    if "text" in rows:
        rows["text"] = rows["text"].str.slice(0, width)
    return rows.reset_index(drop=True)


def bagging_table(run: Path, root=ROOT) -> pd.DataFrame | None:
    """Each fold model's test predictions against the bagged ones (``submission.csv``); None without a test set.

    ``RMSE`` needs labels in the test file (the target column), else it is NaN; ``RMSE to bagged`` always shows how
    far each fold model is from the bag (the variance that bagging averages away).
    """
    run = RunDir(run)
    folds = [fold for fold in run.fold_dirs() if fold.test_pred.exists()]
    if not run.submission.exists() or not folds:
        return None
    data = run_config(run.path).data
    fix = f"collect the run again: make collect RUN={run.path}"
    bagged = read_csv(run.submission, (data.id_col, data.target_col), fix, dtype={data.id_col: str})
    bagged = bagged.rename(columns={data.id_col: "id"})
    preds = {fold.name.replace("_", " "): read_preds(fold.test_pred, bagged["id"], f"{run.submission}")
             for fold in folds}
    preds["bagged"] = bagged[data.target_col].to_numpy()
    test_path = _data_path(test_file(data), root)
    labels = None
    if test_path.exists():
        test = pd.read_csv(test_path, dtype={data.id_col: str})
        if data.target_col in test:
            labels = bagged[["id"]].merge(test.rename(columns={data.id_col: "id"}), on="id")[data.target_col].to_numpy()

    def rmse(pred, target):
        return metrics.rmse(target, pred) if target is not None else float("nan")

    return pd.DataFrame({"RMSE": {k: rmse(v, labels) for k, v in preds.items()},
                         "RMSE to bagged": {k: rmse(v, preds["bagged"]) for k, v in preds.items()}})


def render(paths: list[str], root=ROOT) -> Path:
    """Execute the notebook headless on ``paths`` and write ``<first folder>/oof_analysis.{ipynb,html}``."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    first = Path(paths[0]) if Path(paths[0]).is_absolute() else Path(root) / paths[0]
    executed = first / "oof_analysis.ipynb"
    # The python3 kernel of this interpreter (jupyter_client maps the kernel's "python" to sys.executable).
    papermill.execute_notebook(NOTEBOOK, executed, parameters={"runs": [str(p) for p in paths], "root": str(root)},
                               kernel_name="python3", cwd=str(root), progress_bar=False)
    html, _ = HTMLExporter(exclude_input=True).from_notebook_node(nbformat.read(executed, as_version=4))
    out = first / "oof_analysis.html"
    out.write_text(html)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kfold-nlp report",
                                     description="OOF analysis report (executes notebooks/oof_analysis.ipynb)")
    parser.add_argument("runs", nargs="*", default=os.environ.get("OOF_RUNS", "").split(),
                        help="run folders or sweep folders (default: $OOF_RUNS)")
    args = parser.parse_args(argv)
    if not args.runs:
        parser.error('give one or more run or sweep folders: make notebook RUNS="outputs/compare/<time>"')
    print(f"Wrote {render([str(Path(p).absolute()) for p in args.runs])}")


if __name__ == "__main__":
    main()
