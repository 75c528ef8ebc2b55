"""Self-distillation and pseudo-labels: fold k learns only from the teacher's fold-k model (no leakage), pseudo-labels
reach only their own fold's training rows, and every refusal is one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from accelerate.state import AcceleratorState, GradientState
from hydra import compose, initialize_config_dir

from conftest import cli, tiny_overrides
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.config.schema import ConfigError, validate
from kfold_nlp.cv import distill
from kfold_nlp.cv import fold as cv_fold
from kfold_nlp.cv.app import check_config
from kfold_nlp.cv.prepare import prepare
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.errors import DataError

pytestmark = pytest.mark.slow  # every test here needs the tiny run of the CLI (see tests/test_tiers.py)

WEIGHT = 0.3


def config(tiny_run: Path, *extra: str):
    """The teacher's own data and folds (tiny_run), as a student that distills from it."""
    overrides = [o for o in tiny_overrides(tiny_run.parent / "data", tiny_run) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", [*overrides, "name=test", f"distill.teacher={tiny_run}", *extra])


@pytest.fixture(scope="module")
def unlabeled(tiny_run, tmp_path_factory) -> Path:
    """Six new texts (the tiny set's test file): id and excerpt, no target."""
    path = tmp_path_factory.mktemp("unlabeled") / "unlabeled.csv"
    shutil.copy(tiny_run.parent / "data" / "test.csv", path)
    return path


@pytest.fixture(scope="module")
def spied_run(tiny_run, unlabeled, tmp_path_factory):
    """A 3-fold student run in process, recording every teacher prediction and every loader's rows."""
    calls, datasets = [], []
    real_predict, real_loader = distill.predict_texts, cv_fold.make_loader

    def spy(cfg, models, texts, *args, **kwargs):
        out = real_predict(cfg, models, texts, *args, **kwargs)
        calls.append({"models": list(models), "texts": list(texts), "pred": out[0].copy()})
        return out

    def loader(dataset, *args, **kwargs):
        datasets.append(dataset)
        return real_loader(dataset, *args, **kwargs)

    AcceleratorState._reset_state(True)  # accelerate's state is process-wide: start from none, as a real run does
    GradientState._reset_state()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill, "predict_texts", spy)
        mp.setattr(cv_fold, "make_loader", loader)
        run_dir = tmp_path_factory.mktemp("student") / "run"
        run_cv(config(tiny_run, f"distill.weight={WEIGHT}", f"distill.unlabeled={unlabeled}"), run_dir)
    return {"calls": calls, "train": datasets[0::3], "val": datasets[1::3], "run_dir": run_dir}


def test_no_soft_target_of_fold_k_comes_from_a_model_that_saw_fold_k_validation_rows(spied_run, tiny_run, tiny_train):
    teacher_folds = pd.read_csv(tiny_run / "folds.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(pd.read_csv(spied_run["run_dir"] / "folds.csv", dtype={"id": str}), teacher_folds)
    oof = pd.read_csv(tiny_run / "oof.csv", dtype={"id": str}).set_index("id")
    fold_of = teacher_folds["fold"].to_numpy()
    y = tiny_train["target"].to_numpy()
    assert len(spied_run["calls"]) == 3
    for k, call in enumerate(spied_run["calls"]):
        # The one model that produced fold k's soft targets is the teacher's fold-k model ...
        (model,) = call["models"]
        assert model == tiny_run / f"fold_{k}" / "model.safetensors"
        producer = int(model.parent.name.removeprefix("fold_"))
        # ... which trained on the teacher's rows outside fold `producer`: none of fold k's validation rows.
        val_ids = set(teacher_folds["id"][fold_of == k])
        assert set(teacher_folds["id"][fold_of != producer]).isdisjoint(val_ids)
        tr = np.flatnonzero(fold_of != k)
        assert call["texts"][:len(tr)] == list(tiny_train["excerpt"].iloc[tr])  # fold k's training rows, in order
        assert set(call["texts"]).isdisjoint(tiny_train["excerpt"][fold_of == k])  # never a validation text
        soft = call["pred"][:len(tr)]
        # Fold k trained on exactly these targets; its validation kept the true labels.
        rows = spied_run["train"][k]
        assert np.array_equal(rows.rows[:len(tr)], tr)
        np.testing.assert_allclose(rows.targets[tr], (1 - WEIGHT) * y[tr] + WEIGHT * soft)
        val = spied_run["val"][k]
        assert np.array_equal(val.rows, np.flatnonzero(fold_of == k))
        assert np.array_equal(val.targets[val.rows], y[val.rows])
        # The leaky alternative differs: the teacher's OOF predictions of these rows came from other fold models.
        assert not np.allclose(soft, oof.loc[tiny_train["id"].iloc[tr], "pred"].to_numpy(), atol=1e-4)
        # The run folder's record says the same.
        record = pd.read_csv(spied_run["run_dir"] / f"fold_{k}" / "soft_targets.csv", dtype={"id": str})
        assert set(record["teacher_model"]) == {str(model)}
        trained = record[record["source"] == "train"]
        assert trained["id"].tolist() == tiny_train["id"].iloc[tr].tolist()
        assert set(record["id"]).isdisjoint(val_ids)
        np.testing.assert_allclose(trained["soft"], soft)


def test_pseudo_labels_reach_only_their_own_folds_training_rows(spied_run, unlabeled, tiny_train):
    texts = pd.read_csv(unlabeled, dtype={"id": str})["excerpt"].tolist()
    n = len(tiny_train)
    pseudo = []
    for k, call in enumerate(spied_run["calls"]):
        assert call["texts"][-len(texts):] == texts
        rows = spied_run["train"][k]
        extra = rows.rows[rows.rows >= n]
        assert len(extra) == len(texts)
        labels = call["pred"][-len(texts):]  # the fold-k teacher model's predictions
        np.testing.assert_allclose(rows.targets[extra], labels)
        assert [rows.encodings["input_ids"][i] for i in extra] == [rows.encodings["input_ids"][n + i]
                                                                   for i in range(len(texts))]
        assert (spied_run["val"][k].rows < n).all()  # validation never sees them
        pseudo.append(labels)
    assert not np.allclose(pseudo[0], pseudo[1]) and not np.allclose(pseudo[1], pseudo[2])  # each fold its own
    oof = pd.read_csv(spied_run["run_dir"] / "oof.csv")
    assert len(oof) == n and list(oof.columns) == ["id", "fold", "target", "pred"]  # outputs unchanged in format


def test_weight_0_through_the_cli_is_exactly_the_run_without_a_teacher(tiny_run, tmp_path):
    """``distill.teacher`` end to end: with weight 0 the student is the teacher-less run (the teacher's random
    init does not shift the student's random stream), so only the mixed target can change a result."""
    run_dir = tmp_path / "run"
    cli("cv", *tiny_overrides(tiny_run.parent / "data", run_dir), f"distill.teacher={tiny_run}", "distill.weight=0",
        "cv.folds=[0]")
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "fold_0" / "oof.csv"),
                                  pd.read_csv(tiny_run / "fold_0" / "oof.csv"))
    record = pd.read_csv(run_dir / "fold_0" / "soft_targets.csv")
    np.testing.assert_allclose(record["target"], record["label"])


def test_unlabeled_through_the_cli_adds_fold_k_pseudo_labels(tiny_run, unlabeled, tmp_path):
    run_dir = tmp_path / "run"
    cli("cv", *tiny_overrides(tiny_run.parent / "data", run_dir), f"distill.teacher={tiny_run}",
        f"distill.unlabeled={unlabeled}", "cv.folds=[1]")
    record = pd.read_csv(run_dir / "fold_1" / "soft_targets.csv", dtype={"id": str})
    pseudo = record[record["source"] == "unlabeled"]
    assert pseudo["id"].tolist() == pd.read_csv(unlabeled, dtype={"id": str})["id"].tolist()
    assert set(record["teacher_model"]) == {str(tiny_run / "fold_1" / "model.safetensors")}
    np.testing.assert_allclose(pseudo["target"], pseudo["soft"])
    assert (run_dir / "submission.csv").exists()


def test_a_teacher_with_other_folds_is_refused_before_anything_is_written(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"folds.csv: differs from this run's folds") as info:
        prepare(config(tiny_run, "cv.seed=7"), run_dir)
    assert "\n" not in str(info.value)
    assert not run_dir.exists()


def test_missing_teacher_folds_and_models_and_reused_ids_are_refused(tiny_run, tiny_train, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for name in ("folds.csv", "run_config.yaml"):
        shutil.copy(tiny_run / name, teacher / name)
    with pytest.raises(DataError, match=r"fold_0/result.json: not found; the teacher's fold 0 did not finish"):
        prepare(config(tiny_run, f"distill.teacher={teacher}"), tmp_path / "run")
    for k in range(3):
        (teacher / f"fold_{k}").mkdir()
        shutil.copy(tiny_run / f"fold_{k}" / "result.json", teacher / f"fold_{k}" / "result.json")
    with pytest.raises(DataError, match=r"fold_0/model.safetensors: not found"):
        prepare(config(tiny_run, f"distill.teacher={teacher}"), tmp_path / "run")
    reused = tmp_path / "reused.csv"
    tiny_train[["id", "excerpt"]].head(3).to_csv(reused, index=False)
    with pytest.raises(DataError, match=r"3 id\(s\) also in the train file"):
        prepare(config(tiny_run, f"distill.unlabeled={reused}"), tmp_path / "run")


@pytest.mark.parametrize("overrides, message", [
    (["distill.teacher=null", "distill.unlabeled=u.csv"], "distill.unlabeled=u.csv: needs distill.teacher"),
    (["distill.unlabeled=u.csv", "task=gaussian"], "distill.unlabeled=u.csv: unlabeled rows have no standard_error"),
    (["distill.weight=1.5"], "distill.weight=1.5: must be a number >= 0 and <= 1"),
])
def test_distill_config_is_checked(tiny_run, overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        validate(config(tiny_run, *overrides), check_files=False)


def test_a_teacher_that_is_not_a_run_folder_is_refused(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"distill.teacher=.*: not a run folder"):
        check_config(config(tiny_run, f"distill.teacher={tmp_path}"))


def test_a_teacher_trained_on_other_texts_with_the_same_ids_and_folds_is_refused(tiny_run, tiny_train, tmp_path):
    """Same ids and targets (so the same folds), other texts: its soft targets would be another task's."""
    data = tmp_path / "data"
    data.mkdir()
    tiny_train.assign(excerpt="Other words. " + tiny_train["excerpt"]).to_csv(data / "train.csv", index=False)
    shutil.copy(tiny_run.parent / "data" / "test.csv", data / "test.csv")
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"fingerprint.json: distill.teacher was trained on another train file "
                                        r"\(texts differ\); use a teacher run on .*train.csv as it is now$"):
        prepare(config(tiny_run, f"data.path={data}/train.csv", f"data.test_path={data}/test.csv"), run_dir)
    assert not run_dir.exists()


@pytest.mark.parametrize("fault, message", [
    ("truncated model", r"fold_1/model.safetensors: unreadable \(Error while deserializing header: .*\); retrain "
                        r"that fold"),
    ("foreign fold", r"fold_1/result.json: this fold was trained on another config than .*teacher; retrain it"),
])
def test_a_damaged_or_foreign_teacher_fold_is_refused_before_any_fold_trains(fault, message, tiny_run, tmp_path):
    teacher, run_dir = tmp_path / "teacher", tmp_path / "run"
    shutil.copytree(tiny_run, teacher, ignore=shutil.ignore_patterns("wandb"))
    fold = teacher / "fold_1"
    if fault == "truncated model":
        model = fold / "model.safetensors"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:  # the record of a fold trained under another config, as a fold copied in from another run carries
        result = json.loads((fold / "result.json").read_text())
        result["made_from"]["config"] = "0" * 16
        (fold / "result.json").write_text(json.dumps(result))
    with pytest.raises(DataError, match=message):
        prepare(config(tiny_run, f"distill.teacher={teacher}"), run_dir)
    assert not run_dir.exists()
