"""What the bundle's script and ``make predict`` accept, refuse and write, alike: one input check (``bundle/inputs.py``)
with the same lines, one definition of a finished fold, the run lock, one file per choice of models, the exit codes
of the README (2 bad input, 75 the machine), a classical bundle that needs neither this package nor torch, and the
selection block and last line of a run that scores several policies."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import Result, cli, copy_run, fresh_process, tiny_overrides
from kfold_nlp import metrics, predict
from kfold_nlp.bundle import export

pytestmark = pytest.mark.slow  # whole CV runs, then their bundles (see tests/test_tiers.py)

BUNDLE_MODULES = ("kfold_regressor", "kfold_inputs", "kfold_features")  # what a bundle's script imports from itself


def run_bundle(bundle: Path, *args) -> Result:
    """``python infer.py ARGS`` in this process (``runpy``, as a script runs): its exit status and output."""
    script = bundle / "infer.py"
    out, err, path = io.StringIO(), io.StringIO(), sys.path[:]
    with fresh_process(bundle.parent), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [str(script), *map(str, args)]
        try:
            runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        finally:
            sys.path[:] = path
            for name in BUNDLE_MODULES:
                sys.modules.pop(name, None)
    return Result([str(script), *map(str, args)], code, out.getvalue(), err.getvalue())


def error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporaries a write would leave half-made (``.<name>.<random>.tmp``)."""
    return sorted(p.name for p in folder.glob(".*.tmp")) if folder.is_dir() else []


def classical_run(base: Path, data: Path, model: str) -> Path:
    overrides = [o for o in tiny_overrides(data, base / model) if not o.startswith("model=")]
    cli("cv", *overrides, f"model={model}")
    return base / model


@pytest.fixture(scope="module")
def readability(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """A ``model=readability`` run (the features of this package's own code) on the tiny set, and its bundle."""
    base = tmp_path_factory.mktemp("readability")
    run = classical_run(base, tiny_data, "readability")
    return run, export.export_run(run, base / "bundle")["out"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_run) -> Path:
    return export.export_run(tiny_run, tmp_path_factory.mktemp("tiny-bundle") / "bundle")["out"]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_INPUTS = {  # case -> (file contents, what the one line says after the path)
    "empty": (b"", "file is empty (no header, no rows)"),
    "header_only": (b"id,excerpt\n", "0 rows but at least 1 are needed"),
    "no_text_column": (b"id,body\na,Some text.\n", "missing column(s) 'excerpt'; columns found: 'id', 'body'"),
    "duplicated_id": (b"id,excerpt\na,One.\na,Two.\n", "1 duplicated 'id' value(s); first 'a' at data rows [1, 2]"),
    "empty_id": (b"id,excerpt\na,One.\n,Two.\n", "empty 'id' in 1 row(s); first at data row 2"),
    "not_utf8": (b"id,excerpt\na,caf\xe9\n", "cannot parse as CSV"),
    "extra_field": (b"id,excerpt\na,One.,extra\nb,Two.\n", "cannot parse as CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_the_bundle_and_make_predict_refuse_a_bad_input_with_the_same_line(case, readability, tmp_path):
    run, bundle = readability
    data, says = BAD_INPUTS[case]
    bad = write(tmp_path / f"{case}.csv", data)
    script = run_bundle(bundle, bad, "--out", tmp_path / "out" / "s.csv")
    made = cli("predict", run, bad, "--out", tmp_path / "out" / "p.csv", check=False)
    assert script.returncode == made.returncode == 2
    line = error_line(script)
    assert line == error_line(made) and line.startswith(f"error: {bad}: {says}"), (line, made.stderr)
    assert not (tmp_path / "out").exists() and not (run / "predictions").exists()


def test_a_header_only_csv_is_one_line_from_a_transformer_bundle_too(tiny_bundle, tmp_path):
    """The tokenizer of an empty batch raised an IndexError: the input is refused before any model is built."""
    bad = write(tmp_path / "header.csv", b"id,excerpt\n")
    proc = run_bundle(tiny_bundle, bad, "--out", tmp_path / "s.csv")
    assert proc.returncode == 2 and error_line(proc) == (f"error: {bad}: 0 rows but at least 1 are needed (a header "
                                                         f"and no rows)")
    assert not (tmp_path / "s.csv").exists()


def test_a_blank_text_is_predicted_by_both_with_the_same_note(readability, tiny_run, tiny_bundle, tmp_path):
    """Offline, a refused row loses the whole submission: both predict a blank text and say so in one note."""
    run, bundle = readability
    texts = write(tmp_path / "blank.csv", b"id,excerpt\na,A plain sentence here.\nb,\nc,   \n")
    script = run_bundle(bundle, texts, "--out", tmp_path / "s.csv")
    made = cli("predict", run, texts, "--out", tmp_path / "p.csv")
    note = (f"note: {texts}: 2 blank 'excerpt' text(s) (empty or whitespace only), first at data row 2 (id 'b'): "
            f"predicted as empty texts")
    assert script.returncode == 0 and note in script.stderr.splitlines() and note in made.stderr.splitlines()
    got, expected = pd.read_csv(tmp_path / "s.csv"), pd.read_csv(tmp_path / "p.csv")
    assert got["id"].tolist() == ["a", "b", "c"] and np.isfinite(got["target"]).all()
    np.testing.assert_allclose(got["target"], expected["target"], rtol=0, atol=1e-12)

    proc = run_bundle(tiny_bundle, texts, "--out", tmp_path / "t.csv")  # a transformer's tokenizer too
    assert proc.returncode == 0 and note in proc.stderr.splitlines(), proc.stderr
    assert np.isfinite(pd.read_csv(tmp_path / "t.csv")["target"]).all()


def test_out_into_a_new_folder_is_made_and_a_file_in_the_way_is_exit_75(readability, tiny_data, tmp_path):
    run, bundle = readability
    test_csv = tiny_data / "test.csv"
    assert run_bundle(bundle, test_csv, "--out", tmp_path / "new" / "deeper" / "s.csv").returncode == 0
    assert (tmp_path / "new" / "deeper" / "s.csv").is_file()

    blocker = write(tmp_path / "blocker", b"a file, not a folder\n")
    for proc in (run_bundle(bundle, test_csv, "--out", blocker / "s.csv"),
                 cli("predict", run, test_csv, "--out", blocker / "p.csv", check=False)):
        assert proc.returncode == 75
        assert error_line(proc).startswith(f"error: {blocker}: a file is in the way (a folder is needed there); ")
    assert blocker.read_bytes() == b"a file, not a folder\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["the_input", "a_folder"])
def test_out_that_is_the_input_or_a_folder_is_refused_by_both(where, readability, tmp_path):
    run, bundle = readability
    source = write(tmp_path / "in.csv", b"id,excerpt\na,Some text.\n")
    out = source if where == "the_input" else tmp_path
    says = "is the input file; give another file to write" if where == "the_input" else \
        "is a folder; give a file name to write"
    for proc in (run_bundle(bundle, source, "--out", out), cli("predict", run, source, "--out", out, check=False)):
        assert proc.returncode == 2 and error_line(proc) == f"error: {out}: {says}"
    assert source.read_bytes() == b"id,excerpt\na,Some text.\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", [b'{"files": {', b"[]\n", b'{"files": []}\n'])
def test_a_damaged_manifest_is_one_line_exit_2(damage, readability, tmp_path):
    import shutil

    bundle = Path(shutil.copytree(readability[1], tmp_path / "bundle"))
    write(bundle / "manifest.json", damage)
    proc = run_bundle(bundle, tmp_path / "any.csv", "--out", tmp_path / "s.csv")
    assert proc.returncode == 2 and error_line(proc).startswith(f"error: {bundle / 'manifest.json'}: ")
    assert error_line(proc).endswith("export the run again") and not (tmp_path / "s.csv").exists()


def test_a_readability_bundle_carries_its_feature_code_and_predicts_as_make_predict(readability, tiny_data, tmp_path):
    run, bundle = readability
    assert (bundle / "kfold_features.py").is_file() and (bundle / "kfold_inputs.py").is_file()
    for model in bundle.glob("*.joblib"):  # unpickled by module name: none of this package's
        assert b"kfold_nlp" not in model.read_bytes() and b"kfold_features" in model.read_bytes()
    proc = run_bundle(bundle, tiny_data / "test.csv", "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s.csv")["target"],
                                  predict.predict_run(run, tiny_data / "test.csv")["target"])


# ---------------------------------------------------------------- without the environment (python -S)

RUNNER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


PROJECT = ("hydra", "omegaconf", "wandb", "kfold_nlp", "kfold-nlp", "__editable__")  # never on a competition image


def bare_site(folder: Path, *without: str) -> Path:
    """A site-packages folder of links to this environment's packages, less this project's own (kfold_nlp, Hydra,
    OmegaConf, W&B) and ``without`` (``python -S`` then sees no other)."""
    import site

    folder.mkdir()
    for real in site.getsitepackages():
        for entry in Path(real).iterdir():
            name = entry.name.lower()
            if entry.suffix == ".pth" or name.startswith(PROJECT) or any(
                    name == x or name.startswith((f"{x}-", f"{x}.")) for x in without):
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def run_script(site_dir: Path, bundle: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-c", RUNNER, str(site_dir), str(bundle / "infer.py"),
                           *map(str, args)], capture_output=True, text=True, timeout=600, cwd=bundle.parent)


@pytest.mark.process  # python -S over a site-packages without this package, then without scikit-learn
def test_a_readability_bundle_runs_without_this_package_and_names_the_libraries_it_lacks(readability, tiny_data,
                                                                                         tmp_path):
    run, bundle = readability
    proc = run_script(bare_site(tmp_path / "site"), bundle, tiny_data / "test.csv", "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "s.csv")["target"],
                                  predict.predict_run(run, tiny_data / "test.csv")["target"])

    bare = bare_site(tmp_path / "no-sklearn", "sklearn", "scikit_learn", "joblib")
    proc = run_script(bare, bundle, tiny_data / "test.csv", "--out", tmp_path / "t.csv")
    assert proc.returncode == 75 and error_line(proc).startswith("error: this bundle needs scikit-learn, joblib, "
                                                                 "which "), proc.stderr
    assert not (tmp_path / "t.csv").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- the run folder: finished folds, lock, file names


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_run_with_an_unfinished_fold_is_refused_naming_it_and_the_resume(command, tiny_run, tmp_path):
    """A kill between a fold's model and its result.json: the model is there, the fold is not finished."""
    run = copy_run(tiny_run, tmp_path / "run", models=True)
    (run / "fold_1" / "result.json").unlink()
    out = ["--out", tmp_path / "bundle"] if command == "export" else []
    proc = cli(command, run, *out, check=False)
    assert proc.returncode == 2 and error_line(proc) == (
        f"error: {run}: fold(s) 1 not finished (no fold_<k>/result.json); the bag needs every fold: train them with "
        f"RESUME={run}")
    assert not (run / "predictions").exists() and not (tmp_path / "bundle").exists() and leftovers(tmp_path) == []


def test_predict_into_a_run_another_process_writes_is_refused_and_writes_nothing(tiny_run, tmp_path):
    from filelock import FileLock

    run = copy_run(tiny_run, tmp_path / "run", models=True)
    other = FileLock(run / ".lock", timeout=0)  # another open file: to this process, another writer
    other.acquire()
    try:
        proc = cli("predict", run, check=False)
    finally:
        other.release()
    assert proc.returncode == 2 and "is writing this run folder; wait for it or stop it" in error_line(proc)
    assert not (run / "predictions").exists()
    cli("predict", run)
    assert (run / "predictions" / "test.csv").is_file() and not (run / ".lock.pid").exists()


def test_each_choice_of_models_has_its_own_predictions_file(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run", models=True)
    cli("refit", run)
    files = {}
    for models in ("folds", "refit", "all"):
        proc = cli("predict", run, "--models", models)
        files[models] = run / "predictions" / ("test.csv" if models == "folds" else f"test-{models}.csv")
        assert f"to {files[models]}" in proc.stdout
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["test-all.csv", "test-refit.csv", "test.csv"]
    assert len({files[m].read_bytes() for m in files}) == 3


def test_an_ensemble_bundle_leaves_out_members_of_weight_0_and_its_folders_are_readable(readability, tiny_run,
                                                                                        tiny_data, tmp_path):
    from kfold_nlp.analysis import ensemble

    run, _ = readability
    ensemble.main([str(tiny_run), str(run), "--method", "nnls", "--out", str(tmp_path / "blend"), "--logger", "none"])
    weights = json.loads((tmp_path / "blend" / "weights.json").read_text())
    assert sorted(weights.values()) == [0.0, 1.0], weights  # the tiny transformer adds nothing to readability
    summary = export.export_ensemble(tmp_path / "blend", tmp_path / "bundle")
    settings = json.loads((summary["out"] / "settings.json").read_text())
    assert [m["weight"] for m in settings["members"]] == [1.0] and len(settings["left_out"]) == 1
    assert summary["models"] == 3 and "torch" not in json.loads((summary["out"] / "manifest.json").read_text())[
        "versions"]
    umask = os.umask(0)
    os.umask(umask)
    for folder in [summary["out"], *(p for p in summary["out"].rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
    proc = run_bundle(summary["out"], tiny_data / "test.csv", "--out", tmp_path / "s.csv")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(pd.read_csv(tmp_path / "s.csv")["target"],
                               pd.read_csv(tmp_path / "blend" / "submission.csv")["target"], atol=1e-12)


@pytest.mark.parametrize("command", ["predict", "export", "collect", "ensemble"])
def test_each_commands_help_shows_its_own_usage(command):
    proc = cli(command, "--help")
    assert proc.stdout.startswith(f"usage: kfold-nlp {command} ") and "`" not in proc.stdout, proc.stdout[:300]


# ---------------------------------------------------------------- several selection policies


def test_the_last_line_names_every_scored_policy_without_a_holdout(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = cli("cv", *tiny_overrides(tiny_data, run), "trainer.also_select=[last,ema]")
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Run folder: "))
    sel = json.loads((run / "metrics.json").read_text())["selection"]
    assert list(sel["policies"])[0] == "best" and set(sel["policies"]) == {"best", "last", "ema"}
    cells = [f"{name} {p['cv_rmse']:.4f}" + (" (kept)" * (name == "best")) for name, p in sel["policies"].items()]
    assert line.endswith(f" | policies, CV RMSE: {', '.join(cells)}"), line
    assert set(sel["about"]) == {"select", "cv_rmse", "decimals"}
    assert all(round(v["cv_rmse"], 6) == v["cv_rmse"] for v in sel["policies"].values())


def test_the_selection_block_with_a_holdout_says_what_each_difference_is_against():
    rng = np.random.default_rng(0)
    held = rng.normal(size=30)
    val_targets = {k: rng.normal(size=20) for k in range(3)}
    val = {k: {"pred": t + rng.normal(0, 0.3, 20), "last": t + rng.normal(0, 0.3, 20)} for k, t in
           val_targets.items()}
    hold = {k: {"pred": held + rng.normal(0, 0.4, 30), "last": held + rng.normal(0, 0.4, 30)} for k in range(3)}
    sel = metrics.selection_summary(val, val_targets, held, hold, "best", "mean")
    best = sel["policies"]["best"]
    assert "holdout_diff" not in best and sel["policies"]["last"]["holdout_diff"]["vs"] == "best"
    assert best["choice_optimism"]["vs"] == "last" and sel["choice_optimism"]["vs"] == "last"
    assert {"optimism", "choice_optimism", "holdout_diff", "holdout_rmse"} <= set(sel["about"])
    assert "negative means this policy is better" in sel["about"]["holdout_diff"]

    def floats(x):
        return [x] if isinstance(x, float) else [f for v in (x.values() if isinstance(x, dict) else x if isinstance(
            x, list) else []) for f in floats(v)]

    assert floats(sel) and all(round(f, 6) == f for f in floats(sel))
    line = metrics.selection_line(sel)
    assert line.startswith(f" | holdout RMSE {sel['rmse']:.4f} (30 rows) | selection optimism ")
    assert line.endswith(f" | policies, CV / holdout RMSE: best {best['cv_rmse']:.4f} / {best['holdout_rmse']:.4f} "
                         f"(kept), last {sel['policies']['last']['cv_rmse']:.4f} / "
                         f"{sel['policies']['last']['holdout_rmse']:.4f}")
