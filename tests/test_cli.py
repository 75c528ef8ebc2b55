"""A new user's first hour: their own CSV, paths with spaces, ``latest``, ``predict`` defaults, Ctrl-C, the Makefile."""

from __future__ import annotations

import multiprocessing
import os
import shlex
import signal
import subprocess

import pandas as pd
import pytest

from conftest import ROOT, assert_stopped_with_one_line, cli, signal_when, tiny_overrides
from kfold_nlp import _run_dir
from kfold_nlp.rundir import claim


def own_csv(folder, n: int = 30):
    """A CSV with other column names than CommonLit's, its test file beside it."""
    folder.mkdir(parents=True)
    rng = pd.Series(range(n))
    words = ["cat", "sat", "on", "the", "mat", "ubiquitous", "phenomenon", "ran", "far"]
    texts = [" ".join(words[(i * k) % len(words)] for k in range(5 + i % 7)) + "." for i in range(n)]
    pd.DataFrame({"uid": [f"u{i}" for i in rng], "passage": texts, "score": rng / n - 1}).to_csv(
        folder / "train.csv", index=False)
    pd.DataFrame({"uid": ["t1", "t2"], "passage": ["A test.", "Another one here."]}).to_csv(folder / "test.csv",
                                                                                       index=False)
    return folder / "train.csv"


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def through_make(*args: str, check: bool = True):
    """What ``make <args>`` runs, as make spells it (``make -n``: its quoting of paths with spaces), called in this
    process: the line that starts the project (``$(PY) -m kfold_nlp ...``) split as the shell splits it."""
    proc = make("-n", *args)
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if " -m kfold_nlp" in x]
    python, flag, module, *argv = shlex.split(line)
    assert (python, flag) == (".venv/bin/python", "-m") and module in ("kfold_nlp", "kfold_nlp.cli"), line
    return cli(*(["cv"] if module == "kfold_nlp" else []), *argv, check=check, cwd=ROOT)


@pytest.mark.process  # make (-n: it prints its commands, which run here)
def test_own_csv_with_a_space_in_its_path_through_make_cv_and_make_predict(tmp_path):
    train = own_csv(tmp_path / "my data")
    run_dir = tmp_path / "my runs" / "run"
    args = (f"model=tiny 'data.path={train}' data.id_col=uid data.text_col=passage data.target_col=score "
            f"cv.n_splits=2 logger.mode=disabled 'hydra.run.dir={run_dir}'")
    proc = through_make("cv", "DATA=csv", f"ARGS={args}", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pd.read_csv(run_dir / "submission.csv").columns.tolist() == ["uid", "score"]
    assert pd.read_csv(run_dir / "oof.csv", dtype={"id": str})["id"].str.startswith("u").all()

    proc = through_make("predict", f"RUN={run_dir}", check=False)  # INPUT defaults to the run's own test file
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = pd.read_csv(run_dir / "predictions" / "test.csv")
    sub = pd.read_csv(run_dir / "submission.csv")
    assert pred.columns.tolist() == ["uid", "score"]
    pd.testing.assert_series_equal(pred["score"], sub["score"], atol=1e-5)

    other = tmp_path / "my data" / "other input.csv"
    pd.DataFrame({"key": ["k1"], "body": ["Some text to score."]}).to_csv(other, index=False)
    proc = through_make("predict", f"RUN={run_dir}", f"INPUT={other}", "ARGS=--id-col key --text-col body",
                        check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pd.read_csv(run_dir / "predictions" / "other input.csv").columns.tolist() == ["key", "score"]


@pytest.mark.process  # make (it refuses before any Python starts)
def test_make_refuses_overrides_typed_without_args():
    proc = make("cv", "EXP=rdrop", "model=tiny", "cv.n_splits=2")
    assert proc.returncode != 0
    assert "unknown variable(s) cv.n_splits model" in proc.stderr and "ARGS=" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "no_models", "missing_fold", "no_text_column"])
def test_predict_refuses_with_one_line(problem, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    if problem != "missing":
        shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("wandb"))
    if problem == "no_models":
        for model in run.glob("fold_*/model.safetensors"):
            model.unlink()
    if problem == "missing_fold":
        (run / "fold_1" / "model.safetensors").unlink()
    args = [str(run)]
    if problem == "no_text_column":
        bad = tmp_path / "bad.csv"
        pd.DataFrame({"id": ["a"], "body": ["text"]}).to_csv(bad, index=False)
        args.append(str(bad))
    proc = cli("predict", *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    expected = {"missing": "does not exist", "no_models": "no fold_*/model.safetensors",
                "missing_fold": "no model.safetensors in fold_1", "no_text_column": "missing column(s) 'excerpt'"}
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected[problem] in lines[0], proc.stderr


def _allocate(base, barrier, queue):
    _run_dir(None, base)  # both processes choose the same free name: nothing is created while resolving
    barrier.wait()
    queue.put(str(claim(lambda: _run_dir(None, base))))


def test_resolving_a_run_folder_creates_nothing(tmp_path):
    name = _run_dir(None, str(tmp_path / "runs" / "t"))
    assert not (tmp_path / "runs").exists() and _run_dir(None, str(tmp_path / "runs" / "t")) == name


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path):
    context = multiprocessing.get_context("fork")
    queue, barrier = context.Queue(), context.Barrier(2)
    procs = [context.Process(target=_allocate, args=(str(tmp_path / "t"), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    folders = {queue.get(), queue.get()}
    assert len(folders) == 2 and all(__import__("os").path.isdir(f) for f in folders)


@pytest.mark.slow
def test_a_bad_csv_leaves_no_stub_folder(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": ["a", "a", "b"], "excerpt": ["x", "y", "z"], "target": [1, 2, 3]}).to_csv(bad, index=False)
    proc = cli("cv", "model=tiny", "data=csv", f"data.path={bad}", "cv.n_splits=2", "logger.mode=disabled",
               cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "duplicated" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_naming_the_folder_and_the_resume_command(tiny_data, tmp_path):
    """Ctrl-C (SIGINT: KeyboardInterrupt in the main thread, here this process's) once fold 0 is done: one line
    naming the folder and the command that resumes it, exit 130 (SIGTERM: tests/test_resume.py)."""
    run_dir = tmp_path / "run"
    with signal_when(signal.SIGINT, lambda: (run_dir / "fold_0" / "result.json").exists()):
        proc = cli("cv", *tiny_overrides(tiny_data, run_dir), check=False)
    assert_stopped_with_one_line(proc.returncode, proc.stderr, 130, "interrupted", run_dir)


@pytest.mark.slow
def test_online_wandb_without_a_key_is_refused_at_the_start(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    for name in [k for k in os.environ if k.startswith("WANDB_") and k != "WANDB_SILENT"]:  # WANDB_SILENT: set by
        monkeypatch.delenv(name)  # the package at import, in every process
    monkeypatch.setenv("HOME", str(tmp_path))  # no netrc
    overrides = [*tiny_overrides(tiny_data, run_dir, logger="wandb"), "logger.mode=online"]
    proc = cli("cv", *overrides, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: logger.mode=online: no W&B API key for api.wandb.ai (set WANDB_API_KEY "
                                   "or run `wandb login`); or use logger.mode=offline and `wandb sync` later")
    assert not run_dir.exists()


def test_the_one_entry_lists_its_commands_and_refuses_an_unknown_one_with_one_line(capsys):
    from kfold_nlp import cli as entry

    with pytest.raises(SystemExit) as exit_:
        entry.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(f"  {name} " in out for name in entry.COMMANDS)
    with pytest.raises(SystemExit) as exit_:
        entry.main(["colect", "outputs/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["error: colect: not a command; one of cv, predict, pretrain, refit, "
                                             "export, collect, compare, sweep, hpo, ensemble, report (kfold-nlp "
                                             "--help)"]


def test_each_command_reaches_its_module_with_its_arguments(tmp_path, capsys):
    """A missing run folder, through the one entry: the command's own one-line refusal and exit status."""
    from kfold_nlp import cli as entry

    for command in ("collect", "predict"):
        with pytest.raises(SystemExit) as exit_:
            entry.main([command, str(tmp_path / "nowhere")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and f"{tmp_path / 'nowhere'}: does not exist" in err[0], err
