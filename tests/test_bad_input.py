"""Bad input: one clear line naming the file and the problem, a non-zero exit, and no complete-looking run folder."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow  # every test here runs another process (see tests/test_tiers.py)

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
    "too_few_rows": (GOOD.head(2), "2 rows"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_with_one_line_naming_file_and_problem(case, tmp_path):
    frame, needle = CASES[case]
    path = tmp_path / f"{case}.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    run_dir = tmp_path / "run"
    proc = run_cli("model=tiny", f"data.path={path}", "data.generate=null", "cv.n_splits=3",
                   "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and path.name in lines[0] and needle in lines[0], lines[0]
    assert not run_dir.exists()  # not even Hydra's .hydra/ and log: no stub folder that looks like a run
