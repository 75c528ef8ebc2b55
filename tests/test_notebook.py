"""The OOF analysis notebook: committed without outputs, executes headless (``make notebook``) on the runs of the
sweep test, and its helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import ENV, ROOT, background_value, in_background, read_metrics, run_process
from kfold_nlp.analysis import report
from test_sweep import two_job_sweep  # noqa: F401  (the shared session fixture)

NOTEBOOK = ROOT / "notebooks" / "oof_analysis.ipynb"


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@in_background
def reported_sweep(folder: Path, data: Path) -> Path:
    """The shared sweep with the notebook run on it (papermill's kernel): what `make notebook RUNS=<sweep>` runs."""
    sweep = background_value("two_job_sweep")
    run_process("report", sweep, env=ENV)
    return sweep


@pytest.mark.process  # papermill's kernel
def test_notebook_executes_headless_on_the_sweep_and_compares_both_jobs(reported_sweep):
    two_job_sweep = reported_sweep
    html = (two_job_sweep / "oof_analysis.html").read_text()
    nb = nbformat.read(two_job_sweep / "oof_analysis.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # scatter, residuals, bar chart
    texts = [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]
    comparison = next(t for t in texts if "validation MSE" in t)
    assert "baseline" in comparison and "msd" in comparison
    rmse = read_metrics(two_job_sweep / "1")["cv"]["rmse"]
    assert f"{rmse:.4f}" in next(t for t in texts if "CV RMSE" in t)
    assert "validation MSE" in html and "Worst-predicted excerpts" in html
    assert "report.find_runs(" not in html  # code hidden


@pytest.mark.process  # the sweep (test_sweep.py)
def test_helpers_find_runs_and_read_texts(two_job_sweep):
    runs = report.find_runs(str(two_job_sweep))
    assert [r.name for r in runs] == ["0", "1"] and report.find_runs([runs[1]]) == [runs[1]]
    df = report.load_runs(runs)
    assert df["label"].tolist() == ["baseline", "msd"]
    table = report.fold_table(df)
    assert table.loc["msd", "fold 1 RMSE"] == pytest.approx(read_metrics(runs[1])["folds"]["1"]["rmse"])
    oof = report.load_oof(runs[0])
    assert oof["text"].notna().all() and (oof["n_words"] > 0).all()
    worst = report.worst(oof, 3)
    assert worst["residual"].abs().tolist() == sorted(oof["residual"].abs(), reverse=True)[:3]
    assert report.binned(oof, "target", 4)["n"].sum() == len(oof)
    with pytest.raises(FileNotFoundError):
        report.find_runs([two_job_sweep / "missing"])


@pytest.mark.process  # the sweep (test_sweep.py)
def test_repeated_names_are_labelled_by_their_overrides(two_job_sweep, tmp_path):
    runs = []
    for job, lr in [("0", "1e-5"), ("1", "3e-5")]:
        run = shutil.copytree(two_job_sweep / "0", tmp_path / job, ignore=shutil.ignore_patterns("wandb"))
        (run / ".hydra" / "overrides.yaml").write_text(f"- model=tiny\n- optimizer.lr={lr}\n")
        runs.append(run)
    assert report.load_runs(runs)["label"].tolist() == ["baseline optimizer.lr=1e-5", "baseline optimizer.lr=3e-5"]


@pytest.mark.process  # the sweep (test_sweep.py)
def test_bagged_vs_single_fold_rmse_where_test_labels_exist(two_job_sweep, tmp_path):
    run = shutil.copytree(two_job_sweep / "0", tmp_path / "run", ignore=shutil.ignore_patterns("wandb"))
    cfg = report.run_config(run)
    test = pd.read_csv(cfg.data.test_path, dtype={"id": str})
    labelled = test.assign(target=np.linspace(-2, 1, len(test)))
    labelled.to_csv(tmp_path / "test.csv", index=False)
    cfg.data.test_path = str(tmp_path / "test.csv")
    OmegaConf.save(cfg, run / "run_config.yaml")
    table = report.bagging_table(run)
    bagged = pd.read_csv(run / "submission.csv")["target"]
    assert table.index.tolist() == ["fold 0", "fold 1", "bagged"]
    assert table.loc["bagged", "RMSE"] == pytest.approx(np.sqrt(np.mean((bagged - labelled["target"]) ** 2)))
    assert table.loc["bagged", "RMSE to bagged"] == 0 and (table["RMSE to bagged"].iloc[:2] > 0).all()
    # Without labels (the sweep's own test file): spread only.
    assert report.bagging_table(two_job_sweep / "0")["RMSE"].isna().all()
