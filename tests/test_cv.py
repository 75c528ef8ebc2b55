"""The CV runner end to end through the real CLI: folds, OOF file, metrics, a failed W&B run, bagging, determinism."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import cli, read_metrics, tiny_overrides, wandb_runs
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv import fold as cv_fold
from kfold_nlp.cv.collect import cv_metrics
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.data.folds import make_folds, sturges_bins
from kfold_nlp.train.memory import memory_mb, reset_peak_memory


@pytest.mark.slow
def test_folds_are_disjoint_and_cover_every_row_once(tiny_run, tiny_train):
    folds = pd.read_csv(tiny_run / "folds.csv", dtype={"id": str})
    assert folds["id"].tolist() == tiny_train["id"].tolist()
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    oof = pd.read_csv(tiny_run / "oof.csv", dtype={"id": str})
    # Each row is validated exactly once, by the fold that holds it, and never trained on there.
    assert oof["id"].is_unique and set(oof["id"]) == set(tiny_train["id"])
    merged = oof.merge(folds, on="id", suffixes=("", "_folds"))
    assert (merged["fold"] == merged["fold_folds"]).all()
    for fold in range(3):
        val_ids = set(pd.read_csv(tiny_run / f"fold_{fold}" / "oof.csv", dtype={"id": str})["id"])
        assert val_ids == set(folds.loc[folds["fold"] == fold, "id"])
        assert val_ids.isdisjoint(folds.loc[folds["fold"] != fold, "id"])


def test_folds_are_stratified_seeded_and_balanced():
    rng = np.random.default_rng(0)
    target = rng.normal(-1, 1, 500)
    folds = make_folds(target, n_splits=5, seed=7)
    assert np.array_equal(folds, make_folds(target, n_splits=5, seed=7))
    assert not np.array_equal(folds, make_folds(target, n_splits=5, seed=8))
    assert np.bincount(folds).tolist() == [100] * 5
    # Stratified: within every Sturges bin of the target, the folds' counts differ by at most one row.
    bins = pd.cut(target, sturges_bins(len(target)), labels=False)
    counts = pd.crosstab(bins, folds)
    assert ((counts.max(axis=1) - counts.min(axis=1)) <= 1).all()
    assert sturges_bins(2267) == 12


@pytest.mark.slow
def test_oof_has_one_row_per_input_row_and_metrics_match_it(tiny_run, tiny_train):
    oof = pd.read_csv(tiny_run / "oof.csv", dtype={"id": str})
    assert len(oof) == len(tiny_train)
    assert list(oof.columns) == ["id", "fold", "target", "pred"]
    assert oof["pred"].notna().all()
    np.testing.assert_allclose(oof.set_index("id")["target"], tiny_train.set_index("id")["target"].loc[oof["id"]])
    metrics = read_metrics(tiny_run)
    mse = float(np.mean((oof["pred"] - oof["target"]) ** 2))
    assert metrics["cv"]["mse"] == pytest.approx(mse, rel=1e-9)
    assert metrics["cv"]["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-9)
    fold_mse = [np.mean((g["pred"] - g["target"]) ** 2) for _, g in oof.groupby("fold")]
    assert [metrics["folds"][str(k)]["mse"] for k in range(3)] == pytest.approx(fold_mse, rel=1e-9)
    assert metrics["cv"]["fold_mse_mean"] == pytest.approx(np.mean(fold_mse))


@pytest.mark.slow
def test_bagged_submission_is_the_mean_of_the_fold_predictions(tiny_run, tiny_data):
    sub = pd.read_csv(tiny_run / "submission.csv", dtype={"id": str})
    test = pd.read_csv(tiny_data / "test.csv", dtype={"id": str})
    assert sub["id"].tolist() == test["id"].tolist()
    folds = np.stack([pd.read_csv(tiny_run / f"fold_{k}" / "test_pred.csv")["pred"] for k in range(3)])
    assert not np.allclose(folds[0], folds[1])  # distinct fold models, so the mean is a real combination
    np.testing.assert_allclose(sub["target"], folds.mean(0), rtol=1e-12)


@pytest.mark.slow
def test_predict_cli_rebags_the_saved_fold_models(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "pred.csv"
    cli("predict", tiny_run, tiny_data / "test.csv", "--out", out)
    pred = pd.read_csv(out)
    sub = pd.read_csv(tiny_run / "submission.csv")
    np.testing.assert_allclose(pred["target"], sub["target"], atol=1e-5)


@pytest.mark.slow
def test_same_seed_gives_the_same_oof(tiny_run, tiny_data, tmp_path):
    cli("cv", *tiny_overrides(tiny_data, tmp_path / "again"))
    first = pd.read_csv(tiny_run / "oof.csv")
    second = pd.read_csv(tmp_path / "again" / "oof.csv")
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.slow
def test_the_run_is_named_after_the_regularizer_actually_used(tiny_data, tmp_path):
    """A preset followed by ``regularizer=msd`` trains MSD, so folder, tracker group and runs say msd."""
    overrides = [o for o in tiny_overrides(tiny_data, tmp_path) if not o.startswith(("hydra.run.dir", "logger",
                                                                                     "regularizer="))]
    proc = cli("cv", "experiment=baseline", "regularizer=msd", "cv.folds=[0]", "logger=csv", *overrides, cwd=tmp_path)
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if not p.name.startswith("latest")]
    assert run_dir.parent.name == "msd" and (run_dir.parent / "latest").resolve() == run_dir.resolve()
    assert (run_dir.parent / "latest-synthetic").resolve() == run_dir.resolve()  # what make predict takes
    runs = [json.loads(p.read_text()) for p in run_dir.glob("csv/*/run.json")]
    assert sorted(r["name"] for r in runs) == ["msd-cv", "msd-fold0"] and {r["group"] for r in runs} == {"msd"}
    assert "1 of 3 folds" in proc.stdout  # a partial run says which folds its CV score covers


@pytest.mark.slow
def test_num_workers_reaches_every_loader(tiny_data, tmp_path, monkeypatch):
    seen, real = [], cv_fold.make_loader

    def recording(*args, **kwargs):
        seen.append(kwargs.get("num_workers", args[5] if len(args) > 5 else 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(cv_fold, "make_loader", recording)
    overrides = [o for o in tiny_overrides(tiny_data, tmp_path) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=test", "cv.folds=[0]", "trainer.num_workers=1"])
    run_cv(cfg, tmp_path / "run")
    assert len(seen) == 3 and set(seen) == {1}  # train, validation, test


@pytest.mark.slow
def test_a_diverged_fold_is_one_line_a_failed_wandb_run_and_no_results(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("cv", *tiny_overrides(tiny_data, run_dir, logger="wandb"), "optimizer=sgd", "optimizer.lr=1e12",
               "trainer.max_grad_norm=null", "trainer.precision=fp32", check=False)
    assert proc.returncode == 1
    # already fp32: the hint does not suggest it (a bf16 run's does, tests/test_trainer.py)
    assert proc.stderr.splitlines()[-1] == "error: fold 0 diverged at step 2 (loss nan); lower optimizer.lr"
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "fold_0" / "result.json").exists()
    (fold0,) = wandb_runs(run_dir)
    assert (fold0["state"], fold0.get("exit_code")) == ("failed", 1), fold0  # both recorded: a missing one fails


@pytest.mark.slow
def test_results_are_assembled_by_id_never_by_position(tiny_data, tmp_path):
    """A fold file whose ids do not match folds.csv, or a train file changed before a resume, is refused."""
    data, run_dir = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_data, data)
    overrides = [*tiny_overrides(data, run_dir), "cv.folds=[0,1]"]
    cli("cv", *overrides)
    resume = [o for o in overrides if not o.startswith("hydra.run.dir")] + [f"resume={run_dir}"]

    oof = pd.read_csv(run_dir / "fold_1" / "oof.csv", dtype={"id": str})
    oof.iloc[[0, 1]] = oof.iloc[[1, 0]].to_numpy()  # two rows swapped: same ids, other order
    oof.to_csv(run_dir / "fold_1" / "oof.csv", index=False)
    (run_dir / "metrics.json").unlink()
    proc = cli("cv", *resume, check=False)
    assert proc.returncode == 2 and "fold_1/oof.csv: ids differ" in proc.stderr.strip().splitlines()[-1]
    assert not (run_dir / "metrics.json").exists()

    train = pd.read_csv(data / "train.csv", dtype=str)
    train.loc[5, "id"] = "changed"
    train.to_csv(data / "train.csv", index=False)
    proc = cli("cv", *resume, check=False)
    assert proc.returncode == 2 and f"the train file changed since {run_dir} started (ids differ)" in proc.stderr


@pytest.mark.slow
def test_memory_per_fold_is_recorded_and_does_not_grow(tiny_run):
    folds = read_metrics(tiny_run)["folds"]
    rss = [folds[str(k)]["rss_mb"] for k in range(3)]
    peaks = [folds[str(k)]["peak_rss_mb"] for k in range(3)]
    assert all(0 < r <= p for r, p in zip(rss, peaks))  # each fold's own peak (reset at its start) holds its end
    # a fold that leaked its model or state would add to the next one's memory
    assert rss[2] - rss[0] < 100 and peaks[2] - peaks[0] < 100, (rss, peaks)


def test_the_peak_memory_is_reset_and_then_holds_a_new_allocation():
    """64 MiB of fresh pages (an anonymous mmap: not memory the allocator kept) add to the RSS and to the peak."""
    import mmap

    reset_peak_memory()
    before = memory_mb()
    assert 0 < before["rss_mb"] <= before["peak_rss_mb"] < before["rss_mb"] + 16  # the peak starts from now
    pages = mmap.mmap(-1, 64 * 2**20)
    for i in range(0, len(pages), mmap.PAGESIZE):
        pages[i] = 1
    after = memory_mb()
    pages.close()
    assert after["rss_mb"] >= before["rss_mb"] + 60 and after["peak_rss_mb"] >= after["rss_mb"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["oof.csv", "test_pred.csv"])
def test_a_blank_fold_prediction_is_refused_naming_file_and_row(name, tiny_run, tmp_path):
    """A blank pred would be skipped by the mean (a CV score over fewer rows, a bag of fewer models): collect
    refuses with one line, exit 2, and leaves the run's results as they were."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    path = run_dir / "fold_1" / name
    table = pd.read_csv(path, dtype=str)
    table.loc[2, "pred"] = ""
    table.to_csv(path, index=False)
    results = {n: (run_dir / n).read_bytes() for n in ("oof.csv", "submission.csv", "metrics.json")}
    proc = cli("collect", run_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {path}: blank or non-finite pred in 1 row(s), first at data row 3; "
                                   f"retrain that fold: delete {path.parent / 'result.json'} and resume with "
                                   f"RESUME={run_dir}")
    assert {n: (run_dir / n).read_bytes() for n in results} == results


def test_summed_fold_times_in_metrics_json_have_at_most_two_decimals():
    oof = pd.DataFrame({"pred": [0.1, 0.2, 0.3], "target": [0.0, 0.25, 0.25]})
    folds = {k: {"mse": 0.01 * (k + 1), "train_time_s": t, "eval_time_s": t / 10}
             for k, t in enumerate([3.1, 4.2, 4.23])}  # a float sum of 11.530000000000001
    m = cv_metrics(oof, folds, mean_rmse=0.2)["cv"]
    for key in ["train_time_s", "eval_time_s"]:
        assert m[key] == round(m[key], 2) and len(repr(m[key]).split(".")[1]) <= 2
    assert m["train_time_s"] == pytest.approx(11.53)
