"""A new user's first hour: their own CSV, paths with spaces, ``latest``, ``predict`` defaults, Ctrl-C, the Makefile."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, run_cli, start_until, tiny_overrides
from kfold_nlp import _run_dir


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


@pytest.mark.slow
def test_own_csv_with_a_space_in_its_path_through_make_cv_and_make_predict(tmp_path):
    train = own_csv(tmp_path / "my data")
    run_dir = tmp_path / "my runs" / "run"
    args = (f"model=tiny 'data.path={train}' data.id_col=uid data.text_col=passage data.target_col=score "
            f"cv.n_splits=2 logger.mode=disabled 'hydra.run.dir={run_dir}'")
    proc = make("cv", "DATA=csv", f"ARGS={args}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pd.read_csv(run_dir / "submission.csv").columns.tolist() == ["uid", "score"]
    assert pd.read_csv(run_dir / "oof.csv", dtype={"id": str})["id"].str.startswith("u").all()

    proc = make("predict", f"RUN={run_dir}")  # INPUT defaults to the run's own test file
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = pd.read_csv(run_dir / "predictions" / "test.csv")
    sub = pd.read_csv(run_dir / "submission.csv")
    assert pred.columns.tolist() == ["uid", "score"]
    pd.testing.assert_series_equal(pred["score"], sub["score"], atol=1e-5)

    other = tmp_path / "my data" / "other input.csv"
    pd.DataFrame({"key": ["k1"], "body": ["Some text to score."]}).to_csv(other, index=False)
    proc = make("predict", f"RUN={run_dir}", f"INPUT={other}", "ARGS=--id-col key --text-col body")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pd.read_csv(run_dir / "predictions" / "other input.csv").columns.tolist() == ["key", "score"]


@pytest.mark.slow
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
    proc = run_cli("predict", *args, module="kfold_nlp.cli", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    expected = {"missing": "does not exist", "no_models": "no fold_*/model.safetensors",
                "missing_fold": "no model.safetensors in fold_1", "no_text_column": "missing column(s) 'excerpt'"}
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected[problem] in lines[0], proc.stderr


def _allocate(base, queue):
    queue.put(_run_dir(None, base))


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_allocate, args=(str(tmp_path / "t"), queue))
             for _ in range(2)]
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
    proc = subprocess.run([sys.executable, "-m", "kfold_nlp", "model=tiny", "data=csv", f"data.path={bad}",
                           "cv.n_splits=2", "logger.mode=disabled"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "duplicated" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_ends_with_one_line_naming_the_folder_and_the_resume_command(sig, code, word, tiny_run,
                                                                                       tmp_path):
    """Ctrl-C, or SIGTERM (a timeout, a preemption): one line naming the folder and the command that resumes it."""
    run_dir = tmp_path / "run"
    proc = start_until(tiny_overrides(tiny_run.parent / "data", run_dir), b"fold 1:",
                       # a shell's background job ignores SIGINT, and children inherit that: not a terminal's Ctrl-C
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.send_signal(sig)
    rest = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == code
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"{word}: finished folds are kept in {run_dir}") and f"RESUME={run_dir}" in last
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert (run_dir / "fold_0" / "result.json").exists()


@pytest.mark.slow
def test_online_wandb_without_a_key_is_refused_at_the_start(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}  # no netrc
    overrides = [*tiny_overrides(tiny_run.parent / "data", run_dir, logger="wandb"), "logger.mode=online"]
    proc = subprocess.run([sys.executable, "-m", "kfold_nlp", *overrides], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: logger.mode=online: no W&B API key for api.wandb.ai (set WANDB_API_KEY "
                                   "or run `wandb login`); or use logger.mode=offline and `wandb sync` later")
    assert not run_dir.exists()


def test_the_one_entry_lists_its_commands_and_refuses_an_unknown_one_with_one_line(capsys):
    from kfold_nlp import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and all(f"  {name} " in out for name in cli.COMMANDS)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["colect", "outputs/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["error: colect: not a command; one of cv, predict, refit, export, "
                                             "collect, compare, sweep, hpo, ensemble, report (kfold-nlp --help)"]


def test_each_command_reaches_its_module_with_its_arguments(tmp_path, capsys):
    """A missing run folder, through the one entry: the command's own one-line refusal and exit status."""
    from kfold_nlp import cli

    for command in ("collect", "predict"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, str(tmp_path / "nowhere")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and f"{tmp_path / 'nowhere'}: does not exist" in err[0], err
