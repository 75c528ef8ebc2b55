"""Bad input: one clear line naming the file and the problem, a non-zero exit, and no complete-looking run folder."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import cli

pytestmark = pytest.mark.slow  # every test here runs the CLI (see tests/test_tiers.py)

GOOD = pd.DataFrame({
    "id": [f"r{i}" for i in range(6)],
    "excerpt": [f"Text number {i} is here." for i in range(6)],
    "target": [-1.0, 0.5, -2.0, 0.1, -0.3, -1.5],
})

CASES = {
    "missing_file": (None, "not found"),
    "missing_column": (GOOD.drop(columns="target"), "target"),
    "empty_text": (GOOD.assign(excerpt=["ok"] * 5 + ["   "]), "r5"),
    "nan_text": (GOOD.assign(excerpt=["ok"] * 4 + [None, "ok"]), "r4"),
    "nan_target": (GOOD.assign(target=[-1.0, None, 0, 0, 0, 0]), "r1"),
    "text_target": (GOOD.assign(target=["-1", "0", "easy", "0", "0", "0"]), "r2"),
    "duplicate_ids": (GOOD.assign(id=["a", "b", "c", "b", "e", "f"]), "'b'"),
    "target_beyond_float32": (GOOD.assign(target=[-1.0, 0.5, 1e39, 0.1, -0.3, -1.5]), "float32's range"),
    "too_few_rows": (GOOD.head(2), "2 rows"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_with_one_line_naming_file_and_problem(case, tmp_path):
    frame, needle = CASES[case]
    path = tmp_path / f"{case}.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    run_dir = tmp_path / "run"
    proc = cli("cv", "model=tiny", f"data.path={path}", "data.generate=null", "cv.n_splits=3",
               "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and path.name in lines[0] and needle in lines[0], lines[0]
    assert not run_dir.exists()  # not even Hydra's .hydra/ and log: no stub folder that looks like a run


REFUSED = {  # overrides (beside the good file) -> the whole line
    "more_folds_than_the_largest_bin": ([],
                                        "error: cv.n_splits=3: stratified folds need a target bin of at least 3 rows, "
                                        "and the largest of the 3 bins (cv.bins=sturges) holds 2; lower cv.n_splits "
                                        "or cv.bins"),
    "unknown_launcher": (["launcher=nosuch"],
                         "error: launcher=nosuch: must be one of basic, joblib, slurm, submitit_local, submitit_slurm "
                         "(conf/hydra/launcher/ and the installed launcher plugins)"),
    "resume_a_file": (["resume={good}"],
                      "error: resume={good}: is a file; give the run folder (the one holding run_config.yaml)"),
    "mixup_alpha_beyond_its_range": (["regularizer=mixup", "regularizer.alpha=1e-50"],
                                     "error: regularizer.alpha=1e-50: must be 0 or a number >= 0.01 and <= 100"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_config_that_cannot_run_is_refused_before_anything_is_written(case, tmp_path):
    """Started from an empty folder (the default run folder, ``outputs/<name>/<time>``, is made there): no run
    folder is left."""
    good = tmp_path / "good.csv"
    GOOD.assign(target=[0.0, 0.1, 5.0, 5.1, 10.0, 10.1]).to_csv(good, index=False)  # 3 Sturges bins of 2 rows
    overrides, line = REFUSED[case]
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("cv", "model=tiny", "data=csv", f"data.path={good}", "cv.n_splits=3", "logger.mode=disabled",
               *(o.format(good=good) for o in overrides), cwd=work, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == line.format(good=good), proc.stderr
    assert [p.name for p in work.rglob("*")] in ([], ["outputs"])  # no run folder, not even an empty one
