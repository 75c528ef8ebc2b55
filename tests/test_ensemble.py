"""kfold_nlp.analysis.ensemble on hand-made run folders (no training): refusals, weights, the nested score, the
submission, the output folder and its tracker run, and the notebook's ensemble section."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from conftest import ENV, cli, in_background, run_process
from fake_runs import rows, write_run
from kfold_nlp.analysis import ensemble, report, stats

METHODS = list(ensemble.METHODS)


def blend_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m kfold_nlp.analysis.ensemble`` in-process: (exit code, stdout, stderr)."""
    try:
        ensemble.main(["--wandb-mode", "disabled", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def two_runs(tmp_path):
    """Two members on the same 400 rows and 5 folds, with 12 test rows each."""
    f, rng = rows(400), np.random.default_rng(0)
    a = write_run(tmp_path / "a", f, f["target"] + rng.normal(0, 0.5, len(f)), rng.normal(size=12), name="baseline")
    b = write_run(tmp_path / "b", f, f["target"] + rng.normal(0, 0.6, len(f)), rng.normal(size=12), name="rdrop")
    return f, a, b


@pytest.mark.parametrize("change", ["other folds", "other rows", "other test ids", "no submission"])
def test_members_that_cannot_be_blended_are_refused_with_one_line(two_runs, tmp_path, capsys, change):
    f, a, _ = two_runs
    rng = np.random.default_rng(1)
    pred, test = f["target"] + rng.normal(0, 0.5, len(f)), rng.normal(size=12)
    if change == "other folds":  # the same rows, another cv.seed
        write_run(tmp_path / "c", f.assign(fold=rng.permutation(f["fold"].to_numpy())), pred, test)
    elif change == "other rows":
        write_run(tmp_path / "c", f.assign(id=f["id"] + "x"), pred, test)
    elif change == "other test ids":
        write_run(tmp_path / "c", f, pred, test, test_ids=[f"u{i}" for i in range(12)])
    else:
        write_run(tmp_path / "c", f, pred)
    out = tmp_path / "out"
    code, stdout, stderr = blend_cli(capsys, a, tmp_path / "c", "--out", out)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1 and str(tmp_path / "c") in stderr
    assert not out.exists()


@pytest.mark.slow
def test_refusal_from_the_command_line_has_no_traceback(two_runs, tmp_path):
    f, a, _ = two_runs
    write_run(tmp_path / "c", f.assign(fold=(f["fold"] + 1) % 5), f["target"], np.zeros(12))
    proc = cli("ensemble", a, tmp_path / "c", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "folds.csv differs" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", METHODS)
def test_a_run_blended_with_its_copy_is_the_run(two_runs, tmp_path, capsys, method):
    _, a, _ = two_runs
    copy = shutil.copytree(a, tmp_path / "a_copy")
    out = tmp_path / "out"
    assert blend_cli(capsys, a, copy, "--method", method, "--out", out)[0] == 0
    weights = json.loads((out / "weights.json").read_text())
    assert sum(weights.values()) == pytest.approx(1.0) and min(weights.values()) >= 0
    oof, run_oof = pd.read_csv(out / "oof.csv"), pd.read_csv(a / "oof.csv")
    assert np.allclose(oof["pred"], run_oof["pred"]) and np.allclose(oof["pred_in_sample"], run_oof["pred"])
    assert np.allclose(pd.read_csv(out / "submission.csv")["target"], pd.read_csv(a / "submission.csv")["target"])
    cv = json.loads((out / "metrics.json").read_text())["cv"]
    assert cv["rmse"] == pytest.approx(json.loads((a / "metrics.json").read_text())["cv"]["rmse"])
    assert cv["improvement_lo"] == pytest.approx(0, abs=1e-12) and cv["improvement_hi"] == pytest.approx(0, abs=1e-12)


def _mixture(n=2000, seed=0):
    """target = 0.7 a + 0.3 b + noise, for two independent prediction columns a, b, and a third column of noise."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(-1, 1, (3, n))
    target = 0.7 * a + 0.3 * b + rng.normal(0, 0.1, n)
    return np.column_stack([a, b, c]), target


@pytest.mark.parametrize("fit, tol", [(ensemble.nnls_weights, 0.01), (ensemble.greedy_weights, 0.03)])
def test_nnls_and_greedy_recover_the_weights_of_a_known_blend(fit, tol):
    preds, target = _mixture()
    w = fit(preds, target)
    assert w == pytest.approx([0.7, 0.3, 0.0], abs=tol) and w.sum() == pytest.approx(1.0) and (w >= 0).all()


def test_nnls_weights_are_the_best_convex_blend():
    """For two members the constrained optimum has a closed form: w = clip(<a - b, y - b> / |a - b|^2, 0, 1)."""
    for seed in range(5):
        preds, target = _mixture(seed=seed)
        for a, b in [(0, 1), (1, 2), (2, 0)]:
            d = preds[:, a] - preds[:, b]
            w = np.clip(d @ (target - preds[:, b]) / (d @ d), 0, 1)
            assert ensemble.nnls_weights(preds[:, [a, b]], target) == pytest.approx([w, 1 - w], abs=1e-6)


@pytest.mark.parametrize("method", ["nnls", "greedy"])
def test_nested_score_is_no_better_than_in_sample_on_noise_members(method):
    fit = ensemble.fitter(method)
    for seed in range(5):
        f = rows(500, seed=seed)
        target = f["target"].to_numpy()
        preds = np.random.default_rng(seed).normal(-1, 1, (len(f), 4))  # members that know nothing
        nested, _ = ensemble.nested_predictions(preds, target, f["fold"].to_numpy(), fit)
        in_sample = preds @ fit(preds, target)
        assert stats.rmse(target, nested) >= stats.rmse(target, in_sample)


@pytest.mark.parametrize("method", ["nnls", "greedy"])
def test_nested_weights_never_see_the_fold_they_score(method):
    """Changing fold 0's OOF rows leaves the weights that score fold 0 as they were, and moves the others."""
    fit, f = ensemble.fitter(method), rows(500)
    target, folds = f["target"].to_numpy(), f["fold"].to_numpy()
    rng = np.random.default_rng(0)
    preds = target[:, None] + rng.normal(0, [0.4, 0.6, 0.8], (len(f), 3))
    changed = preds.copy()
    changed[folds == 0] = target[folds == 0, None] + rng.normal(0, [0.9, 0.1, 0.9], ((folds == 0).sum(), 3))
    _, before = ensemble.nested_predictions(preds, target, folds, fit)
    _, after = ensemble.nested_predictions(changed, target, folds, fit)
    assert np.array_equal(before[0], after[0])
    assert all(not np.allclose(before[k], after[k]) for k in range(1, 5))


def test_blended_submission_is_the_weighted_mean_of_the_member_submissions(tmp_path, capsys):
    f, rng = rows(400), np.random.default_rng(2)
    test_ids = [f"t{i}" for i in range(12)]
    members = []
    for i, sd in enumerate([0.4, 0.5, 0.7]):
        members.append(write_run(tmp_path / f"m{i}", f, f["target"] + rng.normal(0, sd, len(f)), rng.normal(size=12),
                                 test_ids=test_ids[::-1] if i == 1 else test_ids, header=("excerpt_id", "score")))
    out = tmp_path / "out"
    assert blend_cli(capsys, *members, "--method", "nnls", "--out", out)[0] == 0
    weights = json.loads((out / "weights.json").read_text())
    folder = {n: m["folder"] for n, m in json.loads((out / "metrics.json").read_text())["members"].items()}
    sub = pd.read_csv(out / "submission.csv", dtype={"excerpt_id": str})
    assert sub.columns.tolist() == ["excerpt_id", "score"] and sub["excerpt_id"].tolist() == test_ids
    expected = sum(w * pd.read_csv(Path(folder[name]) / "submission.csv", dtype={"excerpt_id": str})
                   .set_index("excerpt_id").loc[test_ids, "score"].to_numpy() for name, w in weights.items())
    assert np.allclose(sub["score"], expected) and len(set(np.round(list(weights.values()), 6))) > 1


def test_ensemble_folder_records_scores_and_a_tracker_run(two_runs, tmp_path, capsys, monkeypatch, memory_runs):
    _, a, b = two_runs
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = blend_cli(capsys, "a", "b", "--method", "greedy", "--logger", "memory")
    assert code == 0
    (out,) = list((tmp_path / "outputs" / "ensemble").iterdir())
    assert f"Ensemble folder: {out.relative_to(tmp_path)}" in stdout
    m = json.loads((out / "metrics.json").read_text())
    oof = pd.read_csv(out / "oof.csv")
    assert m["cv"]["rmse"] == pytest.approx(stats.rmse(oof["target"], oof["pred"]))  # nested, from the file
    assert m["cv"]["rmse_in_sample"] == pytest.approx(stats.rmse(oof["target"], oof["pred_in_sample"]))
    for name, run in [("baseline", a), ("rdrop", b)]:  # members by run name
        run_rmse = json.loads((run / "metrics.json").read_text())["cv"]["rmse"]
        assert m["members"][name]["cv_rmse"] == pytest.approx(run_rmse) and m["members"][name]["folder"] == run.name
    assert m["members"]["baseline"]["weight"] == json.loads((out / "weights.json").read_text())["baseline"]
    (run,) = memory_runs
    assert (run.group, run.state, run.job_type, run.tags) == ("ensemble", "finished", "greedy", ["ensemble"])
    assert run.summary["cv/rmse"] == pytest.approx(m["cv"]["rmse"])
    assert run.config["weights"] == json.loads((out / "weights.json").read_text())
    assert run.tables["members"]["run"].tolist() == ["baseline", "rdrop"]
    assert ensemble.default_out(tmp_path / "outputs" / "ensemble") != out  # a second run gets its own folder


def test_sweep_and_ensemble_folders_expand_to_their_runs(two_runs, tmp_path, capsys):
    f, a, b = two_runs
    sweep = tmp_path / "sweep"
    shutil.copytree(a, sweep / "0")
    shutil.copytree(b, sweep / "1")
    assert blend_cli(capsys, sweep, "--out", tmp_path / "e1")[0] == 0
    assert list(json.loads((tmp_path / "e1" / "weights.json").read_text())) == ["baseline", "rdrop"]  # run names
    assert report.find_runs([tmp_path / "e1"]) == [sweep / "0", sweep / "1"]
    assert report.find_ensembles([tmp_path]) == [tmp_path / "e1"]


MEMBERS = """
import sys
from pathlib import Path
import numpy as np
from fake_runs import rows, write_run
folder, (f, rng) = Path(sys.argv[1]), (rows(400), np.random.default_rng(0))
write_run(folder / "a", f, f["target"] + rng.normal(0, 0.5, len(f)), rng.normal(size=12), name="baseline")
write_run(folder / "b", f, f["target"] + rng.normal(0, 0.6, len(f)), rng.normal(size=12), name="rdrop")
"""


@in_background
def reported_ensemble(folder: Path, data: Path) -> Path:
    """``two_runs``' members (written by a process of their own: writing a run's config composes it with Hydra,
    whose global is this process's main thread's), blended by the ensemble command, and the notebook run on the
    blend (papermill's kernel)."""
    subprocess.run([sys.executable, "-c", MEMBERS, str(folder)], cwd=Path(__file__).parent, env=ENV, check=True,
                   capture_output=True)
    run_process("ensemble", "--wandb-mode", "disabled", folder / "a", folder / "b", "--out", folder / "ens", env=ENV)
    run_process("report", folder / "ens", env=ENV)
    return folder / "ens"


@pytest.mark.process  # papermill's kernel
def test_notebook_shows_the_ensemble_folder(reported_ensemble):
    nb = nbformat.read(reported_ensemble / "oof_analysis.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = [o["data"].get("text/plain", "") + o["data"].get("text/markdown", "") for o in outputs if "data" in o]
    assert any("## Ensemble `ens`" in t for t in texts)
    assert any("nested" in t and "in-sample" in t for t in texts)
    members = next(t for t in texts if "weight w/o fold 0" in t)
    assert "baseline" in members and "rdrop" in members  # the members, by their run labels
    assert any("RMSE diff 95% low" in t for t in texts)  # the comparison of the members, with intervals


def _files(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(code, stdout, stderr) -> str:
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_out_over_a_run_folder_is_refused_and_leaves_it_byte_identical(two_runs, tmp_path, capsys):
    _, a, b = two_runs
    before = _files(a)
    line = _one_error_line(*blend_cli(capsys, a, b, "--out", a))
    assert line == f"error: --out {a}: exists and is not an ensemble folder (a run folder's results would be " \
                   f"overwritten); give a new folder"
    assert _files(a) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    _one_error_line(*blend_cli(capsys, a, b, "--out", tmp_path / "other"))
    assert _files(tmp_path / "other") == {Path("notes.txt"): b"mine"}
    # an ensemble folder written by this command may be rewritten, and an empty folder filled
    assert blend_cli(capsys, a, b, "--out", tmp_path / "ens")[0] == 0
    assert blend_cli(capsys, a, b, "--method", "mean", "--out", tmp_path / "ens")[0] == 0
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["method"] == "mean"
    (tmp_path / "empty").mkdir()
    assert blend_cli(capsys, a, b, "--out", tmp_path / "empty")[0] == 0


def test_a_weights_json_without_members_is_no_ensemble_and_is_refused_with_one_line(two_runs, tmp_path, capsys):
    _, a, _ = two_runs
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "weights.json").write_text(json.dumps({"x": 1.0}))
    (odd / "metrics.json").write_text(json.dumps({"cv": {"rmse": 1.0}}))
    assert not report.is_ensemble(odd)
    line = _one_error_line(*blend_cli(capsys, a, odd, "--out", tmp_path / "out"))
    assert line == f"error: {odd}: no folds.csv (not a finished run folder)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["oof.csv", "submission.csv"])
@pytest.mark.parametrize("value", ["", "nan", "inf"])
def test_a_blank_or_non_finite_member_prediction_is_refused_naming_the_file(two_runs, tmp_path, capsys, name, value):
    _, a, b = two_runs
    table = pd.read_csv(b / name, dtype=str)
    table.iloc[3, table.columns.get_loc("pred" if name == "oof.csv" else "target")] = value
    table.to_csv(b / name, index=False)
    line = _one_error_line(*blend_cli(capsys, a, b, "--out", tmp_path / "out"))
    assert line.startswith(f"error: {b / name}: 1 blank or non-finite prediction(s), first at data row 4")
    assert not (tmp_path / "out").exists()


def test_the_report_line_says_improvement_with_its_sign_and_names_members_by_run_name(tmp_path, capsys):
    f, rng = rows(400), np.random.default_rng(3)
    sweep = tmp_path / "sweep"  # folders named like a sweep's jobs: 0, 1, 2
    for job, (name, sd) in enumerate([("baseline", 0.5), ("rdrop", 0.55), ("msd", 0.6)]):
        write_run(sweep / str(job), f, f["target"] + rng.normal(0, sd, len(f)), rng.normal(size=12), name=name)
    code, stdout, _ = blend_cli(capsys, sweep, "--out", tmp_path / "out")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    c = m["cv"]
    assert code == 0 and list(m["members"]) == ["baseline", "rdrop", "msd"] and c["best_member"] == "baseline"
    assert c["improvement_vs_best_member"] == pytest.approx(c["best_member_rmse"] - c["rmse"])  # positive: better
    assert (c["improvement_vs_best_member"] > 0) == (c["rmse"] < c["best_member_rmse"])
    for d in m["members"].values():
        assert d["improvement"] == pytest.approx(d["cv_rmse"] - c["rmse"])
        assert d["improvement_lo"] <= d["improvement_hi"]
    line = stdout.strip().splitlines()[-1]
    assert f"best member baseline {c['best_member_rmse']:.4f}: improvement {c['improvement_vs_best_member']:+.4f}" \
        in line and "positive, the blend is better" in line
    table = stdout.split("Ensemble folder:")[0]
    assert "baseline" in table and "msd" in table and str(sweep) not in table and "nan" not in table.lower()


def test_a_blend_worse_than_its_best_member_shows_a_negative_improvement():
    f = rows(400)
    rng = np.random.default_rng(4)
    good, bad = f["target"] + rng.normal(0, 0.1, len(f)), f["target"] + rng.normal(0, 1.0, len(f))
    members = ensemble.Members(["good", "bad"], [Path("good"), Path("bad")], f, np.column_stack([good, bad]))
    c = ensemble.blend(members, "mean")["metrics"]["cv"]
    assert c["rmse"] > c["best_member_rmse"] and c["improvement_vs_best_member"] < 0 < -c["improvement_hi"]
    assert ensemble.improvement_marked(c)


def test_an_ensemble_folder_from_before_improvement_is_read_in_todays_terms(two_runs, tmp_path, capsys):
    """Its metrics.json had ``gain`` (blend minus member): the notebook shows it as today's improvement (member minus
    blend), the interval flipped, not a KeyError."""
    _, a, b = two_runs
    out = tmp_path / "out"
    assert blend_cli(capsys, a, b, "--out", out)[0] == 0
    now = report.ensemble_scores(out)
    metrics = json.loads((out / "metrics.json").read_text())
    for record, key in [(metrics["cv"], "gain_vs_best_member"), *((m, "gain") for m in metrics["members"].values())]:
        new = "improvement_vs_best_member" if key.endswith("member") else "improvement"
        record[key], record["gain_excludes_zero"] = -record.pop(new), record.pop("improvement_excludes_zero")
        record["gain_lo"], record["gain_hi"] = -record.pop("improvement_hi"), -record.pop("improvement_lo")
    (out / "metrics.json").write_text(json.dumps(metrics))
    pd.testing.assert_series_equal(report.ensemble_scores(out), now)
    assert report.ensemble_members(out)["improvement"].notna().all()


def test_bagged_weights_without_a_spread_are_nnls():
    preds, target = _mixture()
    np.testing.assert_allclose(ensemble.bagged_weights(preds, target, np.zeros((3, 3))),
                               ensemble.nnls_weights(preds, target), atol=1e-6)
    np.testing.assert_allclose(ensemble.bagged_weights(preds, target, None), ensemble.nnls_weights(preds, target))


def test_bagged_weights_are_the_best_blend_of_the_bags_that_nnls_on_oof_rows_misses(tmp_path):
    """Two members with independent, equally large errors of their ideal (infinite) bags, but the first one's 5 fold
    models scatter widely around it and the second's hardly at all. An OOF row is scored by one fold model, a test
    row by the bag of 5, so the best blend of the bags gives the first member more weight than NNLS on OOF rows
    does; removing the fold models' spread, measured on unlabeled rows every fold model predicted, recovers it."""
    rng, n, k = np.random.default_rng(0), 4000, 5
    f = rows(n).assign(fold=lambda d: np.arange(n) % k)
    target = f["target"].to_numpy()
    ideal = target[:, None] + rng.normal(0, 0.3, (n, 2))
    scatter = np.array([0.4, 0.02])
    oof = ideal + rng.normal(0, 1, (n, 2)) * scatter  # one fold model's prediction per row
    bagged = ideal + rng.normal(0, 1, (n, 2)) * scatter / np.sqrt(k)  # the bag of k on the same rows
    test_ideal = rng.normal(0, 1, (300, 2))
    paths = []
    for j, name in enumerate(["wide", "narrow"]):
        path = write_run(tmp_path / name, f, oof[:, j], test_ideal[:, j], name=name)
        for fold in range(k):  # the fold models' own test predictions, as scattered as on the OOF rows
            pd.DataFrame({"id": [f"t{i:04d}" for i in range(300)],
                          "pred": test_ideal[:, j] + rng.normal(0, scatter[j], 300)}).to_csv(
                path / f"fold_{fold}" / "test_pred.csv", index=False)
        paths.append(path)
    members = ensemble.load_members(paths)
    assert members.spread[0, 0] == pytest.approx(scatter[0] ** 2 * (k - 1) / k, rel=0.1)
    oracle = ensemble.nnls_weights(bagged, target)  # 0.09 / (0.09 + 0.09 + 0.16 / 5) expected for the first
    assert oracle[0] > 0.4 and ensemble.nnls_weights(members.oof, target)[0] < 0.3  # 0.09 / (0.09 + 0.25)
    np.testing.assert_allclose(ensemble.bagged_weights(members.oof, target, members.spread), oracle, atol=0.03)
