"""The refit: one model on every training row (never a holdout row) for the folds' median best step scaled to the
larger set; ``--models all`` bags it with the fold models."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import tiny_overrides
from kfold_nlp import predict
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv import refit as refit_module
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.errors import DataError

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def held_run_as_trained(tmp_path_factory):
    """A tiny run with a holdout, trained once for the module; each test gets a copy."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)  # accelerate's state is process-wide: start from none, as a run does
    GradientState._reset_state()
    base = tmp_path_factory.mktemp("held")
    overrides = [o for o in tiny_overrides(base / "data", base) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*overrides, "name=test", "cv.holdout=0.25", "trainer.epochs=2",
                                 "trainer.precision=fp32"])
    run_cv(cfg, base / "run")
    return base / "run"


@pytest.fixture
def held_run(held_run_as_trained, tmp_path):
    """A copy of the module's run (its data stays where the run's config says), for a test to refit or damage."""
    return shutil.copytree(held_run_as_trained, tmp_path / "run")


def test_the_refit_trains_on_every_training_row_for_the_stated_steps(held_run, monkeypatch):
    seen, real = [], refit_module.make_loader

    def spy(dataset, *args, **kwargs):
        seen.append((dataset, args[2] if len(args) > 2 else kwargs.get("train")))
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(refit_module, "make_loader", spy)
    result = refit_module.refit(held_run)
    folds = pd.read_csv(held_run / "folds.csv", dtype={"id": str})
    (train,) = [d for d, is_train in seen if is_train]
    assert sorted(train.rows) == sorted(np.flatnonzero(folds["fold"] != -1))  # every row but the holdout's
    best = [json.loads((held_run / f"fold_{k}" / "result.json").read_text())["best_step"] for k in range(3)]
    fold_rows = [int(((folds["fold"] != k) & (folds["fold"] != -1)).sum()) for k in range(3)]
    expected = max(1, round(float(np.median(best)) * len(train.rows) / np.mean(fold_rows)))
    assert result["steps"] == expected == refit_module.refit_steps(best, len(train.rows), fold_rows)
    assert result["planned_steps"] == 2 * math.ceil(len(train.rows) / 8)  # the run's epochs on the refit's rows
    written = json.loads((held_run / "refit" / "result.json").read_text())
    assert written["steps"] == expected and "holdout_rmse" in written and "rmse" not in written  # no CV score
    assert (held_run / "refit" / "model.safetensors").is_file() and not (held_run / "refit" / "snapshot").exists()


def test_models_all_bags_the_fold_models_and_the_refit_each_once(held_run, held_run_as_trained):
    refit_module.refit(held_run)
    test_csv = held_run_as_trained.parent / "data" / "test.csv"
    cfg = predict.run_config(held_run)
    paths = predict.fold_models(held_run, cfg, "all")
    assert [p.parent.name for p in paths] == ["fold_0", "fold_1", "fold_2", "refit"]
    texts = pd.read_csv(test_csv)["excerpt"]
    each = predict.predict_texts(cfg, paths, texts)
    bagged = predict.predict_run(held_run, test_csv, models="all")["target"].to_numpy()
    np.testing.assert_allclose(bagged, each.mean(0), atol=1e-6)
    np.testing.assert_allclose(predict.predict_run(held_run, test_csv, models="refit")["target"], each[3],
                               atol=1e-6)


def test_a_refit_needs_every_fold_finished_and_models_refit_needs_a_refit(held_run):
    with pytest.raises(DataError, match=r"no finished refit .*; train it with make refit RUN=.*, or use --models "
                                        r"folds$"):
        predict.fold_models(held_run, predict.run_config(held_run), "all")
    (held_run / "fold_2" / "result.json").unlink()
    with pytest.raises(DataError, match=r"fold\(s\) 2 not finished; the refit takes its steps from every fold"):
        refit_module.refit(held_run)
