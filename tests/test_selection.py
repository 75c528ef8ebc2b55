"""Selection policies and the holdout: an EMA and a SWA are their closed forms, scoring more policies changes nothing
in the training, a resumed fold keeps its averages, and no holdout row reaches any fold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import tiny_overrides
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.cv.prepare import prepare
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.data.folds import HOLDOUT, holdout_rows
from kfold_nlp.errors import DataError
from kfold_nlp.metrics import optimism
from kfold_nlp.train import selection
from test_trainer import TARGETS, fit, fit_with_snapshots

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def weights_sequence(t: int) -> list[dict]:
    torch.manual_seed(t)
    return [{"weight": torch.randn(2, 3), "bias": torch.randn(2)} for _ in range(t)]


def test_ema_of_a_toy_sequence_of_weights_equals_its_closed_form():
    """theta_T = d^(T-1) w_1 + sum_{t=2..T} (1 - d) d^(T-t) w_t: the first step's weights start the average."""
    d, seq = 0.9, weights_sequence(7)
    layer = torch.nn.Linear(3, 2)
    ema = selection.make("ema", layer, {"ema_decay": d}, planned=[])
    for w in seq:
        layer.load_state_dict(w)
        ema.stepped(layer)
    T = len(seq)
    for key in ("weight", "bias"):
        closed = d ** (T - 1) * seq[0][key] + sum((1 - d) * d ** (T - t) * seq[t - 1][key] for t in range(2, T + 1))
        torch.testing.assert_close(ema.final(layer)[key], closed, rtol=1e-6, atol=1e-6)


def test_swa_is_the_mean_of_the_weights_at_its_evaluations_only():
    seq = weights_sequence(6)
    layer = torch.nn.Linear(3, 2)
    swa = selection.make("swa", layer, {"swa_evals": 2}, planned=[2, 4, 6])
    for step, w in enumerate(seq, start=1):
        layer.load_state_dict(w)
        swa.stepped(layer)
        if step % 2 == 0:
            swa.evaluated(layer, step, 1.0, np.zeros(1), epoch_end=step == 6)
    for key in ("weight", "bias"):
        torch.testing.assert_close(swa.final(layer)[key], (seq[3][key] + seq[5][key]) / 2)


def test_a_fold_keeps_the_swa_of_the_weights_it_had_at_its_last_evaluations():
    """The real loop: 6 steps an epoch, 2 epochs, an evaluation every 2 steps; swa_evals=2 averages steps 10, 12."""
    seen = {}
    real = selection.Swa.evaluated

    def record(self, model, step, *args):
        seen[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(self, model, step, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(selection.Swa, "evaluated", record)
        _, result, _ = fit(12, 2, 1, "trainer.eval_every=2", "trainer.select=swa", "trainer.swa_evals=2")
    assert sorted(seen) == [2, 4, 6, 8, 10, 12]
    for key, value in result.best_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (seen[10][key] + seen[12][key]) / 2)


def test_scoring_more_policies_changes_neither_the_training_nor_the_kept_weights():
    updates, result, logged = fit(12, 2, 1, "trainer.eval_every=2")
    updates2, result2, logged2 = fit(12, 2, 1, "trainer.eval_every=2",
                                     "trainer.also_select=[best_epoch,last,ema,swa]")
    assert logged == logged2 and result.history == result2.history
    for name, value in updates.items():
        torch.testing.assert_close(updates2[name], value, atol=0, rtol=0)
    np.testing.assert_array_equal(result.val_pred, result2.val_pred)
    assert set(result2.selection) == {"best", "best_epoch", "last", "ema", "swa"}
    best = min(result.history, key=lambda h: h["val_mse"])
    assert (result.best_step, result.best_mse) == (best["step"], best["val_mse"])
    last = result2.selection["last"]
    assert (last["step"], last["val_mse"]) == (12, result2.history[-1]["val_mse"])
    epoch_ends = [h for h in result2.history if h["step"] in (6, 12)]
    assert result2.selection["best_epoch"]["val_mse"] == min(h["val_mse"] for h in epoch_ends)
    # an average is scored on the validation rows with its own weights, once the fold ends
    assert result2.selection["ema"]["val_mse"] == pytest.approx(float(np.mean(
        (result2.val_preds["ema"] - TARGETS) ** 2)))


@pytest.mark.parametrize("select", ["ema", "swa"])
def test_a_fold_continued_from_a_snapshot_keeps_its_average(select, tmp_path):
    """The average is part of the snapshot: killed after step 4 (mid-epoch 1), the fold ends bit for bit as one
    that was never interrupted."""
    extra = (f"trainer.select={select}", "trainer.also_select=[best,last]", "trainer.swa_evals=3")
    reference, _ = fit_with_snapshots(tmp_path / "reference", extra=extra)
    result, _ = fit_with_snapshots(tmp_path / "killed", 4, extra=extra)
    assert result.resumed_from == 4
    assert result.selection == reference.selection
    for key, value in reference.best_state.items():
        torch.testing.assert_close(result.best_state[key], value, atol=0, rtol=0)


def test_the_holdout_is_stratified_seeded_and_apart_from_every_fold(tmp_path):
    ids = pd.Series([f"r{i}" for i in range(200)])
    target = np.random.default_rng(0).normal(size=200)
    mask = holdout_rows(ids, target, 0.2, seed=42)
    assert mask.sum() == 40 and np.array_equal(mask, holdout_rows(ids, target, 0.2, seed=42))
    assert not np.array_equal(mask, holdout_rows(ids, target, 0.2, seed=1))
    assert abs(target[mask].mean() - target[~mask].mean()) < 0.15  # stratified on the binned target
    listed = tmp_path / "ids.csv"
    listed.write_text("id\nr3\nr7\n")
    assert list(ids[holdout_rows(ids, target, str(listed))]) == ["r3", "r7"]
    listed.write_text("r3\nnope\n")
    with pytest.raises(DataError, match=r"ids.csv: 1 holdout id\(s\) not in the train file \(first 'nope'\)$"):
        holdout_rows(ids, target, str(listed))


def config_for(data_dir: Path, *extra: str):
    overrides = [o for o in tiny_overrides(data_dir, data_dir) if not o.startswith("hydra.")]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", [*overrides, "name=test", "cv.holdout=0.25", *extra])


@pytest.fixture(scope="module")
def held_runs(tmp_path_factory):
    """A teacher with a holdout and a student distilled from it with pseudo-labels, both in this process."""
    from accelerate.state import AcceleratorState, GradientState

    base = tmp_path_factory.mktemp("held")
    runs = {}
    for name, extra in (("teacher", ["trainer.also_select=[last,ema]"]),
                        ("student", [f"distill.teacher={base / 'teacher'}", f"distill.unlabeled={base}/unlabeled.csv",
                                     "distill.weight=0.5"])):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        if name == "student":
            test = pd.read_csv(base / "test.csv")
            test.assign(id=[f"u{i}" for i in range(len(test))]).to_csv(base / "unlabeled.csv", index=False)
        runs[name] = (base / name, run_cv(config_for(base, *extra), base / name))
    return base, runs


def test_no_holdout_row_reaches_any_fold_of_a_run_or_its_student(held_runs):
    base, runs = held_runs
    for name, (run_dir, _) in runs.items():
        folds = pd.read_csv(run_dir / "folds.csv", dtype={"id": str})
        held = set(folds["id"][folds["fold"] == HOLDOUT])
        assert len(held) == 12  # 0.25 of 48
        for k in range(3):
            fdir = run_dir / f"fold_{k}"
            val = set(pd.read_csv(fdir / "oof.csv", dtype={"id": str})["id"])
            assert val == set(folds["id"][folds["fold"] == k]) and not val & held
            assert set(pd.read_csv(fdir / "holdout_pred.csv", dtype={"id": str})["id"]) == held
            if name == "student":  # every row fold k trained on, soft targets and pseudo-labels
                soft = pd.read_csv(fdir / "soft_targets.csv", dtype={"id": str})
                trained = set(soft["id"][soft["source"] == "train"])
                assert trained == set(folds["id"][~folds["fold"].isin([k, HOLDOUT])])
                assert not set(soft["id"]) & held
    teacher = pd.read_csv(runs["teacher"][0] / "folds.csv", dtype={"id": str})
    pd.testing.assert_frame_equal(pd.read_csv(runs["student"][0] / "folds.csv", dtype={"id": str}), teacher)
    oof = pd.read_csv(runs["teacher"][0] / "oof.csv", dtype={"id": str})
    assert len(oof) == 36 and not set(oof["id"]) & set(teacher["id"][teacher["fold"] == HOLDOUT])


def test_the_holdout_scores_are_those_of_the_run_files(held_runs):
    _, runs = held_runs
    run_dir, metrics = runs["teacher"]
    table = pd.read_csv(run_dir / "holdout.csv", dtype={"id": str})
    fold_preds = [pd.read_csv(run_dir / f"fold_{k}" / "holdout_pred.csv", dtype={"id": str}) for k in range(3)]
    np.testing.assert_allclose(table["pred"], np.mean([p["pred"] for p in fold_preds], axis=0))
    sel = metrics["selection"]
    # the selection block of metrics.json is rounded to 6 decimals; the files are not
    assert sel["rmse"] == pytest.approx(math.sqrt(np.mean((table["pred"] - table["target"]) ** 2)), abs=1e-6)
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"id": str}).set_index("id")
    gaps = []
    for k in range(3):
        val = pd.read_csv(run_dir / f"fold_{k}" / "oof.csv", dtype={"id": str})
        val_rmse = math.sqrt(np.mean((val["pred"].to_numpy() - folds.loc[val["id"], "target"].to_numpy()) ** 2))
        held_rmse = math.sqrt(np.mean((fold_preds[k]["pred"] - table["target"]) ** 2))
        assert sel["policies"]["best"]["folds"][str(k)] == pytest.approx({"val_rmse": val_rmse,
                                                                          "holdout_rmse": held_rmse}, abs=1e-6)
        result = json.loads((run_dir / f"fold_{k}" / "result.json").read_text())
        assert result["holdout_rmse"] == pytest.approx(held_rmse) and result["rmse"] == pytest.approx(val_rmse)
        gaps.append(held_rmse - val_rmse)
    o = sel["optimism"]
    assert o["mean"] == pytest.approx(np.mean(gaps), abs=1e-6) and o["lo"] <= o["mean"] <= o["hi"]
    assert set(sel["policies"]) == {"best", "last", "ema"}
    # what the choice adds: the optimism beyond that of the last weights, which choose nothing (paired)
    last = sel["policies"]["last"]
    choice = sel["choice_optimism"]
    assert choice["mean"] == pytest.approx(o["mean"] - last["optimism"]["mean"], abs=2e-6)
    assert choice["lo"] <= choice["hi"]
    assert "choice_optimism" not in last
    diff = sel["policies"]["ema"]["holdout_diff"]  # the bagged holdout RMSE of ema minus that of the run's own
    assert diff["mean"] == pytest.approx(sel["policies"]["ema"]["holdout_rmse"] - sel["rmse"], abs=2e-6)


def test_the_optimism_interval_is_zero_wide_for_a_model_equally_good_on_both_sets():
    rng = np.random.default_rng(0)
    target = rng.normal(size=40)
    val = {k: (target, target + 0.5) for k in range(3)}
    o = optimism(val, target, {k: target + 0.5 for k in range(3)})
    assert o["mean"] == pytest.approx(0.0) and o["lo"] == pytest.approx(0.0, abs=1e-9) and o["hi"] == pytest.approx(
        0.0, abs=1e-9)


def test_a_resume_with_another_holdout_is_refused_with_one_line(held_runs):
    base, runs = held_runs
    run_dir = runs["teacher"][0]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match=r"run_config.yaml: this run folder was started with another config; resume "
                                        r"it with the same overrides \(differing: cv.holdout\)$"):
        prepare(config_for(base, "cv.holdout=0.5", "trainer.also_select=[last,ema]", f"resume={run_dir}"),
                   run_dir, texts=False)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
