"""A damaged run file (cut short, blank, edited) read back by collect, a resume, predict or ensemble: one ``error:``
line naming the file and the fix, exit 2, the run's results as they were; the command works again once repaired."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, copy_run
from fake_runs import rows, write_run
from kfold_nlp import predict
from kfold_nlp.analysis import ensemble
from kfold_nlp.cv import collect
from kfold_nlp.data.fingerprint import config_digest

RESULTS = ("oof.csv", "submission.csv", "metrics.json")


def results(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in RESULTS}


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def lines(n: int):
    """The first ``n`` lines: a file cut at a line end."""
    return lambda text: "".join(text.splitlines(keepends=True)[:n])


def cut(n: int):
    """All but the last ``n`` characters: a file cut mid-line."""
    return lambda text: text[:-n]


def blank(text: str) -> str:
    return ""


RETRAIN = "retrain that fold: delete {run}/fold_{k}/result.json and resume with RESUME={run}"
RESTORE = "restore it or start a new run"
CUT = "cut short (no line end after its last line)"
DAMAGE = {  # file, damage, the line's problem, its advice
    "result_cut": ("fold_1/result.json", cut(30), CUT, RETRAIN),
    "result_cut_at_a_line": ("fold_1/result.json", lines(3), "unreadable (Expecting", RETRAIN),
    "result_blank": ("fold_1/result.json", blank, "empty", RETRAIN),
    "result_changed": ("fold_1/result.json", lambda t: t.replace('"mse"', '"MSE"'), "no finite 'mse'", RETRAIN),
    "oof_cut": ("fold_1/oof.csv", cut(20), CUT, RETRAIN),
    "oof_cut_at_a_line": ("fold_1/oof.csv", lines(5), "4 rows, 16 expected", RETRAIN),
    "oof_blank": ("fold_1/oof.csv", blank, "empty", RETRAIN),
    "oof_no_pred": ("fold_1/oof.csv", lambda t: t.replace("id,pred", "id,value", 1),
                    "no 'pred' column (columns: id, value)", RETRAIN),
    "test_pred_cut": ("fold_2/test_pred.csv", cut(20), CUT, RETRAIN),
    "test_pred_blank": ("fold_2/test_pred.csv", blank, "empty", RETRAIN),
    "run_config_cut": ("run_config.yaml", cut(200), CUT, RESTORE),
    "run_config_cut_at_a_line": ("run_config.yaml", lambda t: t[:t.index("\ndata:") + 1], "incomplete (no data.name)",
                                 RESTORE),
    "run_config_blank": ("run_config.yaml", blank, "empty", RESTORE),
    "run_config_edited": ("run_config.yaml", lambda t: t.replace("  n_splits: 3", "  n_splits: [3"),
                          "unreadable (", RESTORE),
}


def damage(run_dir: Path, case: str) -> tuple[Path, str, str]:
    """Damage one file of ``run_dir``; returns it, the start of the line that must refuse it and its advice."""
    name, change, problem, advice = DAMAGE[case]
    path = run_dir / name
    path.write_text(change(path.read_text()))
    k = name.split("/")[0].removeprefix("fold_")
    return path, f"error: {path}: {problem}", advice.format(run=run_dir, k=k)


@pytest.mark.slow
@pytest.mark.parametrize("case", DAMAGE)
def test_collect_refuses_a_damaged_run_file_then_collects_once_it_is_repaired(case, tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = results(run_dir)
    path = run_dir / DAMAGE[case][0]
    whole = path.read_bytes()
    path, start, advice = damage(run_dir, case)
    with pytest.raises(SystemExit) as exit_:
        collect.main([str(run_dir)])
    line = error_line(capsys)
    assert exit_.value.code == 2 and line.startswith(start) and line.endswith(advice), line
    assert results(run_dir) == before

    path.write_bytes(whole)  # repaired
    collect.main([str(run_dir)])
    assert results(run_dir)["oof.csv"] == before["oof.csv"]
    assert results(run_dir)["submission.csv"] == before["submission.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["model_cut", "run_config_cut"])
def test_predict_refuses_a_damaged_model_or_run_config(case, tiny_run, tmp_path, capsys, fresh_accelerator_state):
    run_dir = copy_run(tiny_run, tmp_path / "run", models=True)
    path = run_dir / ("fold_1/model.safetensors" if case == "model_cut" else DAMAGE[case][0])
    whole = path.read_bytes()
    if case == "model_cut":
        path.write_bytes(whole[:100_000])  # the header and part of the first tensor
        start, advice = f"error: {path}: unreadable (", RETRAIN.format(run=run_dir, k=1)
    else:
        path, start, advice = damage(run_dir, case)
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(run_dir)])
    line = error_line(capsys)
    assert exit_.value.code == 2 and line.startswith(start) and line.endswith(advice), line
    assert not (run_dir / "predictions").exists()

    path.write_bytes(whole)
    predict.main([str(run_dir)])
    assert (run_dir / "predictions" / "test.csv").is_file()


@pytest.mark.slow
def test_a_resume_refuses_a_cut_fold_file_and_its_advice_retrains_the_fold(tiny_run, tmp_path):
    """The line's advice, followed to the letter, ends the run like the uninterrupted one."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = results(run_dir)
    path, start, advice = damage(run_dir, "oof_cut_at_a_line")
    resume = [f"resume={run_dir}", "logger.mode=disabled"]
    proc = cli("cv", *resume, check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert line == f"{start}; {advice}", line
    assert results(run_dir) == before

    (run_dir / "fold_1" / "result.json").unlink()
    cli("cv", *resume)
    assert results(run_dir)["oof.csv"] == before["oof.csv"]
    assert results(run_dir)["submission.csv"] == before["submission.csv"]


@pytest.mark.slow
def test_a_resume_refuses_a_cut_run_config(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    before = results(run_dir)
    path, start, advice = damage(run_dir, "run_config_cut_at_a_line")
    proc = cli("cv", f"resume={run_dir}", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"{start}; {advice}", proc.stderr
    assert results(run_dir) == before


def test_ensemble_refuses_a_member_without_a_pred_column(tmp_path, capsys):
    f, rng = rows(60, 3), np.random.default_rng(0)
    a = write_run(tmp_path / "a", f, f["target"] + rng.normal(0, 0.5, len(f)), rng.normal(size=4), name="baseline")
    b = write_run(tmp_path / "b", f, f["target"] + rng.normal(0, 0.6, len(f)), rng.normal(size=4), name="rdrop")
    good = (b / "oof.csv").read_text()
    (b / "oof.csv").write_text(good.replace(",pred\n", ",prediction\n", 1))
    out = tmp_path / "blend"
    args = [str(a), str(b), "--out", str(out), "--wandb-mode", "disabled"]
    with pytest.raises(SystemExit) as exit_:
        ensemble.main(args)
    assert exit_.value.code == 2
    assert error_line(capsys) == (f"error: {b / 'oof.csv'}: no 'pred' column (columns: id, fold, target, "
                                  f"prediction); re-collect or rerun that run")
    assert not out.exists()

    (b / "oof.csv").write_text(good)
    ensemble.main(args)
    assert (out / "metrics.json").is_file()


@pytest.mark.slow
def test_a_run_folder_from_before_the_sub_package_layout_is_collected_and_predicted(tiny_run, tmp_path, capsys,
                                                                                 fresh_accelerator_state):
    """Its run_config.yaml names the classes where they were (kfold_nlp.tasks, kfold_nlp.regularizers) and lacks
    the keys added since (trainer.select, cv.holdout, ...): read as the run it was, it collects and predicts alike."""
    run_dir = copy_run(tiny_run, tmp_path / "run", models=True)
    before = results(run_dir)
    predict.main([str(run_dir)])
    expected = (run_dir / "predictions" / "test.csv").read_bytes()
    for name in ("run_config.yaml", ".hydra/config.yaml"):
        path = run_dir / name
        text = path.read_text().replace("kfold_nlp.model.tasks.", "kfold_nlp.tasks.")
        text = text.replace("kfold_nlp.model.regularizers.", "kfold_nlp.regularizers.")
        text = "".join(line for line in text.splitlines(keepends=True)
                       if line.split(":")[0].strip() not in ("select", "also_select", "ema_decay", "swa_evals",
                                                              "holdout"))
        assert "kfold_nlp.tasks." in text and "  select:" not in text
        path.write_text(text)
    for k in range(3):  # its folds recorded the digest of the run_config.yaml they were trained under: this one
        result = run_dir / f"fold_{k}" / "result.json"
        record = json.loads(result.read_text())
        record["made_from"]["config"] = config_digest(run_dir / "run_config.yaml")
        result.write_text(json.dumps(record) + "\n")
    (run_dir / "predictions" / "test.csv").unlink()
    collect.main([str(run_dir)])
    assert results(run_dir)["oof.csv"] == before["oof.csv"]
    assert results(run_dir)["submission.csv"] == before["submission.csv"]
    predict.main([str(run_dir)])
    assert (run_dir / "predictions" / "test.csv").read_bytes() == expected
