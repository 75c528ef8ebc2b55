"""Classical members (``model=tfidf_ridge``, ``model=readability``): a normal run folder on the run's folds, so
collect, predict, compare and ensemble treat them like any run."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import tiny_overrides
from kfold_nlp import predict
from kfold_nlp.analysis import ensemble
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.config.schema import ConfigError, validate
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.model.classical import readability_features, syllables

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def config(data_dir, *extra):
    overrides = [o for o in tiny_overrides(data_dir, data_dir) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", [*overrides, "name=test", *extra])


@pytest.mark.parametrize("model", ["tfidf_ridge", "readability"])
def test_a_classical_member_writes_a_normal_run_folder_on_the_same_folds(model, tmp_path):
    cfg = config(tmp_path / "data", f"model={model}", "cv.holdout=0.25")
    validate(cfg, check_files=False)
    metrics = run_cv(cfg, tmp_path / "run")
    run = tmp_path / "run"
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert metrics["cv"]["rmse"] == pytest.approx(np.sqrt(np.mean((oof["pred"] - oof["target"]) ** 2)))
    assert "rmse" in metrics["selection"] and len(pd.read_csv(run / "holdout.csv")) == 12
    for k in range(3):
        result = json.loads((run / f"fold_{k}" / "result.json").read_text())
        assert result["steps"] == 0 and (run / f"fold_{k}" / "model.joblib").is_file()
    # make predict: the bag of the persisted fold pipelines, equal to the run's own submission
    test_csv = tmp_path / "data" / "test.csv"
    pipes = [joblib.load(run / f"fold_{k}" / "model.joblib") for k in range(3)]
    texts = pd.read_csv(test_csv)["excerpt"].to_numpy(dtype=object)
    bagged = predict.predict_run(run, test_csv)["target"].to_numpy()
    np.testing.assert_allclose(bagged, np.mean([p.predict(texts) for p in pipes], axis=0))
    np.testing.assert_allclose(bagged, pd.read_csv(run / "submission.csv")["target"])


def test_a_classical_member_blends_with_a_transformer_run(tmp_path, capsys):
    run_cv(config(tmp_path / "data"), tmp_path / "tiny")
    run_cv(config(tmp_path / "data", "model=tfidf_ridge"), tmp_path / "tfidf")
    ensemble.main([str(tmp_path / "tiny"), str(tmp_path / "tfidf"), "--out", str(tmp_path / "blend"),
                   "--logger", "none"])
    weights = json.loads((tmp_path / "blend" / "weights.json").read_text())
    assert len(weights) == 2 and sum(weights.values()) == pytest.approx(1.0)
    assert "Ensemble folder" in capsys.readouterr().out


def test_a_classical_preset_refuses_unknown_estimator_keys_and_a_teacher(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.estimator.n_grams: not a key of this estimator \(known: "):
        validate(config(tmp_path, "model=tfidf_ridge", "+model.estimator.n_grams=3"), check_files=False)
    with pytest.raises(ConfigError, match=r"^distill.teacher=.*: model.kind=sklearn trains on the labels only"):
        validate(config(tmp_path, "model=tfidf_ridge", f"distill.teacher={tmp_path}"), check_files=False)


def test_readability_features_count_words_sentences_and_syllables():
    assert [syllables(w) for w in ("cat", "table", "reading", "phenomenon", "the", "make")] == [1, 2, 2, 4, 1, 1]
    (row,) = readability_features(["The cat sat. A phenomenon appeared!"])
    n_words, n_sent, wps = row[:3]
    assert (n_words, n_sent, wps) == (6, 2, 3.0)
    assert row[5] == pytest.approx(2 / 6)  # phenomenon (4) and appeared (3) have 3+ syllables
